//go:build linux

package daemon

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
)

// clusterDNS sends the DNS server's cluster queries to the cluster DNS
// service through the tunnel. It keeps a few DNS-over-TCP connections open
// and reuses them: a cold lookup then costs one round trip through the
// port-forward instead of two (opening a tunnel flow per query is the other).
type clusterDNS struct {
	server netip.AddrPort
	dial   func(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error)

	mu   sync.Mutex
	idle []*mdns.Conn
}

// maxIdleDNSConns bounds the kept connections (CoreDNS closes idle ones
// itself after a while; a stale one is replaced transparently).
const maxIdleDNSConns = 8

func (c *clusterDNS) Exchange(ctx context.Context, m *mdns.Msg) (*mdns.Msg, error) {
	for attempt := 0; ; attempt++ {
		co, reused, err := c.conn(ctx)
		if err != nil {
			return nil, err
		}
		resp, err := c.exchange(ctx, co, m)
		if err == nil {
			c.release(co)
			return resp, nil
		}
		co.Close()
		if !reused || attempt > 0 || ctx.Err() != nil {
			return nil, err
		}
		// A kept connection went stale (closed by the server, or the tunnel
		// reconnected): try once more on a fresh one.
	}
}

func (c *clusterDNS) exchange(ctx context.Context, co *mdns.Conn, m *mdns.Msg) (*mdns.Msg, error) {
	stop := context.AfterFunc(ctx, func() { _ = co.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		_ = co.SetDeadline(dl)
	}
	if err := co.WriteMsg(m); err != nil {
		return nil, err
	}
	for {
		resp, err := co.ReadMsg()
		if err != nil {
			return nil, err
		}
		if resp.Id == m.Id {
			_ = co.SetDeadline(time.Time{})
			return resp, nil
		}
	}
}

func (c *clusterDNS) conn(ctx context.Context) (co *mdns.Conn, reused bool, err error) {
	c.mu.Lock()
	if n := len(c.idle); n > 0 {
		co = c.idle[n-1]
		c.idle = c.idle[:n-1]
		c.mu.Unlock()
		return co, true, nil
	}
	c.mu.Unlock()
	conn, err := c.dial(ctx, "tcp", c.server)
	if err != nil {
		return nil, false, err
	}
	return &mdns.Conn{Conn: conn}, false, nil
}

func (c *clusterDNS) release(co *mdns.Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.idle) < maxIdleDNSConns {
		c.idle = append(c.idle, co)
		return
	}
	co.Close()
}

// close closes the kept connections.
func (c *clusterDNS) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, co := range c.idle {
		co.Close()
	}
	c.idle = nil
}
