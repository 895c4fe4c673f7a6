//go:build linux

package agent

import (
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestExportFSGroup: in a volume whose mount point is setgid (the kubelet's
// fsGroup), what the local container creates or chmods through the export
// is the group's and group read-write, directories setgid, as the kubelet
// leaves them; in a volume without fsGroup the modes stand as asked.
func TestExportFSGroup(t *testing.T) {
	root, mounts, _ := exportTree(t)
	gid := os.Getgid() // a group this process may chown to, as the agent to the fsGroup
	data := filepath.Join(root, "data")
	if err := os.Chown(data, -1, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(data, 0o777|fs.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	c := sftpClient(t, root, mounts)

	f, err := c.Create("/data/f.txt")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := c.Mkdir("/data/d"); err != nil {
		t.Fatal(err)
	}
	// What tp's plugin does after a create and a mkdir: the creator's mode (umask 022).
	if err := c.Chmod("/data/d", 0o755); err != nil {
		t.Fatal(err)
	}
	f, err = c.Create("/data/d/g.txt")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := c.Chmod("/data/d/g.txt", 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		want fs.FileMode
	}{
		{"data/f.txt", 0o664},
		{"data/d", 0o775 | fs.ModeSetgid | fs.ModeDir},
		{"data/d/g.txt", 0o664},
	} {
		fi, err := os.Lstat(filepath.Join(root, tc.path))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != tc.want {
			t.Errorf("%s: mode %v, want %v", tc.path, fi.Mode(), tc.want)
		}
		if g := int(fi.Sys().(*syscall.Stat_t).Gid); g != gid {
			t.Errorf("%s: group %d, want the fsGroup %d", tc.path, g, gid)
		}
	}

	// /var has no fsGroup: a chmod stands as asked.
	f, err = c.Create("/var/h.txt")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := c.Chmod("/var/h.txt", 0o600); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(filepath.Join(root, "var", "h.txt")); err != nil || fi.Mode() != 0o600 {
		t.Errorf("/var/h.txt after chmod 600: %v, %v; want 0600 (no fsGroup)", fi.Mode(), err)
	}
}
