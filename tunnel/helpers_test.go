package tunnel

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

const testSession = "session-1"

// testEnv is a Tunnel server and a Dialer talking gRPC over loopback TCP.
type testEnv struct {
	server *Server
	cc     *grpc.ClientConn
	dialer *Dialer
}

type envConfig struct {
	dial      DialFunc
	authorize Authorizer
}

func allowSession(_ context.Context, id string) error {
	if id != testSession {
		return errors.New("unexpected session: " + id)
	}
	return nil
}

func testLogger(tb testing.TB) *slog.Logger {
	tb.Helper()
	if os.Getenv("TUNNEL_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newEnv starts a gRPC server with the Tunnel service on loopback and
// returns a Dialer connected to it; everything stops at cleanup.
func newEnv(tb testing.TB, cfg envConfig) *testEnv {
	tb.Helper()
	if cfg.dial == nil {
		cfg.dial = (&net.Dialer{}).DialContext
	}
	if cfg.authorize == nil {
		cfg.authorize = allowSession
	}
	srv, err := NewServer(cfg.dial, cfg.authorize, testLogger(tb))
	if err != nil {
		tb.Fatalf("NewServer: %v", err)
	}
	gs := grpc.NewServer(ServerOptions()...)
	srv.Register(gs)
	lis := listenTCP(tb)
	serveDone := make(chan struct{})
	go func() {
		defer close(serveDone)
		gs.Serve(lis)
	}()
	tb.Cleanup(func() {
		gs.Stop()
		<-serveDone
	})
	cc := newClientConn(tb, lis.Addr().String())
	return &testEnv{server: srv, cc: cc, dialer: NewDialer(cc, testSession, testLogger(tb))}
}

func newClientConn(tb testing.TB, target string) *grpc.ClientConn {
	tb.Helper()
	cc, err := grpc.NewClient(target, append(DialOptions(),
		grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		tb.Fatalf("grpc.NewClient: %v", err)
	}
	tb.Cleanup(func() { cc.Close() })
	return cc
}

func listenTCP(tb testing.TB) net.Listener {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	tb.Cleanup(func() { lis.Close() })
	return lis
}

// serveTCP accepts connections on a loopback listener and runs handle for
// each; it returns the listener's address. Cleanup closes the listener and
// open connections and waits for the handlers.
func serveTCP(tb testing.TB, handle func(*net.TCPConn)) netip.AddrPort {
	tb.Helper()
	lis := listenTCP(tb)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	tb.Cleanup(func() {
		lis.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return lis.Addr().(*net.TCPAddr).AddrPort()
}

// echo copies a connection back to itself and half-closes at EOF.
func echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
	io.Copy(io.Discard, c)
}

// refusedAddr returns a loopback address where nothing listens.
func refusedAddr(tb testing.TB) netip.AddrPort {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	ap := lis.Addr().(*net.TCPAddr).AddrPort()
	lis.Close()
	return ap
}

func testContext(tb testing.TB) context.Context {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

func dial(tb testing.TB, d *Dialer, network string, dst netip.AddrPort) Conn {
	tb.Helper()
	c, err := d.Dial(testContext(tb), network, dst)
	if err != nil {
		tb.Fatalf("Dial(%s, %v): %v", network, dst, err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// pattern is deterministic test data that differs at every offset.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed) + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}
