//go:build e2e

package e2e

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/rand"
)

// TestConnectProxySettings: behind a proxy on the host's loopback, with an
// extra CA bundle and --also-proxy/--never-proxy, the daemon container gets
// the proxy rewritten for a container, goes direct to the API server (the
// host never proxies its loopback), has the CA bundle where Go reads it,
// and its kernel routes follow the two flags.
func TestConnectProxySettings(t *testing.T) {
	c := newCluster(t)
	ns := c.echoNamespace(t, "proxy")
	ca, err := os.ReadFile(filepath.Join(repoRoot(t), "daemoncontainer", "kubeconfig", "testdata", "shapes", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "corp-ca.pem")
	if err := os.WriteFile(caFile, ca, 0o600); err != nil {
		t.Fatal(err)
	}

	name := "px-" + rand.String(4)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tpBin(t), "connect", "--name", name, "-n", ns, "--ca-bundle", caFile,
		"--also-proxy", "198.51.100.0/24", "--never-proxy", "10.100.200.1/32")
	// A proxy that nothing serves: the API server must not go through it.
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.kubeconfig, "HTTPS_PROXY=http://127.0.0.1:9", "NO_PROXY=.corp.example")
	out, err := cmd.CombinedOutput()
	t.Cleanup(func() {
		if out, err := tp(t, "quit", "--name", name); err != nil {
			t.Logf("tp quit --name %s: %v\n%s", name, err, out)
		}
	})
	if err != nil {
		t.Fatalf("tp connect behind a loopback proxy: %v\n%s", err, out)
	}
	conn := connection{name: name, container: "tp-" + name}

	env, err := docker("inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", conn.container)
	if err != nil {
		t.Fatalf("inspect %s: %v\n%s", conn.container, err, env)
	}
	vars := lines(env)
	if !slices.Contains(vars, "HTTPS_PROXY=http://host.docker.internal:9") {
		t.Errorf("daemon env %q: want HTTPS_PROXY=http://host.docker.internal:9 (the loopback proxy as a container reaches it)", vars)
	}
	if i := slices.IndexFunc(vars, func(v string) bool { return strings.HasPrefix(v, "NO_PROXY=") }); i < 0 ||
		!strings.Contains(vars[i], ".corp.example") || !strings.Contains(vars[i], "host.docker.internal") {
		t.Errorf("daemon env %q: want NO_PROXY with the user's entries and host.docker.internal", vars)
	}
	if got, err := docker("cp", conn.container+":/etc/ssl/certs/tp-extra-ca.pem", "-"); err != nil || !strings.Contains(got, "tp-extra-ca.pem") {
		t.Errorf("the extra CA bundle is not in the daemon container (%v): %.200s", err, got)
	}

	if out, err := conn.probeEventually("http", "http://echo/"); err != nil {
		t.Fatalf("joined container never reached echo: %v\n%s", err, out)
	}
	st := conn.status(t)
	var routes []netip.Prefix
	for _, r := range st.TUNRoutes {
		if p, err := netip.ParsePrefix(r); err == nil {
			routes = append(routes, p)
		}
	}
	if !slices.Contains(routes, netip.MustParsePrefix("198.51.100.0/24")) {
		t.Errorf("TUN routes %v: want the --also-proxy subnet 198.51.100.0/24", st.TUNRoutes)
	}
	never := netip.MustParsePrefix("10.100.200.1/32")
	for _, r := range routes {
		if r.Overlaps(never) {
			t.Errorf("TUN route %v covers the --never-proxy address %v", r, never)
		}
	}
}
