package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"github.com/tp-run/tp/tunnel"
)

// errNoSession: the agent has no session with the traffic-manager, so it
// cannot reach any intercept's client.
var errNoSession = errors.New("no session with the traffic-manager")

// toApp splices c to the app (the fast path: the kernel moves the bytes
// with splice(2) between the two sockets). A refused dial resets c, as the
// app's closed port would.
func (a *agent) toApp(ctx context.Context, p Port, c net.Conn) {
	app, err := a.dialApp(ctx, "tcp", a.appAddr(p.ContainerPort))
	if err != nil {
		a.log.Debug("cannot reach the app; resetting the connection", "containerPort", p.ContainerPort,
			"client", c.RemoteAddr(), "err", err)
		reset(c)
		return
	}
	spliceConns(ctx, c, app)
}

// dialApp dials the app at addr (127.0.0.1:containerPort). An app that
// refuses there may listen on the pod IP only: then it dials the same port
// on the pod IP, which (being locally generated) no redirect rule touches.
func (a *agent) dialApp(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: a.dialTimeout}
	c, err := d.DialContext(ctx, network, addr)
	if err == nil || !errors.Is(err, syscall.ECONNREFUSED) {
		return c, err
	}
	ap, perr := netip.ParseAddrPort(addr)
	if perr != nil || !ap.Addr().IsLoopback() || ap.Addr() == a.cfg.PodIP {
		return nil, err
	}
	c, err2 := d.DialContext(ctx, network, netip.AddrPortFrom(a.cfg.PodIP, ap.Port()).String())
	if err2 != nil {
		return nil, err // the loopback error says it best
	}
	return c, nil
}

// toClient splices c to a global intercept's client through a tunnel flow.
// When the flow cannot be opened (the owner is away), the app serves c:
// nothing was sent yet (docs/intercepts.md, "While the owner is away").
func (a *agent) toClient(ctx context.Context, p Port, ic *intercept, c net.Conn) {
	log := a.log.With("intercept", ic.id, "client", c.RemoteAddr())
	ic, ok := a.awaitOwner(ctx, ic)
	if !ok {
		if ctx.Err() != nil {
			reset(c)
			return
		}
		log.Debug("the intercept's owner is away; the app serves the connection", "grace", a.ownerGrace)
		defer a.trackAppConn(p.ContainerPort, c)() // reset when the owner is back
		a.toApp(ctx, p, c)
		return
	}
	flow, err := a.dialIntercept(ctx, p, ic, addrPortOf(c.RemoteAddr()))
	if err != nil {
		if ctx.Err() != nil {
			reset(c)
			return
		}
		log.Warn("cannot reach the intercept's client; the app serves the connection", "err", err)
		defer a.trackAppConn(p.ContainerPort, c)() // reset when the owner is back
		a.toApp(ctx, p, c)
		return
	}
	log.Debug("connection sent to the intercept's client")
	if err := tunnel.Splice(ctx, flow, c); err != nil && ctx.Err() == nil {
		log.Debug("intercepted connection ended", "err", err)
	}
}

// dialIntercept opens a tunnel flow to an intercept's client: the manager
// pairs it, by its pairing id, with the flow the client opens when it
// accepted the DialRequest.
func (a *agent) dialIntercept(ctx context.Context, p Port, ic *intercept, src netip.AddrPort) (tunnel.Conn, error) {
	d := a.dialer.Load()
	if d == nil {
		return nil, errNoSession
	}
	ctx, cancel := context.WithTimeout(ctx, a.dialTimeout)
	defer cancel()
	return d.DialFlow(ctx, tunnel.Flow{
		Network:     "tcp",
		Destination: netip.AddrPortFrom(a.cfg.PodIP, uint16(p.ContainerPort)),
		Source:      src,
		PairingID:   ic.id + "/" + randomID(),
	})
}

func randomID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// reset closes c abortively (a TCP RST).
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// spliceConns copies both ways between two TCP connections with half-close
// until both directions end, then closes both. A failed direction resets
// both connections; ctx ending closes them.
func spliceConns(ctx context.Context, a, b net.Conn) {
	stop := context.AfterFunc(ctx, func() {
		reset(a)
		reset(b)
	})
	defer stop()
	var wg sync.WaitGroup
	var failOnce sync.Once
	fail := func() {
		failOnce.Do(func() {
			reset(a)
			reset(b)
		})
	}
	half := func(dst, src net.Conn) {
		defer wg.Done()
		// *net.TCPConn's ReadFrom uses splice(2) on Linux.
		if _, err := io.Copy(dst, src); err != nil {
			fail()
			return
		}
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			if cw.CloseWrite() == nil {
				return
			}
		}
		fail()
	}
	wg.Add(2)
	go half(a, b)
	go half(b, a)
	wg.Wait()
	a.Close()
	b.Close()
}
