//go:build linux

package plugin

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/sftp"

	"github.com/tp-run/tp/volumes/driveropts"
	"github.com/tp-run/tp/volumes/internal/mounttest"
)

// mountTest mounts export (a local directory served by an in-process SFTP
// server with the handshake) with FUSE and returns the mount point. It
// skips without /dev/fuse or root.
func mountTest(t *testing.T, s *mounttest.Server, export string, ro bool, timeout time.Duration) (string, Mounted) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse")
	}
	if os.Geteuid() != 0 {
		t.Skip("FUSE direct mounts need root")
	}
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := MountFUSE(context.Background(), dir, driveropts.Options{Addr: s.Addr(), Token: "tok", Path: export, ReadOnly: ro}, timeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if mounted(t, dir) {
			t.Errorf("%s still mounted after Close", dir)
		}
	})
	return dir, m
}

func mounted(t testing.TB, dir string) bool {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range splitFields(string(b)) {
		if f == dir {
			return true
		}
	}
	return false
}

func splitFields(mounts string) []string {
	var out []string
	for _, line := range splitLines(mounts) {
		var fields []string
		start := -1
		for i, c := range line + " " {
			if c == ' ' {
				if start >= 0 {
					fields = append(fields, line[start:i])
				}
				start = -1
			} else if start < 0 {
				start = i
			}
		}
		if len(fields) > 1 {
			out = append(out, fields[1])
		}
	}
	return out
}

func splitLines(s string) []string {
	var out []string
	for len(s) > 0 {
		i := 0
		for i < len(s) && s[i] != '\n' {
			i++
		}
		out = append(out, s[:i])
		if i < len(s) {
			i++
		}
		s = s[i:]
	}
	return out
}

