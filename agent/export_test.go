package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/pkg/sftp"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// exportTree builds what the webhook's mounts give the agent under a
// temporary ExportRoot, next to the agent's own token outside it:
//
//	/var                 emptyDir (writable), nested:
//	/var/run/secrets/kubernetes.io/serviceaccount  projected token (read-only),
//	                     laid out like the kubelet's atomic writer (..data links)
//	/etc/secret          Secret (read-only), likewise
//	/data                emptyDir (writable)
func exportTree(t *testing.T) (root string, mounts []Mount, token string) {
	t.Helper()
	dir := t.TempDir()
	token = filepath.Join(dir, "agent-token")
	if err := os.WriteFile(token, []byte("the agent's own token"), 0o600); err != nil {
		t.Fatal(err)
	}
	root = filepath.Join(dir, "export")
	atomic := func(p string, files map[string]string) {
		ts := filepath.Join(root, p, "..2026_12_03_05_00_00.123456789")
		if err := os.MkdirAll(ts, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("..2026_12_03_05_00_00.123456789", filepath.Join(root, p, "..data")); err != nil {
			t.Fatal(err)
		}
		for name, content := range files {
			if err := os.WriteFile(filepath.Join(ts, name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("..data/"+name, filepath.Join(root, p, name)); err != nil {
				t.Fatal(err)
			}
		}
	}
	atomic("var/run/secrets/kubernetes.io/serviceaccount", map[string]string{"token": "eyJhbGciOi.app-token", "namespace": "shop"})
	atomic("etc/secret", map[string]string{"password": "s3cr3t\x00\xff binary"})
	if err := os.MkdirAll(filepath.Join(root, "data"), 0o777); err != nil {
		t.Fatal(err)
	}
	// Links that try to leave the root.
	for link, target := range map[string]string{
		"data/abs-token":   token,                      // absolute, outside
		"data/abs-inside":  filepath.Join(root, "var"), // absolute, even into the root
		"data/up-token":    "../../agent-token",        // relative, climbs out
		"data/up-root":     "../..",
		"var/sneaky/token": "../../../agent-token",
	} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, link)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	mounts = []Mount{
		{Path: "/data"},
		{Path: "/etc/secret", ReadOnly: true},
		{Path: "/var"},
		{Path: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true},
	}
	return root, mounts, token
}

// sftpClient serves the export on one end of a pipe and returns an SFTP
// client on the other.
func sftpClient(t *testing.T, root string, mounts []Mount) *sftp.Client {
	t.Helper()
	e, err := openExport(root, mounts)
	if err != nil {
		t.Fatal(err)
	}
	server, client := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.serve(ctx, server) }()
	c, err := sftp.NewClientPipe(client, client)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("serve did not return")
		}
		e.close()
	})
	return c
}

func readAll(c *sftp.Client, p string) ([]byte, error) {
	f, err := c.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

func TestExportReadsWhatTheAppSees(t *testing.T) {
	root, mounts, _ := exportTree(t)
	c := sftpClient(t, root, mounts)
	for p, want := range map[string]string{
		// Through the kubelet's ..data links.
		"/var/run/secrets/kubernetes.io/serviceaccount/token":     "eyJhbGciOi.app-token",
		"/var/run/secrets/kubernetes.io/serviceaccount/namespace": "shop",
		"/etc/secret/password":                                    "s3cr3t\x00\xff binary",
		"/etc/secret/..data/password":                             "s3cr3t\x00\xff binary",
		"/var/../etc/secret/password":                             "s3cr3t\x00\xff binary", // cleaned within the root
		"/../../../../etc/secret/password":                        "s3cr3t\x00\xff binary", // ".." stops at the root
		"etc/secret/password":                                     "s3cr3t\x00\xff binary", // relative to /
	} {
		got, err := readAll(c, p)
		if err != nil || string(got) != want {
			t.Errorf("read %s: got %q, %v, want %q", p, got, err, want)
		}
	}
	if target, err := c.ReadLink("/etc/secret/password"); err != nil || target != "..data/password" {
		t.Errorf("readlink: got %q, %v, want ..data/password", target, err)
	}
	if fi, err := c.Lstat("/etc/secret/password"); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("lstat of a ..data link: got %v, %v, want a symlink", fi, err)
	}
	if fi, err := c.Stat("/etc/secret/password"); err != nil || !fi.Mode().IsRegular() || fi.Size() != 15 {
		t.Errorf("stat of a ..data link: got %v, %v, want the 15-byte file", fi, err)
	}
	infos, err := c.ReadDir("/var/run/secrets/kubernetes.io/serviceaccount")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, fi := range infos {
		names[fi.Name()] = true
	}
	if !names["token"] || !names["namespace"] || !names["..data"] {
		t.Errorf("list: got %v, want token, namespace and ..data", names)
	}
	if _, err := c.StatVFS("/data"); err != nil {
		t.Errorf("statvfs: %v", err)
	}
}

