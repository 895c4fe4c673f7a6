package dns

import (
	"bufio"
	"bytes"
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// stubLookup resolves name like the C library with the given search list and
// ndots: a name with fewer dots than ndots tries the search list first. It
// returns the first A answer and the candidate names it asked.
func stubLookup(t *testing.T, addr, name string, search []string, ndots int) (ip string, asked []string) {
	t.Helper()
	var candidates []string
	if strings.HasSuffix(name, ".") {
		candidates = []string{name}
	} else {
		expanded := make([]string, 0, len(search))
		for _, s := range search {
			expanded = append(expanded, name+"."+s+".")
		}
		if strings.Count(name, ".") >= ndots {
			candidates = append([]string{name + "."}, expanded...)
		} else {
			candidates = append(expanded, name+".")
		}
	}
	for _, c := range candidates {
		asked = append(asked, c)
		r := query(t, "udp", addr, c, dns.TypeA, 0)
		if r.Rcode == dns.RcodeSuccess && len(r.Answer) > 0 {
			return r.Answer[len(r.Answer)-1].(*dns.A).A.String(), asked
		}
	}
	return "", asked
}

// renderedSearch returns the search list and ndots of a rendered resolv.conf.
func renderedSearch(t *testing.T, conf []byte) ([]string, int) {
	t.Helper()
	var search []string
	ndots := 1
	sc := bufio.NewScanner(bytes.NewReader(conf))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) > 1 && f[0] == "search":
			search = f[1:]
		case len(f) > 1 && f[0] == "options":
			for _, o := range f[1:] {
				if o == "ndots:5" {
					ndots = 5
				}
			}
		}
	}
	return search, ndots
}

// zone answers A questions for the names it holds, NXDOMAIN with an SOA for
// the others, and records every name asked.
type zone struct {
	soa     string
	records map[string]string
	asked   fakeExchanger
}

func newZone(soaName string, records map[string]string) *zone {
	z := &zone{soa: soaName, records: records}
	z.asked.handle = func(_ context.Context, q *dns.Msg) (*dns.Msg, error) {
		m := new(dns.Msg)
		m.SetReply(q)
		name := strings.ToLower(q.Question[0].Name)
		ip, ok := z.records[name]
		switch {
		case !ok:
			m.Rcode = dns.RcodeNameError
			m.Ns = []dns.RR{soa(z.soa, 5, 5)}
		case q.Question[0].Qtype == dns.TypeA:
			m.Answer = []dns.RR{&dns.A{
				Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5},
				A:   netip.MustParseAddr(ip).AsSlice(),
			}}
		default:
			m.Ns = []dns.RR{soa(z.soa, 5, 5)}
		}
		return m, nil
	}
	return z
}

func TestShortNamesResolveLikeInAPod(t *testing.T) {
	cluster := newZone("cluster.local.", map[string]string{
		"web.dev.svc.cluster.local.":            "10.96.0.20",
		"db.other.svc.cluster.local.":           "10.96.0.30",
		"headless.dev.svc.cluster.local.":       "10.244.0.5",
		"pod-0.headless.dev.svc.cluster.local.": "10.244.0.5",
		"10-244-0-5.dev.pod.cluster.local.":     "10.244.0.5",
		"kubernetes.default.svc.cluster.local.": "10.96.0.1",
	})
	upstream := newZone("example.", map[string]string{
		"example.com.":           "93.184.216.34",
		"intranet.corp.example.": "192.0.2.10",
		// A wildcard-like record in the corporate zone: were the search
		// expansion of a cluster FQDN asked upstream, it would win.
		"web.dev.svc.cluster.local.corp.example.": "192.0.2.66",
	})
	up := startUpstream(t, func(w dns.ResponseWriter, q *dns.Msg) {
		m, _ := upstream.asked.Exchange(context.Background(), q)
		_ = w.WriteMsg(m)
	}, nil)

	orig := ResolvConf{Nameservers: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Search: []string{"corp.example"}}
	search, ndots := renderedSearch(t, RenderResolvConf(orig, netip.MustParseAddr("127.0.0.1"), "dev", "cluster.local"))
	s := startServer(t, Config{
		Cluster:       &cluster.asked,
		Upstreams:     []string{up},
		SearchDomains: orig.Search,
	}, nil)
	addr := s.addrString("udp")

	tests := []struct {
		name, want string
	}{
		{"web", "10.96.0.20"},
		{"web.dev", "10.96.0.20"},
		{"web.dev.svc", "10.96.0.20"},
		{"web.dev.svc.cluster.local", "10.96.0.20"},
		{"web.dev.svc.cluster.local.", "10.96.0.20"},
		{"db.other", "10.96.0.30"},
		{"headless", "10.244.0.5"},
		{"pod-0.headless", "10.244.0.5"},
		{"pod-0.headless.dev", "10.244.0.5"},
		{"10-244-0-5.dev.pod", "10.244.0.5"},
		{"kubernetes.default", "10.96.0.1"},
		{"example.com", "93.184.216.34"},
		{"intranet", "192.0.2.10"},
		{"missing", ""},
		{"missing.dev.svc.cluster.local", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, asked := stubLookup(t, addr, tt.name, search, ndots)
			if got != tt.want {
				t.Errorf("lookup %q: got %q, want %q (asked %v)", tt.name, got, tt.want, asked)
			}
		})
	}
	for _, n := range upstream.asked.asked() {
		if strings.Contains(n, "cluster.local") {
			t.Errorf("upstream was asked %q: cluster names must not leak upstream", n)
		}
	}
	for _, n := range cluster.asked.asked() {
		if !strings.HasSuffix(n, ".cluster.local.") {
			t.Errorf("cluster was asked %q: only cluster names go to the cluster", n)
		}
	}
}
