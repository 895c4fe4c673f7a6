package tunnel

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

// The benchmarks compare the tunnel (client -> gRPC over loopback TCP ->
// Server -> loopback TCP -> destination) with a raw TCP connection to the
// destination and with a plain TCP relay (two hops, io.Copy in between).
// Run them with:
//
//	go test -run '^$' -bench . -benchtime 2s ./tunnel/
//
// MB/s is payload throughput for one flow (Bulk) or all flows together
// (BulkParallel). cpu-s/GB is the CPU time the whole process (client, relay
// or tunnel, and destination) spent per GB moved: on a shared machine it is
// steadier than MB/s.

const bulkChunk = 1 << 20

// reportCPU reports the process CPU time per GB moved since start.
func reportCPU(b *testing.B, start time.Duration) {
	b.Helper()
	if used := processCPUTime() - start; used > 0 {
		b.ReportMetric(used.Seconds()/(float64(b.N)*bulkChunk/1e9), "cpu-s/GB")
	}
}

// sink reads everything, then answers one byte.
func sink(c *net.TCPConn) {
	io.Copy(io.Discard, c)
	c.Write([]byte{1})
}

// source sends the number of bytes it is asked for, then half-closes.
func source(c *net.TCPConn) {
	var n uint64
	if err := binary.Read(c, binary.BigEndian, &n); err != nil {
		return
	}
	chunk := make([]byte, bulkChunk)
	for ; n > 0; n -= min(n, bulkChunk) {
		if _, err := c.Write(chunk[:min(n, bulkChunk)]); err != nil {
			return
		}
	}
	c.CloseWrite()
	io.Copy(io.Discard, c)
}

// dialer opens one connection to dst for a benchmark variant.
type benchDialer func(tb testing.TB, dst netip.AddrPort) net.Conn

func benchVariants() []struct {
	name string
	dial func(tb testing.TB) benchDialer
} {
	return []struct {
		name string
		dial func(tb testing.TB) benchDialer
	}{
		{"tcp", func(testing.TB) benchDialer { return rawDial }},
		{"tcp-relay", func(tb testing.TB) benchDialer {
			return func(tb testing.TB, dst netip.AddrPort) net.Conn { return rawDial(tb, relay(tb, dst)) }
		}},
		{"tunnel", func(tb testing.TB) benchDialer {
			env := newEnv(tb, envConfig{})
			return func(tb testing.TB, dst netip.AddrPort) net.Conn { return dial(tb, env.dialer, "tcp", dst) }
		}},
		{"tunnel-paired", func(tb testing.TB) benchDialer { return pairedDialer(tb) }},
	}
}

// pairedDialer opens flows the way an intercepted connection goes: the
// caller's flow (the agent's) is paired by the server with a second flow
// (the client's) that a splice connects to dst, so each byte crosses the
// server's flow-to-flow relay and two flows (the manager's relay, without
// TLS and the port-forward).
func pairedDialer(tb testing.TB) benchDialer {
	env := newEnv(tb, envConfig{})
	env.server.HandlePairing((&testPairer{waiting: map[string]pairHalf{}}).pair)
	n := 0
	return func(tb testing.TB, dst netip.AddrPort) net.Conn {
		tb.Helper()
		n++
		id := fmt.Sprintf("bench/%d", n)
		ctx := context.Background()
		answered := make(chan error, 1)
		go func() {
			client, err := env.dialer.DialFlow(ctx, Flow{Network: "tcp", PairingID: id})
			answered <- err
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", dst.String())
			if err != nil {
				client.Close()
				return
			}
			Splice(ctx, client, up)
		}()
		c, err := env.dialer.DialFlow(ctx, Flow{Network: "tcp", PairingID: id, Destination: dst})
		if err != nil {
			tb.Fatalf("paired dial: %v", err)
		}
		if err := <-answered; err != nil {
			tb.Fatalf("paired client flow: %v", err)
		}
		tb.Cleanup(func() { c.Close() })
		return c
	}
}

