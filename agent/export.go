package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"

	"github.com/pkg/sftp"
)

// The agent's export: the app container's volume mounts, which the webhook
// mounted under ExportRoot in the agent container, served over SFTP
// (github.com/pkg/sftp's RequestServer). The SFTP path of a file is its path
// in the app container: the app's mountPath P is ExportRoot+P here.
//
// Every file operation goes through an os.Root of ExportRoot: no path and no
// symbolic link may leave it (".." beyond the root, absolute symlinks and
// relative ones that climb out are refused), so the agent's own token
// (/var/run/secrets/tp.run/agent, outside the root) and the rest of its file
// system are out of reach. Relative symlinks inside the root work, such as
// the "..data" links of the kubelet's Secret, ConfigMap and projected
// volumes. Writes are refused with "permission denied" outside any mount
// (the directories above the mount points belong to the agent's read-only
// root file system) and in the mounts the app sees read-only; the kernel
// refuses them there too.
//
// The agent listens on no port for it: it serves an SFTP session only on a
// tunnel flow the traffic-manager paired with a flow the intercept's owner
// opened (WatchMountRequests; docs/intercepts.md, "Volumes").

// errNotWritable is the SFTP "permission denied" of a write the export refuses.
type errNotWritable struct{ msg string }

func (e errNotWritable) Error() string { return e.msg }

// Unwrap makes pkg/sftp send SSH_FX_PERMISSION_DENIED with e's message.
func (errNotWritable) Unwrap() error { return sftp.ErrSSHFxPermissionDenied }

// export serves the tree under an os.Root over SFTP.
type export struct {
	root   *os.Root
	mounts []Mount
}

// openExport opens the export of mounts under dir.
func openExport(dir string, mounts []Mount) (*export, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("export root: %w", err)
	}
	return &export{root: root, mounts: mounts}, nil
}

func (e *export) close() error { return e.root.Close() }

// isFile reports whether the mount at the SFTP path p is a single file (a
// subPath mount of a ConfigMap or Secret key, say), not a directory: Docker
// volumes cannot mount it. False without an export or when p cannot be
// stat'ed (then the mount fails later with the reason).
func (e *export) isFile(p string) bool {
	if e == nil {
		return false
	}
	fi, err := e.root.Stat(rel(p))
	return err == nil && !fi.IsDir()
}

// serve serves one SFTP session on conn until the client ends it, conn
// breaks or ctx ends; it closes conn.
func (e *export) serve(ctx context.Context, conn io.ReadWriteCloser) error {
	srv := sftp.NewRequestServer(conn, sftp.Handlers{FileGet: e, FilePut: e, FileCmd: e, FileList: e},
		sftp.WithRSMaxTxPacket(256<<10))
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	err := srv.Serve()
	srv.Close()
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || ctx.Err() != nil {
		return nil
	}
	return err
}

// rel is the name of the SFTP path p inside the root ("." for "/").
func rel(p string) string {
	p = path.Clean("/" + p)
	if p == "/" {
		return "."
	}
	return p[1:]
}

// mountOf returns the mount that holds the SFTP path p: the innermost one.
func (e *export) mountOf(p string) (Mount, bool) {
	p = path.Clean("/" + p)
	var best Mount
	found := false
	for _, m := range e.mounts {
		if (p == m.Path || strings.HasPrefix(p, m.Path+"/")) && len(m.Path) >= len(best.Path) {
			best, found = m, true
		}
	}
	return best, found
}

// writable refuses writes to p outside the mounts and in read-only ones.
func (e *export) writable(p string) error {
	m, ok := e.mountOf(p)
	switch {
	case !ok:
		return errNotWritable{fmt.Sprintf("%s: not in a volume of the pod (only the app's volume mounts can be written): permission denied", p)}
	case m.ReadOnly:
		return errNotWritable{fmt.Sprintf("%s: %s is read-only in the pod: permission denied", p, m.Path)}
	}
	return nil
}

// Fileread implements sftp.FileReader.
func (e *export) Fileread(r *sftp.Request) (io.ReaderAt, error) {
	return e.root.Open(rel(r.Filepath))
}

// Filewrite implements sftp.FileWriter.
func (e *export) Filewrite(r *sftp.Request) (io.WriterAt, error) {
	return e.openWrite(r, os.O_WRONLY)
}

// OpenFile implements sftp.OpenFileWriter (read and write on one handle).
func (e *export) OpenFile(r *sftp.Request) (sftp.WriterAtReaderAt, error) {
	return e.openWrite(r, os.O_RDWR)
}

// newFileMode is the mode of the files the export creates (the process's
// umask applies): readable by the app whatever its user; see
// docs/intercepts.md for writing as the app's user.
const newFileMode = 0o644

