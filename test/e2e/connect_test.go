//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// connection is a tp connection made by a test; it quits when the test ends.
type connection struct {
	name, container string
}

func connect(t *testing.T, name string, args ...string) connection {
	t.Helper()
	c := connection{name: name, container: "tp-" + name}
	out, err := tp(t, append([]string{"connect", "--name", name}, args...)...)
	if err != nil {
		t.Fatalf("tp connect --name %s %v: %v\n%s", name, args, err, out)
	}
	t.Logf("tp connect --name %s: %s", name, strings.TrimSpace(out))
	t.Cleanup(func() {
		if out, err := tp(t, "quit", "--name", name); err != nil {
			t.Logf("tp quit --name %s: %v\n%s", name, err, out)
		}
	})
	return c
}

// joined runs the probe in a container joined to the connection.
func (c connection) probe(args ...string) (string, error) {
	return probe([]string{"--network", "container:" + c.container}, args...)
}

// probeEventually retries a probe for up to 15 s: kube-proxy programs a new
// service a moment after its pods are Ready, in the cluster as for tp.
func (c connection) probeEventually(args ...string) (string, error) {
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, err := c.probe(args...)
		if err == nil || time.Now().After(deadline) {
			return out, err
		}
		time.Sleep(500 * time.Millisecond)
	}
}

type statusOut struct {
	State          string   `json:"state"`
	Namespace      string   `json:"namespace"`
	SessionID      string   `json:"sessionID"`
	ManagerVersion string   `json:"managerVersion"`
	Reconnects     int      `json:"reconnects"`
	Resumes        int      `json:"resumes"`
	LastResumed    string   `json:"lastResumed"`
	RoutedSubnets  []string `json:"routedSubnets"`
	TUNRoutes      []string `json:"tunRoutes"`
	DNS            *struct {
		UpstreamForwards uint64 `json:"upstreamForwards"`
		DockerForwards   uint64 `json:"dockerForwards"`
	} `json:"dns"`
}

func (c connection) status(t *testing.T) statusOut {
	t.Helper()
	out, err := tp(t, "status", "--name", c.name, "-o", "json")
	if err != nil {
		t.Fatalf("tp status: %v\n%s", err, out)
	}
	var s statusOut
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("decode status %q: %v", out, err)
	}
	return s
}

func decodeEcho(t *testing.T, out string) echoReply {
	t.Helper()
	var r echoReply
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("decode echo reply %q: %v", out, err)
	}
	return r
}

