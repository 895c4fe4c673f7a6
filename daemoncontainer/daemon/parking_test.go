//go:build linux

package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tp-run/tp/tunnel"
)

// parkServer is a tunnel server that holds the parks of intercept "ic" for
// the test to answer and refuses those of any other intercept.
type parkServer struct {
	parks    chan func() (tunnel.Conn, error) // the accepts of ic's parks
	mu       sync.Mutex
	refused  int
	finished chan struct{} // closed at cleanup: held parks return
}

func (s *parkServer) pair(ctx context.Context, _, pairingID string, accept func() (tunnel.Conn, error)) error {
	if !strings.HasPrefix(pairingID, "park/ic/") {
		s.mu.Lock()
		s.refused++
		s.mu.Unlock()
		return fmt.Errorf("intercept ended: %w", syscall.ECONNREFUSED)
	}
	done := make(chan struct{})
	wrapped := func() (tunnel.Conn, error) {
		defer close(done)
		return accept()
	}
	select {
	case s.parks <- wrapped:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	<-s.finished // the test owns the accepted conn
	return nil
}

func (s *parkServer) refusals() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refused
}

func newParkTest(t *testing.T) (*parker, *parkServer, *fakeClock, context.CancelFunc, *sync.WaitGroup) {
	t.Helper()
	ps := &parkServer{parks: make(chan func() (tunnel.Conn, error)), finished: make(chan struct{})}
	srv, err := tunnel.NewServer((&net.Dialer{}).DialContext, func(context.Context, string) error { return nil }, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv.HandlePairing(ps.pair)
	gs := grpc.NewServer(tunnel.ServerOptions()...)
	srv.Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	cc, err := grpc.NewClient(lis.Addr().String(), append(tunnel.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	clock := &fakeClock{t: time.Unix(1000, 0)}
	wg := &sync.WaitGroup{}
	p := &parker{
		ctx: ctx, serveCtx: ctx, wg: wg, dialer: tunnel.NewDialer(cc, "s1", nil),
		log: slog.New(slog.DiscardHandler), now: clock.now, serve: acceptParked,
		intercepts: map[string]*parkedIntercept{},
	}
	t.Cleanup(func() {
		cancel()
		close(ps.finished)
		wg.Wait()
		cc.Close()
		gs.Stop()
	})
	return p, ps, clock, cancel, wg
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func nextPark(t *testing.T, ps *parkServer) func() (tunnel.Conn, error) {
	t.Helper()
	select {
	case a := <-ps.parks:
		return a
	case <-time.After(5 * time.Second):
		t.Fatal("no park arrived")
		return nil
	}
}

func noPark(t *testing.T, ps *parkServer) {
	t.Helper()
	select {
	case <-ps.parks:
		t.Fatal("a park arrived beyond parkSlots")
	case <-time.After(200 * time.Millisecond):
	}
}

// An intercept keeps parkSlots flows parked; an answered one reaches the
// local port and is replaced at once.
func TestParkerKeepsSlotsAndReplaces(t *testing.T) {
	p, ps, _, _, _ := newParkTest(t)
	local, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	target := netip.MustParseAddrPort(local.Addr().String())

	p.ensure("ic", target)
	p.ensure("ic", target) // a second DialRequest adds nothing
	accepts := make([]func() (tunnel.Conn, error), 0, parkSlots)
	for range parkSlots {
		accepts = append(accepts, nextPark(t, ps))
	}
	noPark(t, ps)

	flow, err := accepts[0]()
	if err != nil {
		t.Fatalf("answering a park: %v", err)
	}
	defer flow.Close()
	if _, err := flow.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	local.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
	c, err := local.Accept()
	if err != nil {
		t.Fatalf("the answered park did not dial the local port: %v", err)
	}
	defer c.Close()
	buf := make([]byte, 5)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("local port read: got %q, %v", buf, err)
	}
	nextPark(t, ps) // the replacement
	noPark(t, ps)
}

// A refused park ends its slot; DialRequests start slots again only after
// parkRetry.
func TestParkerBacksOffAfterRefusal(t *testing.T) {
	p, ps, clock, _, _ := newParkTest(t)
	target := netip.MustParseAddrPort("127.0.0.1:1")
	p.ensure("ended", target)
	waitFor(t, "both parks refused", func() bool { return ps.refusals() == parkSlots })
	waitFor(t, "the slots ended", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.intercepts["ended"].slots == 0
	})
	p.ensure("ended", target)
	time.Sleep(200 * time.Millisecond)
	if n := ps.refusals(); n != parkSlots {
		t.Fatalf("parks within parkRetry of a refusal: got %d, want %d", n, parkSlots)
	}
	clock.advance(parkRetry)
	p.ensure("ended", target)
	waitFor(t, "parks after parkRetry", func() bool { return ps.refusals() == 2*parkSlots })
}

// The slots end with the stream's ctx.
func TestParkerStopsWithStream(t *testing.T) {
	p, ps, _, cancel, wg := newParkTest(t)
	p.ensure("ic", netip.MustParseAddrPort("127.0.0.1:1"))
	for range parkSlots {
		nextPark(t, ps)
	}
	cancel()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("parked slots did not end with the stream")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
