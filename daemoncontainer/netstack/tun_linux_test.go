//go:build linux

package netstack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/tp-run/tp/daemoncontainer/tun"
	"github.com/tp-run/tp/daemoncontainer/tun/tuntest"
)

// The cluster networks routed into the TUN in these tests.
var tunRoutes = []netip.Prefix{
	netip.MustParsePrefix("10.96.0.0/12"),
	netip.MustParsePrefix("fd00:96::/108"),
}

// tunNet is a Stack serving a real TUN device in a throwaway network namespace. Processes in
// the namespace (here: sockets created with ns.Do) reach the cluster through it; the Dialer
// and the "cluster" servers live in the test's own namespace.
type tunNet struct {
	ns    *tuntest.Netns
	stack *Stack
}

func newTUNNet(tb testing.TB, dialer Dialer) *tunNet {
	tb.Helper()
	ns := tuntest.NewNetns(tb)
	var dev *tun.Device
	if err := ns.Do(func() error {
		var err error
		dev, err = tun.Open("tp0", 0, tunRoutes)
		return err
	}); err != nil {
		tb.Fatalf("open TUN: %v", err)
	}
	s, err := New(Config{Device: dev, MTU: dev.MTU(), Dialer: dialer})
	if err != nil {
		dev.Close()
		tb.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				tb.Errorf("Run: got %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			tb.Errorf("Run did not return 10s after cancel")
		}
		dev.Close()
	})
	select {
	case <-s.ready:
	case <-time.After(10 * time.Second):
		tb.Fatalf("Run did not attach the TUN within 10s")
	}
	return &tunNet{ns: ns, stack: s}
}

// dial connects from inside the namespace, through the TUN.
func (n *tunNet) dial(tb testing.TB, network, addr string) (net.Conn, error) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return n.ns.DialContext(ctx, network, addr)
}

func TestTUNTCP(t *testing.T) {
	d := newLoopbackDialer(clusterServer(t, echo), netip.AddrPort{})
	n := newTUNNet(t, d)
	for _, addr := range []string{"10.96.0.10:80", "[fd00:96::10]:80"} {
		t.Run(addr, func(t *testing.T) {
			c, err := n.dial(t, "tcp", addr)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer c.Close()
			want := randomBytes(t, 16<<20)
			var g errgroup.Group
			g.Go(func() error {
				if _, err := c.Write(want); err != nil {
					return err
				}
				return c.(*net.TCPConn).CloseWrite() // half-close: the echo still comes back
			})
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if err := g.Wait(); err != nil {
				t.Fatalf("write: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("echo: got %d bytes, want the %d bytes sent", len(got), len(want))
			}
		})
	}
}

func TestTUNDialErrors(t *testing.T) {
	dialer := DialerFunc(func(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
		switch dst.Port() {
		case 1:
			return nil, fmt.Errorf("tunnel: %w", syscall.ECONNREFUSED)
		default:
			return nil, fmt.Errorf("tunnel: %w", syscall.EHOSTUNREACH)
		}
	})
	n := newTUNNet(t, dialer)
	for _, tc := range []struct {
		addr string
		want error
	}{
		{"10.96.0.10:1", syscall.ECONNREFUSED},
		{"[fd00:96::10]:1", syscall.ECONNREFUSED},
		{"10.96.0.10:2", syscall.EHOSTUNREACH},
		{"[fd00:96::10]:2", syscall.EHOSTUNREACH},
	} {
		start := time.Now()
		c, err := n.dial(t, "tcp", tc.addr)
		if err == nil {
			c.Close()
		}
		if !errors.Is(err, tc.want) {
			t.Errorf("dial %s: got %v, want %v", tc.addr, err, tc.want)
		}
		if elapsed := time.Since(start); elapsed > 2*time.Second {
			t.Errorf("dial %s: answered after %v, want at once (no SYN retransmission)", tc.addr, elapsed)
		}
	}
	// UDP: the first datagram's refused dial comes back as ICMP port unreachable.
	for _, addr := range []string{"10.96.0.10:1", "[fd00:96::10]:1"} {
		c, err := n.dial(t, "udp", addr)
		if err != nil {
			t.Fatalf("dial udp %s: %v", addr, err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("q")); err != nil {
			t.Fatalf("write udp %s: %v", addr, err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Read(make([]byte, 10))
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("read udp %s: got %v, want %v", addr, err, syscall.ECONNREFUSED)
		}
	}
}

func TestTUNUDP(t *testing.T) {
	n := newTUNNet(t, newLoopbackDialer(netip.AddrPort{}, udpEchoServer(t)))
	for _, addr := range []string{"10.96.0.10:53", "[fd00:96::10]:53"} {
		c, err := n.dial(t, "udp", addr)
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		defer c.Close()
		for _, size := range []int{1, 1400, 65000} {
			want := randomBytes(t, size)
			if _, err := c.Write(want); err != nil {
				t.Fatalf("write: %v", err)
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			got := make([]byte, 65535)
			m, err := c.Read(got)
			if err != nil {
				t.Fatalf("%s: read the echo of %d bytes: %v", addr, size, err)
			}
			if !bytes.Equal(got[:m], want) {
				t.Errorf("%s: got a %d-byte datagram, want the %d bytes sent", addr, m, size)
			}
		}
	}
}