func rawDial(tb testing.TB, dst netip.AddrPort) net.Conn {
	tb.Helper()
	c, err := net.Dial("tcp", dst.String())
	if err != nil {
		tb.Fatalf("dial: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// relay starts a plain TCP relay to dst and returns its address.
func relay(tb testing.TB, dst netip.AddrPort) netip.AddrPort {
	tb.Helper()
	return serveTCP(tb, func(c *net.TCPConn) {
		up, err := net.Dial("tcp", dst.String())
		if err != nil {
			return
		}
		defer up.Close()
		var g errgroup.Group
		g.Go(func() error {
			io.Copy(up, c)
			return up.(*net.TCPConn).CloseWrite()
		})
		io.Copy(c, up)
		c.CloseWrite()
		g.Wait()
	})
}

func closeWrite(tb testing.TB, c net.Conn) {
	tb.Helper()
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		tb.Fatalf("CloseWrite: %v", err)
	}
}

// upload sends n chunks to a sink and waits for its answer.
func upload(tb testing.TB, c net.Conn, n int) {
	tb.Helper()
	chunk := make([]byte, bulkChunk)
	for range n {
		if _, err := c.Write(chunk); err != nil {
			tb.Fatalf("Write: %v", err)
		}
	}
	closeWrite(tb, c)
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		tb.Fatalf("waiting for the sink: %v", err)
	}
}

// download asks a source for n chunks and reads them.
func download(tb testing.TB, c net.Conn, n int) {
	tb.Helper()
	if err := binary.Write(c, binary.BigEndian, uint64(n)*bulkChunk); err != nil {
		tb.Fatalf("Write: %v", err)
	}
	got, err := io.Copy(io.Discard, c)
	if err != nil || got != int64(n)*bulkChunk {
		tb.Fatalf("read %d bytes, %v; want %d", got, err, n*bulkChunk)
	}
}

// BenchmarkBulk measures the throughput of one flow.
func BenchmarkBulk(b *testing.B) {
	sinkAddr := serveTCP(b, sink)
	sourceAddr := serveTCP(b, source)
	for _, v := range benchVariants() {
		dialTo := v.dial(b)
		b.Run(v.name+"/upload", func(b *testing.B) {
			c := dialTo(b, sinkAddr)
			b.SetBytes(bulkChunk)
			b.ResetTimer()
			start := processCPUTime()
			upload(b, c, b.N)
			reportCPU(b, start)
		})
		b.Run(v.name+"/download", func(b *testing.B) {
			c := dialTo(b, sourceAddr)
			b.SetBytes(bulkChunk)
			b.ResetTimer()
			start := processCPUTime()
			download(b, c, b.N)
			reportCPU(b, start)
		})
	}
}

// BenchmarkBulkParallel measures the throughput of 8 flows at once (on one
// gRPC connection for the tunnel).
func BenchmarkBulkParallel(b *testing.B) {
	const flows = 8
	sourceAddr := serveTCP(b, source)
	for _, v := range benchVariants() {
		dialTo := v.dial(b)
		b.Run(v.name+"/download", func(b *testing.B) {
			conns := make([]net.Conn, flows)
			for i := range conns {
				conns[i] = dialTo(b, sourceAddr)
			}
			b.SetBytes(bulkChunk)
			b.ResetTimer()
			start := processCPUTime()
			var g errgroup.Group
			for i, c := range conns {
				n := b.N / flows
				if i < b.N%flows {
					n++
				}
				g.Go(func() error {
					download(b, c, n)
					return nil
				})
			}
			g.Wait()
			reportCPU(b, start)
		})
	}
}

// BenchmarkRoundTrip measures the latency of a small request and its echo.
func BenchmarkRoundTrip(b *testing.B) {
	echoAddr := serveTCP(b, echo)
	for _, v := range benchVariants() {
		dialTo := v.dial(b)
		b.Run(v.name, func(b *testing.B) {
			c := dialTo(b, echoAddr)
			msg := make([]byte, 64)
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(msg); err != nil {
					b.Fatalf("Write: %v", err)
				}
				if _, err := io.ReadFull(c, msg); err != nil {
					b.Fatalf("ReadFull: %v", err)
				}
			}
		})
	}
}

// BenchmarkDial measures opening a flow, exchanging one byte and closing it.
func BenchmarkDial(b *testing.B) {
	echoAddr := serveTCP(b, echo)
	b.Run("tcp", func(b *testing.B) {
		for range b.N {
			c, err := net.Dial("tcp", echoAddr.String())
			if err != nil {
				b.Fatalf("Dial: %v", err)
			}
			pingClose(b, c)
		}
	})
	b.Run("tunnel", func(b *testing.B) {
		env := newEnv(b, envConfig{})
		ctx := context.Background()
		b.ResetTimer()
		for range b.N {
			c, err := env.dialer.Dial(ctx, "tcp", echoAddr)
			if err != nil {
				b.Fatalf("Dial: %v", err)
			}
			pingClose(b, c)
		}
	})
}

func pingClose(tb testing.TB, c net.Conn) {
	tb.Helper()
	if _, err := c.Write([]byte{1}); err != nil {
		tb.Fatalf("Write: %v", err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		tb.Fatalf("ReadFull: %v", err)
	}
	closeWrite(tb, c)
	if _, err := io.Copy(io.Discard, c); err != nil {
		tb.Fatalf("waiting for EOF: %v", err)
	}
	c.Close()
}

// BenchmarkRoundTripUnderLoad measures the round trip of a small request on
// one flow while another flow downloads as fast as it can: with the tunnel
// both share one gRPC connection, and gRPC's round-robin writer keeps the
// small flow from waiting behind the bulk one.
func BenchmarkRoundTripUnderLoad(b *testing.B) {
	echoAddr := serveTCP(b, echo)
	sourceAddr := serveTCP(b, source)
	for _, v := range benchVariants() {
		dialTo := v.dial(b)
		b.Run(v.name, func(b *testing.B) {
			bulk := dialTo(b, sourceAddr)
			if err := binary.Write(bulk, binary.BigEndian, uint64(1<<62)); err != nil {
				b.Fatalf("Write: %v", err)
			}
			stop := make(chan struct{})
			var g errgroup.Group
			g.Go(func() error {
				buf := make([]byte, bulkChunk)
				for {
					select {
					case <-stop:
						return nil
					default:
					}
					if _, err := bulk.Read(buf); err != nil {
						return err
					}
				}
			})
			c := dialTo(b, echoAddr)
			msg := make([]byte, 64)
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(msg); err != nil {
					b.Fatalf("Write: %v", err)
				}
				if _, err := io.ReadFull(c, msg); err != nil {
					b.Fatalf("ReadFull: %v", err)
				}
			}
			b.StopTimer()
			close(stop)
			g.Wait()
		})
	}
}
