package agent

import (
	"io/fs"
	"os"
)

// The pod's fsGroup in the export's writable volumes. The kubelet gives a
// volume that supports ownership management (emptyDir, most PVCs) the pod's
// securityContext.fsGroup: every file's group is the fsGroup and group
// read-write, every directory also group-executable and setgid, so that what
// any container of the pod creates there stays the group's. The agent (a
// member of the fsGroup, as every container of the pod) does the same for
// what the local container creates or chmods through the export; a volume
// whose mount point is not setgid has no fsGroup, and modes stand as asked.

// The kubelet's masks (pkg/volume: SetVolumeOwnership).
const (
	fsGroupFileMask = 0o660
	fsGroupDirMask  = 0o770 | fs.ModeSetgid
)

// fsGroup returns the fsGroup of the mount that holds the SFTP path p: the
// group of its setgid mount point; false when it has none.
func (e *export) fsGroup(p string) (int, bool) {
	m, ok := e.mountOf(p)
	if !ok || m.ReadOnly {
		return 0, false
	}
	fi, err := e.root.Stat(rel(m.Path))
	if err != nil || !fi.IsDir() || fi.Mode()&fs.ModeSetgid == 0 {
		return 0, false
	}
	return fileGID(fi)
}

// fsGroupMode is mode as the kubelet leaves it in an fsGroup volume.
func fsGroupMode(mode fs.FileMode, dir bool) fs.FileMode {
	if dir {
		return mode | fsGroupDirMask
	}
	return mode | fsGroupFileMask
}

// shareCreated gives what the export just created at the SFTP path p
// (through f when not nil) the fsGroup of its volume, if it has one.
func (e *export) shareCreated(p string, f *os.File, dir bool) error {
	gid, ok := e.fsGroup(p)
	if !ok {
		return nil
	}
	name := rel(p)
	var fi fs.FileInfo
	var err error
	if f != nil {
		fi, err = f.Stat()
	} else {
		fi, err = e.root.Lstat(name)
	}
	if err != nil {
		return err
	}
	mode := fsGroupMode(fi.Mode().Perm(), dir)
	if f != nil {
		if err := f.Chown(-1, gid); err != nil {
			return err
		}
		return f.Chmod(mode)
	}
	if err := e.root.Lchown(name, -1, gid); err != nil {
		return err
	}
	return e.root.Chmod(name, mode)
}
