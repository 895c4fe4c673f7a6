package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

const (
	clusterIP  = "10.96.0.10"
	upstreamIP = "93.184.216.34"
)

// routingFixture is a server whose cluster and upstream answer every A
// question with clusterIP and upstreamIP.
type routingFixture struct {
	srv      *Server
	cluster  *fakeExchanger
	upstream *fakeExchanger
}

func newRoutingFixture(t *testing.T) *routingFixture {
	t.Helper()
	f := &routingFixture{
		cluster:  &fakeExchanger{handle: answerA(clusterIP, 30)},
		upstream: &fakeExchanger{handle: answerA(upstreamIP, 300)},
	}
	addr := startUpstream(t, func(w dns.ResponseWriter, q *dns.Msg) {
		m, _ := f.upstream.Exchange(context.Background(), q)
		_ = w.WriteMsg(m)
	}, nil)
	f.srv = startServer(t, Config{
		ClusterDomain:   "cluster.local",
		ClusterPrefixes: []netip.Prefix{mustPrefix("10.96.0.0/12"), mustPrefix("fd00:10:96::/112")},
		Cluster:         f.cluster,
		Upstreams:       []string{addr},
		SearchDomains:   []string{"corp.example"},
	}, nil)
	return f
}

// TestSetClusterPrefixes: reverse names follow the cluster's ranges when
// they change (a new node's pod CIDR, a new ServiceCIDR).
func TestSetClusterPrefixes(t *testing.T) {
	f := newRoutingFixture(t)
	answeredBy := func(name string) string {
		t.Helper()
		r := query(t, "udp", f.srv.addrString("udp"), name, dns.TypePTR, 0)
		switch {
		case len(r.Answer) == 1 && strings.Contains(r.Answer[0].String(), clusterIP):
			return "cluster"
		case len(r.Answer) == 1 && strings.Contains(r.Answer[0].String(), upstreamIP):
			return "upstream"
		}
		return fmt.Sprintf("unexpected answer %v", r)
	}
	// Distinct names each time: answers are cached.
	if got := answeredBy("1.0.245.10.in-addr.arpa."); got != "upstream" {
		t.Fatalf("10.245.0.1 before the change: answered by %s, want upstream", got)
	}
	f.srv.SetClusterPrefixes([]netip.Prefix{mustPrefix("10.245.0.0/24")})
	for name, want := range map[string]string{
		"2.0.245.10.in-addr.arpa.": "cluster",  // added
		"3.0.96.10.in-addr.arpa.":  "upstream", // removed
	} {
		if got := answeredBy(name); got != want {
			t.Errorf("%s after the change: answered by %s, want %s", name, got, want)
		}
	}
}

