//go:build linux

package plugin

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tp-run/tp/volumes"
	"github.com/tp-run/tp/volumes/internal/mounttest"
)

// The benchmarks measure the plugin's own cost (FUSE + SFTP over loopback
// TCP, no tunnel): go test -run '^$' -bench . ./volumes/plugin/

// BenchmarkSequentialRead reads a 64 MiB file through the mount.
func BenchmarkSequentialRead(b *testing.B) {
	s := mounttest.NewServer(b, "tok")
	export := b.TempDir()
	const size = 64 << 20
	if err := os.WriteFile(filepath.Join(export, "big"), make([]byte, size), 0o644); err != nil {
		b.Fatal(err)
	}
	mnt := benchMount(b, s, export)
	b.SetBytes(size)
	for b.Loop() {
		f, err := os.Open(filepath.Join(mnt, "big"))
		if err != nil {
			b.Fatal(err)
		}
		if n, err := io.CopyBuffer(io.Discard, f, make([]byte, 1<<20)); err != nil || n != size {
			b.Fatalf("read %d, %v", n, err)
		}
		f.Close()
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

func benchMount(b *testing.B, s *mounttest.Server, export string) string {
	b.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil || os.Geteuid() != 0 {
		b.Skip("needs /dev/fuse and root")
	}
	dir := filepath.Join(b.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	m, err := MountFUSE(b.Context(), dir, volumes.Options{Addr: s.Addr(), Token: "tok", Path: export}, 10*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = m.Close() })
	return dir
}