func (e *export) openWrite(r *sftp.Request, flag int) (*os.File, error) {
	if err := e.writable(r.Filepath); err != nil {
		return nil, err
	}
	pf := r.Pflags()
	if pf.Creat {
		flag |= os.O_CREATE
	}
	if pf.Trunc {
		flag |= os.O_TRUNC
	}
	if pf.Excl {
		flag |= os.O_EXCL
	}
	created := false
	if pf.Creat {
		_, err := e.root.Lstat(rel(r.Filepath))
		created = errors.Is(err, fs.ErrNotExist)
	}
	// No O_APPEND: the server writes at offsets (WriteAt), which it forbids.
	f, err := e.root.OpenFile(rel(r.Filepath), flag, newFileMode)
	if err != nil || !created {
		return f, err
	}
	if err := e.shareCreated(r.Filepath, f, false); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: give it the pod's fsGroup: %w", r.Filepath, err)
	}
	return f, nil
}

// Filecmd implements sftp.FileCmder.
func (e *export) Filecmd(r *sftp.Request) error {
	name := rel(r.Filepath)
	switch r.Method {
	case "Setstat":
		if err := e.writable(r.Filepath); err != nil {
			return err
		}
		return e.setstat(name, r)
	case "Rename", "PosixRename":
		if err := e.writable(r.Filepath); err != nil {
			return err
		}
		if err := e.writable(r.Target); err != nil {
			return err
		}
		return e.root.Rename(name, rel(r.Target))
	case "Rmdir", "Remove":
		if err := e.writable(r.Filepath); err != nil {
			return err
		}
		fi, err := e.root.Lstat(name)
		if err != nil {
			return err
		}
		if isDir := fi.IsDir(); isDir != (r.Method == "Rmdir") {
			errno := syscall.EISDIR
			if !isDir {
				errno = syscall.ENOTDIR
			}
			return &fs.PathError{Op: strings.ToLower(r.Method), Path: r.Filepath, Err: errno}
		}
		return e.root.Remove(name)
	case "Mkdir":
		if err := e.writable(r.Filepath); err != nil {
			return err
		}
		if err := e.root.Mkdir(name, 0o755); err != nil {
			return err
		}
		return e.shareCreated(r.Filepath, nil, true)
	case "Link":
		if err := e.writable(r.Target); err != nil {
			return err
		}
		return e.root.Link(name, rel(r.Target))
	case "Symlink":
		// Filepath is the link's target as the client wrote it, Target the
		// link. The target is stored as is; the export never follows one
		// that leaves the root.
		if err := e.writable(r.Target); err != nil {
			return err
		}
		return e.root.Symlink(r.Filepath, rel(r.Target))
	}
	return sftp.ErrSSHFxOpUnsupported
}

func (e *export) setstat(name string, r *sftp.Request) error {
	flags, attrs := r.AttrFlags(), r.Attributes()
	if flags.Size {
		f, err := e.root.OpenFile(name, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		err = f.Truncate(int64(attrs.Size))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	if flags.Permissions {
		mode := attrs.FileMode().Perm()
		if _, ok := e.fsGroup(r.Filepath); ok {
			fi, err := e.root.Lstat(name)
			if err != nil {
				return err
			}
			mode = fsGroupMode(mode, fi.IsDir())
		}
		if err := e.root.Chmod(name, mode); err != nil {
			return err
		}
	}
	if flags.Acmodtime {
		if err := e.root.Chtimes(name, attrs.AccessTime(), attrs.ModTime()); err != nil {
			return err
		}
	}
	if flags.UidGid {
		if err := e.root.Chown(name, int(attrs.UID), int(attrs.GID)); err != nil {
			return err
		}
	}
	return nil
}

// Filelist implements sftp.FileLister: List and Stat.
func (e *export) Filelist(r *sftp.Request) (sftp.ListerAt, error) {
	name := rel(r.Filepath)
	switch r.Method {
	case "List":
		f, err := e.root.Open(name)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		infos, err := f.Readdir(-1)
		if err != nil {
			return nil, err
		}
		return listerAt(infos), nil
	case "Stat":
		fi, err := e.root.Stat(name)
		if err != nil {
			return nil, err
		}
		return listerAt{fi}, nil
	}
	return nil, sftp.ErrSSHFxOpUnsupported
}

// Lstat implements sftp.LstatFileLister.
func (e *export) Lstat(r *sftp.Request) (sftp.ListerAt, error) {
	fi, err := e.root.Lstat(rel(r.Filepath))
	if err != nil {
		return nil, err
	}
	return listerAt{fi}, nil
}

// Readlink implements sftp.ReadlinkFileLister.
func (e *export) Readlink(p string) (string, error) {
	return e.root.Readlink(rel(p))
}

// StatVFS implements sftp.StatVFSFileCmder (df in the mount).
func (e *export) StatVFS(r *sftp.Request) (*sftp.StatVFS, error) {
	f, err := e.root.Open(rel(r.Filepath))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return statVFS(f)
}

// listerAt lists FileInfos for sftp.ListerAt.
type listerAt []os.FileInfo

func (l listerAt) ListAt(out []os.FileInfo, offset int64) (int, error) {
	if offset >= int64(len(l)) {
		return 0, io.EOF
	}
	n := copy(out, l[offset:])
	if n < len(out) {
		return n, io.EOF
	}
	return n, nil
}
