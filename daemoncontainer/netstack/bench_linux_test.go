//go:build linux

package netstack

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

// Benchmarks compare a connection from the TUN's namespace through the Stack and a loopback
// Dialer (the whole path minus the tunnel) with the same connection made directly on loopback.
//
//	sudo go test -run '^$' -bench . -benchtime 3s ./daemoncontainer/netstack/
//
// BenchmarkLoopback/* is the baseline for BenchmarkTUN/*; MB/s is payload, conns/s counts
// connect + 1-byte echo + close.

// benchServers are the "cluster": discard (9), chargen (19: sends as many bytes as the 8-byte
// big-endian count it reads first) and echo (7), on loopback.
type benchServers struct {
	byPort map[uint16]netip.AddrPort
}

func newBenchServers(tb testing.TB) *benchServers {
	tb.Helper()
	zeros := make([]byte, 1<<20)
	return &benchServers{byPort: map[uint16]netip.AddrPort{
		9: clusterServer(tb, func(c *net.TCPConn) {
			io.Copy(io.Discard, c)
		}),
		19: clusterServer(tb, func(c *net.TCPConn) {
			var n uint64
			if binary.Read(c, binary.BigEndian, &n) != nil {
				return
			}
			for n > 0 {
				chunk := min(n, uint64(len(zeros)))
				if _, err := c.Write(zeros[:chunk]); err != nil {
					return
				}
				n -= chunk
			}
		}),
		7: clusterServer(tb, echo),
	}}
}

func (s *benchServers) Dial(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
	addr, ok := s.byPort[dst.Port()]
	if !ok {
		return nil, fmt.Errorf("no bench server on port %d", dst.Port())
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr.String())
}

// benchClient dials the bench servers either through the TUN or directly.
type benchClient struct {
	// dial connects to the server on port on the i-th address.
	dial func(ctx context.Context, i int, port uint16) (net.Conn, error)
	// run runs a client goroutine body where dial works (inside the namespace for the TUN).
	run func(fn func() error) error
}

func loopbackClient(servers *benchServers) benchClient {
	return benchClient{
		dial: func(ctx context.Context, _ int, port uint16) (net.Conn, error) {
			return servers.Dial(ctx, "tcp", netip.AddrPortFrom(netip.Addr{}, port))
		},
		run: func(fn func() error) error { return fn() },
	}
}

func tunClient(n *tunNet) benchClient {
	return benchClient{
		dial: func(ctx context.Context, i int, port uint16) (net.Conn, error) {
			dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96 + byte(i>>16&0x0f), byte(i >> 8), byte(i)}), port)
			var d net.Dialer
			return d.DialContext(ctx, "tcp", dst.String())
		},
		run: n.ns.Do,
	}
}

func BenchmarkLoopback(b *testing.B) {
	benchPaths(b, loopbackClient(newBenchServers(b)))
}

func BenchmarkTUN(b *testing.B) {
	servers := newBenchServers(b)
	n := newTUNNet(b, servers)
	benchPaths(b, tunClient(n))
}

