//go:build linux

package plugin

import (
	"context"
	"errors"
	"hash/fnv"
	"io"
	"os"
	"path"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/pkg/sftp"
)

// listingTTL is how long the attributes of a directory listing answer the
// lookups that follow it (readdirplus, `ls -l`, `find`), unless this mount
// changed something in the meantime.
const listingTTL = time.Second

// remoteFS is what every node of one mount shares.
type remoteFS struct {
	conn     *Conn
	root     string // the mounted path in the SFTP export
	readOnly bool
	// gen counts the changes made through this mount; a listing cached
	// before the latest change answers no lookup.
	gen atomic.Uint64
	// budget is what the mount's open files may still read ahead.
	budget *atomic.Int64

	posixRename, fsync, statvfs, hardlink bool
}

func newRemoteFS(c *Conn, root string, readOnly bool) *remoteFS {
	return &remoteFS{
		conn: c, root: root, readOnly: readOnly, budget: newBudget(),
		posixRename: c.HasExtension("posix-rename@openssh.com"),
		fsync:       c.HasExtension("fsync@openssh.com"),
		statvfs:     c.HasExtension("statvfs@openssh.com"),
		hardlink:    c.HasExtension("hardlink@openssh.com"),
	}
}

func (r *remoteFS) changed() { r.gen.Add(1) }

// node is a file, directory or symlink of the export, known by its path.
type node struct {
	fs.Inode
	r *remoteFS

	// size is the file's size as the kernel last heard it from this node
	// (attributes, writes); dataGen counts the writes and truncates of the
	// file through this mount, each once the server has it: what was read
	// ahead before is stale.
	size    atomic.Int64
	dataGen atomic.Uint64

	mu      sync.Mutex
	listed  time.Time
	listGen uint64
	listing map[string]os.FileInfo
}

var (
	_ fs.NodeLookuper   = (*node)(nil)
	_ fs.NodeGetattrer  = (*node)(nil)
	_ fs.NodeSetattrer  = (*node)(nil)
	_ fs.NodeReaddirer  = (*node)(nil)
	_ fs.NodeOpener     = (*node)(nil)
	_ fs.NodeCreater    = (*node)(nil)
	_ fs.NodeMkdirer    = (*node)(nil)
	_ fs.NodeUnlinker   = (*node)(nil)
	_ fs.NodeRmdirer    = (*node)(nil)
	_ fs.NodeRenamer    = (*node)(nil)
	_ fs.NodeSymlinker  = (*node)(nil)
	_ fs.NodeReadlinker = (*node)(nil)
	_ fs.NodeLinker     = (*node)(nil)
	_ fs.NodeStatfser   = (*node)(nil)
)

func (n *node) remote() string { return path.Join(n.r.root, n.Path(nil)) }

func (n *node) child(name string) string { return path.Join(n.remote(), name) }

func (n *node) do(ctx context.Context, op func(*sftp.Client) error) syscall.Errno {
	return toErrno(n.r.conn.Do(ctx, op))
}

// inode returns the inode for a child whose attributes are fi (which the
// caller answers the kernel): the known one while its type holds, so that
// its number stays the same across lookups.
func (n *node) inode(ctx context.Context, name string, fi os.FileInfo) *fs.Inode {
	mode := posixMode(fi.Mode()) & syscall.S_IFMT
	ch := n.GetChild(name)
	if ch == nil || ch.StableAttr().Mode != mode {
		ch = n.NewInode(ctx, &node{r: n.r}, fs.StableAttr{Mode: mode})
	}
	if cn, ok := ch.Operations().(*node); ok {
		cn.size.Store(fi.Size())
	}
	return ch
}

// grew notes a write up to end through this mount.
func (n *node) grew(end int64) {
	for {
		cur := n.size.Load()
		if end <= cur || n.size.CompareAndSwap(cur, end) {
			return
		}
	}
}

func (n *node) cached(name string) os.FileInfo {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.listing == nil || time.Since(n.listed) > listingTTL || n.listGen != n.r.gen.Load() {
		n.listing = nil
		return nil
	}
	return n.listing[name]
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	fi := n.cached(name)
	if fi == nil {
		p := n.child(name)
		if e := n.do(ctx, func(c *sftp.Client) (err error) { fi, err = c.Lstat(p); return }); e != 0 {
			return nil, e
		}
	}
	fillAttr(fi, &out.Attr)
	return n.inode(ctx, name, fi), 0
}

