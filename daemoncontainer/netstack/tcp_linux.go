//go:build linux

package netstack

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/bits"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sync/errgroup"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// errStopped ends a relay that was aborted from outside.
var errStopped = errors.New("flow aborted")

// handleTCPPacket sees every TCP segment that no endpoint claims. It admits new SYNs into the
// pending table (bounding concurrent dials) before the forwarder starts handleTCP for them.
func (s *Stack) handleTCPPacket(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	th := header.TCP(pkt.TransportHeader().Slice())
	if len(th) < header.TCPMinimumSize || th.Flags()&(header.TCPFlagSyn|header.TCPFlagAck) != header.TCPFlagSyn {
		return s.fwd.HandlePacket(id, pkt) // not a SYN: the forwarder declines, the stack resets
	}
	switch s.syns.admit(id, pkt, s.cfg.DialTimeout) {
	case synDuplicate:
		return true // retransmitted SYN of a pending dial
	case synFull:
		s.stats.tcpDropped.Add(1)
		return true // the client retransmits
	}
	if !s.fwd.HandlePacket(id, pkt) {
		s.syns.remove(id) // malformed: no handler will remove it
		return false
	}
	return true
}

// handleTCP runs, in a goroutine started by the forwarder, for each new SYN: it dials the
// cluster, then completes the handshake (or refuses it) and relays the connection.
func (s *Stack) handleTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	complete := func(reset bool) {
		r.Complete(reset)
		s.syns.remove(id)
	}
	if !s.flows.enter() {
		complete(true)
		return
	}
	defer s.flows.leave()

	src := netip.AddrPortFrom(netipAddr(id.RemoteAddress), id.RemotePort)
	dst := netip.AddrPortFrom(netipAddr(id.LocalAddress), id.LocalPort)
	s.stats.tcpPending.Add(1)
	conn, err := s.dial("tcp", dst)
	s.stats.tcpPending.Add(-1)
	if err != nil {
		s.rejectTCP(id, src, dst, err, complete)
		return
	}

	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		// The client gave up or the handshake failed.
		complete(true)
		conn.Close()
		s.log.Debug("tcp handshake failed", "src", src, "dst", dst, "error", terr)
		return
	}
	complete(false)

	f := &tcpFlow{s: s, ep: ep, wq: &wq, conn: conn, stop: make(chan struct{})}
	if !s.flows.add(f) {
		f.abort()
		ep.Close()
		return
	}
	s.stats.tcpTotal.Add(1)
	s.stats.tcpOpen.Add(1)
	s.bufs.add(f)
	err = f.relay()
	s.stats.tcpOpen.Add(-1)
	s.flows.remove(f)
	if err != nil && !errors.Is(err, errStopped) {
		s.log.Debug("tcp flow ended", "src", src, "dst", dst, "error", err)
	}
}

// rejectTCP answers a SYN whose dial failed the way the cluster answered the dial.
func (s *Stack) rejectTCP(id stack.TransportEndpointID, src, dst netip.AddrPort, err error, complete func(reset bool)) {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		s.stats.tcpRefused.Add(1)
		complete(true)
		s.log.Debug("tcp connection refused", "src", src, "dst", dst)
	case errors.Is(err, syscall.EACCES):
		// The traffic-manager's dial policy: refuse at once like a firewall that rejects, and
		// tell the user why (the error names the chart value that allows the destination).
		s.stats.tcpRefused.Add(1)
		complete(true)
		s.log.Warn("tcp connection refused by the traffic-manager's policy", "src", src, "dst", dst, "error", err)
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		s.stats.tcpUnreachable.Add(1)
		s.sendUnreachable(s.syns.quote(id), false)
		complete(false)
		s.log.Debug("tcp destination unreachable", "src", src, "dst", dst)
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		// Like a real timeout: no answer. The client retransmits its SYN, which dials again.
		s.stats.tcpDialFailed.Add(1)
		complete(false)
		s.log.Debug("tcp dial timed out", "src", src, "dst", dst, "error", err)
	default:
		s.stats.tcpDialFailed.Add(1)
		complete(true)
		if s.runCtx.Err() == nil {
			s.log.Warn("tcp dial failed", "src", src, "dst", dst, "error", err)
		}
	}
}

// tcpFlow relays one TCP connection between a gVisor endpoint (the container side) and a conn
// from the Dialer (the cluster side).
type tcpFlow struct {
	s    *Stack
	ep   tcpip.Endpoint
	wq   *waiter.Queue
	conn net.Conn
	stop chan struct{}
	once sync.Once
}

// abort resets both sides; the relay goroutines return promptly.
func (f *tcpFlow) abort() {
	f.once.Do(func() {
		close(f.stop)
		f.conn.Close()
		f.ep.Abort() // RST to the container
	})
}

// relay copies both ways until both directions are closed or one fails, then releases the
// endpoint and the conn. It returns the first error.
func (f *tcpFlow) relay() error {
	var g errgroup.Group
	g.Go(func() error {
		err := f.toCluster()
		if err == nil {
			if cw, ok := f.conn.(interface{ CloseWrite() error }); ok {
				if err = cw.CloseWrite(); err != nil {
					f.abort()
				}
			}
			return err
		}
		f.abort()
		return err
	})
	err := f.fromCluster()
	if err == nil {
		if terr := f.ep.Shutdown(tcpip.ShutdownWrite); terr != nil {
			err = tcpError(terr)
			f.abort()
		}
	} else {
		f.abort()
	}
	upErr := g.Wait()
	f.s.bufs.remove(f)
	f.conn.Close()
	f.ep.Close()
	if err == nil {
		err = upErr
	}
	return err
}

