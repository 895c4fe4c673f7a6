package daemon

import (
	"bytes"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tp-run/tp/daemoncontainer/dns"
)

func TestReadKubeconfig(t *testing.T) {
	got, err := ReadKubeconfig(io.NopCloser(strings.NewReader("apiVersion: v1\n")), time.Second)
	if err != nil || string(got) != "apiVersion: v1\n" {
		t.Errorf("ReadKubeconfig = %q, %v, want the bytes written", got, err)
	}
	if _, err := ReadKubeconfig(io.NopCloser(strings.NewReader("")), time.Second); err == nil {
		t.Error("an empty stdin gave a kubeconfig, want an error")
	}
	big := bytes.Repeat([]byte("x"), maxKubeconfigSize+1)
	if _, err := ReadKubeconfig(io.NopCloser(bytes.NewReader(big)), time.Second); err == nil {
		t.Error("an oversized stdin gave a kubeconfig, want an error")
	}
}

// TestReadKubeconfigTimeout: a CLI that never delivers makes the daemon fail
// instead of hanging.
func TestReadKubeconfigTimeout(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := ReadKubeconfig(r, 50*time.Millisecond); err == nil {
		t.Error("ReadKubeconfig returned without anything on stdin, want a timeout error")
	}
}

func TestRestConfigFromData(t *testing.T) {
	kc := `apiVersion: v1
kind: Config
current-context: other
clusters:
- {name: a, cluster: {server: "https://a.example:6443"}}
- {name: b, cluster: {server: "https://b.example:6443"}}
users:
- {name: u, user: {token: t0k}}
contexts:
- {name: other, context: {cluster: a, user: u}}
- {name: conn, context: {cluster: b, user: u}}
`
	rc, err := restConfig(Config{Context: "conn", KubeconfigData: []byte(kc), Kubeconfig: "/does/not/exist"})
	if err != nil {
		t.Fatal(err)
	}
	if rc.Host != "https://b.example:6443" || rc.BearerToken != "t0k" {
		t.Errorf("rest config host %s token %q, want the context conn of the in-memory kubeconfig", rc.Host, rc.BearerToken)
	}
	if _, err := restConfig(Config{Context: "conn", KubeconfigData: []byte("{not yaml")}); err == nil {
		t.Error("a broken kubeconfig loaded")
	}
}

// TestPointResolvConf: the file is rewritten in place for the daemon's DNS,
// and rewriting it again changes nothing (the original stays recorded).
func TestPointResolvConf(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(path, []byte("nameserver 192.0.2.1\nsearch corp.example\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	before, _ := os.Stat(path)
	ns := netip.MustParseAddr("127.0.0.1")
	for i := range 2 {
		if err := PointResolvConf(path, ns, "dev", "cluster.local"); err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(path)
	if !os.SameFile(before, after) {
		t.Error("resolv.conf replaced by a new file; it is a bind mount and must be written in place")
	}
	want := dns.RenderResolvConf(dns.ResolvConf{Nameservers: []netip.Addr{netip.MustParseAddr("192.0.2.1")}, Search: []string{"corp.example"}},
		ns, "dev", "cluster.local")
	if !bytes.Equal(b, want) {
		t.Errorf("resolv.conf after two runs:\n%s\nwant:\n%s", b, want)
	}
	orig, err := dns.ParseResolvConf(bytes.NewReader(b))
	if err != nil || !orig.Rewritten || len(orig.Nameservers) != 1 || orig.Nameservers[0].String() != "192.0.2.1" {
		t.Errorf("recorded original %+v (%v), want nameserver 192.0.2.1", orig, err)
	}
}
