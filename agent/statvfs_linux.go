package agent

import (
	"os"

	"github.com/pkg/sftp"
	"golang.org/x/sys/unix"
)

// statVFS is the statvfs@openssh.com answer for the file system of f.
func statVFS(f *os.File) (*sftp.StatVFS, error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return nil, &os.PathError{Op: "statfs", Path: f.Name(), Err: err}
	}
	return &sftp.StatVFS{
		Bsize: uint64(st.Bsize), Frsize: uint64(st.Frsize), Blocks: st.Blocks, Bfree: st.Bfree, Bavail: st.Bavail,
		Files: st.Files, Ffree: st.Ffree, Favail: st.Ffree, Flag: uint64(st.Flags), Namemax: uint64(st.Namelen),
	}, nil
}
