//go:build linux

package netstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/fdbased"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

const nicID tcpip.NICID = 1

// Stack is a user-space TCP/IP stack that relays the flows it terminates to a Dialer.
type Stack struct {
	cfg  Config
	log  *slog.Logger
	ip   *stack.Stack
	fwd  *tcp.Forwarder
	syns synTable
	bufs bufferShares
	// copyBufs bounds the relays' big copy buffers.
	copyBufs copyBuffers

	flows   flowSet
	runCtx  context.Context // set by Run before the NIC is attached; dials derive from it
	running atomic.Bool
	ready   chan struct{} // closed once Run has attached the device

	stats struct {
		tcpOpen, tcpPending, udpOpen         atomic.Int64
		tcpTotal, tcpRefused, tcpUnreachable atomic.Uint64
		tcpDialFailed, tcpDropped            atomic.Uint64
		udpTotal, udpDialFailed              atomic.Uint64
		bytesToCluster, bytesFromCluster     atomic.Uint64
	}
}

// New checks cfg and builds the stack. Packets are processed once Run is called.
func New(cfg Config) (*Stack, error) {
	if cfg.Dialer == nil {
		return nil, errors.New("netstack: Config.Dialer is required")
	}
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	if cfg.MTU < header.IPv6MinimumMTU || cfg.MTU > 65535 {
		return nil, fmt.Errorf("netstack: MTU %d out of range [%d, 65535]", cfg.MTU, header.IPv6MinimumMTU)
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.UDPIdleTimeout <= 0 {
		cfg.UDPIdleTimeout = DefaultUDPIdleTimeout
	}
	if cfg.MaxPendingTCP <= 0 {
		cfg.MaxPendingTCP = DefaultMaxPendingTCP
	}
	if cfg.TCPBufferMax <= 0 {
		cfg.TCPBufferMax = DefaultTCPBufferMax
	}
	if cfg.TCPBufferBudget <= 0 {
		cfg.TCPBufferBudget = DefaultTCPBufferBudget
	}
	if cfg.TimeWait <= 0 {
		cfg.TimeWait = DefaultTimeWait
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	if cfg.Device == nil && cfg.testLink == nil {
		return nil, errors.New("netstack: Config.Device is required")
	}

	s := &Stack{cfg: cfg, log: log, ready: make(chan struct{})}
	s.ip = stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	if err := s.tune(); err != nil {
		s.ip.Destroy()
		return nil, err
	}
	s.syns.init(cfg.MaxPendingTCP)
	s.bufs.init(cfg.TCPBufferBudget, MinTCPBuffer, cfg.TCPBufferMax)
	// The forwarder's own in-flight limit is never reached: synTable enforces MaxPendingTCP.
	s.fwd = tcp.NewForwarder(s.ip, 0, 2*cfg.MaxPendingTCP, s.handleTCP)
	s.ip.SetTransportProtocolHandler(tcp.ProtocolNumber, s.handleTCPPacket)
	s.ip.SetTransportProtocolHandler(udp.ProtocolNumber, s.handleUDPPacket)
	return s, nil
}

// tune sets the TCP options that make the stack fast on a local high-MTU link.
func (s *Stack) tune() error {
	sack := tcpip.TCPSACKEnabled(true)
	// bufferShares sizes every flow's buffers: gVisor's auto-tuning grows them to 20 segments
	// (1.3 MiB at a 64 KiB MSS) at least, per flow.
	moderate := tcpip.TCPModerateReceiveBufferOption(false)
	// gVisor's RACK loss detection causes spurious retransmissions (tailscale/tailscale#9707);
	// a TUN does not lose packets anyway.
	recovery := tcpip.TCPRecovery(0)
	// reno avoids an overflow in cubic's window arithmetic (google/gvisor#11632).
	cc := tcpip.CongestionControlOption("reno")
	timeWait := tcpip.TCPTimeWaitTimeoutOption(s.cfg.TimeWait)
	// A client that reuses a source port while our end of its previous
	// connection is still in TIME-WAIT must get a new connection, as with
	// Linux; gVisor's default allows that only over loopback and otherwise
	// drops the SYN until TIME-WAIT ends (seen as 1-5 s connect stalls
	// under connection churn).
	timeWaitReuse := tcpip.TCPTimeWaitReuseGlobal
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcp.DefaultReceiveBufferSize, Max: s.cfg.TCPBufferMax}
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcp.DefaultSendBufferSize, Max: s.cfg.TCPBufferMax}
	if rcv.Default > rcv.Max {
		rcv.Default = rcv.Max
		snd.Default = snd.Max
	}
	for _, opt := range []tcpip.SettableTransportProtocolOption{&sack, &moderate, &recovery, &cc, &timeWait, &timeWaitReuse, &rcv, &snd} {
		if err := s.ip.SetTransportProtocolOption(tcp.ProtocolNumber, opt); err != nil {
			return fmt.Errorf("netstack: set TCP option %T: %s", opt, err)
		}
	}
	return nil
}