func TestRouting(t *testing.T) {
	f := newRoutingFixture(t)
	tests := []struct {
		name  string
		qtype uint16
		want  string // "cluster", "upstream" or "nxdomain"
	}{
		{"kubernetes.default.svc.cluster.local.", dns.TypeA, "cluster"},
		{"Kube-DNS.Kube-System.SVC.Cluster.Local.", dns.TypeA, "cluster"},
		{"pod-0.headless.ns.svc.cluster.local.", dns.TypeA, "cluster"},
		{"cluster.local.", dns.TypeA, "cluster"},
		{"example.com.", dns.TypeA, "upstream"},
		{"notcluster.local.", dns.TypeA, "upstream"},
		{"cluster.local.example.com.", dns.TypeA, "upstream"},
		{"svc.corp.example.", dns.TypeA, "upstream"},
		{"web.ns.", dns.TypeA, "upstream"},
		// Reverse names inside the cluster CIDRs go to the cluster, others upstream.
		{"10.0.96.10.in-addr.arpa.", dns.TypePTR, "cluster"},
		{"1.2.111.10.in-addr.arpa.", dns.TypePTR, "cluster"},
		{"96.10.in-addr.arpa.", dns.TypePTR, "cluster"},
		{"10.in-addr.arpa.", dns.TypePTR, "upstream"},
		{"1.1.112.10.in-addr.arpa.", dns.TypePTR, "upstream"},
		{"1.1.168.192.in-addr.arpa.", dns.TypePTR, "upstream"},
		{"a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa.", dns.TypePTR, "cluster"},
		{"a.0.0.0.0.0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa.", dns.TypePTR, "upstream"},
		// Search-list expansions of cluster names in the original search
		// domains exist nowhere: answered locally.
		{"web.ns.svc.cluster.local.corp.example.", dns.TypeA, "nxdomain"},
		{"web.ns.svc.cluster.local.corp.example.", dns.TypeAAAA, "nxdomain"},
		{"cluster.local.corp.example.", dns.TypeA, "nxdomain"},
		// ...but only in those search domains.
		{"web.ns.svc.cluster.local.other.example.", dns.TypeA, "upstream"},
	}
	for _, tt := range tests {
		t.Run(tt.name+"/"+dns.Type(tt.qtype).String(), func(t *testing.T) {
			clusterBefore := len(f.cluster.asked())
			upstreamBefore := len(f.upstream.asked())
			r := query(t, "udp", f.srv.addrString("udp"), tt.name, tt.qtype, 0)

			var got string
			switch {
			case r.Rcode == dns.RcodeNameError:
				got = "nxdomain"
			case len(r.Answer) == 1 && strings.Contains(r.Answer[0].String(), clusterIP):
				got = "cluster"
			case len(r.Answer) == 1 && strings.Contains(r.Answer[0].String(), upstreamIP):
				got = "upstream"
			default:
				got = fmt.Sprintf("unexpected answer %v", r)
			}
			if got != tt.want {
				t.Fatalf("answered by: got %s, want %s", got, tt.want)
			}
			if r.Question[0].Name != tt.name {
				t.Errorf("question name: got %q, want the client's %q", r.Question[0].Name, tt.name)
			}
			// The losers were not asked: no leak of cluster names upstream.
			cluster := len(f.cluster.asked()) - clusterBefore
			upstream := len(f.upstream.asked()) - upstreamBefore
			wantCluster, wantUpstream := 0, 0
			switch tt.want {
			case "cluster":
				wantCluster = 1
			case "upstream":
				wantUpstream = 1
			}
			if cluster != wantCluster || upstream != wantUpstream {
				t.Errorf("forwards: got cluster %d upstream %d, want cluster %d upstream %d",
					cluster, upstream, wantCluster, wantUpstream)
			}
		})
	}
	if st := f.srv.Stats(); st.Synthesized != 3 {
		t.Errorf("Stats.Synthesized: got %d, want 3", st.Synthesized)
	}
}

func TestCacheHonoursTTL(t *testing.T) {
	clock := newFakeClock()
	cluster := &fakeExchanger{handle: answerA(clusterIP, 30)}
	s := startServer(t, Config{Cluster: cluster}, clock)
	addr := s.addrString("udp")
	const name = "web.ns.svc.cluster.local."

	steps := []struct {
		advance   time.Duration
		wantCalls int64
		wantTTL   uint32
	}{
		{0, 1, 30},                      // cold: forwarded
		{0, 1, 30},                      // cached
		{10 * time.Second, 1, 20},       // cached, TTL counts down
		{19 * time.Second, 1, 1},        // one second left
		{time.Second, 2, 30},            // expired: forwarded again
		{500 * time.Millisecond, 2, 30}, // cached again, less than a second old
	}
	for i, st := range steps {
		clock.Advance(st.advance)
		r := query(t, "udp", addr, name, dns.TypeA, 0)
		if len(r.Answer) != 1 {
			t.Fatalf("step %d: answers: got %d, want 1", i, len(r.Answer))
		}
		if got := cluster.calls.Load(); got != st.wantCalls {
			t.Errorf("step %d: cluster exchanges: got %d, want %d", i, got, st.wantCalls)
		}
		if got := r.Answer[0].Header().Ttl; got != st.wantTTL {
			t.Errorf("step %d: TTL: got %d, want %d", i, got, st.wantTTL)
		}
	}
	if st := s.Stats(); st.CacheHits != 4 || st.ClusterForwards != 2 || st.Queries != 6 {
		t.Errorf("Stats: got %+v, want 6 queries, 4 cache hits, 2 cluster forwards", st)
	}
}

