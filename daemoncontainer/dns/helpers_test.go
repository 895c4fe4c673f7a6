package dns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// clientTimeout bounds every test query: a test that hangs fails instead.
const clientTimeout = 5 * time.Second

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// fakeExchanger answers with handle and records the names it was asked.
type fakeExchanger struct {
	handle func(ctx context.Context, q *dns.Msg) (*dns.Msg, error)
	mu     sync.Mutex
	names  []string
	calls  atomic.Int64
}

func (f *fakeExchanger) Exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	f.calls.Add(1)
	f.mu.Lock()
	f.names = append(f.names, q.Question[0].Name)
	f.mu.Unlock()
	return f.handle(ctx, q)
}

func (f *fakeExchanger) asked() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.names...)
}

// answerA returns a handler that answers every A question with ip and ttl
// and every other type with NODATA.
func answerA(ip string, ttl uint32) func(context.Context, *dns.Msg) (*dns.Msg, error) {
	return func(_ context.Context, q *dns.Msg) (*dns.Msg, error) {
		return replyA(q, ip, ttl), nil
	}
}

func replyA(q *dns.Msg, ip string, ttl uint32) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(q)
	qq := q.Question[0]
	switch qq.Qtype {
	case dns.TypeA:
		m.Answer = append(m.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl},
			A:   net.ParseIP(ip).To4(),
		})
	case dns.TypePTR:
		m.Answer = append(m.Answer, &dns.PTR{
			Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: ttl},
			Ptr: "answered.by." + ip + ".",
		})
	default:
		m.Ns = append(m.Ns, soa("example.", ttl, ttl))
	}
	return m
}

func soa(zone string, ttl, minttl uint32) *dns.SOA {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns:      "ns." + zone,
		Mbox:    "hostmaster." + zone,
		Serial:  1,
		Refresh: 7200,
		Retry:   1800,
		Expire:  86400,
		Minttl:  minttl,
	}
}

// blockUntilDone is an exchanger handler that never answers.
func blockUntilDone(ctx context.Context, _ *dns.Msg) (*dns.Msg, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// startUpstream runs a miekg/dns server on UDP and TCP on one 127.0.0.1 port
// and returns its "ip:port".
func startUpstream(t testing.TB, udp, tcp dns.HandlerFunc) string {
	t.Helper()
	var pc net.PacketConn
	var ln net.Listener
	for range 10 {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen udp: %v", err)
		}
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	if pc == nil {
		t.Fatal("no port free for both UDP and TCP")
	}
	if tcp == nil {
		tcp = udp
	}
	for _, srv := range []*dns.Server{
		{PacketConn: pc, Handler: udp},
		{Listener: ln, Handler: tcp},
	} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		done := make(chan error, 1)
		go func() { done <- srv.ActivateAndServe() }()
		select {
		case <-started:
		case err := <-done:
			t.Fatalf("upstream: %v", err)
		}
		t.Cleanup(func() {
			if err := srv.Shutdown(); err != nil {
				t.Errorf("upstream shutdown: %v", err)
			}
			<-done
		})
	}
	return pc.LocalAddr().String()
}

// blackHole returns the address of a UDP and TCP socket that never answer.
func blackHole(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen udp: %v", err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().String()
}

// startServer runs a Server with cfg (ListenAddr defaults to 127.0.0.1:0)
// until the test ends, and checks that Run returns nil.
func startServer(t testing.TB, cfg Config, clock *fakeClock) *Server {
	t.Helper()
	if cfg.ListenAddr == "" {
		cfg.ListenAddr = "127.0.0.1:0"
	}
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	if clock != nil {
		s.now = clock.Now
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: got %v, want nil", err)
		}
	})
	select {
	case <-s.Ready():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	return s
}

func (s *Server) addrString(network string) string {
	udp, tcp := s.Addr()
	if network == "tcp" {
		return tcp.String()
	}
	return udp.String()
}

// query asks addr over network for name/qtype; edns > 0 adds an OPT record
// with that UDP size.
func query(t testing.TB, network, addr, name string, qtype uint16, edns uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if edns > 0 {
		m.SetEdns0(edns, false)
	}
	return exchange(t, network, addr, m)
}

func exchange(t testing.TB, network, addr string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: clientTimeout, UDPSize: 65535}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s query %s %s: %v", network, m.Question[0].Name, dns.Type(m.Question[0].Qtype), err)
	}
	if r.Id != m.Id {
		t.Fatalf("reply id: got %d, want %d", r.Id, m.Id)
	}
	return r
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(clientTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

var errBoom = errors.New("boom")