func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	var fi os.FileInfo
	var e syscall.Errno
	if h, ok := f.(*handle); ok {
		e = n.do(ctx, func(*sftp.Client) (err error) { fi, err = h.f.Stat(); return })
	} else {
		p, root := n.remote(), n.IsRoot()
		e = n.do(ctx, func(c *sftp.Client) (err error) {
			if root { // the mount point follows a symlink, as a bind mount would
				fi, err = c.Stat(p)
			} else {
				fi, err = c.Lstat(p)
			}
			return
		})
	}
	if e != 0 {
		return e
	}
	fillAttr(fi, &out.Attr)
	n.size.Store(fi.Size())
	return 0
}

func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if n.r.readOnly {
		return syscall.EROFS
	}
	n.r.changed()
	p := n.remote()
	h, _ := f.(*handle)
	if h != nil {
		if e := h.send(ctx); e != 0 { // a truncate after the gathered writes
			return e
		}
	}
	e := n.do(ctx, func(c *sftp.Client) error {
		if m, ok := in.GetMode(); ok {
			if err := c.Chmod(p, os.FileMode(m&0o777)|fileModeExtra(m)); err != nil {
				return err
			}
		}
		uid, uok := in.GetUID()
		gid, gok := in.GetGID()
		atime, aok := in.GetATime()
		mtime, mok := in.GetMTime()
		if (uok != gok) || (aok != mok) {
			cur, err := c.Lstat(p)
			if err != nil {
				return err
			}
			st, _ := cur.Sys().(*sftp.FileStat)
			if st != nil && !uok {
				uid = st.UID
			}
			if st != nil && !gok {
				gid = st.GID
			}
			if st != nil && !aok {
				atime = time.Unix(int64(st.Atime), 0)
			}
			if !mok {
				mtime = cur.ModTime()
			}
		}
		if uok || gok {
			if err := c.Chown(p, int(uid), int(gid)); err != nil {
				return err
			}
		}
		if size, ok := in.GetSize(); ok {
			var err error
			if h != nil {
				err = h.f.Truncate(int64(size))
			} else {
				err = c.Truncate(p, int64(size))
			}
			n.dataGen.Add(1) // also after a failure: the server may have truncated
			if err != nil {
				return err
			}
		}
		if aok || mok {
			if err := c.Chtimes(p, atime, mtime); err != nil {
				return err
			}
		}
		return nil
	})
	if e != 0 {
		return e
	}
	return n.Getattr(ctx, f, out)
}

func (n *node) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	p := n.remote()
	gen := n.r.gen.Load()
	var list []os.FileInfo
	if e := n.do(ctx, func(c *sftp.Client) (err error) { list, err = c.ReadDirContext(ctx, p); return }); e != 0 {
		return nil, e
	}
	entries := make([]fuse.DirEntry, 0, len(list))
	listing := make(map[string]os.FileInfo, len(list))
	for _, fi := range list {
		name := fi.Name()
		if name == "." || name == ".." {
			continue
		}
		listing[name] = fi
		entries = append(entries, fuse.DirEntry{Name: name, Mode: posixMode(fi.Mode()), Ino: inodeNumber(path.Join(p, name))})
	}
	n.mu.Lock()
	n.listing, n.listed, n.listGen = listing, time.Now(), gen
	n.mu.Unlock()
	return fs.NewListDirStream(entries), 0
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if n.r.readOnly && (flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC) != 0) {
		return nil, 0, syscall.EROFS
	}
	if flags&syscall.O_TRUNC != 0 {
		n.r.changed()
	}
	p := n.remote()
	var f *sftp.File
	e := n.do(ctx, func(c *sftp.Client) (err error) { f, err = c.OpenFile(p, openFlags(flags)); return })
	if flags&syscall.O_TRUNC != 0 {
		n.dataGen.Add(1) // also after a failure: the server may have truncated
	}
	if e != 0 {
		return nil, 0, e
	}
	if flags&syscall.O_TRUNC != 0 {
		n.size.Store(0)
	}
	return newHandle(n, f), 0, 0
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	if n.r.readOnly {
		return nil, nil, 0, syscall.EROFS
	}
	n.r.changed()
	p := n.child(name)
	var f *sftp.File
	var fi os.FileInfo
	e := n.do(ctx, func(c *sftp.Client) (err error) {
		if f, err = c.OpenFile(p, openFlags(flags)|os.O_CREATE); err != nil {
			if flags&syscall.O_EXCL != 0 && exists(c, p) {
				return os.ErrExist
			}
			return err
		}
		_ = c.Chmod(p, os.FileMode(mode&0o777)) // the server may not let us; its default mode stands then
		fi, err = f.Stat()
		return err
	})
	if e != 0 {
		if f != nil {
			_ = n.r.conn.Do(context.Background(), func(*sftp.Client) error { return f.Close() })
		}
		return nil, nil, 0, e
	}
	fillAttr(fi, &out.Attr)
	ch := n.inode(ctx, name, fi)
	cn := ch.Operations().(*node)
	if flags&syscall.O_TRUNC != 0 {
		cn.dataGen.Add(1) // a file that existed: its other handles' read-ahead is stale
	}
	return ch, newHandle(cn, f), 0, 0
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if n.r.readOnly {
		return nil, syscall.EROFS
	}
	n.r.changed()
	p := n.child(name)
	var fi os.FileInfo
	e := n.do(ctx, func(c *sftp.Client) (err error) {
		if err = c.Mkdir(p); err != nil {
			if exists(c, p) {
				return os.ErrExist
			}
			return err
		}
		_ = c.Chmod(p, os.FileMode(mode&0o777)|fileModeExtra(mode))
		fi, err = c.Lstat(p)
		return err
	})
	if e != 0 {
		return nil, e
	}
	fillAttr(fi, &out.Attr)
	return n.inode(ctx, name, fi), 0
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	if n.r.readOnly {
		return syscall.EROFS
	}
	n.r.changed()
	p := n.child(name)
	return n.do(ctx, func(c *sftp.Client) error { return c.Remove(p) })
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	if n.r.readOnly {
		return syscall.EROFS
	}
	n.r.changed()
	p := n.child(name)
	return n.do(ctx, func(c *sftp.Client) error {
		err := c.RemoveDirectory(p)
		if err != nil && isFailure(err) {
			if list, lerr := c.ReadDir(p); lerr == nil && len(list) > 0 {
				return syscall.ENOTEMPTY
			}
		}
		return err
	})
}