func TestExportRefusesEscapes(t *testing.T) {
	root, mounts, _ := exportTree(t)
	c := sftpClient(t, root, mounts)
	for _, p := range []string{
		"/data/abs-token", "/data/abs-inside/run", "/data/up-token", "/data/up-root/agent-token",
		"/var/sneaky/token", "/agent-token", "/../agent-token",
	} {
		if got, err := readAll(c, p); err == nil {
			t.Errorf("read %s: got %q, want an error (outside the export root)", p, got)
		}
		if _, err := c.Stat(p); err == nil {
			t.Errorf("stat %s: no error, want one", p)
		}
	}
	if _, err := c.ReadDir("/data/up-root"); err == nil {
		t.Error("list through a link out of the root: no error")
	}
	// A write through a link that leaves the root does not land outside.
	f, err := c.Create("/data/up-token")
	if err == nil {
		f.Write([]byte("x"))
		f.Close()
		t.Error("create through a link out of the root: no error")
	}
	if b, _ := os.ReadFile(filepath.Join(filepath.Dir(root), "agent-token")); string(b) != "the agent's own token" {
		t.Errorf("the agent's token changed: %q", b)
	}
}

func TestExportWrites(t *testing.T) {
	root, mounts, _ := exportTree(t)
	c := sftpClient(t, root, mounts)
	f, err := c.Create("/data/written.txt")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("from the workstation")); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "data", "written.txt"))
	if err != nil || string(b) != "from the workstation" {
		t.Errorf("file in the pod's volume: %q, %v", b, err)
	}
	fi, err := os.Stat(filepath.Join(root, "data", "written.txt"))
	if err != nil || fi.Mode().Perm()&0o044 != 0o044 {
		t.Errorf("mode of a written file: %v, %v; want readable by group and others (the app)", fi.Mode(), err)
	}
	if err := c.Mkdir("/var/cache"); err != nil {
		t.Errorf("mkdir in the writable /var: %v", err)
	}
	if err := c.Rename("/data/written.txt", "/var/cache/moved.txt"); err != nil {
		// /data and /var are one file system here; in a pod they are two
		// volumes (EXDEV), which the client sees as a failure.
		t.Errorf("rename: %v", err)
	}
	if err := c.Chmod("/var/cache/moved.txt", 0o600); err != nil {
		t.Errorf("chmod: %v", err)
	}
	if err := c.Truncate("/var/cache/moved.txt", 4); err != nil {
		t.Errorf("truncate: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "var", "cache", "moved.txt")); string(b) != "from" {
		t.Errorf("after truncate: %q", b)
	}
	if err := c.Symlink("moved.txt", "/var/cache/link"); err != nil {
		t.Errorf("symlink: %v", err)
	}
	if err := c.Remove("/var/cache/link"); err != nil {
		t.Errorf("remove: %v", err)
	}
	if err := c.Remove("/var/cache"); err == nil {
		t.Error("remove of a directory: no error")
	}
	if err := c.Remove("/var/cache/moved.txt"); err != nil {
		t.Errorf("remove: %v", err)
	}
	if err := c.RemoveDirectory("/var/cache"); err != nil {
		t.Errorf("rmdir: %v", err)
	}
}

