// Package netstack terminates the TCP and UDP flows that developer containers send into the
// daemon's TUN device and hands each of them to a Dialer that carries it through the tunnel to
// the cluster.
//
// It is the only package of tp that imports gVisor (gvisor.dev/gvisor/pkg/tcpip). A Stack owns a
// user-space TCP/IP stack attached to the TUN file descriptor in promiscuous and spoofing mode, so
// every destination routed into the TUN is accepted:
//
//   - TCP: for each SYN the cluster is dialed before the handshake is completed. A refused dial
//     answers the SYN with a RST, an unreachable destination with an ICMP destination-unreachable,
//     so the container sees the same error it would see in the cluster. Data is relayed both
//     ways with half-close (FIN) propagated in both directions.
//   - UDP: one flow per 5-tuple, closed after an idle timeout; one datagram per Read/Write.
//
// The stack is built for linux only; on other systems New returns errors.ErrUnsupported and
// gVisor is not linked.
package netstack

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"time"
)

// Dialer opens a flow to dst in the cluster. network is "tcp" or "udp".
//
// The dial's error decides what the container sees:
//   - errors.Is(err, syscall.ECONNREFUSED): a TCP RST ("connection refused"), for UDP an ICMP
//     port unreachable;
//   - errors.Is(err, syscall.EHOSTUNREACH) or ENETUNREACH: an ICMP destination unreachable ("no
//     route to host" at once);
//   - os.ErrDeadlineExceeded or context.DeadlineExceeded: nothing, like a lost SYN (the client
//     retransmits it, which dials again);
//   - any other error: a TCP RST.
//
// The returned conn may implement CloseWrite() error; without it, the container's FIN is not
// passed on and the flow ends when the cluster side closes. For "udp", one Write is one
// datagram and one Read returns one datagram. For throughput, Read should return as much
// buffered data as fits (the stack sends what one Read returns as one segment of up to 64 KiB).
type Dialer interface {
	Dial(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error)
}

// DialerFunc adapts a function to the Dialer interface.
type DialerFunc func(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error)

// Dial calls f.
func (f DialerFunc) Dial(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
	return f(ctx, network, dst)
}

// Device is the TUN device the stack reads packets from and writes packets to: a file
// descriptor of a TUN opened with IFF_TUN|IFF_NO_PI (*tun.Device or an *os.File). The Stack does
// not own it: close it after Run has returned.
type Device interface {
	Fd() uintptr
}

// Defaults used for zero Config fields.
const (
	// DefaultMTU matches the TUN device's MTU; large frames are what make the stack fast.
	DefaultMTU = 65520
	// DefaultDialTimeout bounds one dial into the cluster.
	DefaultDialTimeout = 30 * time.Second
	// DefaultUDPIdleTimeout closes a UDP flow that saw no datagram in either direction.
	DefaultUDPIdleTimeout = time.Minute
	// DefaultMaxPendingTCP bounds the SYNs whose dial is in progress; more are dropped (the
	// client retransmits them).
	DefaultMaxPendingTCP = 1024
	// DefaultTCPBufferMax caps each TCP flow's send and receive buffer (gVisor fills them
	// lazily: an idle flow holds no buffer memory).
	DefaultTCPBufferMax = 4 << 20
	// DefaultTCPBufferBudget is shared by the open TCP flows: with n flows open, each one's
	// buffers are limited to budget/n (within [MinTCPBuffer, TCPBufferMax]).
	DefaultTCPBufferBudget = 64 << 20
	// MinTCPBuffer is the smallest per-flow buffer: two packets at the default MTU, so that a
	// Linux receiver ACKs at once rather than delaying its ACK.
	MinTCPBuffer = 128 << 10
	// DefaultTimeWait is how long a closed TCP endpoint lingers in TIME-WAIT. Linux uses 60s;
	// there are no stray segments on a TUN, every endpoint in TIME-WAIT costs memory, and a
	// client that reuses the port meanwhile has its SYN dropped when gVisor finds the reuse
	// unsafe: at 5 s that was 1-5 s connect stalls under churn, at 250 ms none in 20 000.
	DefaultTimeWait = 250 * time.Millisecond
)

// Config configures a Stack. Dialer and Device are required.
type Config struct {
	// Device is the TUN device (see Device).
	Device Device
	// MTU of the TUN device; 0 means DefaultMTU. It must match the device's MTU.
	MTU int
	// Dialer carries flows to the cluster.
	Dialer Dialer
	// Logger receives flow errors (Debug), unexpected failures and dials the traffic-manager's
	// policy refused (Warn). nil discards.
	Logger *slog.Logger
	// DialTimeout bounds one dial; 0 means DefaultDialTimeout.
	DialTimeout time.Duration
	// UDPIdleTimeout closes idle UDP flows; 0 means DefaultUDPIdleTimeout.
	UDPIdleTimeout time.Duration
	// MaxPendingTCP bounds concurrent TCP dials; 0 means DefaultMaxPendingTCP.
	MaxPendingTCP int
	// TCPBufferMax caps per-flow TCP buffers; 0 means DefaultTCPBufferMax.
	TCPBufferMax int
	// TCPBufferBudget is divided among the open TCP flows; 0 means DefaultTCPBufferBudget.
	// It bounds what busy flows can buffer together (at most ~2 x max(budget,
	// flows x MinTCPBuffer)), so that 1000 flows cannot hold gigabytes.
	TCPBufferBudget int
	// TimeWait is the TCP TIME-WAIT duration; 0 means DefaultTimeWait.
	TimeWait time.Duration

	// testLink replaces Device in unit tests (a gVisor channel endpoint).
	testLink any
}

// Stats is a snapshot of the stack's counters, for `tp status` and benchmarks.
type Stats struct {
	TCPOpen          int64  // TCP flows being relayed now
	TCPPending       int64  // SYNs whose dial is in progress
	TCPTotal         uint64 // TCP flows relayed since start
	TCPRefused       uint64 // SYNs answered with RST because the cluster or the manager's dial policy refused them
	TCPUnreachable   uint64 // SYNs answered with ICMP unreachable
	TCPDialFailed    uint64 // other failed TCP dials (timeouts, tunnel errors)
	TCPDropped       uint64 // SYNs dropped because MaxPendingTCP dials were in progress
	UDPOpen          int64  // UDP flows being relayed now
	UDPTotal         uint64 // UDP flows since start
	UDPDialFailed    uint64 // failed UDP dials
	BytesToCluster   uint64 // payload bytes written to the Dialer's conns
	BytesFromCluster uint64 // payload bytes read from the Dialer's conns
}