func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if n.r.readOnly {
		return syscall.EROFS
	}
	const renameNoreplace, renameExchange = 1, 2
	if flags&renameExchange != 0 {
		return syscall.EINVAL
	}
	n.r.changed()
	from := n.child(name)
	to := path.Join(n.r.root, newParent.EmbeddedInode().Path(nil), newName)
	return n.do(ctx, func(c *sftp.Client) error {
		if flags&renameNoreplace != 0 {
			if exists(c, to) {
				return os.ErrExist
			}
			return c.Rename(from, to)
		}
		if n.r.posixRename {
			return c.PosixRename(from, to)
		}
		// SFTP v3 rename does not replace: do what rename(2) does, not atomically.
		err := c.Rename(from, to)
		if err != nil && exists(c, to) {
			if rerr := c.Remove(to); rerr != nil {
				return rerr
			}
			err = c.Rename(from, to)
		}
		return err
	})
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if n.r.readOnly {
		return nil, syscall.EROFS
	}
	n.r.changed()
	p := n.child(name)
	var fi os.FileInfo
	e := n.do(ctx, func(c *sftp.Client) (err error) {
		if err = c.Symlink(target, p); err != nil {
			if exists(c, p) {
				return os.ErrExist
			}
			return err
		}
		fi, err = c.Lstat(p)
		return err
	})
	if e != 0 {
		return nil, e
	}
	fillAttr(fi, &out.Attr)
	return n.inode(ctx, name, fi), 0
}

func (n *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if n.r.readOnly {
		return nil, syscall.EROFS
	}
	if !n.r.hardlink {
		return nil, syscall.ENOTSUP
	}
	n.r.changed()
	p := n.child(name)
	old := path.Join(n.r.root, target.EmbeddedInode().Path(nil))
	var fi os.FileInfo
	e := n.do(ctx, func(c *sftp.Client) (err error) {
		if err = c.Link(old, p); err != nil {
			return err
		}
		fi, err = c.Lstat(p)
		return err
	})
	if e != 0 {
		return nil, e
	}
	fillAttr(fi, &out.Attr)
	return n.inode(ctx, name, fi), 0
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	p := n.remote()
	var target string
	if e := n.do(ctx, func(c *sftp.Client) (err error) { target, err = c.ReadLink(p); return }); e != 0 {
		return nil, e
	}
	return []byte(target), 0
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	out.Bsize, out.NameLen = 4096, 255
	if !n.r.statvfs {
		return 0
	}
	p := n.remote()
	var st *sftp.StatVFS
	if e := n.do(ctx, func(c *sftp.Client) (err error) { st, err = c.StatVFS(p); return }); e != 0 {
		if e == syscall.EIO {
			return e
		}
		return 0 // announced but not served (a request server's handler may lack it): no numbers
	}
	out.Blocks, out.Bfree, out.Bavail = st.Blocks, st.Bfree, st.Bavail
	out.Files, out.Ffree = st.Files, st.Ffree
	out.Bsize, out.Frsize, out.NameLen = uint32(st.Bsize), uint32(st.Frsize), uint32(st.Namemax)
	return 0
}