func TestNegativeCaching(t *testing.T) {
	tests := []struct {
		name      string
		rcode     int
		soa       *dns.SOA
		wantTTL   time.Duration // 0: not cached
		wantRcode int
	}{
		{"nxdomain uses SOA minimum", dns.RcodeNameError, soa("cluster.local.", 60, 5), 5 * time.Second, dns.RcodeNameError},
		{"nxdomain uses SOA TTL when lower", dns.RcodeNameError, soa("cluster.local.", 7, 30), 7 * time.Second, dns.RcodeNameError},
		{"nodata", dns.RcodeSuccess, soa("cluster.local.", 60, 5), 5 * time.Second, dns.RcodeSuccess},
		{"nxdomain without SOA is not cached", dns.RcodeNameError, nil, 0, dns.RcodeNameError},
		{"negative TTL is capped", dns.RcodeNameError, soa("cluster.local.", 86400, 86400), maxNegativeTTL, dns.RcodeNameError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			cluster := &fakeExchanger{handle: func(_ context.Context, q *dns.Msg) (*dns.Msg, error) {
				m := new(dns.Msg)
				m.SetRcode(q, tt.rcode)
				if tt.soa != nil {
					m.Ns = []dns.RR{tt.soa}
				}
				return m, nil
			}}
			s := startServer(t, Config{Cluster: cluster}, clock)
			addr := s.addrString("udp")
			const name = "missing.ns.svc.cluster.local."

			r := query(t, "udp", addr, name, dns.TypeA, 0)
			if r.Rcode != tt.wantRcode {
				t.Fatalf("rcode: got %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.wantRcode])
			}
			clock.Advance(tt.wantTTL - time.Second)
			query(t, "udp", addr, name, dns.TypeA, 0)
			wantCalls := int64(1)
			if tt.wantTTL == 0 {
				wantCalls = 2
			}
			if got := cluster.calls.Load(); got != wantCalls {
				t.Fatalf("exchanges before expiry: got %d, want %d", got, wantCalls)
			}
			if tt.wantTTL == 0 {
				return
			}
			clock.Advance(time.Second)
			query(t, "udp", addr, name, dns.TypeA, 0)
			if got := cluster.calls.Load(); got != 2 {
				t.Errorf("exchanges after expiry: got %d, want 2", got)
			}
		})
	}
}

func TestForwardFailureIsServfail(t *testing.T) {
	silent := blackHole(t)
	servfail := startUpstream(t, func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetRcode(q, dns.RcodeServerFailure)
		_ = w.WriteMsg(m)
	}, nil)
	tests := []struct {
		name    string
		cluster func(context.Context, *dns.Msg) (*dns.Msg, error)
		upstrm  []string
		qname   string
	}{
		{"cluster never answers", blockUntilDone, nil, "web.ns.svc.cluster.local."},
		{"cluster fails", func(context.Context, *dns.Msg) (*dns.Msg, error) { return nil, errBoom }, nil, "web.ns.svc.cluster.local."},
		{"cluster returns nothing", func(context.Context, *dns.Msg) (*dns.Msg, error) { return nil, nil }, nil, "web.ns.svc.cluster.local."},
		{"cluster answers another question", func(_ context.Context, q *dns.Msg) (*dns.Msg, error) {
			m := replyA(q, clusterIP, 30)
			m.Question[0].Name = "other.ns.svc.cluster.local."
			return m, nil
		}, nil, "web.ns.svc.cluster.local."},
		{"upstream never answers", nil, []string{silent}, "example.com."},
		{"upstream answers SERVFAIL", nil, []string{servfail}, "example.com."},
		{"no upstreams", nil, nil, "example.com."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cluster := tt.cluster
			if cluster == nil {
				cluster = answerA(clusterIP, 30)
			}
			s := startServer(t, Config{
				Cluster:   &fakeExchanger{handle: cluster},
				Upstreams: tt.upstrm,
				Timeout:   200 * time.Millisecond,
			}, nil)
			for _, network := range []string{"udp", "tcp"} {
				r := query(t, network, s.addrString(network), tt.qname, dns.TypeA, 0)
				if r.Rcode != dns.RcodeServerFailure {
					t.Errorf("%s rcode: got %s, want SERVFAIL", network, dns.RcodeToString[r.Rcode])
				}
			}
			if st := s.Stats(); st.Failures != 2 || st.CacheEntries != 0 {
				t.Errorf("Stats: got %+v, want 2 failures and nothing cached", st)
			}
		})
	}
}

