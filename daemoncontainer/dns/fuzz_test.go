package dns

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fuzzWriter is a dns.ResponseWriter that packs what the server writes, as
// the real writers do before they send.
type fuzzWriter struct {
	remote  net.Addr
	replies []*dns.Msg
	wire    [][]byte
	errs    []error
}

func (w *fuzzWriter) LocalAddr() net.Addr  { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53} }
func (w *fuzzWriter) RemoteAddr() net.Addr { return w.remote }
func (w *fuzzWriter) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	w.replies = append(w.replies, m)
	w.wire = append(w.wire, b)
	w.errs = append(w.errs, err)
	return err
}
func (w *fuzzWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *fuzzWriter) Close() error                { return nil }
func (w *fuzzWriter) TsigStatus() error           { return nil }
func (w *fuzzWriter) TsigTimersOnly(bool)         {}
func (w *fuzzWriter) Hijack()                     {}

// Flags of a FuzzServeDNS input.
const (
	fuzzTCP           = 1 << iota // the query came over TCP
	fuzzSameQuestion              // the exchanger's answer carries the query's question
	fuzzExchangeError             // the exchanger fails
	fuzzNilAnswer                 // the exchanger returns neither answer nor error
)

func packSeed(tb testing.TB, m *dns.Msg) []byte {
	tb.Helper()
	b, err := m.Pack()
	if err != nil {
		tb.Fatalf("pack seed %v: %v", m, err)
	}
	return b
}

// FuzzServeDNS feeds a query (wire bytes) to the server's handler twice, the
// second time later and with a failing exchanger (cache, stale and TTL
// paths), while the cluster and upstream exchangers answer with a message
// from the fuzz input. It asserts that every query gets exactly one reply,
// that the reply packs, fits the client's size, carries the query's ID,
// opcode and question and a sane rcode (BADVERS only with EDNS), and that no
// name of the cluster domain is ever sent upstream.
func FuzzServeDNS(f *testing.F) {
	q := func(name string, qtype uint16, edit func(*dns.Msg)) []byte {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		if edit != nil {
			edit(m)
		}
		return packSeed(f, m)
	}
	edns := func(m *dns.Msg) { m.SetEdns0(1232, true) }
	queries := [][]byte{
		q("kubernetes.default.svc.cluster.local.", dns.TypeA, nil),
		q("Kube-DNS.Kube-System.SVC.Cluster.Local.", dns.TypeA, edns),
		q("example.com.", dns.TypeA, nil),
		q("example.com.", dns.TypeAAAA, edns),
		q("10.0.96.10.in-addr.arpa.", dns.TypePTR, nil),
		q("a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa.", dns.TypePTR, nil),
		q("web.ns.svc.cluster.local.corp.example.", dns.TypeA, nil),
		q("example.com.", dns.TypeAXFR, nil),
		q("example.com.", dns.TypeA, func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify }),
		q("example.com.", dns.TypeA, func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) }),
		q("example.com.", dns.TypeA, func(m *dns.Msg) { m.SetEdns0(512, false); m.IsEdns0().SetVersion(1) }),
		q("example.com.", dns.TypeTXT, func(m *dns.Msg) { m.SetEdns0(4096, true); m.CheckingDisabled = true }),
	}
	ask := new(dns.Msg)
	ask.SetQuestion("example.com.", dns.TypeA)
	big := replyA(ask, upstreamIP, 300)
	for i := range 60 {
		big.Answer = append(big.Answer, &dns.TXT{
			Hdr: dns.RR_Header{Name: "example.com.", Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: uint32(i)},
			Txt: []string{strings.Repeat("x", 100)},
		})
	}
	nx := new(dns.Msg)
	nx.SetRcode(ask, dns.RcodeNameError)
	nx.Ns = append(nx.Ns, soa("example.com.", 60, 30))
	tc := replyA(ask, upstreamIP, 30)
	tc.Truncated = true
	answers := [][]byte{
		packSeed(f, replyA(ask, clusterIP, 30)),
		packSeed(f, big),
		packSeed(f, nx),
		packSeed(f, tc),
		{},
	}
	for i, query := range queries {
		for j, ans := range answers {
			f.Add(query, ans, byte(fuzzSameQuestion|(i+j)%2), uint16(i*j))
		}
	}
	f.Add(queries[2], answers[0], byte(fuzzExchangeError), uint16(0))
	f.Add(queries[2], answers[0], byte(fuzzNilAnswer), uint16(0))

	f.Fuzz(func(t *testing.T, query, answer []byte, flags byte, age uint16) {
		req := new(dns.Msg)
		if err := req.Unpack(query); err != nil {
			return // the dns package answers or drops these itself
		}
		failing := false
		exchange := func(upstream bool) ExchangerFunc {
			return func(_ context.Context, m *dns.Msg) (*dns.Msg, error) {
				name := strings.ToLower(m.Question[0].Name)
				if upstream && (name == "cluster.local." || strings.HasSuffix(name, ".cluster.local.")) {
					t.Errorf("cluster name %q sent upstream", m.Question[0].Name)
				}
				switch {
				case failing || flags&fuzzExchangeError != 0:
					return nil, errBoom
				case flags&fuzzNilAnswer != 0:
					return nil, nil
				}
				a := new(dns.Msg)
				if err := a.Unpack(answer); err != nil {
					return nil, err
				}
				a.Id = m.Id
				if flags&fuzzSameQuestion != 0 {
					a.Question = m.Question
				}
				return a, nil
			}
		}
		s, err := NewServer(Config{
			ListenAddr:      "127.0.0.1:0",
			ClusterDomain:   "cluster.local",
			ClusterPrefixes: []netip.Prefix{mustPrefix("10.96.0.0/12"), mustPrefix("fd00:10:96::/112")},
			Cluster:         exchange(false),
			Upstreams:       []string{"192.0.2.1:53"},
			SearchDomains:   []string{"corp.example"},
			CacheSize:       16,
			Timeout:         time.Second,
		})
		if err != nil {
			t.Fatal(err)
		}
		s.upstream = exchange(true)
		clock := newFakeClock()
		s.now = clock.Now

		var remote net.Addr = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
		if flags&fuzzTCP != 0 {
			remote = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
		}
		for range 2 {
			w := &fuzzWriter{remote: remote}
			s.ServeDNS(w, req)
			checkReply(t, req, w)
			clock.Advance(time.Duration(age) * time.Second)
			failing = true
		}
		s.exchanges.Wait()
	})
}

