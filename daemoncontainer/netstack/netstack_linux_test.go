//go:build linux

package netstack

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sync/errgroup"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const testMTU = 65520

var (
	clientAddr4 = netip.MustParseAddr("192.168.7.2")
	clientAddr6 = netip.MustParseAddr("fd00:7::2")
)

// testNet is a Stack on a channel endpoint, wired to a gVisor "container" stack that plays the
// role of the kernel on the other side of the TUN.
type testNet struct {
	stack  *Stack
	client *stack.Stack
	cancel context.CancelFunc // stops Stack.Run
	done   chan error         // Run's result
}

func newTestNet(tb testing.TB, dialer Dialer, configure func(*Config)) *testNet {
	tb.Helper()
	serverLink := channel.New(1024, testMTU, "")
	clientLink := channel.New(1024, testMTU, "")

	cfg := Config{Dialer: dialer, MTU: testMTU, testLink: serverLink}
	if configure != nil {
		configure(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}

	client := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	if err := client.CreateNIC(1, clientLink); err != nil {
		tb.Fatalf("client CreateNIC: %s", err)
	}
	for _, a := range []netip.Addr{clientAddr4, clientAddr6} {
		proto := ipv4.ProtocolNumber
		if a.Is6() {
			proto = ipv6.ProtocolNumber
		}
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddrFromSlice(a.AsSlice()).WithPrefix()}
		if err := client.AddProtocolAddress(1, pa, stack.AddressProperties{}); err != nil {
			tb.Fatalf("client AddProtocolAddress: %s", err)
		}
	}
	client.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: 1},
		{Destination: header.IPv6EmptySubnet, NIC: 1},
	})

	// Shuttle packets between the two links, like the kernel and the TUN.
	shuttleCtx, stopShuttle := context.WithCancel(context.Background())
	var shuttles errgroup.Group
	shuttle := func(from, to *channel.Endpoint) func() error {
		return func() error {
			for {
				pkt := from.ReadContext(shuttleCtx)
				if pkt == nil {
					return nil
				}
				in := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: pkt.ToBuffer()})
				to.InjectInbound(pkt.NetworkProtocolNumber, in)
				in.DecRef()
				pkt.DecRef()
			}
		}
	}
	shuttles.Go(shuttle(serverLink, clientLink))
	shuttles.Go(shuttle(clientLink, serverLink))

	ctx, cancel := context.WithCancel(context.Background())
	n := &testNet{stack: s, client: client, cancel: cancel, done: make(chan error, 1)}
	go func() { n.done <- s.Run(ctx) }()
	select {
	case <-s.ready:
	case <-time.After(10 * time.Second):
		tb.Fatalf("Run did not attach the link within 10s")
	}
	tb.Cleanup(func() {
		n.stop(tb)
		client.Close()
		client.Wait()
		stopShuttle()
		shuttles.Wait()
		serverLink.Close()
		clientLink.Close()
	})
	return n
}

// stop ends Run and checks that it returns promptly.
func (n *testNet) stop(tb testing.TB) {
	tb.Helper()
	n.cancel()
	select {
	case err, ok := <-n.done:
		if ok && err != nil {
			tb.Errorf("Run: got %v, want nil", err)
		}
		if ok {
			close(n.done)
		}
	case <-time.After(10 * time.Second):
		tb.Fatalf("Run did not return 10s after cancel")
	}
}

func fullAddr(ap netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFromSlice(ap.Addr().AsSlice()), Port: ap.Port()}
}

func netProto(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Is4() {
		return ipv4.ProtocolNumber
	}
	return ipv6.ProtocolNumber
}

