package tunnel

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
)

// countingConn records which connection a Spread chose for each stream.
type countingConn struct {
	grpc.ClientConnInterface
	name string
	log  *pickLog
}

type pickLog struct {
	mu    sync.Mutex
	picks []string
}

func (l *pickLog) last() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.picks) == 0 {
		return ""
	}
	return l.picks[len(l.picks)-1]
}

func (c *countingConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	c.log.mu.Lock()
	c.log.picks = append(c.log.picks, c.name)
	c.log.mu.Unlock()
	return c.ClientConnInterface.NewStream(ctx, desc, method, opts...)
}

// failingConn refuses every stream.
type failingConn struct{ countingConn }

var errRefusedStream = errors.New("refused")

func (c *failingConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	_, _ = c.countingConn.NewStream(ctx, desc, method, opts...)
	return nil, errRefusedStream
}

// openStreams is what the Spread counts as open on each connection, in order.
func openStreams(s *Spread) []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n []int
	for _, c := range s.conns {
		n = append(n, c.open)
	}
	return n
}

func waitOpen(t *testing.T, s *Spread, want ...int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := openStreams(s)
		if equalInts(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("open streams per connection: got %v, want %v", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestSpreadLeastLoaded: flows go to the connection with the fewest open
// flows (the earliest on a tie), a connection counts a flow until its stream
// ends, a removed connection gets no new flows, and a refused stream does
// not count.
func TestSpreadLeastLoaded(t *testing.T) {
	env := newEnv(t, envConfig{})
	dst := serveTCP(t, echo)
	log := &pickLog{}
	target := env.cc.Target()
	conns := make([]*countingConn, 3)
	for i, name := range []string{"a", "b", "c"} {
		cc := env.cc
		if i > 0 {
			cc = newClientConn(t, target)
		}
		conns[i] = &countingConn{ClientConnInterface: cc, name: name, log: log}
	}
	s := NewSpread(conns[0])
	s.Add(conns[1])
	s.Add(conns[2])
	d := NewDialer(s, testSession, testLogger(t))

	open := func(want string) Conn {
		t.Helper()
		c := dial(t, d, "tcp", dst)
		if got := log.last(); got != want {
			t.Fatalf("flow went to connection %q, want %q", got, want)
		}
		return c
	}
	f1 := open("a")
	f2 := open("b")
	f3 := open("c")
	f4 := open("a") // all equal: the earliest
	waitOpen(t, s, 2, 1, 1)

	// f2 ends: b is the least loaded.
	if err := f2.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if _, err := io.Copy(io.Discard, f2); err != nil && !errors.Is(err, io.EOF) {
		t.Logf("drain f2: %v", err) // reading a closed flow may fail; only the count matters
	}
	waitOpen(t, s, 2, 0, 1)
	f5 := open("b")

	// c removed: new flows avoid it although it is the least loaded, its
	// flow still works and ends uncounted by the Spread's remaining conns.
	f3b := open("b") // a=2, b=1, c=1: b (earlier than c)
	s.Remove(conns[2])
	s.Remove(conns[0]) // the first connection stays
	if got := s.Len(); got != 2 {
		t.Fatalf("Len after Remove: got %d, want 2", got)
	}
	f6 := open("a") // a=2, b=2: a
	for _, c := range []Conn{f1, f3, f4, f5, f3b, f6} {
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatalf("write: %v", err)
		}
		buf := make([]byte, 1)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("read: %v", err)
		}
		c.Close()
	}
	waitOpen(t, s, 0, 0)

	// A refused flow (the server answers Open with an Error) does not count.
	for range 3 {
		if _, err := d.Dial(testContext(t), "tcp", refusedAddr(t)); err == nil {
			t.Fatal("dial to a refused address succeeded")
		}
	}
	waitOpen(t, s, 0, 0)

	// A connection that refuses streams does not accumulate a count.
	bad := &failingConn{countingConn{ClientConnInterface: env.cc, name: "bad", log: log}}
	s2 := NewSpread(bad)
	for range 3 {
		if _, err := s2.NewStream(testContext(t), &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, "/x/y"); !errors.Is(err, errRefusedStream) {
			t.Fatalf("NewStream on a refusing connection: got %v, want %v", err, errRefusedStream)
		}
	}
	waitOpen(t, s2, 0)
}