func TestStaleAnswerWhenForwardFails(t *testing.T) {
	clock := newFakeClock()
	var mu sync.Mutex
	failing := false
	cluster := &fakeExchanger{handle: func(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
		mu.Lock()
		defer mu.Unlock()
		if failing {
			return nil, errBoom
		}
		return replyA(q, clusterIP, 30), nil
	}}
	s := startServer(t, Config{Cluster: cluster}, clock)
	addr := s.addrString("udp")
	const name = "web.ns.svc.cluster.local."
	query(t, "udp", addr, name, dns.TypeA, 0)

	mu.Lock()
	failing = true
	mu.Unlock()
	clock.Advance(31 * time.Second)
	r := query(t, "udp", addr, name, dns.TypeA, 0)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("stale answer: got %v, want the expired A record", r)
	}
	if got := r.Answer[0].Header().Ttl; got != staleTTL {
		t.Errorf("stale TTL: got %d, want %d", got, staleTTL)
	}

	clock.Advance(staleWindow)
	r = query(t, "udp", addr, name, dns.TypeA, 0)
	if r.Rcode != dns.RcodeServerFailure {
		t.Errorf("past the stale window: got %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	if st := s.Stats(); st.Stale != 1 || st.Failures != 2 {
		t.Errorf("Stats: got %+v, want 1 stale answer and 2 failures", st)
	}
}

// manyA answers A questions with n records, too many for 512 bytes.
func manyA(q *dns.Msg, n int) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(q)
	for i := range n {
		m.Answer = append(m.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
			A:   net.IPv4(10, 0, byte(i/256), byte(i%256)),
		})
	}
	return m
}

func TestUpstreamTruncationFallsBackToTCP(t *testing.T) {
	const records = 60
	var mu sync.Mutex
	var seen []string
	record := func(network string) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, network)
	}
	addr := startUpstream(t,
		func(w dns.ResponseWriter, q *dns.Msg) { // UDP: always truncated, no records
			record("udp")
			m := new(dns.Msg)
			m.SetReply(q)
			m.Truncated = true
			_ = w.WriteMsg(m)
		},
		func(w dns.ResponseWriter, q *dns.Msg) {
			record("tcp")
			_ = w.WriteMsg(manyA(q, records))
		})
	s := startServer(t, Config{Cluster: &fakeExchanger{handle: blockUntilDone}, Upstreams: []string{addr}}, nil)

	r := query(t, "udp", s.addrString("udp"), "big.example.", dns.TypeA, 4096)
	if len(r.Answer) != records || r.Truncated {
		t.Fatalf("EDNS UDP answer: got %d records (TC %v), want %d untruncated", len(r.Answer), r.Truncated, records)
	}
	mu.Lock()
	if want := []string{"udp", "tcp"}; !slices.Equal(seen, want) {
		t.Errorf("upstream saw: got %v, want %v", seen, want)
	}
	mu.Unlock()

	// A client without EDNS gets a truncated answer over UDP (from the
	// cache) and the whole answer over TCP.
	r = query(t, "udp", s.addrString("udp"), "big.example.", dns.TypeA, 0)
	if !r.Truncated || len(r.Answer) >= records {
		t.Errorf("plain UDP answer: got %d records (TC %v), want fewer than %d with TC", len(r.Answer), r.Truncated, records)
	}
	r = query(t, "tcp", s.addrString("tcp"), "big.example.", dns.TypeA, 0)
	if len(r.Answer) != records || r.Truncated {
		t.Errorf("TCP answer: got %d records (TC %v), want %d untruncated", len(r.Answer), r.Truncated, records)
	}
	if st := s.Stats(); st.UpstreamForwards != 1 || st.CacheHits != 2 {
		t.Errorf("Stats: got %+v, want 1 upstream forward and 2 cache hits", st)
	}
}