// dialContainer opens a TCP connection from the container side.
func (n *testNet) dialContainer(tb testing.TB, dst netip.AddrPort) *gonet.TCPConn {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := gonet.DialContextTCP(ctx, n.client, fullAddr(dst), netProto(dst.Addr()))
	if err != nil {
		tb.Fatalf("dial %v from the container: %v", dst, err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// connectError connects a raw endpoint to dst and returns the handshake's error.
func (n *testNet) connectError(tb testing.TB, dst netip.AddrPort) tcpip.Error {
	tb.Helper()
	var wq waiter.Queue
	ep, err := n.client.NewEndpoint(tcp.ProtocolNumber, netProto(dst.Addr()), &wq)
	if err != nil {
		tb.Fatalf("NewEndpoint: %s", err)
	}
	defer ep.Close()
	entry, ch := waiter.NewChannelEntry(waiter.WritableEvents | waiter.EventHUp | waiter.EventErr)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	switch err := ep.Connect(fullAddr(dst)); err.(type) {
	case *tcpip.ErrConnectStarted:
	default:
		return err
	}
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		tb.Fatalf("connect to %v: no answer after 10s", dst)
	}
	return ep.LastError()
}

// clusterServer is a loopback TCP server standing in for the cluster.
func clusterServer(tb testing.TB, handle func(*net.TCPConn)) netip.AddrPort {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	var g errgroup.Group
	g.Go(func() error {
		for {
			c, err := l.Accept()
			if err != nil {
				return nil
			}
			g.Go(func() error {
				defer c.Close()
				handle(c.(*net.TCPConn))
				return nil
			})
		}
	})
	tb.Cleanup(func() {
		l.Close()
		g.Wait()
	})
	return l.Addr().(*net.TCPAddr).AddrPort()
}

func echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
}

// loopbackDialer dials every TCP flow to tcpAddr and every UDP flow to udpAddr, and records
// the destinations it was asked for.
type loopbackDialer struct {
	tcpAddr, udpAddr netip.AddrPort
	dsts             chan netip.AddrPort
}

func newLoopbackDialer(tcpAddr, udpAddr netip.AddrPort) *loopbackDialer {
	return &loopbackDialer{tcpAddr: tcpAddr, udpAddr: udpAddr, dsts: make(chan netip.AddrPort, 1000)}
}

func (d *loopbackDialer) Dial(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
	select {
	case d.dsts <- dst:
	default:
	}
	var nd net.Dialer
	if network == "udp" {
		return nd.DialContext(ctx, "udp", d.udpAddr.String())
	}
	return nd.DialContext(ctx, "tcp", d.tcpAddr.String())
}

func randomBytes(tb testing.TB, n int) []byte {
	tb.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestTCPEcho(t *testing.T) {
	for _, dst := range []netip.AddrPort{
		netip.MustParseAddrPort("10.96.0.10:80"),
		netip.MustParseAddrPort("[fd00:96::10]:8080"),
	} {
		t.Run(dst.String(), func(t *testing.T) {
			d := newLoopbackDialer(clusterServer(t, echo), netip.AddrPort{})
			n := newTestNet(t, d, nil)
			c := n.dialContainer(t, dst)
			if got := <-d.dsts; got != dst {
				t.Errorf("dialed %v, want %v", got, dst)
			}

			want := randomBytes(t, 4<<20)
			var g errgroup.Group
			g.Go(func() error {
				if _, err := c.Write(want); err != nil {
					return err
				}
				return c.CloseWrite()
			})
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("read echo: %v", err)
			}
			if err := g.Wait(); err != nil {
				t.Fatalf("write: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("echo: got %d bytes, want the %d bytes sent", len(got), len(want))
			}
			st := n.stack.Stats()
			if st.TCPTotal != 1 || st.BytesToCluster != uint64(len(want)) || st.BytesFromCluster != uint64(len(want)) {
				t.Errorf("stats: got %+v, want 1 flow and %d bytes each way", st, len(want))
			}
		})
	}
}

func TestTCPEchoWithoutCopyBuffers(t *testing.T) {
	d := newLoopbackDialer(clusterServer(t, echo), netip.AddrPort{})
	n := newTestNet(t, d, nil)
	n.stack.copyBufs.inUse.Store(maxCopyBuffers) // exhausted: flows copy through small buffers
	c := n.dialContainer(t, netip.MustParseAddrPort("10.96.0.10:80"))
	want := randomBytes(t, 1<<20)
	var g errgroup.Group
	g.Go(func() error {
		if _, err := c.Write(want); err != nil {
			return err
		}
		return c.CloseWrite()
	})
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("echo: got %d bytes, want the %d bytes sent", len(got), len(want))
	}
	if got := n.stack.copyBufs.inUse.Load(); got != maxCopyBuffers {
		t.Errorf("copy buffers in use: got %d, want %d (none taken beyond the limit)", got, maxCopyBuffers)
	}
}

func TestTCPRefusedDialAnswersRST(t *testing.T) {
	dialer := DialerFunc(func(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
		return nil, fmt.Errorf("tunnel: dial %v: %w", dst, syscall.ECONNREFUSED)
	})
	n := newTestNet(t, dialer, nil)
	for _, dst := range []netip.AddrPort{
		netip.MustParseAddrPort("10.96.0.10:81"),
		netip.MustParseAddrPort("[fd00:96::10]:81"),
	} {
		err := n.connectError(t, dst)
		if _, ok := err.(*tcpip.ErrConnectionRefused); !ok {
			t.Errorf("connect %v: got %v, want connection refused", dst, err)
		}
	}
	if got := n.stack.Stats().TCPRefused; got != 2 {
		t.Errorf("TCPRefused: got %d, want 2", got)
	}
}

func TestTCPDeniedDialAnswersRSTAndWarns(t *testing.T) {
	const msg = "dial 169.254.169.254:80 refused by the traffic-manager: allow it with the chart value tunnel.allowCIDRs"
	dialer := DialerFunc(func(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
		return nil, fmt.Errorf("%s: %w", msg, syscall.EACCES)
	})
	var logs bytes.Buffer
	var mu sync.Mutex
	n := newTestNet(t, dialer, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&lockedWriter{mu: &mu, w: &logs}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	err := n.connectError(t, netip.MustParseAddrPort("169.254.169.254:80"))
	if _, ok := err.(*tcpip.ErrConnectionRefused); !ok {
		t.Errorf("connect: got %v, want connection refused", err)
	}
	if got := n.stack.Stats().TCPRefused; got != 1 {
		t.Errorf("TCPRefused: got %d, want 1", got)
	}
	// The RST may reach the client before the warning is written.
	logged := func() (string, bool) {
		mu.Lock()
		defer mu.Unlock()
		return logs.String(), strings.Contains(logs.String(), "tunnel.allowCIDRs")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, ok := logged()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("log: got %q, want a warning with the policy's message", got)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestTCPUnreachableDialAnswersICMP(t *testing.T) {
	dialer := DialerFunc(func(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
		return nil, fmt.Errorf("tunnel: dial %v: %w", dst, syscall.EHOSTUNREACH)
	})
	n := newTestNet(t, dialer, nil)
	err := n.connectError(t, netip.MustParseAddrPort("10.96.0.11:80"))
	if _, ok := err.(*tcpip.ErrHostUnreachable); !ok {
		t.Errorf("connect: got %v, want host unreachable", err)
	}

	// gVisor ignores ICMPv6 "address unreachable" (Linux maps it to EHOSTUNREACH, which the
	// TUN integration test checks): check that the client received it.
	var wq waiter.Queue
	ep, terr := n.client.NewEndpoint(tcp.ProtocolNumber, ipv6.ProtocolNumber, &wq)
	if terr != nil {
		t.Fatalf("NewEndpoint: %s", terr)
	}
	defer ep.Close()
	ep.Connect(fullAddr(netip.MustParseAddrPort("[fd00:96::11]:80")))
	unreachable := n.client.Stats().ICMP.V6.PacketsReceived.DstUnreachable
	waitFor(t, func() bool { return unreachable.Value() > 0 }, "the client receives an ICMPv6 unreachable")
	if got := n.client.Stats().ICMP.V6.PacketsReceived.Invalid.Value(); got != 0 {
		t.Errorf("invalid ICMPv6 packets: got %d, want 0", got)
	}
	if got := n.stack.Stats().TCPUnreachable; got < 2 {
		t.Errorf("TCPUnreachable: got %d, want >= 2", got)
	}
}

func TestTCPHalfClose(t *testing.T) {
	t.Run("container closes first", func(t *testing.T) {
		// The server reads until EOF, then answers with what it got, reversed, and closes.
		addr := clusterServer(t, func(c *net.TCPConn) {
			b, err := io.ReadAll(c)
			if err != nil {
				return
			}
			for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
				b[i], b[j] = b[j], b[i]
			}
			c.Write(b)
		})
		n := newTestNet(t, newLoopbackDialer(addr, netip.AddrPort{}), nil)
		c := n.dialContainer(t, netip.MustParseAddrPort("10.96.0.12:80"))
		if _, err := c.Write([]byte("request")); err != nil {
			t.Fatalf("write: %v", err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatalf("CloseWrite: %v", err)
		}
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if string(got) != "tseuqer" {
			t.Errorf("response: got %q, want %q", got, "tseuqer")
		}
	})
	t.Run("cluster closes first", func(t *testing.T) {
		// The server greets, closes its side, then reads the client's answer to EOF.
		answers := make(chan string, 1)
		addr := clusterServer(t, func(c *net.TCPConn) {
			c.Write([]byte("hello"))
			c.CloseWrite()
			b, _ := io.ReadAll(c)
			answers <- string(b)
		})
		n := newTestNet(t, newLoopbackDialer(addr, netip.AddrPort{}), nil)
		c := n.dialContainer(t, netip.MustParseAddrPort("10.96.0.12:80"))
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if string(got) != "hello" {
			t.Errorf("greeting: got %q, want %q", got, "hello")
		}
		// The container can still send after the cluster's FIN.
		if _, err := c.Write([]byte("bye")); err != nil {
			t.Fatalf("write after FIN: %v", err)
		}
		c.CloseWrite()
		select {
		case a := <-answers:
			if a != "bye" {
				t.Errorf("server read: got %q, want %q", a, "bye")
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("server did not get EOF after the container's FIN")
		}
	})
}

func TestTCPClusterResetResetsContainer(t *testing.T) {
	addr := clusterServer(t, func(c *net.TCPConn) {
		io.ReadFull(c, make([]byte, 1))
		c.Write([]byte("x"))
		c.SetLinger(0) // RST on close
	})
	n := newTestNet(t, newLoopbackDialer(addr, netip.AddrPort{}), nil)
	c := n.dialContainer(t, netip.MustParseAddrPort("10.96.0.13:80"))
	if _, err := c.Write([]byte("a")); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, 10)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var err error
	for err == nil {
		_, err = c.Read(buf)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read after the cluster reset: got %v, want a connection reset", err)
	}
	waitFor(t, func() bool { return n.stack.Stats().TCPOpen == 0 }, "the flow closes")
}

func TestTCPManyConnections(t *testing.T) {
	d := newLoopbackDialer(clusterServer(t, echo), netip.AddrPort{})
	n := newTestNet(t, d, nil)
	const conns = 200
	var g errgroup.Group
	g.SetLimit(50)
	for i := range conns {
		g.Go(func() error {
			dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, byte(i / 250), byte(1 + i%250)}), 80)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := gonet.DialContextTCP(ctx, n.client, fullAddr(dst), ipv4.ProtocolNumber)
			if err != nil {
				return fmt.Errorf("dial %v: %w", dst, err)
			}
			defer c.Close()
			msg := []byte(dst.String())
			if _, err := c.Write(msg); err != nil {
				return err
			}
			c.CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil {
				return err
			}
			if !bytes.Equal(got, msg) {
				return fmt.Errorf("echo: got %q, want %q", got, msg)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := n.stack.Stats().TCPTotal; got != conns {
		t.Errorf("TCPTotal: got %d, want %d", got, conns)
	}
	waitFor(t, func() bool { return n.stack.Stats().TCPOpen == 0 }, "all flows close")
}

func TestTCPPendingLimitDropsSYN(t *testing.T) {
	release := make(chan struct{})
	var dials atomic.Int32
	dialer := DialerFunc(func(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
		dials.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil, syscall.ECONNREFUSED
	})
	n := newTestNet(t, dialer, func(c *Config) { c.MaxPendingTCP = 1 })
	errs := make(chan tcpip.Error, 2)
	for _, dst := range []string{"10.96.0.20:80", "10.96.0.21:80"} {
		go func() { errs <- n.connectError(t, netip.MustParseAddrPort(dst)) }()
	}
	waitFor(t, func() bool { return n.stack.Stats().TCPDropped > 0 }, "a SYN is dropped")
	if got := dials.Load(); got != 1 {
		t.Errorf("dials while one is pending: got %d, want 1", got)
	}
	close(release)
	for range 2 {
		// The dropped SYN is retransmitted after ~1s and refused in turn.
		if err := <-errs; err == nil {
			t.Errorf("connect: got nil error, want refused")
		}
	}
}

func TestDialTimeoutIsSilent(t *testing.T) {
	var dials atomic.Int32
	dialer := DialerFunc(func(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
		dials.Add(1)
		<-ctx.Done()
		return nil, fmt.Errorf("tunnel: %w", ctx.Err())
	})
	n := newTestNet(t, dialer, func(c *Config) { c.DialTimeout = 50 * time.Millisecond })
	var wq waiter.Queue
	ep, err := n.client.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if err != nil {
		t.Fatalf("NewEndpoint: %s", err)
	}
	defer ep.Close()
	ep.Connect(fullAddr(netip.MustParseAddrPort("10.96.0.30:80")))
	// The client retransmits its SYN after 1s, which dials again; it never sees an RST.
	waitFor(t, func() bool { return dials.Load() >= 2 }, "the retransmitted SYN dials again")
	if st := ep.State(); tcp.EndpointState(st) != tcp.StateSynSent {
		t.Errorf("client state: got %v, want SYN-SENT", tcp.EndpointState(st))
	}
	if got := n.stack.Stats().TCPDialFailed; got < 1 {
		t.Errorf("TCPDialFailed: got %d, want >= 1", got)
	}
}

// udpEchoServer echoes datagrams on loopback.
func udpEchoServer(tb testing.TB) netip.AddrPort {
	tb.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listen udp: %v", err)
	}
	var g errgroup.Group
	g.Go(func() error {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return nil
			}
			pc.WriteTo(buf[:n], from)
		}
	})
	tb.Cleanup(func() {
		pc.Close()
		g.Wait()
	})
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

func TestUDPRoundTrip(t *testing.T) {
	for _, dst := range []netip.AddrPort{
		netip.MustParseAddrPort("10.96.0.10:53"),
		netip.MustParseAddrPort("[fd00:96::10]:53"),
	} {
		t.Run(dst.String(), func(t *testing.T) {
			d := newLoopbackDialer(netip.AddrPort{}, udpEchoServer(t))
			n := newTestNet(t, d, nil)
			for flow := range 2 { // two 5-tuples: two flows
				raddr := fullAddr(dst)
				c, err := gonet.DialUDP(n.client, nil, &raddr, netProto(dst.Addr()))
				if err != nil {
					t.Fatalf("DialUDP: %v", err)
				}
				defer c.Close()
				for _, size := range []int{1, 512, 1400, 9000, 60000} {
					want := randomBytes(t, size)
					if _, err := c.Write(want); err != nil {
						t.Fatalf("write: %v", err)
					}
					c.SetReadDeadline(time.Now().Add(10 * time.Second))
					got := make([]byte, 65535)
					m, err := c.Read(got)
					if err != nil {
						t.Fatalf("flow %d: read %d-byte datagram: %v", flow, size, err)
					}
					if !bytes.Equal(got[:m], want) {
						t.Errorf("flow %d: got a %d-byte datagram, want the %d bytes sent", flow, m, size)
					}
				}
			}
			if got := <-d.dsts; got != dst {
				t.Errorf("dialed %v, want %v", got, dst)
			}
			if got := n.stack.Stats().UDPTotal; got != 2 {
				t.Errorf("UDPTotal: got %d, want 2", got)
			}
		})
	}
}

func TestUDPIdleTimeoutClosesFlow(t *testing.T) {
	d := newLoopbackDialer(netip.AddrPort{}, udpEchoServer(t))
	n := newTestNet(t, d, func(c *Config) { c.UDPIdleTimeout = 100 * time.Millisecond })
	raddr := fullAddr(netip.MustParseAddrPort("10.96.0.10:53"))
	c, err := gonet.DialUDP(n.client, nil, &raddr, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("DialUDP: %v", err)
	}
	defer c.Close()
	roundTrip := func() {
		t.Helper()
		c.Write([]byte("ping"))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 10)); err != nil {
			t.Fatalf("read: %v", err)
		}
	}
	roundTrip()
	waitFor(t, func() bool { return n.stack.Stats().UDPOpen == 0 }, "the idle flow closes")
	// The same 5-tuple opens a new flow.
	roundTrip()
	if got := n.stack.Stats().UDPTotal; got != 2 {
		t.Errorf("UDPTotal: got %d, want 2", got)
	}
}

func TestUDPRefusedDialAnswersICMP(t *testing.T) {
	dialer := DialerFunc(func(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
		return nil, syscall.ECONNREFUSED
	})
	n := newTestNet(t, dialer, nil)
	var wq waiter.Queue
	ep, terr := n.client.NewEndpoint(udp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		t.Fatalf("NewEndpoint: %s", terr)
	}
	defer ep.Close()
	if terr := ep.Connect(fullAddr(netip.MustParseAddrPort("10.96.0.10:53"))); terr != nil {
		t.Fatalf("Connect: %s", terr)
	}
	entry, ch := waiter.NewChannelEntry(waiter.EventErr | waiter.ReadableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	if _, terr := ep.Write(bytes.NewReader([]byte("q")), tcpip.WriteOptions{}); terr != nil {
		t.Fatalf("Write: %s", terr)
	}
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("no ICMP error 10s after the refused dial")
	}
	if err, ok := ep.LastError().(*tcpip.ErrConnectionRefused); !ok {
		t.Errorf("UDP error: got %v, want connection refused", err)
	}
}

func TestShutdownResetsOpenFlows(t *testing.T) {
	d := newLoopbackDialer(clusterServer(t, echo), udpEchoServer(t))
	n := newTestNet(t, d, nil)
	var conns []*gonet.TCPConn
	for i := range 5 {
		c := n.dialContainer(t, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, 1, byte(i + 1)}), 80))
		c.Write([]byte("x"))
		io.ReadFull(c, make([]byte, 1))
		conns = append(conns, c)
	}
	raddr := fullAddr(netip.MustParseAddrPort("10.96.0.10:53"))
	u, err := gonet.DialUDP(n.client, nil, &raddr, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("DialUDP: %v", err)
	}
	defer u.Close()
	u.Write([]byte("x"))
	u.SetReadDeadline(time.Now().Add(10 * time.Second))
	u.Read(make([]byte, 1))
	if st := n.stack.Stats(); st.TCPOpen != 5 || st.UDPOpen != 1 {
		t.Fatalf("open flows: got %d TCP, %d UDP, want 5 and 1", st.TCPOpen, st.UDPOpen)
	}

	n.stop(t)
	if st := n.stack.Stats(); st.TCPOpen != 0 || st.UDPOpen != 0 {
		t.Errorf("open flows after Run: got %d TCP, %d UDP, want 0", st.TCPOpen, st.UDPOpen)
	}
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("conn %d after shutdown: got %v, want a reset", i, err)
		}
	}
}

// waitFor polls cond until it holds or 10s passed.
func waitFor(tb testing.TB, cond func() bool, what string) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestBufferShares(t *testing.T) {
	var b bufferShares
	b.init(64<<20, 128<<10, 4<<20)
	for _, tc := range []struct{ flows, want int }{
		{0, 4 << 20},
		{1, 4 << 20},
		{16, 4 << 20},
		{17, 2 << 20},
		{100, 512 << 10},
		{256, 256 << 10},
		{512, 128 << 10},
		{1000, 128 << 10},
		{1 << 30, 128 << 10},
	} {
		if got := b.shareFor(tc.flows); got != tc.want {
			t.Errorf("share for %d flows: got %d, want %d", tc.flows, got, tc.want)
		}
	}
}