// handle is an open remote file.
type handle struct {
	r  *remoteFS
	n  *node
	f  *sftp.File
	ra *readAhead

	// Sequential writes are gathered up to writeBehind bytes and sent as
	// one WriteAt: programs write in small pieces (8 KB), and each FUSE
	// write would otherwise be one SFTP round trip through the tunnel. They
	// are sent before a write elsewhere, a read, a truncate, an fsync, and
	// on close (FUSE flush), which reports a failed send.
	mu   sync.Mutex
	wbuf []byte // unsent bytes, for offset woff
	woff int64
}

// writeBehind is how much of a sequential write the plugin holds before
// sending it.
const writeBehind = 1 << 20

func newHandle(n *node, f *sftp.File) *handle {
	h := &handle{r: n.r, n: n, f: f}
	h.ra = newReadAhead(h.fetch, n.r.budget)
	return h
}

// fetch is one read of the remote file for the read-ahead: len(buf) bytes
// at off, fewer only at the end of the file, in one round trip.
func (h *handle) fetch(buf []byte, off int64) (int, error) {
	// pkg/sftp's ReadAt asks again after a short answer to a read of one
	// packet (a second round trip to learn of the end of a small file),
	// not to a read of several: each of those is one request whose short
	// answer is the end. So a read that may reach the end asks for more
	// than a packet. (A read known to end before it is one request: a
	// server answers it in full.)
	b := buf
	if len(buf) <= sftpPacket && off+int64(len(buf)) >= h.n.size.Load() {
		b = make([]byte, sftpPacket+1)
	}
	var n int
	err := h.r.conn.Do(context.Background(), func(*sftp.Client) (err error) {
		n, err = h.f.ReadAt(b, off)
		if errors.Is(err, io.EOF) {
			err = nil
		}
		return err
	})
	if err != nil {
		return 0, err
	}
	return copy(buf, b[:n]), nil
}

var (
	_ fs.FileReader   = (*handle)(nil)
	_ fs.FileWriter   = (*handle)(nil)
	_ fs.FileFlusher  = (*handle)(nil)
	_ fs.FileFsyncer  = (*handle)(nil)
	_ fs.FileReleaser = (*handle)(nil)
)

// sendLocked writes the gathered bytes; h.mu is held.
func (h *handle) sendLocked(ctx context.Context) syscall.Errno {
	if len(h.wbuf) == 0 {
		return 0
	}
	buf, off := h.wbuf, h.woff
	h.wbuf = nil // the operation owns buf: one that timed out may still read it
	var n int
	e := toErrno(h.r.conn.Do(ctx, func(*sftp.Client) (err error) {
		n, err = h.f.WriteAt(buf, off)
		// Once the server has the bytes (or some, after a failure): the
		// file's other handles read again what they read ahead.
		h.n.dataGen.Add(1)
		return
	}))
	if e == 0 && n < len(buf) {
		e = syscall.EIO
	}
	return e
}

// send writes what is gathered.
func (h *handle) send(ctx context.Context) syscall.Errno {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sendLocked(ctx)
}

// Flush is close(2) of a descriptor of the file: what is gathered goes out,
// and its error is close's.
func (h *handle) Flush(ctx context.Context) syscall.Errno { return h.send(ctx) }

// Read answers from the read-ahead, whose fetches read into buffers of
// their own, not go-fuse's: a fetch that timed out may still touch its
// buffer until the connection's close ends it.
func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if e := h.send(ctx); e != 0 { // read what was written
		return nil, e
	}
	n, err := h.ra.ReadAt(ctx, dest, off, h.n.dataGen.Load())
	if err != nil {
		return nil, toErrno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if h.r.readOnly {
		return 0, syscall.EROFS
	}
	h.r.changed()
	h.n.grew(off + int64(len(data)))
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.wbuf) > 0 && off != h.woff+int64(len(h.wbuf)) {
		if e := h.sendLocked(ctx); e != 0 {
			return 0, e
		}
	}
	if len(h.wbuf) == 0 {
		h.woff = off
	}
	h.wbuf = append(h.wbuf, data...)
	if len(h.wbuf) >= writeBehind {
		if e := h.sendLocked(ctx); e != 0 {
			return 0, e
		}
	}
	return uint32(len(data)), 0
}