// toCluster copies from the container to the cluster until the container's FIN (nil) or an
// error. It holds a copy buffer only while data is in flight.
func (f *tcpFlow) toCluster() error {
	entry, readable := waiter.NewChannelEntry(waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr)
	f.wq.EventRegister(&entry)
	defer f.wq.EventUnregister(&entry)
	var small []byte
	for {
		big := f.s.copyBufs.get()
		var buf []byte
		if big != nil {
			buf = *big
		} else {
			if small == nil {
				small = make([]byte, smallBufSize)
			}
			buf = small
		}
		w := tcpip.SliceWriter(buf)
		res, terr := f.ep.Read(&w, tcpip.ReadOptions{})
		var err error
		switch terr.(type) {
		case nil:
			f.ep.ModerateRecvBuf(res.Count)
			if _, err = f.conn.Write(buf[:res.Count]); err == nil {
				f.s.stats.bytesToCluster.Add(uint64(res.Count))
			}
		case *tcpip.ErrWouldBlock:
		case *tcpip.ErrClosedForReceive:
			err = io.EOF
		default:
			err = tcpError(terr)
		}
		if big != nil {
			f.s.copyBufs.put(big)
		}
		if _, ok := terr.(*tcpip.ErrWouldBlock); ok {
			select {
			case <-readable:
			case <-f.stop:
				return errStopped
			}
			continue
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// fromCluster copies from the cluster to the container until the cluster's EOF (nil) or an
// error. While idle it holds only a small buffer; a read that fills it is continued in a big
// buffer, if one is available, so that the container gets large segments.
func (f *tcpFlow) fromCluster() error {
	small := make([]byte, smallBufSize)
	for {
		n, err := f.conn.Read(small)
		chunk := small[:n]
		var big *[]byte
		if n == len(small) && err == nil {
			if big = f.s.copyBufs.get(); big != nil {
				copy(*big, small)
				var m int
				m, err = f.conn.Read((*big)[n:])
				chunk = (*big)[:n+m]
			}
		}
		if len(chunk) > 0 {
			werr := f.writeEndpoint(chunk)
			if werr != nil {
				err = werr
			} else {
				f.s.stats.bytesFromCluster.Add(uint64(len(chunk)))
			}
		}
		if big != nil {
			f.s.copyBufs.put(big)
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			return nil
		default:
			select {
			case <-f.stop:
				return errStopped
			default:
				return err
			}
		}
	}
}

// writeEndpoint writes all of b to the endpoint, waiting for send-buffer space.
func (f *tcpFlow) writeEndpoint(b []byte) error {
	var (
		r        bytes.Reader
		writable chan struct{}
	)
	for len(b) > 0 {
		r.Reset(b)
		n, terr := f.ep.Write(&r, tcpip.WriteOptions{})
		b = b[n:]
		switch terr.(type) {
		case nil:
		case *tcpip.ErrWouldBlock:
			if writable == nil {
				// Register, then retry once before waiting, so no wakeup is lost.
				var entry waiter.Entry
				entry, writable = waiter.NewChannelEntry(waiter.WritableEvents | waiter.EventHUp | waiter.EventErr)
				f.wq.EventRegister(&entry)
				defer f.wq.EventUnregister(&entry)
				continue
			}
			select {
			case <-writable:
			case <-f.stop:
				return errStopped
			}
		default:
			return tcpError(terr)
		}
	}
	return nil
}

// setBuffers limits the flow's send and receive buffers to n bytes.
func (f *tcpFlow) setBuffers(n int) {
	ops := f.ep.SocketOptions()
	ops.SetReceiveBufferSize(int64(n), true)
	ops.SetSendBufferSize(int64(n), true)
}

// bufferShares divides a budget among the open TCP flows: each flow's buffers are limited to
// budget/flows, rounded down to a power of two (so that shares change, and all flows are
// resized, only when the number of flows doubles or halves) and clamped to [min, max].
type bufferShares struct {
	budget, min, max int

	mu    sync.Mutex
	share int
	flows map[*tcpFlow]struct{}
}

func (b *bufferShares) init(budget, min, max int) {
	b.budget, b.min, b.max = budget, min, max
	b.flows = make(map[*tcpFlow]struct{})
}

func (b *bufferShares) add(f *tcpFlow) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.flows[f] = struct{}{}
	if !b.rebalanceLocked() {
		f.setBuffers(b.share)
	}
}

func (b *bufferShares) remove(f *tcpFlow) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.flows, f)
	b.rebalanceLocked()
}

// rebalanceLocked resizes all flows if the share changed, and reports whether it did.
func (b *bufferShares) rebalanceLocked() bool {
	share := b.shareFor(len(b.flows))
	if share == b.share {
		return false
	}
	b.share = share
	for f := range b.flows {
		f.setBuffers(share)
	}
	return true
}

// shareFor returns the per-flow buffer limit with n flows open.
func (b *bufferShares) shareFor(n int) int {
	if n == 0 {
		return b.max
	}
	q := b.budget / n
	if q < b.min {
		return b.min
	}
	return min(b.max, 1<<(bits.Len(uint(q))-1))
}

// tcpError converts a gVisor error to a Go error that errors.Is understands for the usual cases.
func tcpError(err tcpip.Error) error {
	switch err.(type) {
	case *tcpip.ErrConnectionReset:
		return syscall.ECONNRESET
	case *tcpip.ErrConnectionAborted, *tcpip.ErrAborted:
		return syscall.ECONNABORTED
	case *tcpip.ErrTimeout:
		return syscall.ETIMEDOUT
	case *tcpip.ErrClosedForSend, *tcpip.ErrNotConnected:
		return syscall.EPIPE
	}
	return errors.New(err.String())
}
