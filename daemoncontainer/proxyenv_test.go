package daemoncontainer

import (
	"archive/tar"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// testCA is a self-signed CA certificate.
const testCA = `-----BEGIN CERTIFICATE-----
MIIBfzCCASWgAwIBAgIUIXJvYSIh/xB7DhCU51FPOJgHktMwCgYIKoZIzj0EAwIw
FTETMBEGA1UEAwwKa3ViZXJuZXRlczAeFw0yNjEyMDcxNDMzNTlaFw0zNjEyMDQx
NDMzNTlaMBUxEzARBgNVBAMMCmt1YmVybmV0ZXMwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAQPmuVKWzcAKcz9ya6kkjALCTdYHez/ctc0IkoXeGQgGciBuY7Ak3M2
NFrvQo/1UfSX7Ejxer/4nPblyoQ7Zgk1o1MwUTAdBgNVHQ4EFgQUkXF1hl2X4oLY
w+8oWddIUtzBQiwwHwYDVR0jBBgwFoAUkXF1hl2X4oLYw+8oWddIUtzBQiwwDwYD
VR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEApBsB5DFr+dtjpVL2kpj5
NcDvJcEowK1aWaY4O2HhnuoCIFf+p3YFzMYV4iC++ZVXc7KzUdiPEEmaNzjj3uWN
Yind
-----END CERTIFICATE-----
`

func TestProxyEnv(t *testing.T) {
	direct := []string{"host.docker.internal", "172.18.0.2"}
	for _, tc := range []struct {
		name    string
		environ []string
		want    []string
	}{
		{name: "no proxy", environ: []string{"HOME=/home/u", "NO_PROXY=.corp"}, want: nil},
		{name: "corporate proxy", environ: []string{"HTTPS_PROXY=http://proxy.corp:3128", "NO_PROXY=.corp,10.0.0.0/8", "PATH=/bin"},
			want: []string{"HTTPS_PROXY=http://proxy.corp:3128", "NO_PROXY=.corp,10.0.0.0/8,host.docker.internal,172.18.0.2"}},
		{name: "no NO_PROXY", environ: []string{"HTTP_PROXY=http://proxy.corp:3128"},
			want: []string{"HTTP_PROXY=http://proxy.corp:3128", "NO_PROXY=host.docker.internal,172.18.0.2"}},
		{name: "lowercase only", environ: []string{"https_proxy=http://proxy.corp:3128", "no_proxy=localhost"},
			want: []string{"https_proxy=http://proxy.corp:3128", "no_proxy=localhost,host.docker.internal,172.18.0.2"}},
		{name: "both spellings", environ: []string{"HTTPS_PROXY=http://p:1", "https_proxy=http://p:1", "NO_PROXY=a", "no_proxy=a"},
			want: []string{"HTTPS_PROXY=http://p:1", "NO_PROXY=a,host.docker.internal,172.18.0.2", "https_proxy=http://p:1", "no_proxy=a,host.docker.internal,172.18.0.2"}},
		{name: "loopback proxy (cntlm)", environ: []string{"HTTPS_PROXY=http://user:pw@127.0.0.1:3128", "HTTP_PROXY=localhost:3128"},
			want: []string{"HTTP_PROXY=host.docker.internal:3128", "HTTPS_PROXY=http://user:pw@host.docker.internal:3128", "NO_PROXY=host.docker.internal,172.18.0.2"}},
		{name: "direct host already listed", environ: []string{"HTTPS_PROXY=http://p:1", "NO_PROXY=HOST.docker.internal"},
			want: []string{"HTTPS_PROXY=http://p:1", "NO_PROXY=HOST.docker.internal,172.18.0.2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ProxyEnv(tc.environ, "host.docker.internal", direct); !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestContainerConfigProxyAndCABundle: the daemon container gets the
// user's proxy settings in its environment and the extra CA bundle as a
// file Go's crypto/x509 reads besides the image's.
func TestContainerConfigProxyAndCABundle(t *testing.T) {
	env := ProxyEnv([]string{"HTTPS_PROXY=http://127.0.0.1:3128"}, "host.docker.internal", []string{"host.docker.internal"})
	c := containerConfig(createOptions{Connection: Connection{Name: "a"}, Env: env})
	for _, want := range []string{"HTTPS_PROXY=http://host.docker.internal:3128", "NO_PROXY=host.docker.internal"} {
		if !slices.Contains(c.Env, want) {
			t.Errorf("env %q, want %s", c.Env, want)
		}
	}

	dir := t.TempDir()
	pemFile := filepath.Join(dir, "corp.pem")
	if err := os.WriteFile(pemFile, []byte(testCA), 0o600); err != nil {
		t.Fatal(err)
	}
	data, err := readCABundle(pemFile)
	if err != nil {
		t.Fatal(err)
	}
	tarball, err := caBundleTar(data)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(tarball)
	h, err := tr.Next()
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(tr)
	if path.Join(path.Dir(CABundlePath), h.Name) != CABundlePath || h.Mode != 0o644 || string(got) != testCA {
		t.Errorf("tar entry %s mode %o with %d bytes, want %s 0644 with the bundle", h.Name, h.Mode, len(got), CABundlePath)
	}
	if path.Dir(CABundlePath) != "/etc/ssl/certs" {
		t.Errorf("CA bundle at %s: want it in /etc/ssl/certs, which Go's crypto/x509 reads besides ca-certificates.crt", CABundlePath)
	}

	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{notPEM, filepath.Join(dir, "missing.pem")} {
		if _, err := readCABundle(bad); err == nil || !strings.Contains(err.Error(), "--ca-bundle") {
			t.Errorf("readCABundle(%s): %v, want an error naming --ca-bundle", bad, err)
		}
	}
}