func writeFile(t testing.TB, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestFUSEOps: what a container does with a mounted volume works and lands
// in the export.
func TestFUSEOps(t *testing.T) {
	s := mounttest.NewServer(t, "tok")
	export := t.TempDir()
	writeFile(t, filepath.Join(export, "config", "app.yaml"), "key: value\n")
	if err := os.Symlink("config/app.yaml", filepath.Join(export, "link")); err != nil {
		t.Fatal(err)
	}
	mnt, _ := mountTest(t, s, export, false, 5*time.Second)

	// read, stat, readlink, readdir
	if b, err := os.ReadFile(filepath.Join(mnt, "config", "app.yaml")); err != nil || string(b) != "key: value\n" {
		t.Errorf("read = %q, %v; want the export's file", b, err)
	}
	if target, err := os.Readlink(filepath.Join(mnt, "link")); err != nil || target != "config/app.yaml" {
		t.Errorf("readlink = %q, %v; want config/app.yaml", target, err)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "link")); err != nil || string(b) != "key: value\n" {
		t.Errorf("read through the symlink = %q, %v", b, err)
	}
	fi, err := os.Stat(filepath.Join(mnt, "config"))
	if err != nil || !fi.IsDir() {
		t.Errorf("stat config = %v, %v; want a directory", fi, err)
	}
	// write: create, append, overwrite a range, truncate
	f, err := os.OpenFile(filepath.Join(mnt, "new.txt"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("hello world"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("HELLO"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(export, "new.txt")); string(b) != "HELLO world" {
		t.Errorf("export has %q, want %q", b, "HELLO world")
	}
	if fi, _ := os.Stat(filepath.Join(export, "new.txt")); fi == nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("export's mode = %v, want 0600", fi)
	}
	if _, err := os.OpenFile(filepath.Join(mnt, "new.txt"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); !errors.Is(err, os.ErrExist) {
		t.Errorf("O_EXCL create of an existing file = %v, want EEXIST", err)
	}
	af, err := os.OpenFile(filepath.Join(mnt, "new.txt"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := af.WriteString("!"); err != nil {
		t.Errorf("append: %v", err)
	}
	af.Close()
	if b, _ := os.ReadFile(filepath.Join(export, "new.txt")); string(b) != "HELLO world!" {
		t.Errorf("after the append the export has %q", b)
	}
	if err := os.Truncate(filepath.Join(mnt, "new.txt"), 5); err != nil {
		t.Errorf("truncate: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(mnt, "new.txt")); string(b) != "HELLO" {
		t.Errorf("after truncate read %q, want HELLO", b)
	}
	if err := os.Chmod(filepath.Join(mnt, "new.txt"), 0o640); err != nil {
		t.Errorf("chmod: %v", err)
	}
	mtime := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := os.Chtimes(filepath.Join(mnt, "new.txt"), mtime, mtime); err != nil {
		t.Errorf("chtimes: %v", err)
	}
	if fi, _ := os.Stat(filepath.Join(export, "new.txt")); fi == nil || fi.Mode().Perm() != 0o640 || !fi.ModTime().Equal(mtime) {
		t.Errorf("export's file after chmod and chtimes = %v %v", fi.Mode(), fi.ModTime())
	}
	// mkdir, rename (also over an existing file), symlink, remove
	if err := os.Mkdir(filepath.Join(mnt, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(mnt, "d"), 0o755); !errors.Is(err, os.ErrExist) {
		t.Errorf("mkdir of an existing directory = %v, want EEXIST", err)
	}
	if err := os.Rename(filepath.Join(mnt, "new.txt"), filepath.Join(mnt, "d", "moved.txt")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(mnt, "other.txt"), "other")
	if err := os.Rename(filepath.Join(mnt, "other.txt"), filepath.Join(mnt, "d", "moved.txt")); err != nil {
		t.Errorf("rename over an existing file: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(export, "d", "moved.txt")); string(b) != "other" {
		t.Errorf("export's d/moved.txt = %q, want other", b)
	}
	if err := os.Symlink("d/moved.txt", filepath.Join(mnt, "l2")); err != nil {
		t.Fatal(err)
	}
	if target, _ := os.Readlink(filepath.Join(export, "l2")); target != "d/moved.txt" {
		t.Errorf("export's symlink = %q, want d/moved.txt", target)
	}
	if err := os.Remove(filepath.Join(mnt, "d")); !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, syscall.EEXIST) {
		t.Errorf("rmdir of a non-empty directory = %v, want ENOTEMPTY", err)
	}
	entries, err := os.ReadDir(mnt)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"config", "d", "l2", "link"}; !slices.Equal(names, want) {
		t.Errorf("readdir = %q, want %q", names, want)
	}
	if err := os.RemoveAll(filepath.Join(mnt, "d")); err != nil {
		t.Errorf("remove all: %v", err)
	}
	if err := os.Remove(filepath.Join(mnt, "l2")); err != nil {
		t.Errorf("remove a symlink: %v", err)
	}
	if _, err := os.Stat(filepath.Join(export, "d")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("export's d after remove: %v, want gone", err)
	}
	if _, err := os.Stat(filepath.Join(mnt, "nope")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat of a missing file = %v, want ENOENT", err)
	}
	// a file made in the export after a listing shows up
	if _, err := os.ReadDir(mnt); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(export, "late.txt"), "late")
	if b, err := os.ReadFile(filepath.Join(mnt, "late.txt")); err != nil || string(b) != "late" {
		t.Errorf("read of a file the pod just wrote = %q, %v", b, err)
	}
}

// TestFUSEBigFile: a file larger than one FUSE request reads back whole.
func TestFUSEBigFile(t *testing.T) {
	s := mounttest.NewServer(t, "tok")
	export := t.TempDir()
	data := make([]byte, 5<<20+123)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := os.WriteFile(filepath.Join(export, "big"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	mnt, _ := mountTest(t, s, export, false, 5*time.Second)
	got, err := os.ReadFile(filepath.Join(mnt, "big"))
	if err != nil || !slices.Equal(got, data) {
		t.Fatalf("read %d bytes, %v; want the %d bytes of the export", len(got), err, len(data))
	}
	if err := os.WriteFile(filepath.Join(mnt, "big2"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(export, "big2")); !slices.Equal(got, data) {
		t.Errorf("export's big2 has %d bytes, want the %d written", len(got), len(data))
	}
}

// TestFUSEReadOnly: a read-only mount reads and refuses every write with EROFS.
func TestFUSEReadOnly(t *testing.T) {
	s := mounttest.NewServer(t, "tok")
	export := t.TempDir()
	writeFile(t, filepath.Join(export, "f"), "data")
	mnt, _ := mountTest(t, s, export, true, 5*time.Second)
	if b, err := os.ReadFile(filepath.Join(mnt, "f")); err != nil || string(b) != "data" {
		t.Errorf("read = %q, %v", b, err)
	}
	for name, op := range map[string]func() error{
		"create":   func() error { return os.WriteFile(filepath.Join(mnt, "g"), nil, 0o644) },
		"write":    func() error { return os.WriteFile(filepath.Join(mnt, "f"), []byte("x"), 0o644) },
		"mkdir":    func() error { return os.Mkdir(filepath.Join(mnt, "d"), 0o755) },
		"remove":   func() error { return os.Remove(filepath.Join(mnt, "f")) },
		"rename":   func() error { return os.Rename(filepath.Join(mnt, "f"), filepath.Join(mnt, "h")) },
		"chmod":    func() error { return os.Chmod(filepath.Join(mnt, "f"), 0o600) },
		"symlink":  func() error { return os.Symlink("f", filepath.Join(mnt, "l")) },
		"truncate": func() error { return os.Truncate(filepath.Join(mnt, "f"), 0) },
	} {
		if err := op(); !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s on a read-only mount = %v, want EROFS", name, err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(export, "f")); string(b) != "data" {
		t.Errorf("export's file = %q after refused writes", b)
	}
}

// TestFUSEStall: when the server stops answering mid-read, the read fails
// with EIO within the timeout, later operations fail at once, and Close
// (the unmount) does not block.
func TestFUSEStall(t *testing.T) {
	s := mounttest.NewServer(t, "tok")
	export := t.TempDir()
	writeFile(t, filepath.Join(export, "f"), string(make([]byte, 1<<20)))
	mnt, m := mountTest(t, s, export, false, time.Second)
	f, err := os.Open(filepath.Join(mnt, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	if _, err := f.Read(buf); err != nil {
		t.Fatal(err)
	}
	s.Stall()
	start := time.Now()
	_, err = io.ReadAll(f)
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("read during a stall = %v, want EIO", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the stalled read failed after %v, want about 1s", d)
	}
	if m.Err() == nil {
		t.Error("Err() = nil after a stall")
	}
	start = time.Now()
	if _, err := os.ReadDir(mnt); !errors.Is(err, syscall.EIO) {
		t.Errorf("readdir after the stall = %v, want EIO", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("readdir after the stall took %v, want at once", d)
	}
}

// TestFUSEBreak: a connection that breaks fails the operations with EIO at once.
func TestFUSEBreak(t *testing.T) {
	s := mounttest.NewServer(t, "tok")
	export := t.TempDir()
	writeFile(t, filepath.Join(export, "f"), "x")
	mnt, _ := mountTest(t, s, export, false, 10*time.Second)
	s.Break()
	start := time.Now()
	if _, err := os.ReadFile(filepath.Join(mnt, "g")); !errors.Is(err, syscall.EIO) {
		t.Errorf("read after the break = %v, want EIO", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v, want at once", d)
	}
}

// TestMountNotADirectory: a path that is a file or missing fails the mount
// with what to fix.
func TestMountErrors(t *testing.T) {
	s := mounttest.NewServer(t, "tok")
	export := t.TempDir()
	writeFile(t, filepath.Join(export, "file"), "x")
	dir := t.TempDir()
	for _, p := range []string{filepath.Join(export, "file"), filepath.Join(export, "missing")} {
		if _, err := MountFUSE(context.Background(), dir, driveropts.Options{Addr: s.Addr(), Token: "tok", Path: p}, time.Second); err == nil {
			t.Errorf("mount of %s succeeded, want an error", p)
		}
	}
	if _, err := MountFUSE(context.Background(), dir, driveropts.Options{Addr: s.Addr(), Token: "bad", Path: export}, time.Second); !errors.Is(err, ErrRefused) {
		t.Errorf("mount with a wrong token = %v, want ErrRefused", err)
	}
}

// TestFUSERequestServer: the operations against an sftp.RequestServer (what
// the traffic-agent runs), whose answers differ from the plain server's.
func TestFUSERequestServer(t *testing.T) {
	s := mounttest.NewRequestServer(t, "tok", sftp.InMemHandler())
	mnt, _ := mountTest(t, s, "/", false, 5*time.Second)
	if err := os.Mkdir(filepath.Join(mnt, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(mnt, "d", "f"), "hello")
	if b, err := os.ReadFile(filepath.Join(mnt, "d", "f")); err != nil || string(b) != "hello" {
		t.Errorf("read back %q, %v", b, err)
	}
	f, err := os.OpenFile(filepath.Join(mnt, "d", "f"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(" world"); err != nil {
		t.Errorf("append: %v", err)
	}
	if err := f.Sync(); err != nil {
		t.Errorf("fsync: %v", err)
	}
	f.Close()
	if err := os.Rename(filepath.Join(mnt, "d", "f"), filepath.Join(mnt, "g")); err != nil {
		t.Errorf("rename: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "g")); err != nil || string(b) != "hello world" {
		t.Errorf("read after the rename %q, %v", b, err)
	}
	if err := os.Symlink("g", filepath.Join(mnt, "l")); err != nil {
		t.Errorf("symlink: %v", err)
	} else if target, err := os.Readlink(filepath.Join(mnt, "l")); err != nil || target != "g" {
		t.Errorf("readlink = %q, %v", target, err)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(mnt, &st); err != nil {
		t.Errorf("statfs: %v", err)
	}
	entries, err := os.ReadDir(mnt)
	if err != nil || len(entries) != 3 {
		t.Errorf("readdir = %v, %v; want d, g, l", entries, err)
	}
	if err := os.Remove(filepath.Join(mnt, "g")); err != nil {
		t.Errorf("remove: %v", err)
	}
	if err := os.Remove(filepath.Join(mnt, "d")); err != nil {
		t.Errorf("rmdir: %v", err)
	}
}

// TestFUSECloseBusy: unmounting a mount with an open file returns at once,
// the mount is gone, and the open file fails instead of hanging.
func TestFUSECloseBusy(t *testing.T) {
	if _, err := os.Stat("/dev/fuse"); err != nil || os.Geteuid() != 0 {
		t.Skip("needs /dev/fuse and root")
	}
	s := mounttest.NewServer(t, "tok")
	export := t.TempDir()
	writeFile(t, filepath.Join(export, "f"), "data")
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := MountFUSE(context.Background(), dir, driveropts.Options{Addr: s.Addr(), Token: "tok", Path: export}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	start := time.Now()
	if err := m.Close(); err != nil {
		t.Errorf("Close of a busy mount: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close of a busy mount took %v", d)
	}
	if mounted(t, dir) {
		t.Errorf("%s still mounted after Close", dir)
	}
	if _, err := f.Read(make([]byte, 4)); err == nil {
		t.Error("a read of a file of the unmounted volume succeeded, want an error")
	}
}

// TestReadAheadAfterOtherHandlesWrite: what a handle read ahead while
// another handle of the file held a write unsent (write-behind) is not
// served once that write is sent (close): the change counts from when the
// server has the bytes.
func TestReadAheadAfterOtherHandlesWrite(t *testing.T) {
	s := mounttest.NewServer(t, "tok")
	export := t.TempDir()
	p := filepath.Join(export, "f")
	const size = 2 << 20
	if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c, err := Dial(ctx, s.Addr(), "tok", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	n := &node{r: newRemoteFS(c, export, false)}
	n.size.Store(size)
	open := func() *handle {
		var f *sftp.File
		if err := c.Do(ctx, func(cl *sftp.Client) (err error) { f, err = cl.OpenFile(p, os.O_RDWR); return }); err != nil {
			t.Fatal(err)
		}
		h := newHandle(n, f)
		t.Cleanup(func() { h.Release(ctx) })
		return h
	}
	writer, reader := open(), open()
	readAt := func(off int64) []byte {
		t.Helper()
		buf := make([]byte, 128<<10)
		res, e := reader.Read(ctx, buf, off)
		if e != 0 {
			t.Fatalf("read at %d: %v", off, e)
		}
		b, _ := res.Bytes(buf)
		return b
	}
	if _, e := writer.Write(ctx, bytes.Repeat([]byte("x"), 4096), 512<<10); e != 0 { // held: write-behind
		t.Fatal(e)
	}
	readAt(0)
	readAt(128 << 10) // sequential: the window ahead reads the old bytes at 512 KiB
	waitIdle(t, reader.ra)
	if e := writer.Flush(ctx); e != 0 {
		t.Fatal(e)
	}
	if got := readAt(512 << 10); !bytes.Equal(got[:4096], bytes.Repeat([]byte("x"), 4096)) {
		t.Errorf("read after the other handle's close: got %q..., want the written x's", got[:8])
	}
}
