//go:build linux

package plugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/pkg/sftp"

	"github.com/tp-run/tp/volumes/driveropts"
)

// fuseMount is one live FUSE mount of an SFTP path.
type fuseMount struct {
	dir    string
	conn   *Conn
	server *fuse.Server
}

// MountFUSE dials the daemon's mount port, presents the token and mounts the
// SFTP path at dir (an existing directory), read-only when o.ReadOnly. Every
// FUSE operation is bounded by timeout.
func MountFUSE(ctx context.Context, dir string, o driveropts.Options, timeout time.Duration) (Mounted, error) {
	conn, err := Dial(ctx, o.Addr, o.Token, timeout)
	if err != nil {
		return nil, err
	}
	var fi os.FileInfo
	if err := conn.Do(ctx, func(c *sftp.Client) (err error) { fi, err = c.Stat(o.Path); return }); err != nil {
		conn.Close()
		return nil, fmt.Errorf("path %s in the pod: %w", o.Path, err)
	}
	if !fi.IsDir() {
		conn.Close()
		return nil, fmt.Errorf("path %s in the pod is not a directory: a volume mounts directories only", o.Path)
	}
	second, none := time.Second, time.Duration(0)
	flags := uintptr(syscall.MS_NOSUID | syscall.MS_NODEV)
	if o.ReadOnly {
		flags |= syscall.MS_RDONLY
	}
	opts := &fs.Options{
		EntryTimeout: &second, AttrTimeout: &second, NegativeTimeout: &none,
		MountOptions: fuse.MountOptions{
			AllowOther: true, // the container's processes are not the plugin's
			FsName:     "tp:" + o.Path, Name: "tp",
			DirectMount: true, DirectMountStrict: true, DirectMountFlags: flags, // no fusermount in a FROM-scratch plugin
			DisableXAttrs: true, MaxBackground: 64, MaxWrite: 1 << 20, MaxReadAhead: 1 << 20,
		},
	}
	server, err := fs.Mount(dir, &node{r: newRemoteFS(conn, o.Path, o.ReadOnly)}, opts)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("FUSE mount at %s: %w", dir, err)
	}
	return &fuseMount{dir: dir, conn: conn, server: server}, nil
}

// Err says why the mount's connection broke, nil while it works.
func (m *fuseMount) Err() error { return m.conn.Err() }

// Close unmounts, lazily when the mount is busy, so that it never blocks:
// open files fail with EIO from then on.
func (m *fuseMount) Close() error {
	m.conn.Close()
	err := Unmount(m.dir)
	// The server's loops end when the kernel drops the mount: at once, or
	// when the last open file of a lazily detached mount closes (until then
	// its operations fail with EIO). The waiter ends with them.
	done := make(chan struct{})
	go func() { m.server.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
	return err
}

// Unmount detaches whatever is mounted at dir (lazily, so never EBUSY);
// nothing mounted is no error.
func Unmount(dir string) error {
	err := syscall.Unmount(dir, syscall.MNT_DETACH)
	if err == nil || errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOENT) {
		return nil
	}
	return fmt.Errorf("unmount %s: %w", dir, err)
}