func TestTCPQueries(t *testing.T) {
	f := newRoutingFixture(t)
	addr := f.srv.addrString("tcp")
	for _, name := range []string{"web.ns.svc.cluster.local.", "example.com."} {
		r := query(t, "tcp", addr, name, dns.TypeA, 0)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			t.Errorf("TCP %s: got %v, want one A record", name, r)
		}
	}
	// Several queries on one connection.
	c, err := (&dns.Client{Net: "tcp", Timeout: clientTimeout}).Dial(addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	for i := range 3 {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("web%d.ns.svc.cluster.local.", i), dns.TypeA)
		if err := c.WriteMsg(m); err != nil {
			t.Fatalf("write: %v", err)
		}
		r, err := c.ReadMsg()
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if r.Id != m.Id || len(r.Answer) != 1 {
			t.Errorf("query %d on one connection: got %v", i, r)
		}
	}
}

func TestConcurrentColdQueriesShareOneForward(t *testing.T) {
	release := make(chan struct{})
	cluster := &fakeExchanger{handle: func(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return replyA(q, clusterIP, 30), nil
	}}
	s := startServer(t, Config{Cluster: cluster, Timeout: clientTimeout}, nil)
	addr := s.addrString("udp")

	const n = 20
	var wg sync.WaitGroup
	answers := make(chan *dns.Msg, n)
	for range n {
		wg.Go(func() {
			m := new(dns.Msg)
			m.SetQuestion("Web.NS.svc.cluster.local.", dns.TypeA) // case differs from the name forwarded
			c := &dns.Client{Timeout: clientTimeout}
			r, _, err := c.Exchange(m, addr)
			if err != nil {
				t.Errorf("query: %v", err)
				return
			}
			answers <- r
		})
	}
	waitFor(t, "all queries to arrive", func() bool { return s.Stats().Queries == n })
	close(release)
	wg.Wait()
	close(answers)
	for r := range answers {
		if len(r.Answer) != 1 {
			t.Errorf("answer: got %v, want one A record", r)
		}
	}
	if got := cluster.calls.Load(); got != 1 {
		t.Errorf("cluster exchanges: got %d, want 1", got)
	}
	if st := s.Stats(); st.Coalesced+st.CacheHits != n-1 {
		t.Errorf("Stats: got %+v, want coalesced+cache hits = %d", st, n-1)
	}
}

func TestUpstreamFailover(t *testing.T) {
	good := startUpstream(t, func(w dns.ResponseWriter, q *dns.Msg) { _ = w.WriteMsg(replyA(q, upstreamIP, 300)) }, nil)
	refused := startUpstream(t, func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetRcode(q, dns.RcodeRefused)
		_ = w.WriteMsg(m)
	}, nil)
	tests := []struct {
		name      string
		upstreams []string
	}{
		{"first never answers", []string{blackHole(t), good}},
		{"first refuses", []string{refused, good}},
		{"first is closed", []string{closedPort(t), good}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startServer(t, Config{Cluster: &fakeExchanger{handle: blockUntilDone}, Upstreams: tt.upstreams}, nil)
			r := query(t, "udp", s.addrString("udp"), "example.com.", dns.TypeA, 0)
			if len(r.Answer) != 1 || !strings.Contains(r.Answer[0].String(), upstreamIP) {
				t.Fatalf("answer: got %v, want the good upstream's", r)
			}
			// The good upstream is now preferred: a second cold question
			// does not wait for the bad one.
			r = query(t, "udp", s.addrString("udp"), "example.org.", dns.TypeA, 0)
			if len(r.Answer) != 1 {
				t.Fatalf("second answer: got %v, want one A record", r)
			}
		})
	}
}