func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	if e := h.send(ctx); e != 0 {
		return e
	}
	if !h.r.fsync || h.r.readOnly {
		return 0
	}
	e := toErrno(h.r.conn.Do(ctx, func(*sftp.Client) error { return h.f.Sync() }))
	if e == syscall.ENOTSUP {
		return 0 // the server writes through; no fsync to ask for
	}
	return e
}

func (h *handle) Release(ctx context.Context) syscall.Errno {
	h.ra.Close() // its fetches end within the connection's deadline
	if h.r.conn.Err() != nil {
		return 0
	}
	// Not the request's context: the kernel does not wait for a release.
	_ = h.send(context.Background()) // a flush came first (close); this is for mmap's writes
	_ = h.r.conn.Do(context.Background(), func(*sftp.Client) error { return h.f.Close() })
	return 0
}

func openFlags(flags uint32) int {
	// O_APPEND stays with the kernel, which sends the offsets; a server's
	// WriteAt may refuse files opened for appending.
	return int(flags) & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_EXCL)
}

func exists(c *sftp.Client, p string) bool {
	_, err := c.Lstat(p)
	return err == nil
}

func isFailure(err error) bool {
	var se *sftp.StatusError
	return errors.As(err, &se) && se.FxCode() == sftp.ErrSSHFxFailure
}

// toErrno maps the errors of an operation to what the kernel returns to the
// caller: EIO for a broken connection, the server's answer otherwise.
func toErrno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	var se *sftp.StatusError
	switch {
	case errors.Is(err, ErrBroken):
		return syscall.EIO
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return syscall.EINTR
	case errors.As(err, &errno):
		return errno
	case errors.Is(err, os.ErrNotExist):
		return syscall.ENOENT
	case errors.Is(err, os.ErrPermission):
		return syscall.EACCES
	case errors.Is(err, os.ErrExist):
		return syscall.EEXIST
	case errors.As(err, &se):
		switch se.FxCode() {
		case sftp.ErrSSHFxNoSuchFile:
			return syscall.ENOENT
		case sftp.ErrSSHFxPermissionDenied:
			return syscall.EACCES
		case sftp.ErrSSHFxOpUnsupported:
			return syscall.ENOTSUP
		case sftp.ErrSSHFxBadMessage:
			return syscall.EINVAL
		}
	}
	return syscall.EIO
}

func fillAttr(fi os.FileInfo, out *fuse.Attr) {
	out.Mode = posixMode(fi.Mode())
	out.Size = uint64(fi.Size())
	out.Blocks = (out.Size + 511) / 512
	out.Blksize = 128 << 10
	out.Nlink = 1
	mtime := uint64(fi.ModTime().Unix())
	out.Mtime, out.Ctime, out.Atime = mtime, mtime, mtime
	if st, ok := fi.Sys().(*sftp.FileStat); ok {
		out.Uid, out.Gid = st.UID, st.GID
		if st.Atime != 0 {
			out.Atime = uint64(st.Atime)
		}
	}
}

// posixMode is the st_mode of an fs.FileMode.
func posixMode(m os.FileMode) uint32 {
	r := uint32(m.Perm()) | fileModeBits(m)
	switch {
	case m.IsDir():
		r |= syscall.S_IFDIR
	case m&os.ModeSymlink != 0:
		r |= syscall.S_IFLNK
	case m&os.ModeNamedPipe != 0:
		r |= syscall.S_IFIFO
	case m&os.ModeSocket != 0:
		r |= syscall.S_IFSOCK
	case m&os.ModeCharDevice != 0:
		r |= syscall.S_IFCHR
	case m&os.ModeDevice != 0:
		r |= syscall.S_IFBLK
	default:
		r |= syscall.S_IFREG
	}
	return r
}

func fileModeBits(m os.FileMode) uint32 {
	var r uint32
	if m&os.ModeSetuid != 0 {
		r |= syscall.S_ISUID
	}
	if m&os.ModeSetgid != 0 {
		r |= syscall.S_ISGID
	}
	if m&os.ModeSticky != 0 {
		r |= syscall.S_ISVTX
	}
	return r
}

// fileModeExtra is the fs.FileMode of a st_mode's setuid, setgid and sticky bits.
func fileModeExtra(m uint32) os.FileMode {
	var r os.FileMode
	if m&syscall.S_ISUID != 0 {
		r |= os.ModeSetuid
	}
	if m&syscall.S_ISGID != 0 {
		r |= os.ModeSetgid
	}
	if m&syscall.S_ISVTX != 0 {
		r |= os.ModeSticky
	}
	return r
}

// inodeNumber is a directory entry's inode number: stable for a path.
func inodeNumber(p string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(p))
	return h.Sum64() | 1
}
