//go:build linux

package netstack

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// handleUDPPacket sees the first datagram of each new 5-tuple (later ones go to the endpoint
// it creates). It runs on the stack's packet path, so the dial happens in the flow's goroutine
// while the endpoint queues further datagrams.
func (s *Stack) handleUDPPacket(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	quote := icmpQuote(pkt)
	var wq waiter.Queue
	ep, terr := udp.NewForwarderRequest(s.ip, id, pkt).CreateEndpoint(&wq)
	if terr != nil {
		s.log.Debug("udp endpoint", "error", terr)
		return true
	}
	f := &udpFlow{s: s, id: id, ep: ep, wq: &wq, quote: quote, stop: make(chan struct{})}
	if !s.flows.enter() {
		ep.Close()
		return true
	}
	go func() {
		defer s.flows.leave()
		f.run()
	}()
	return true
}

// udpFlow relays the datagrams of one 5-tuple until it has been idle for UDPIdleTimeout.
type udpFlow struct {
	s     *Stack
	id    stack.TransportEndpointID
	ep    tcpip.Endpoint
	wq    *waiter.Queue
	quote []byte // the first datagram's start, for an ICMP error if the dial fails

	mu   sync.Mutex
	conn net.Conn // set once dialed
	stop chan struct{}
	once sync.Once
	last atomic.Int64 // now() of the last datagram
}

func (f *udpFlow) abort() {
	f.once.Do(func() {
		close(f.stop)
		f.mu.Lock()
		if f.conn != nil {
			f.conn.Close()
		}
		f.mu.Unlock()
		f.ep.Abort()
	})
}

func (f *udpFlow) run() {
	s := f.s
	defer f.ep.Close()
	src := netip.AddrPortFrom(netipAddr(f.id.RemoteAddress), f.id.RemotePort)
	dst := netip.AddrPortFrom(netipAddr(f.id.LocalAddress), f.id.LocalPort)
	if !s.flows.add(f) {
		return
	}
	defer s.flows.remove(f)
	conn, err := s.dial("udp", dst)
	if err != nil {
		s.stats.udpDialFailed.Add(1)
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			s.sendUnreachable(f.quote, true)
		case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
			s.sendUnreachable(f.quote, false)
		case errors.Is(err, syscall.EACCES):
			// The traffic-manager's dial policy (see rejectTCP).
			s.sendUnreachable(f.quote, true)
			s.log.Warn("udp flow refused by the traffic-manager's policy", "src", src, "dst", dst, "error", err)
			return
		}
		s.log.Debug("udp dial failed", "src", src, "dst", dst, "error", err)
		return
	}
	f.mu.Lock()
	f.conn = conn
	f.mu.Unlock()
	select {
	case <-f.stop: // aborted while dialing
		conn.Close()
		return
	default:
	}
	f.quote = nil
	s.stats.udpTotal.Add(1)
	s.stats.udpOpen.Add(1)
	f.last.Store(int64(now()))

	var g errgroup.Group
	g.Go(func() error { defer f.abort(); return f.toCluster() })
	g.Go(func() error { defer f.abort(); return f.fromCluster() })
	f.expire(s.cfg.UDPIdleTimeout)
	err = g.Wait()
	conn.Close()
	// Unregister the endpoint before the flow counts as closed: the next datagram of the
	// 5-tuple then opens a new flow.
	f.ep.Close()
	s.stats.udpOpen.Add(-1)
	if err != nil && !errors.Is(err, errStopped) {
		s.log.Debug("udp flow ended", "src", src, "dst", dst, "error", err)
	}
}

// expire aborts the flow once no datagram passed for idle, or returns when it is aborted.
func (f *udpFlow) expire(idle time.Duration) {
	t := time.NewTimer(idle)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
			since := now() - time.Duration(f.last.Load())
			if since >= idle {
				f.abort()
				return
			}
			t.Reset(idle - since)
		}
	}
}

func (f *udpFlow) toCluster() error {
	entry, readable := waiter.NewChannelEntry(waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr)
	f.wq.EventRegister(&entry)
	defer f.wq.EventUnregister(&entry)
	for {
		buf := getBuf()
		w := tcpip.SliceWriter(*buf)
		res, terr := f.ep.Read(&w, tcpip.ReadOptions{})
		switch terr.(type) {
		case nil:
			f.last.Store(int64(now()))
			_, err := f.conn.Write((*buf)[:res.Count])
			putBuf(buf)
			if err != nil {
				return err
			}
			f.s.stats.bytesToCluster.Add(uint64(res.Count))
		case *tcpip.ErrWouldBlock:
			putBuf(buf)
			select {
			case <-readable:
			case <-f.stop:
				return errStopped
			}
		default:
			putBuf(buf)
			select {
			case <-f.stop:
				return errStopped
			default:
				return tcpError(terr)
			}
		}
	}
}

func (f *udpFlow) fromCluster() error {
	buf := getBuf()
	defer putBuf(buf)
	var r bytes.Reader
	for {
		n, err := f.conn.Read(*buf)
		if err != nil {
			select {
			case <-f.stop:
				return errStopped
			default:
				return err
			}
		}
		f.last.Store(int64(now()))
		r.Reset((*buf)[:n])
		if _, terr := f.ep.Write(&r, tcpip.WriteOptions{}); terr != nil {
			if _, ok := terr.(*tcpip.ErrWouldBlock); ok {
				continue // UDP: drop the datagram
			}
			return tcpError(terr)
		}
		f.s.stats.bytesFromCluster.Add(uint64(n))
	}
}
