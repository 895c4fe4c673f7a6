package dns

import (
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// latencies records per-query round trips and reports their percentiles.
type latencies []time.Duration

func (l latencies) report(b *testing.B) {
	b.Helper()
	if len(l) == 0 {
		return
	}
	slices.Sort(l)
	pct := func(p float64) float64 {
		return float64(l[int(p*float64(len(l)-1))].Nanoseconds()) / 1e3
	}
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
}

// udpClient is a connected UDP socket for raw round trips.
func udpClient(b *testing.B, addr string) net.Conn {
	b.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		b.Fatalf("dial: %v", err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

func roundTrip(b *testing.B, c net.Conn, wire, buf []byte) {
	if _, err := c.Write(wire); err != nil {
		b.Fatalf("write: %v", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(clientTimeout))
	n, err := c.Read(buf)
	if err != nil {
		b.Fatalf("read: %v", err)
	}
	if n < 12 || buf[3]&0x0f != dns.RcodeSuccess {
		b.Fatalf("bad reply: % x", buf[:n])
	}
}

func pack(b *testing.B, name string, id uint16) []byte {
	b.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.Id = id
	wire, err := m.Pack()
	if err != nil {
		b.Fatalf("pack: %v", err)
	}
	return wire
}

// BenchmarkCachedLookup measures a cached answer over UDP on loopback, client
// round trip included.
func BenchmarkCachedLookup(b *testing.B) {
	s := startServer(b, Config{Cluster: &fakeExchanger{handle: answerA(clusterIP, 3600)}}, nil)
	c := udpClient(b, s.addrString("udp"))
	wire := pack(b, "web.ns.svc.cluster.local.", 1)
	buf := make([]byte, 1500)
	roundTrip(b, c, wire, buf) // warm the cache

	lat := make(latencies, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		roundTrip(b, c, wire, buf)
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	lat.report(b)
}

// BenchmarkColdLookup measures a cache miss answered by an in-process
// cluster exchanger over UDP on loopback, client round trip included.
func BenchmarkColdLookup(b *testing.B) {
	s := startServer(b, Config{Cluster: &fakeExchanger{handle: answerA(clusterIP, 3600)}}, nil)
	c := udpClient(b, s.addrString("udp"))
	buf := make([]byte, 1500)
	i := 0

	lat := make(latencies, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		wire := pack(b, "web"+strconv.Itoa(i)+".ns.svc.cluster.local.", uint16(i))
		i++
		b.StartTimer()
		start := time.Now()
		roundTrip(b, c, wire, buf)
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	lat.report(b)
}

// BenchmarkColdLookupUpstream measures a cache miss forwarded to a
// miekg/dns upstream on loopback.
func BenchmarkColdLookupUpstream(b *testing.B) {
	up := startUpstream(b, func(w dns.ResponseWriter, q *dns.Msg) { _ = w.WriteMsg(replyA(q, upstreamIP, 3600)) }, nil)
	s := startServer(b, Config{Cluster: &fakeExchanger{handle: blockUntilDone}, Upstreams: []string{up}}, nil)
	c := udpClient(b, s.addrString("udp"))
	buf := make([]byte, 1500)
	i := 0

	lat := make(latencies, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		wire := pack(b, "host"+strconv.Itoa(i)+".example.", uint16(i))
		i++
		b.StartTimer()
		start := time.Now()
		roundTrip(b, c, wire, buf)
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	lat.report(b)
}

// BenchmarkCachedParallel measures cached answers with concurrent clients.
func BenchmarkCachedParallel(b *testing.B) {
	s := startServer(b, Config{Cluster: &fakeExchanger{handle: answerA(clusterIP, 3600)}}, nil)
	addr := s.addrString("udp")
	wire := pack(b, "web.ns.svc.cluster.local.", 1)
	roundTrip(b, udpClient(b, addr), wire, make([]byte, 1500))

	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.Dial("udp", addr)
		if err != nil {
			b.Errorf("dial: %v", err)
			return
		}
		defer c.Close()
		buf := make([]byte, 1500)
		for pb.Next() {
			roundTrip(b, c, wire, buf)
		}
	})
}

// discardWriter is a dns.ResponseWriter that packs and drops replies.
type discardWriter struct{ remote net.Addr }

func (w discardWriter) LocalAddr() net.Addr  { return w.remote }
func (w discardWriter) RemoteAddr() net.Addr { return w.remote }
func (w discardWriter) WriteMsg(m *dns.Msg) error {
	_, err := m.Pack()
	return err
}
func (w discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w discardWriter) Close() error                { return nil }
func (w discardWriter) TsigStatus() error           { return nil }
func (w discardWriter) TsigTimersOnly(bool)         {}
func (w discardWriter) Hijack()                     {}

// BenchmarkServeDNSCached measures the handler alone on a cache hit, reply
// packing included and sockets excluded.
func BenchmarkServeDNSCached(b *testing.B) {
	s, err := NewServer(Config{Cluster: &fakeExchanger{handle: answerA(clusterIP, 3600)}})
	if err != nil {
		b.Fatalf("NewServer: %v", err)
	}
	w := discardWriter{remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}}
	req := new(dns.Msg)
	req.SetQuestion("web.ns.svc.cluster.local.", dns.TypeA)
	s.ServeDNS(w, req)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		s.ServeDNS(w, req)
	}
	if st := s.Stats(); st.ClusterForwards != 1 {
		b.Fatalf("cluster forwards: got %d, want 1", st.ClusterForwards)
	}
}