// checkReply checks the one reply w got for req.
func checkReply(t *testing.T, req *dns.Msg, w *fuzzWriter) {
	t.Helper()
	if len(w.replies) != 1 {
		t.Fatalf("%d replies, want 1", len(w.replies))
	}
	resp := w.replies[0]
	if err := w.errs[0]; err != nil {
		t.Fatalf("reply does not pack (the client gets none): %v\n%v", err, resp)
	}
	if resp.Id != req.Id || !resp.Response || resp.Opcode != req.Opcode {
		t.Fatalf("reply header id %d response %v opcode %d, want id %d response true opcode %d",
			resp.Id, resp.Response, resp.Opcode, req.Id, req.Opcode)
	}
	opt := req.IsEdns0()
	switch {
	case resp.Rcode == dns.RcodeBadVers:
		if opt == nil || opt.Version() == 0 {
			t.Fatalf("BADVERS for a query without EDNS version > 0")
		}
	case resp.Rcode < 0 || resp.Rcode > 0xF:
		t.Fatalf("rcode %d", resp.Rcode)
	}
	if len(req.Question) == 1 && (len(resp.Question) != 1 || resp.Question[0] != req.Question[0]) {
		t.Fatalf("reply question %v, want %v", resp.Question, req.Question)
	}
	limit := dns.MinMsgSize
	if opt != nil {
		limit = max(int(opt.UDPSize()), dns.MinMsgSize)
	}
	if _, ok := w.remote.(*net.TCPAddr); ok {
		limit = dns.MaxMsgSize
	}
	if len(w.wire[0]) > limit {
		t.Fatalf("reply of %d bytes, the client takes %d", len(w.wire[0]), limit)
	}
	// The reply must be readable by the client.
	var back dns.Msg
	if err := back.Unpack(w.wire[0]); err != nil {
		t.Fatalf("reply does not unpack: %v", err)
	}
}

// TestMalformedAnswerIsServfail: an answer the dns package would pack into
// bytes a client cannot unpack (an SOA with empty RDATA) is not relayed;
// the client gets SERVFAIL. FuzzServeDNS found the reply that did not
// unpack (testdata/fuzz/FuzzServeDNS/soa-with-empty-rdata).
func TestMalformedAnswerIsServfail(t *testing.T) {
	// owner ".", type SOA, class IN, TTL 60, RDLENGTH 0
	emptySOA, _, err := dns.UnpackRR([]byte{0, 0, 6, 0, 1, 0, 0, 0, 60, 0, 0}, 0)
	if err != nil {
		t.Fatalf("UnpackRR: %v", err)
	}
	s, err := NewServer(Config{ListenAddr: "127.0.0.1:0", Cluster: ExchangerFunc(
		func(_ context.Context, q *dns.Msg) (*dns.Msg, error) {
			m := new(dns.Msg)
			m.SetRcode(q, dns.RcodeNameError)
			m.Ns = []dns.RR{emptySOA}
			return m, nil
		})})
	if err != nil {
		t.Fatal(err)
	}
	req := new(dns.Msg)
	req.SetQuestion("gone.ns.svc.cluster.local.", dns.TypeA)
	w := &fuzzWriter{remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}}
	s.ServeDNS(w, req)
	checkReply(t, req, w)
	if got := w.replies[0].Rcode; got != dns.RcodeServerFailure {
		t.Errorf("rcode %s, want SERVFAIL", dns.RcodeToString[got])
	}
}