func TestExportRefusesWritesToReadOnlyMounts(t *testing.T) {
	root, mounts, _ := exportTree(t)
	c := sftpClient(t, root, mounts)
	before, _ := os.ReadFile(filepath.Join(root, "etc/secret/..data/password"))
	for name, op := range map[string]func() error{
		"create in a Secret": func() error { _, err := c.Create("/etc/secret/new"); return err },
		"overwrite a Secret's file": func() error {
			f, err := c.OpenFile("/etc/secret/password", os.O_WRONLY|os.O_TRUNC)
			if err == nil {
				f.Close()
			}
			return err
		},
		"remove from a Secret":   func() error { return c.Remove("/etc/secret/password") },
		"chmod in a Secret":      func() error { return c.Chmod("/etc/secret/..data/password", 0o777) },
		"mkdir in the token":     func() error { return c.Mkdir("/var/run/secrets/kubernetes.io/serviceaccount/x") },
		"rename into a Secret":   func() error { return c.Rename("/var/run", "/etc/secret/run") },
		"rename out of a Secret": func() error { return c.Rename("/etc/secret/password", "/data/password") },
		"symlink in a Secret":    func() error { return c.Symlink("/data", "/etc/secret/link") },
		"create outside mounts":  func() error { _, err := c.Create("/new"); return err },
		"mkdir outside mounts":   func() error { return c.Mkdir("/etc/other") },
	} {
		// SSH_FX_PERMISSION_DENIED, which pkg/sftp's client turns into
		// fs.ErrPermission (EACCES for a FUSE mount).
		if err := op(); !errors.Is(err, os.ErrPermission) {
			t.Errorf("%s: got %v, want permission denied", name, err)
		}
	}
	if after, _ := os.ReadFile(filepath.Join(root, "etc/secret/..data/password")); !bytes.Equal(before, after) {
		t.Errorf("the Secret's file changed: %q", after)
	}
	if _, err := os.Lstat(filepath.Join(root, "etc/secret/password")); err != nil {
		t.Errorf("the Secret's link is gone: %v", err)
	}
}

// TestAgentServesMountRequests: the agent reports its mounts when it
// arrives, and answers a MountRequest with a flow of that pairing id on
// which it serves an SFTP session (the fake manager pairs every flow with
// the "developer's" listener, here the SFTP client).
func TestAgentServesMountRequests(t *testing.T) {
	root, mounts, _ := exportTree(t)
	owner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	m := newFakeManager(t, owner.Addr().String())
	startAgent(t, newTestServer(t, "app"), agentOptions{managerAddr: m.address(), mounts: mounts, exportRoot: root})
	waitFor(t, "the agent to arrive", func() bool { return m.arrivalCount() > 0 })
	var got []Mount
	for _, am := range m.lastArrival().GetMounts() {
		got = append(got, Mount{Path: am.GetPath(), ReadOnly: am.GetReadOnly()})
	}
	if !slices.Equal(got, mounts) {
		t.Errorf("AgentInfo.mounts: got %v, want %v", got, mounts)
	}

	m.mountReqs <- &managerv1.MountRequest{PairingId: "mount/ic-1/r1", InterceptId: "ic-1"}
	conn, err := owner.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c, err := sftp.NewClientPipe(conn, conn)
	if err != nil {
		t.Fatalf("SFTP session on the paired flow: %v", err)
	}
	defer c.Close()
	if b, err := readAll(c, "/etc/secret/password"); err != nil || string(b) != "s3cr3t\x00\xff binary" {
		t.Errorf("read over the mount flow: %q, %v", b, err)
	}
	var pairing string
	for _, o := range m.tunnelOpens() {
		if o.GetPairingId() != "" {
			pairing = o.GetPairingId()
		}
	}
	if pairing != "mount/ic-1/r1" {
		t.Errorf("the agent's flow has pairing id %q, want mount/ic-1/r1", pairing)
	}
}

// TestExportIsFile: a mount that is a single file (a ConfigMap key mounted
// with subPath) is reported as one, directories and unknown paths are not.
func TestExportIsFile(t *testing.T) {
	root, mounts, _ := exportTree(t)
	if err := os.MkdirAll(filepath.Join(root, "etc/app"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/app/config.yaml"), []byte("a: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e, err := openExport(root, append(mounts, Mount{Path: "/etc/app/config.yaml", ReadOnly: true}))
	if err != nil {
		t.Fatal(err)
	}
	defer e.close()
	for p, want := range map[string]bool{"/etc/app/config.yaml": true, "/etc/secret": false, "/var": false, "/nope": false} {
		if got := e.isFile(p); got != want {
			t.Errorf("isFile(%s) = %v, want %v", p, got, want)
		}
	}
	var none *export
	if none.isFile("/etc/app/config.yaml") {
		t.Error("isFile without an export = true, want false")
	}
}