// Run attaches the device and relays flows until ctx ends. It then resets every open flow,
// waits for all of them to close, detaches the device and returns ctx's error (nil if ctx was
// canceled). Run may be called once.
func (s *Stack) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("netstack: Run called twice")
	}
	s.runCtx = ctx
	defer s.ip.Destroy() // after the flows: detaches the NIC, stops the link's reader

	link, err := s.newLink()
	if err != nil {
		return err
	}
	if err := s.ip.CreateNICWithOptions(nicID, link, stack.NICOptions{Name: "tun"}); err != nil {
		return fmt.Errorf("netstack: create NIC: %s", err)
	}
	// Accept and originate any address: the routes into the TUN decide what reaches us.
	if err := s.ip.SetPromiscuousMode(nicID, true); err != nil {
		return fmt.Errorf("netstack: promiscuous mode: %s", err)
	}
	if err := s.ip.SetSpoofing(nicID, true); err != nil {
		return fmt.Errorf("netstack: spoofing: %s", err)
	}
	s.ip.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})
	close(s.ready)

	<-ctx.Done()
	s.flows.shutdown()
	if errors.Is(ctx.Err(), context.Canceled) {
		return nil
	}
	return ctx.Err()
}

// newLink returns the link endpoint serving the TUN device.
func (s *Stack) newLink() (stack.LinkEndpoint, error) {
	if s.cfg.testLink != nil {
		return s.cfg.testLink.(stack.LinkEndpoint), nil
	}
	link, err := fdbased.New(&fdbased.Options{
		FDs: []int{int(s.cfg.Device.Fd())},
		MTU: uint32(s.cfg.MTU),
		// The kernel checksummed every packet it hands to the TUN and nothing can corrupt it on
		// the way: skip verifying (a pass over each 64 KiB packet).
		RXChecksumOffload: true,
	})
	if err != nil {
		return nil, fmt.Errorf("netstack: attach TUN: %w", err)
	}
	return link, nil
}

// Stats returns a snapshot of the counters.
func (s *Stack) Stats() Stats {
	st := &s.stats
	return Stats{
		TCPOpen:          st.tcpOpen.Load(),
		TCPPending:       st.tcpPending.Load(),
		TCPTotal:         st.tcpTotal.Load(),
		TCPRefused:       st.tcpRefused.Load(),
		TCPUnreachable:   st.tcpUnreachable.Load(),
		TCPDialFailed:    st.tcpDialFailed.Load(),
		TCPDropped:       st.tcpDropped.Load(),
		UDPOpen:          st.udpOpen.Load(),
		UDPTotal:         st.udpTotal.Load(),
		UDPDialFailed:    st.udpDialFailed.Load(),
		BytesToCluster:   st.bytesToCluster.Load(),
		BytesFromCluster: st.bytesFromCluster.Load(),
	}
}

// dial dials dst with the configured timeout; ctx is Run's context.
func (s *Stack) dial(network string, dst netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(s.runCtx, s.cfg.DialTimeout)
	defer cancel()
	return s.cfg.Dialer.Dial(ctx, network, dst)
}

// flow is an open TCP or UDP flow; abort tears it down from outside (on shutdown).
type flow interface {
	abort()
}

// flowSet owns the goroutines of all flows: every handler and relay goroutine enters it, and
// shutdown aborts the open flows and waits until every goroutine has left.
type flowSet struct {
	mu      sync.Mutex
	closing bool
	open    map[flow]struct{}
	wg      sync.WaitGroup
}

// enter registers a goroutine; it returns false once shutdown has begun.
func (fs *flowSet) enter() bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.closing {
		return false
	}
	fs.wg.Add(1)
	return true
}

func (fs *flowSet) leave() { fs.wg.Done() }

// add registers an open flow; it returns false once shutdown has begun.
func (fs *flowSet) add(f flow) bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.closing {
		return false
	}
	if fs.open == nil {
		fs.open = make(map[flow]struct{})
	}
	fs.open[f] = struct{}{}
	return true
}

func (fs *flowSet) remove(f flow) {
	fs.mu.Lock()
	delete(fs.open, f)
	fs.mu.Unlock()
}

func (fs *flowSet) shutdown() {
	fs.mu.Lock()
	fs.closing = true
	open := make([]flow, 0, len(fs.open))
	for f := range fs.open {
		open = append(open, f)
	}
	fs.mu.Unlock()
	for _, f := range open {
		f.abort()
	}
	fs.wg.Wait()
}

// netipAddr converts a gVisor address.
func netipAddr(a tcpip.Address) netip.Addr {
	if a.Len() == 4 {
		return netip.AddrFrom4(a.As4())
	}
	return netip.AddrFrom16(a.As16())
}

// epoch is the origin of monotonic timestamps stored in atomics.
var epoch = time.Now()

// now returns a monotonic timestamp.
func now() time.Duration { return time.Since(epoch) }
