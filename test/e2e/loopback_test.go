//go:build e2e

package e2e

import (
	"io"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/tools/clientcmd"
)

// loopbackOnlyAPIServer listens on 127.0.0.1 (a random port) and forwards
// every connection to target, the real API server: an API server that the
// host reaches on its loopback only, like Rancher Desktop's or one behind
// `ssh -L`. It stops when the test ends.
func loopbackOnlyAPIServer(t *testing.T, target string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	track := func(c net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		open = append(open, c)
		return true
	}
	wg.Add(1)
	go func() { // owned by the cleanup above: ends when l is closed
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.DialTimeout("tcp", target, 5*time.Second)
			if err != nil {
				c.Close()
				continue
			}
			track(c)
			track(up)
			wg.Add(2)
			go func() { defer wg.Done(); _, _ = io.Copy(up, c); up.Close() }()
			go func() { defer wg.Done(); _, _ = io.Copy(c, up); c.Close() }()
		}
	}()
	return l.Addr().String()
}

// TestConnectLoopbackKubeconfig: a kubeconfig whose API server the host
// reaches on 127.0.0.1 only (nothing listens on the bridge's gateway, no
// container publishes the port) still connects: tp forwards the daemon
// container's connections on the host, TLS verified against 127.0.0.1,
// and joined containers reach the cluster's services.
func TestConnectLoopbackKubeconfig(t *testing.T) {
	c := newCluster(t)
	ns := c.echoNamespace(t, "loopback")

	raw, err := clientcmd.LoadFromFile(c.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cluster := raw.Clusters[raw.Contexts[raw.CurrentContext].Cluster]
	u, err := url.Parse(cluster.Server)
	if err != nil {
		t.Fatal(err)
	}
	local := loopbackOnlyAPIServer(t, u.Host)
	cluster.Server = "https://" + local
	if cluster.TLSServerName == "" {
		cluster.TLSServerName = u.Hostname() // the name the API server's certificate carries
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*raw, path); err != nil {
		t.Fatal(err)
	}
	// Nothing but loopback reaches the stand-in: the gateway's address of
	// the same port refuses.
	_, port, _ := net.SplitHostPort(local)
	if gw, err := docker("network", "inspect", "bridge", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}"); err == nil && strings.TrimSpace(gw) != "" {
		if conn, err := net.DialTimeout("tcp", net.JoinHostPort(strings.TrimSpace(gw), port), 2*time.Second); err == nil {
			conn.Close()
			t.Fatalf("the stand-in API server %s is reachable on the bridge gateway %s too", local, gw)
		}
	}

	name := "lo-" + rand.String(4)
	out, err := tpWithKubeconfig(t, path, "connect", "--name", name, "-n", ns)
	t.Cleanup(func() {
		if out, err := tp(t, "quit", "--name", name); err != nil {
			t.Logf("tp quit --name %s: %v\n%s", name, err, out)
		}
	})
	if err != nil {
		t.Fatalf("tp connect with a 127.0.0.1-only API server %s: %v\n%s", local, err, out)
	}
	t.Logf("tp connect: %s", out)
	if !strings.Contains(out, "forwarder on the host") {
		t.Errorf("tp connect did not say it forwards to the loopback API server:\n%s", out)
	}
	conn := connection{name: name, container: "tp-" + name}
	if out, err := conn.probeEventually("http", "http://echo/"); err != nil {
		t.Fatalf("joined container never reached the echo service through the loopback API server: %v\n%s", err, out)
	}
	if st := conn.status(t); st.State != "connected" {
		t.Errorf("status %+v, want connected", st)
	}
}