// TestConnect proves that containers joined to tp reach the cluster by every
// DNS form and by IP, over TCP and UDP, while a plain container does not, and
// that other names still resolve through the original resolver.
func TestConnect(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "connect")
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	pod := c.runningPod(t, ns, "app=echo")

	if out, err := probe(nil, "http", "-timeout", "3s", "http://echo."+ns+"/"); err == nil {
		t.Fatalf("a container not joined to tp reached echo.%s: %s", ns, out)
	}

	// A stand-in for the public/corporate resolver: names outside the
	// cluster must be answered by it, not hijacked by the cluster.
	upstream := "tp-e2e-dns-" + rand.String(4)
	if out, err := docker("run", "-d", "--name", upstream, probeImage, "dns-server", "public.tp-e2e.test=203.0.113.7"); err != nil {
		t.Fatalf("start upstream DNS: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = docker("rm", "-f", upstream) })
	upstreamIP, err := docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", upstream)
	if err != nil {
		t.Fatal(err)
	}

	name := "e2e-" + rand.String(4)
	conn := connect(t, name, "-n", ns, "--dns", strings.TrimSpace(upstreamIP))
	st := conn.status(t)
	if st.State != "connected" || st.Namespace != ns || len(st.RoutedSubnets) == 0 {
		t.Fatalf("status = %+v, want connected in %s with routed subnets", st, ns)
	}

	if out, err := conn.probeEventually("http", "http://echo/"); err != nil {
		t.Fatalf("joined container never reached the echo service: %v\n%s", err, out)
	}
	for _, url := range []string{
		"http://echo/dns-short",
		"http://echo." + ns + "/dns-ns",
		"http://echo." + ns + ".svc.cluster.local/dns-fqdn",
		"http://" + pod.Status.PodIP + ":8080/pod-ip",
		"http://echo-headless:8080/headless",
	} {
		out, err := conn.probe("http", url)
		if err != nil {
			t.Errorf("joined container GET %s: %v\n%s", url, err, out)
			continue
		}
		if r := decodeEcho(t, out); r.Pod != pod.Name || r.Copy != "cluster" {
			t.Errorf("GET %s answered by %+v, want pod %s in the cluster", url, r, pod.Name)
		}
	}
	if out, err := conn.probe("dns", "echo-headless."+ns); err != nil || strings.TrimSpace(out) != pod.Status.PodIP {
		t.Errorf("headless service resolves to %q (%v), want the pod IP %s", out, err, pod.Status.PodIP)
	}
	if out, err := conn.probe("udp", "echo:9090", "ping"); err != nil || strings.TrimSpace(out) != "cluster:ping" {
		t.Errorf("UDP echo answered %q (%v), want cluster:ping", out, err)
	}
	// A name outside the cluster goes to the original resolvers, or to
	// Docker's DNS first (then the original resolvers) where the daemon
	// container is on a user-defined network.
	outside := func() uint64 { d := conn.status(t).DNS; return d.UpstreamForwards + d.DockerForwards }
	before := outside()
	if out, err := conn.probe("dns", "public.tp-e2e.test"); err != nil || strings.TrimSpace(out) != "203.0.113.7" {
		t.Errorf("public.tp-e2e.test resolves to %q (%v), want 203.0.113.7 from the original resolver", out, err)
	}
	if after := outside(); after <= before {
		t.Errorf("forwards of names outside the cluster %d -> %d: the name did not go to the original resolver (or Docker's DNS)", before, after)
	}
	// A closed port of a pod refuses the connection in the cluster: it must
	// be refused in the joined container too (a RST, not a hang).
	if out, err := conn.probe("tcp", "-timeout", "3s", pod.Status.PodIP+":81"); err == nil {
		t.Errorf("connect to a closed service port succeeded: %s", out)
	} else if !strings.Contains(out, "refused") && !strings.Contains(out, "reset") {
		t.Errorf("closed port failed with %q, want a refused connection (RST), not a timeout", out)
	}
}

// TestConnectSurvivesManagerRestart deletes the traffic-manager pod: the
// daemon reconnects by itself and requests succeed again within 15 s of the
// new pod being Ready.
func TestConnectSurvivesManagerRestart(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "restart")
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	conn := connect(t, "e2e-"+rand.String(4), "-n", ns)
	if out, err := conn.probeEventually("http", "http://echo/"); err != nil {
		t.Fatalf("before restart: %v\n%s", err, out)
	}
	old := c.runningPod(t, "tp", "app=traffic-manager")
	if err := c.client.CoreV1().Pods("tp").Delete(context.Background(), old.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := c.client.CoreV1().Pods("tp").List(ctx, metav1.ListOptions{LabelSelector: "app=traffic-manager"})
		if err != nil {
			return false, nil
		}
		for _, pod := range p.Items {
			if pod.Name != old.Name && pod.DeletionTimestamp == nil && podIsReady(&pod) {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no new traffic-manager pod ready: %v", err)
	}
	ready := time.Now()
	deadline := ready.Add(15 * time.Second)
	for {
		out, err := conn.probe("http", "-timeout", "2s", "http://echo/after-restart")
		if err == nil {
			t.Logf("requests succeed %s after the new manager pod was Ready", time.Since(ready).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("requests still fail 15 s after the new manager pod was Ready: %v\n%s\nstatus: %+v", err, out, conn.status(t))
		}
		time.Sleep(250 * time.Millisecond)
	}
	if st := conn.status(t); st.State != "connected" || st.Reconnects < 1 {
		t.Errorf("status after restart = %+v, want connected with at least one reconnect", st)
	}
}

// TestTwoConnections runs two connections side by side, each resolving short
// names in its own namespace.
func TestTwoConnections(t *testing.T) {
	c := newCluster(t)
	ns1, ns2 := c.namespace(t, "two-a"), c.namespace(t, "two-b")
	for _, ns := range []string{ns1, ns2} {
		c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	}
	pods := map[string]string{}
	for _, ns := range []string{ns1, ns2} {
		c.waitDeployment(t, ns, "echo", 2*time.Minute)
		pods[ns] = c.runningPod(t, ns, "app=echo").Name
	}
	suffix := rand.String(4)
	a := connect(t, "a"+suffix, "-n", ns1)
	b := connect(t, "b"+suffix, "-n", ns2)
	for conn, ns := range map[connection]string{a: ns1, b: ns2} {
		out, err := conn.probeEventually("http", "http://echo/")
		if err != nil {
			t.Errorf("%s: GET http://echo/: %v\n%s", conn.container, err, out)
			continue
		}
		if r := decodeEcho(t, out); r.Pod != pods[ns] {
			t.Errorf("%s: short name echo answered by pod %s, want %s of namespace %s", conn.container, r.Pod, pods[ns], ns)
		}
	}
}

// TestConnectExecCredentialPlugin connects with a kubeconfig whose user gets
// its token from an exec plugin: the plugin runs on the host, relayed to the
// daemon container.
func TestConnectExecCredentialPlugin(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "exec")
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	c.waitDeployment(t, ns, "echo", 2*time.Minute)

	dir := t.TempDir()
	calls := filepath.Join(dir, "calls")
	plugin := filepath.Join(dir, "token-plugin")
	script := fmt.Sprintf(`#!/bin/sh
echo called >> %s
echo '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"tp-exec-plugin-test-token"}}'
`, calls)
	if err := os.WriteFile(plugin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	raw, err := clientcmd.LoadFromFile(c.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	kctx := raw.Contexts[raw.CurrentContext]
	user := raw.AuthInfos[kctx.AuthInfo]
	user.ClientCertificateData, user.ClientKeyData, user.ClientCertificate, user.ClientKey = nil, nil, "", ""
	user.Exec = &clientcmdapi.ExecConfig{APIVersion: "client.authentication.k8s.io/v1", Command: plugin, InteractiveMode: "Never"}
	path := filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*raw, path); err != nil {
		t.Fatal(err)
	}

	conn := connect(t, "exec-"+rand.String(4), "--kubeconfig", path, "-n", ns)
	if out, err := conn.probeEventually("http", "http://echo/"); err != nil {
		t.Fatalf("joined container via exec-plugin connection: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(calls); err != nil || len(b) == 0 {
		t.Errorf("the exec plugin never ran on the host (%v)", err)
	}
	// The daemon's kubeconfig has no credential but the relayed plugin (the
	// client key and certificate were removed above): reaching echo proves
	// the relay. It lives only in the daemon's memory, never in a file.
	if out, err := docker("cp", conn.container+":/etc/tp/kubeconfig", "-"); err == nil {
		t.Errorf("the daemon container has a kubeconfig file:\n%.300s", out)
	}
}

// TestQuitForgetsSession: after tp quit no container is left and the manager
// has no session of the connection.
func TestQuitForgetsSession(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "quit")
	name := "quit-" + rand.String(4)
	out, err := tp(t, "connect", "--name", name, "-n", ns)
	if err != nil {
		t.Fatalf("connect: %v\n%s", err, out)
	}
	if !managerHasSession(t, c, name) {
		t.Fatalf("manager has no session for connection %s while connected", name)
	}
	if out, err := tp(t, "quit", "--name", name); err != nil {
		t.Fatalf("quit: %v\n%s", err, out)
	}
	if out, err := docker("inspect", "tp-"+name); err == nil {
		t.Errorf("container tp-%s still exists after quit:\n%s", name, out)
	}
	if managerHasSession(t, c, name) {
		t.Errorf("manager still has a session for connection %s after quit", name)
	}
}

// managerHasSession asks the traffic-manager (through a port-forward) whether
// a session of the connection exists.
func managerHasSession(t *testing.T, c *cluster, connection string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := c.managerClient(t).ListSessions(ctx, &managerv1.ListSessionsRequest{})
	if err != nil {
		t.Fatalf("list sessions: %v", err)
	}
	for _, s := range resp.GetSessions() {
		if s.GetClient().GetName() == connection {
			return true
		}
	}
	return false
}

// TestConnectPublish: `tp connect --publish` publishes a port of the daemon
// container's network namespace on the host, so a joined container (which
// cannot publish ports itself) is reachable from the host; the connection
// records its ports, a connect with the same ports is a no-op and one with
// other ports says what to do.
func TestConnectPublish(t *testing.T) {
	port := freePort(t)
	spec := fmt.Sprintf("127.0.0.1:%d:8080", port)
	conn := connect(t, "pub", "--publish", spec)

	name := "tp-e2e-pub-" + rand.String(5)
	if out, err := docker("run", "-d", "--rm", "--name", name, "--network", "container:"+conn.container,
		"-e", "ECHO_COPY=published", "tp-echo:dev"); err != nil {
		t.Fatalf("docker run the joined echo: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = docker("rm", "-f", name) })

	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	var body string
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		b, err := httpGet(ctx, url)
		body = b
		return err == nil, nil
	})
	if err != nil || !strings.Contains(body, `"published"`) {
		t.Fatalf("GET %s from the host: %v, body %q; want the joined echo's answer (copy \"published\")", url, err, body)
	}

	out, err := tp(t, "status", "--name", "pub", "-o", "json")
	if err != nil {
		t.Fatalf("tp status: %v\n%s", err, out)
	}
	var st struct {
		Published []string `json:"published"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st.Published) != 1 || st.Published[0] != spec {
		t.Errorf("tp status -o json published %q (%v), want [%s]\n%s", st.Published, err, spec, out)
	}

	if out, err := tp(t, "connect", "--name", "pub", "--publish", spec); err != nil || !strings.Contains(out, "Already connected") {
		t.Errorf("connect again with the same ports: %v\n%s\nwant a no-op (Already connected)", err, out)
	}
	out, err = tp(t, "connect", "--name", "pub", "--publish", fmt.Sprintf("127.0.0.1:%d:9090", port+1))
	if err == nil || !strings.Contains(out, "tp quit --name pub") {
		t.Errorf("connect with other ports: %v\n%s\nwant an error that says to run tp quit --name pub", err, out)
	}
	if out, err := tp(t, "connect", "--name", "pub2", "--publish", "8080:x"); err == nil || !strings.Contains(out, "--publish") {
		t.Errorf("connect --publish 8080:x: %v\n%s\nwant an error naming --publish", err, out)
	}
}

// freePort is a TCP port of the host's loopback that nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func httpGet(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
