package dns

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

const dockerIP = "172.18.0.5"

// dockerFixture is a server with a Docker DNS at dockerAddr, an upstream that answers every A question with upstreamIP and a
// cluster that answers with clusterIP.
type dockerFixture struct {
	srv      *Server
	cluster  *fakeExchanger
	upstream atomic.Int64 // questions the upstream got
}

func newDockerFixture(t *testing.T, dockerAddr string, clock *fakeClock) *dockerFixture {
	t.Helper()
	f := &dockerFixture{cluster: &fakeExchanger{handle: answerA(clusterIP, 30)}}
	up := startUpstream(t, func(w dns.ResponseWriter, q *dns.Msg) {
		f.upstream.Add(1)
		_ = w.WriteMsg(replyA(q, upstreamIP, 300))
	}, nil)
	f.srv = startServer(t, Config{
		ClusterDomain: "cluster.local",
		Cluster:       f.cluster,
		Upstreams:     []string{up},
		DockerDNS:     dockerAddr,
		Timeout:       4 * time.Second,
	}, clock)
	return f
}

// startDocker runs a fake Docker DNS that counts its questions into n and
// answers with handle.
func startDocker(t *testing.T, n *atomic.Int64, handle func(w dns.ResponseWriter, q *dns.Msg)) string {
	t.Helper()
	return startUpstream(t, func(w dns.ResponseWriter, q *dns.Msg) {
		n.Add(1)
		handle(w, q)
	}, nil)
}

// dockerNames answers its own names (api, db) with dockerIP and TTL 600,
// as Docker does, and NXDOMAIN otherwise.
func dockerNames(w dns.ResponseWriter, q *dns.Msg) {
	switch strings.ToLower(q.Question[0].Name) {
	case "api.", "db.":
		_ = w.WriteMsg(replyA(q, dockerIP, 600))
	default:
		m := new(dns.Msg)
		m.SetRcode(q, dns.RcodeNameError)
		_ = w.WriteMsg(m)
	}
}

func answeredBy(r *dns.Msg) string {
	switch {
	case r.Rcode == dns.RcodeNameError:
		return "nxdomain"
	case r.Rcode != dns.RcodeSuccess:
		return dns.RcodeToString[r.Rcode]
	case len(r.Answer) != 1:
		return "no answer"
	case strings.Contains(r.Answer[0].String(), dockerIP):
		return "docker"
	case strings.Contains(r.Answer[0].String(), upstreamIP):
		return "upstream"
	case strings.Contains(r.Answer[0].String(), clusterIP):
		return "cluster"
	}
	return r.String()
}

// TestDockerDNSAnswersNonClusterNames: Docker's DNS answers the names
// outside the cluster (compose's service names), the cluster's names never
// reach it, and Docker's NXDOMAIN is the answer.
func TestDockerDNSAnswersNonClusterNames(t *testing.T) {
	var n atomic.Int64
	f := newDockerFixture(t, startDocker(t, &n, dockerNames), nil)
	tests := []struct {
		name, want   string
		docker, upst int64 // forwards this question adds
	}{
		{"api.", "docker", 1, 0},
		{"DB.", "docker", 1, 0},
		{"api.ns.svc.cluster.local.", "cluster", 0, 0},
		{"nothere.", "nxdomain", 1, 0},
		{"example.com.", "nxdomain", 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d0, u0 := n.Load(), f.upstream.Load()
			r := query(t, "udp", f.srv.addrString("udp"), tt.name, dns.TypeA, 0)
			if got := answeredBy(r); got != tt.want {
				t.Fatalf("answered by: got %s, want %s", got, tt.want)
			}
			if d, u := n.Load()-d0, f.upstream.Load()-u0; d != tt.docker || u != tt.upst {
				t.Errorf("forwards: got docker %d upstream %d, want docker %d upstream %d", d, u, tt.docker, tt.upst)
			}
		})
	}
	if st := f.srv.Stats(); st.DockerForwards != 4 {
		t.Errorf("Stats.DockerForwards: got %d, want 4", st.DockerForwards)
	}
}