// closedPort returns a UDP address nobody listens on.
func closedPort(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

func TestEDNS(t *testing.T) {
	var mu sync.Mutex
	var gotDO []bool
	cluster := &fakeExchanger{handle: func(_ context.Context, q *dns.Msg) (*dns.Msg, error) {
		mu.Lock()
		gotDO = append(gotDO, q.IsEdns0() != nil && q.IsEdns0().Do())
		mu.Unlock()
		m := replyA(q, clusterIP, 30)
		m.SetEdns0(4096, q.IsEdns0().Do())
		return m, nil
	}}
	s := startServer(t, Config{Cluster: cluster}, nil)
	addr := s.addrString("udp")
	const name = "web.ns.svc.cluster.local."

	// Plain, EDNS without DO, EDNS with DO: DO is part of the cache key.
	r := query(t, "udp", addr, name, dns.TypeA, 0)
	if r.IsEdns0() != nil {
		t.Errorf("plain query: got an OPT record, want none")
	}
	r = query(t, "udp", addr, name, dns.TypeA, 1232)
	if opt := r.IsEdns0(); opt == nil || opt.Do() {
		t.Errorf("EDNS query: got OPT %v, want one without DO", opt)
	}
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.SetEdns0(1232, true)
	r = exchange(t, "udp", addr, m)
	if opt := r.IsEdns0(); opt == nil || !opt.Do() {
		t.Errorf("DO query: got OPT %v, want one with DO", opt)
	}
	mu.Lock()
	if want := []bool{false, true}; !slices.Equal(gotDO, want) {
		t.Errorf("DO bits forwarded: got %v, want %v", gotDO, want)
	}
	mu.Unlock()

	// EDNS version 1 is answered BADVERS.
	m = new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.SetEdns0(1232, false)
	m.IsEdns0().SetVersion(1)
	r = exchange(t, "udp", addr, m)
	if r.Rcode != dns.RcodeBadVers {
		t.Errorf("EDNS version 1: got rcode %s, want BADVERS", dns.RcodeToString[r.Rcode])
	}
}

func TestRejectedQueries(t *testing.T) {
	s := startServer(t, Config{Cluster: &fakeExchanger{handle: answerA(clusterIP, 30)}}, nil)
	addr := s.addrString("tcp")

	r := query(t, "tcp", addr, "cluster.local.", dns.TypeAXFR, 0)
	if r.Rcode != dns.RcodeRefused {
		t.Errorf("AXFR: got %s, want REFUSED", dns.RcodeToString[r.Rcode])
	}
	m := new(dns.Msg)
	m.SetNotify("cluster.local.")
	r = exchange(t, "tcp", addr, m)
	if r.Rcode != dns.RcodeNotImplemented {
		t.Errorf("NOTIFY: got %s, want NOTIMP", dns.RcodeToString[r.Rcode])
	}
}

func TestCacheEvictsLeastRecentlyUsed(t *testing.T) {
	cluster := &fakeExchanger{handle: answerA(clusterIP, 300)}
	s := startServer(t, Config{Cluster: cluster, CacheSize: 2}, nil)
	addr := s.addrString("udp")
	ask := func(name string) { query(t, "udp", addr, name+".ns.svc.cluster.local.", dns.TypeA, 0) }

	ask("a")
	ask("b")
	ask("a") // a is now the most recently used
	ask("c") // evicts b
	if got := s.Stats().CacheEntries; got != 2 {
		t.Errorf("CacheEntries: got %d, want 2", got)
	}
	before := cluster.calls.Load()
	ask("a")
	if got := cluster.calls.Load() - before; got != 0 {
		t.Errorf("a after eviction: got %d exchanges, want 0 (cached)", got)
	}
	ask("b")
	if got := cluster.calls.Load() - before; got != 1 {
		t.Errorf("b after eviction: got %d exchanges, want 1 (evicted)", got)
	}
}

func TestCacheDisabled(t *testing.T) {
	cluster := &fakeExchanger{handle: answerA(clusterIP, 300)}
	s := startServer(t, Config{Cluster: cluster, CacheSize: -1}, nil)
	for range 2 {
		query(t, "udp", s.addrString("udp"), "web.ns.svc.cluster.local.", dns.TypeA, 0)
	}
	if got := cluster.calls.Load(); got != 2 {
		t.Errorf("exchanges: got %d, want 2", got)
	}
}

func TestRunStopsWithQueriesInFlight(t *testing.T) {
	s, err := NewServer(Config{ListenAddr: "127.0.0.1:0", Cluster: &fakeExchanger{handle: blockUntilDone}})
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	<-s.Ready()
	_, tcpAddr := s.Addr()

	replies := make(chan *dns.Msg, 1)
	go func() {
		m := new(dns.Msg)
		m.SetQuestion("web.ns.svc.cluster.local.", dns.TypeA)
		r, _, _ := (&dns.Client{Net: "tcp", Timeout: clientTimeout}).Exchange(m, tcpAddr.String())
		replies <- r
	}()
	waitFor(t, "the query to arrive", func() bool { return s.Stats().ClusterForwards == 1 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: got %v, want nil", err)
		}
	case <-time.After(clientTimeout):
		t.Fatal("Run did not return after cancel")
	}
	if r := <-replies; r != nil && r.Rcode != dns.RcodeServerFailure {
		t.Errorf("in-flight reply: got %v, want SERVFAIL or none", r)
	}
	if _, err := net.DialTimeout("tcp", tcpAddr.String(), clientTimeout); err == nil {
		t.Errorf("dial after Run returned: got a connection, want refused")
	}
	if err := s.Run(context.Background()); err == nil {
		t.Errorf("second Run: got nil, want an error")
	}
}

func TestRunFailsWhenAddressTaken(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer pc.Close()
	s, err := NewServer(Config{ListenAddr: pc.LocalAddr().String(), Cluster: &fakeExchanger{handle: blockUntilDone}})
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	if err := s.Run(context.Background()); err == nil {
		t.Errorf("Run on a taken address: got nil, want an error")
	}
}

func TestNewServerValidates(t *testing.T) {
	ok := &fakeExchanger{handle: blockUntilDone}
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no cluster exchanger", Config{}},
		{"listen address without port", Config{Cluster: ok, ListenAddr: "127.0.0.1"}},
		{"listen address with a name", Config{Cluster: ok, ListenAddr: "localhost:53"}},
		{"bad cluster domain", Config{Cluster: ok, ClusterDomain: "a..b"}},
		{"root cluster domain", Config{Cluster: ok, ClusterDomain: "."}},
		{"invalid prefix", Config{Cluster: ok, ClusterPrefixes: []netip.Prefix{{}}}},
		{"upstream without port", Config{Cluster: ok, Upstreams: []string{"8.8.8.8"}}},
		{"upstream is the server", Config{Cluster: ok, ListenAddr: "127.0.0.1:53", Upstreams: []string{"127.0.0.1:53"}}},
		{"upstream is the server on all addresses", Config{Cluster: ok, ListenAddr: "0.0.0.0:53", Upstreams: []string{"127.0.0.1:53"}}},
		{"bad search domain", Config{Cluster: ok, SearchDomains: []string{"a..b"}}},
		{"negative timeout", Config{Cluster: ok, Timeout: -time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewServer(tt.cfg)
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("NewServer: got %v, want ErrInvalidConfig", err)
			}
		})
	}
	s, err := NewServer(Config{Cluster: ok, Upstreams: []string{"8.8.8.8:53", "[2001:4860:4860::8888]:53"}})
	if err != nil {
		t.Fatalf("NewServer with defaults: got %v, want nil", err)
	}
	if s.cfg.listen.String() != DefaultListenAddr || s.cfg.clusterDomain != DefaultClusterDomain || s.cfg.timeout != DefaultTimeout {
		t.Errorf("defaults: got listen %s domain %s timeout %v", s.cfg.listen, s.cfg.clusterDomain, s.cfg.timeout)
	}
}

func TestExchangerIgnoringItsDeadline(t *testing.T) {
	release := make(chan struct{})
	cluster := &fakeExchanger{handle: func(context.Context, *dns.Msg) (*dns.Msg, error) {
		<-release
		return nil, errBoom
	}}
	s := startServer(t, Config{Cluster: cluster, Timeout: 200 * time.Millisecond}, nil)
	t.Cleanup(func() { close(release) }) // runs before the server stops: Run waits for the exchanger

	r := query(t, "udp", s.addrString("udp"), "web.ns.svc.cluster.local.", dns.TypeA, 0)
	if r.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode: got %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
}
