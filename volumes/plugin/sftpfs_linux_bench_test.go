//go:build linux

package plugin

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/tp-run/tp/volumes/driveropts"
	"github.com/tp-run/tp/volumes/internal/mounttest"
)

// The benchmarks measure the plugin's own cost (FUSE + SFTP over loopback
// TCP, no tunnel): go test -run '^$' -bench . ./volumes/plugin/

// rtts are the round trips the benchmarks run with: loopback, and about
// the tunnel's (agent, manager and daemon container on one machine).
var rtts = []time.Duration{0, time.Millisecond, 2 * time.Millisecond}

// BenchmarkSequentialRead reads a 64 MiB file through the mount, as cat
// does (128 KiB reads).
func BenchmarkSequentialRead(b *testing.B) {
	for _, rtt := range rtts {
		b.Run("rtt="+rtt.String(), func(b *testing.B) {
			s := mounttest.NewServer(b, "tok")
			s.SetLatency(rtt)
			export := b.TempDir()
			const size = 64 << 20
			if err := os.WriteFile(filepath.Join(export, "big"), make([]byte, size), 0o644); err != nil {
				b.Fatal(err)
			}
			mnt := benchMount(b, s, export)
			b.SetBytes(size)
			cpu0 := cpuTime()
			for b.Loop() {
				f, err := os.Open(filepath.Join(mnt, "big"))
				if err != nil {
					b.Fatal(err)
				}
				if n, err := io.CopyBuffer(io.Discard, f, make([]byte, 128<<10)); err != nil || n != size {
					b.Fatalf("read %d, %v", n, err)
				}
				f.Close()
			}
			b.ReportMetric(float64((cpuTime()-cpu0).Milliseconds())/float64(b.N*size>>20), "cpu-ms/MiB")
		})
	}
}

// BenchmarkSmallFiles reads 200 small files, each opened, read and closed.
func BenchmarkSmallFiles(b *testing.B) {
	for _, rtt := range rtts {
		b.Run("rtt="+rtt.String(), func(b *testing.B) {
			s := mounttest.NewServer(b, "tok")
			s.SetLatency(rtt)
			export := b.TempDir()
			const n = 200
			for i := range n {
				if err := os.WriteFile(filepath.Join(export, fmt.Sprintf("f%04d", i)), []byte("file\n"), 0o644); err != nil {
					b.Fatal(err)
				}
			}
			mnt := benchMount(b, s, export)
			for b.Loop() {
				for i := range n {
					if _, err := os.ReadFile(filepath.Join(mnt, fmt.Sprintf("f%04d", i))); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*n), "µs/file")
		})
	}
}

// BenchmarkWalk lists and stats a tree of 1000 files (find + stat).
func BenchmarkWalk(b *testing.B) {
	s := mounttest.NewServer(b, "tok")
	export := b.TempDir()
	for i := range 1000 {
		dir := filepath.Join(export, fmt.Sprintf("d%02d", i%20))
		_ = os.MkdirAll(dir, 0o755)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%04d", i)), []byte("x"), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	mnt := benchMount(b, s, export)
	for b.Loop() {
		n := 0
		err := filepath.Walk(mnt, func(_ string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				n++
			}
			return err
		})
		if err != nil || n != 1000 {
			b.Fatalf("walked %d files, %v", n, err)
		}
		time.Sleep(listingTTL) // every round misses the kernel's and the listing's caches
	}
}

// cpuTime is the process's CPU time (client, server and the kernel's FUSE
// work for the reader): on a shared machine a steadier measure than the
// wall clock.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchMount(b *testing.B, s *mounttest.Server, export string) string {
	b.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil || os.Geteuid() != 0 {
		b.Skip("needs /dev/fuse and root")
	}
	dir := filepath.Join(b.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	m, err := MountFUSE(b.Context(), dir, driveropts.Options{Addr: s.Addr(), Token: "tok", Path: export}, 10*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = m.Close() })
	return dir
}