// TestDockerDNSFailureFallsBackToUpstreams: without a usable answer from
// Docker's DNS (the daemon container is on no user-defined network, so
// nobody listens; Docker fails; Docker does not answer) the original
// resolvers answer, well before the forward deadline.
func TestDockerDNSFailureFallsBackToUpstreams(t *testing.T) {
	var n atomic.Int64
	tests := []struct {
		name, docker string
	}{
		{"nobody listens", closedPort(t)},
		{"servfail", startDocker(t, &n, func(w dns.ResponseWriter, q *dns.Msg) {
			m := new(dns.Msg)
			m.SetRcode(q, dns.RcodeServerFailure)
			_ = w.WriteMsg(m)
		})},
		{"refused", startDocker(t, &n, func(w dns.ResponseWriter, q *dns.Msg) {
			m := new(dns.Msg)
			m.SetRcode(q, dns.RcodeRefused)
			_ = w.WriteMsg(m)
		})},
		{"never answers", blackHole(t)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newDockerFixture(t, tt.docker, nil)
			start := time.Now()
			r := query(t, "udp", f.srv.addrString("udp"), "example.com.", dns.TypeA, 0)
			if got := answeredBy(r); got != "upstream" {
				t.Fatalf("answered by: got %s, want upstream", got)
			}
			// The forward deadline is 4s: a fallback that waited for it
			// would be a stall of every name.
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("answer took %v, want well under the 4s forward deadline", d)
			}
		})
	}
}

// TestDockerDNSLoop: Docker's DNS that has this server as its resolver
// forwards the questions it does not know back, with their ID; the server
// answers those from the upstreams instead of waiting for itself.
func TestDockerDNSLoop(t *testing.T) {
	var srvAddr atomic.Value
	var n atomic.Int64
	docker := startDocker(t, &n, func(w dns.ResponseWriter, q *dns.Msg) {
		if strings.EqualFold(q.Question[0].Name, "api.") {
			_ = w.WriteMsg(replyA(q, dockerIP, 600))
			return
		}
		// Forward as Docker does: the same message, the same ID.
		c := &dns.Client{Timeout: 3 * time.Second}
		r, _, err := c.Exchange(q, srvAddr.Load().(string))
		if err != nil {
			m := new(dns.Msg)
			m.SetRcode(q, dns.RcodeServerFailure)
			_ = w.WriteMsg(m)
			return
		}
		_ = w.WriteMsg(r)
	})
	f := newDockerFixture(t, docker, nil)
	srvAddr.Store(f.srv.addrString("udp"))
	start := time.Now()
	r := query(t, "udp", f.srv.addrString("udp"), "example.com.", dns.TypeA, 0)
	if got := answeredBy(r); got != "upstream" {
		t.Fatalf("answered by: got %s, want upstream", got)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("answer took %v, want well under the 4s forward deadline", d)
	}
	if st := f.srv.Stats(); st.Looped != 1 {
		t.Errorf("Stats.Looped: got %d, want 1", st.Looped)
	}
	if r := query(t, "udp", f.srv.addrString("udp"), "api.", dns.TypeA, 0); answeredBy(r) != "docker" {
		t.Errorf("api.: got %v, want Docker's answer", r)
	}
}

// TestDockerNamesCachedBriefly: Docker answers its names with TTL 600, but
// compose recreates containers with new addresses: single-label names are
// cached for dockerTTL only.
func TestDockerNamesCachedBriefly(t *testing.T) {
	clock := newFakeClock()
	var n atomic.Int64
	f := newDockerFixture(t, startDocker(t, &n, dockerNames), clock)
	addr := f.srv.addrString("udp")
	query(t, "udp", addr, "api.", dns.TypeA, 0)
	query(t, "udp", addr, "api.", dns.TypeA, 0)
	if got := n.Load(); got != 1 {
		t.Fatalf("Docker asked %d times for two questions in a row, want 1 (cached)", got)
	}
	clock.Advance(dockerTTL + time.Second)
	query(t, "udp", addr, "api.", dns.TypeA, 0)
	if got := n.Load(); got != 2 {
		t.Errorf("Docker asked %d times after %v, want 2 (expired)", got, dockerTTL+time.Second)
	}
}

// TestDockerDNSConfig: DockerDNS must be an ip:port other than the server's own.
func TestDockerDNSConfig(t *testing.T) {
	for _, addr := range []string{"127.0.0.11", "127.0.0.1:53"} {
		_, err := NewServer(Config{ListenAddr: "127.0.0.1:53", Cluster: &fakeExchanger{}, DockerDNS: addr})
		if err == nil {
			t.Errorf("DockerDNS %q: got no error, want one", addr)
		}
	}
	if _, err := NewServer(Config{Cluster: &fakeExchanger{}, DockerDNS: DefaultDockerDNS}); err != nil {
		t.Errorf("DockerDNS %s: %v", DefaultDockerDNS, err)
	}
}