func benchPaths(b *testing.B, c benchClient) {
	const chunk = 1 << 20
	b.Run("upload", func(b *testing.B) {
		defer reportCPU(b, chunk)()
		b.SetBytes(chunk)
		buf := make([]byte, chunk)
		err := c.run(func() error {
			conn, err := c.dial(context.Background(), 1, 9)
			if err != nil {
				return err
			}
			defer conn.Close()
			b.ResetTimer()
			for range b.N {
				if _, err := conn.Write(buf); err != nil {
					return err
				}
			}
			// Wait until the server has read everything: it closes after EOF.
			conn.(*net.TCPConn).CloseWrite()
			_, err = io.Copy(io.Discard, conn)
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
	})
	b.Run("download", func(b *testing.B) {
		defer reportCPU(b, chunk)()
		b.SetBytes(chunk)
		err := c.run(func() error {
			conn, err := c.dial(context.Background(), 2, 19)
			if err != nil {
				return err
			}
			defer conn.Close()
			b.ResetTimer()
			if err := binary.Write(conn, binary.BigEndian, uint64(b.N)*chunk); err != nil {
				return err
			}
			n, err := io.CopyBuffer(io.Discard, conn, make([]byte, 256<<10))
			if err == nil && n != int64(b.N)*chunk {
				err = fmt.Errorf("downloaded %d bytes, want %d", n, b.N*chunk)
			}
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
	})
	b.Run("connections", func(b *testing.B) {
		const workers = 8
		var next atomic.Int64
		var g errgroup.Group
		start := time.Now()
		for range workers {
			g.Go(func() error {
				return c.run(func() error {
					one := make([]byte, 1)
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return nil
						}
						conn, err := c.dial(context.Background(), int(i), 7)
						if err != nil {
							return err
						}
						_, err = conn.Write(one)
						if err == nil {
							_, err = io.ReadFull(conn, one)
						}
						conn.Close()
						if err != nil {
							return err
						}
					}
				})
			})
		}
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "conns/s")
	})
}

// BenchmarkTUNMemory reports the process's heap and RSS with the Stack idle, with 1000 open
// connections, and with 1000 connections echoing 16 KiB or 1 MiB each concurrently. The servers and
// clients live in the same process but keep their buffers in the kernel (splice), so the
// numbers approximate the daemon's.
func BenchmarkTUNMemory(b *testing.B) {
	servers := newBenchServers(b)
	n := newTUNNet(b, servers)
	c := tunClient(n)
	const conns = 1000

	b.Run("idle", func(b *testing.B) {
		for b.Loop() {
			time.Sleep(time.Millisecond)
		}
		reportMemory(b)
	})

	var open []net.Conn
	b.Cleanup(func() {
		for _, conn := range open {
			conn.Close()
		}
	})
	b.Run("1000-open", func(b *testing.B) {
		err := c.run(func() error {
			for i := len(open); i < conns; i++ {
				conn, err := c.dial(context.Background(), 1000+i, 7)
				if err != nil {
					return err
				}
				open = append(open, conn)
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 1024)
		i := 0
		for b.Loop() { // one 1 KiB echo round trip among 1000 open connections
			conn := open[i%conns]
			i++
			if _, err := conn.Write(buf); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(conn, buf); err != nil {
				b.Fatal(err)
			}
		}
		if got := n.stack.Stats().TCPOpen; got < conns {
			b.Errorf("open flows: got %d, want %d", got, conns)
		}
		reportMemory(b)
	})

	// echoAll runs fn on every open connection concurrently and reports peak memory.
	echoAll := func(b *testing.B, perConn int) {
		var peak memPeak
		stop := peak.sample()
		b.SetBytes(int64(len(open) * perConn))
		payload := make([]byte, min(perConn, 64<<10))
		for b.Loop() {
			var g errgroup.Group
			for _, conn := range open {
				g.Go(func() error {
					var w errgroup.Group
					w.Go(func() error {
						for sent := 0; sent < perConn; sent += len(payload) {
							if _, err := conn.Write(payload); err != nil {
								return err
							}
						}
						return nil
					})
					_, err := io.CopyN(io.Discard, conn, int64(perConn))
					if werr := w.Wait(); err == nil {
						err = werr
					}
					return err
				})
			}
			if err := g.Wait(); err != nil {
				b.Fatal(err)
			}
		}
		stop()
		b.ReportMetric(peak.heap.Load()/(1<<20), "peak-heap-MB")
		b.ReportMetric(peak.live.Load()/(1<<20), "peak-live-MB")
		b.ReportMetric(peak.rss.Load()/(1<<20), "peak-rss-MB")
	}
	// Request/response load: every connection echoes 16 KiB at once.
	b.Run("1000-rr16k", func(b *testing.B) { echoAll(b, 16<<10) })
	// Worst case: every connection streams 1 MiB each way at once.
	b.Run("1000-bulk1m", func(b *testing.B) { echoAll(b, 1<<20) })
}

// reportCPU reports the CPU time the whole process (clients and servers included) spent per
// MiB moved: less sensitive to other load on the machine than MB/s. Call the result at the end.
func reportCPU(b *testing.B, bytesPerOp int) func() {
	start := cpuTime()
	return func() {
		mib := float64(b.N) * float64(bytesPerOp) / (1 << 20)
		b.ReportMetric(float64((cpuTime()-start).Microseconds())/mib, "cpu-µs/MiB")
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportMemory(b *testing.B) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MB")
	b.ReportMetric(float64(ms.StackInuse)/(1<<20), "stacks-MB")
	b.ReportMetric(float64(runtime.NumGoroutine()), "goroutines")
	b.ReportMetric(float64(rss())/(1<<20), "rss-MB")
}

// memPeak samples heap and RSS every 10ms.
type memPeak struct {
	heap, live, rss atomicMax
}

func (p *memPeak) sample() (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			p.heap.update(float64(ms.HeapInuse))
			p.live.update(float64(liveHeap()))
			p.rss.update(float64(rss()))
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

type atomicMax struct{ v atomic.Uint64 }

func (m *atomicMax) update(x float64) {
	for {
		old := m.v.Load()
		if uint64(x) <= old || m.v.CompareAndSwap(old, uint64(x)) {
			return
		}
	}
}

func (m *atomicMax) Load() float64 { return float64(m.v.Load()) }

// liveHeap returns the heap bytes that survived the last GC.
func liveHeap() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// rss returns the process's resident set size in bytes.
func rss() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := bytes.CutPrefix(sc.Bytes(), []byte("VmRSS:")); ok {
			kb, _ := strconv.ParseInt(string(bytes.Fields(v)[0]), 10, 64)
			return kb << 10
		}
	}
	return 0
}
