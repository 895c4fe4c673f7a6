//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pkg/sftp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"

	"github.com/tp-run/tp/agent"
	"github.com/tp-run/tp/daemoncontainer"
	"github.com/tp-run/tp/daemoncontainer/wire"
	"github.com/tp-run/tp/internal/dockerengine"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// kubectlCat prints a file of a container of pod ns/name with `kubectl exec`
// (the echo image has no shell: its `echo cat`).
func (c *cluster) kubectlCat(t *testing.T, ns, pod, container, file string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "kubectl", "--kubeconfig", c.kubeconfig, "-n", ns, "exec", pod, "-c", container, "--", "/echo", "cat", file)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl exec %s cat %s: %v\n%s", pod, file, err, stderr.String())
	}
	return stdout.Bytes()
}

// agentPod returns the running pod of ns/selector that has the traffic-agent.
func (c *cluster) agentPod(t *testing.T, ns, selector string) *corev1.Pod {
	t.Helper()
	pods, err := c.client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatal(err)
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
			continue
		}
		for _, ct := range p.Spec.Containers {
			if ct.Name == "tp-agent" {
				return p
			}
		}
	}
	t.Fatalf("no running pod with the traffic-agent for %q in %s", selector, ns)
	return nil
}

// interceptOf finds the connection's intercept name in ns through its daemon.
func interceptOf(t *testing.T, d *daemoncontainer.Client, ns, name string) *managerv1.InterceptInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ws, err := d.ListWorkloads(ctx, &managerv1.ListWorkloadsRequest{Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range ws.GetWorkloads() {
		for _, ic := range w.GetIntercepts() {
			if ic.GetSpec().GetName() == name {
				return ic
			}
		}
	}
	t.Fatalf("no intercept %s in %s", name, ns)
	return nil
}

// TestMountSFTP: after `tp intercept`, an SFTP client with the token of the
// daemon's OpenMount, dialing the daemon container's address on port 9022
// from the Docker host (where tp's volume plugin runs), reads the pod's
// Secret, ConfigMap and ServiceAccount token (mounted inside the emptyDir at
// /var: nested mounts) byte for byte as `kubectl exec cat` shows them,
// writes a file into the emptyDir that the app container reads, cannot write
// to the Secret, and a wrong token gets ERR.
func TestMountSFTP(t *testing.T) {
	c := newCluster(t)
	ns := c.echoNamespace(t, "mount")
	conn := connect(t, "mnt-"+rand.String(4), "-n", ns)
	tpOK(t, "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http")
	pod := c.agentPod(t, ns, "app=echo")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	engine, err := dockerengine.Resolve(dockerengine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := daemoncontainer.DialConnection(ctx, engine, conn.name)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ic := interceptOf(t, d, ns, "echo")
	ep, err := d.MountEndpoint(ctx, ic.GetId())
	if err != nil {
		t.Fatalf("MountEndpoint: %v", err)
	}
	if ep.Addr.Port() != wire.MountPort || len(ep.Token) != 64 {
		t.Errorf("mount endpoint %v, token of %d chars; want port %d and 32 bytes of hex", ep.Addr, len(ep.Token), wire.MountPort)
	}
	t.Logf("mount endpoint %s (daemon container %s)", ep.Addr, conn.container)

	// A wrong token: ERR, no session.
	wrong := strings.Repeat("ab", 32)
	if _, err := wire.DialMount(ctx, ep.Addr.String(), wrong); !errors.Is(err, wire.ErrMountRefused) {
		t.Errorf("DialMount with a wrong token: got %v, want ErrMountRefused", err)
	}

	start := time.Now()
	mc, err := wire.DialMount(ctx, ep.Addr.String(), ep.Token)
	if err != nil {
		t.Fatalf("DialMount: %v", err)
	}
	defer mc.Close()
	client, err := sftp.NewClientPipe(mc, mc)
	if err != nil {
		t.Fatalf("SFTP session: %v", err)
	}
	defer client.Close()
	t.Logf("SFTP session up %s after the handshake started", time.Since(start).Round(time.Millisecond))

	read := func(p string) []byte {
		t.Helper()
		f, err := client.Open(p)
		if err != nil {
			t.Fatalf("sftp open %s: %v", p, err)
		}
		defer f.Close()
		b, err := io.ReadAll(f)
		if err != nil {
			t.Fatalf("sftp read %s: %v", p, err)
		}
		return b
	}
	for _, p := range []string{
		"/etc/echo/secret/API_TOKEN",
		"/etc/echo/config/GREETING",
		"/var/run/secrets/kubernetes.io/serviceaccount/token",
		"/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
	} {
		got, want := read(p), c.kubectlCat(t, ns, pod.Name, "echo", p)
		if !bytes.Equal(got, want) || len(want) == 0 {
			t.Errorf("%s over SFTP: %d bytes, kubectl exec cat: %d bytes; want the same non-empty bytes", p, len(got), len(want))
		}
	}
	if got := string(read("/etc/echo/secret/API_TOKEN")); got != "s3cr3t-from-secret" {
		t.Errorf("the Secret's file over SFTP: %q", got)
	}

	// A file written into the emptyDir is the app's to read.
	content := fmt.Sprintf("written over SFTP at %s\n", time.Now().Format(time.RFC3339Nano))
	f, err := client.Create("/var/tp-e2e-written.txt")
	if err != nil {
		t.Fatalf("sftp create in the emptyDir: %v", err)
	}
	if _, err := f.Write([]byte(content)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := c.kubectlCat(t, ns, pod.Name, "echo", "/var/tp-e2e-written.txt"); string(got) != content {
		t.Errorf("the app container reads %q, want %q", got, content)
	}

	// The Secret is read-only.
	if f, err := client.Create("/etc/echo/secret/API_TOKEN"); err == nil {
		f.Close()
		t.Error("create over the Secret's file: no error")
	} else if !errors.Is(err, os.ErrPermission) {
		t.Logf("create over the Secret's file: %v", err)
	}
	if _, err := client.Create("/etc/echo/secret/new"); err == nil {
		t.Error("create in the Secret: no error")
	}
	if got := c.kubectlCat(t, ns, pod.Name, "echo", "/etc/echo/secret/API_TOKEN"); string(got) != "s3cr3t-from-secret" {
		t.Errorf("the Secret's file changed: %q", got)
	}
	// Nothing outside the app's volumes, not even the agent's own token.
	for _, p := range []string{"/var/run/secrets/tp.run/agent/token", "/tp", "/proc/self/environ"} {
		if f, err := client.Open(p); err == nil {
			f.Close()
			t.Errorf("sftp open %s: no error, want nothing outside the app's volumes", p)
		}
	}

	// The mount ends with the intercept.
	tpOK(t, "leave", "echo", "--name", conn.name)
	if _, err := wire.DialMount(ctx, ep.Addr.String(), ep.Token); !errors.Is(err, wire.ErrMountRefused) {
		t.Errorf("DialMount after tp leave: got %v, want ErrMountRefused (token forgotten)", err)
	}
}

// TestMountUnreachableFromPods: a pod of the cluster that connects to every
// port the intercepted pod's containers declare or the agent listens on (and
// to 9022 and 22 of the pod) gets no SSH banner and no SFTP session, whether
// it speaks SFTP at once or after a tp mount handshake.
func TestMountUnreachableFromPods(t *testing.T) {
	c := newCluster(t)
	ns := c.echoNamespace(t, "mount-sec")
	conn := connect(t, "mntsec-"+rand.String(4), "-n", ns)
	tpOK(t, "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http")
	pod := c.agentPod(t, ns, "app=echo")
	ports := map[int32]bool{22: true, 9022: true, 9898: true}
	for _, ct := range pod.Spec.Containers {
		for _, p := range ct.Ports {
			if p.Protocol == "" || p.Protocol == corev1.ProtocolTCP {
				ports[p.ContainerPort] = true
			}
		}
		// The agent ports, declared (rename) or not (redirect).
		for _, e := range ct.Env {
			if e.Name != agent.EnvPorts {
				continue
			}
			var agentPorts []agent.Port
			if err := json.Unmarshal([]byte(e.Value), &agentPorts); err != nil {
				t.Fatalf("%s of %s: %v", agent.EnvPorts, ct.Name, err)
			}
			for _, p := range agentPorts {
				ports[p.AgentPort] = true
			}
		}
	}
	var addrs []string
	for p := range ports {
		addrs = append(addrs, fmt.Sprintf("%s:%d", pod.Status.PodIP, p))
	}
	intruders := c.namespace(t, "intruder")
	out, err := c.runPod(intruders, probeImage, append([]string{"sftp", "-timeout", "50s"}, addrs...)...)
	if err != nil {
		t.Fatalf("a pod of the cluster got SSH or SFTP from the intercepted pod: %v", err)
	}
	for _, a := range addrs {
		for _, how := range []string{"banner", "raw", "tp-mount"} {
			if !strings.Contains(out, a+" "+how+": refused") {
				t.Errorf("probe output lacks the refused %s attempt on %s:\n%s", how, a, out)
			}
		}
	}
	t.Logf("attempts from an ordinary pod:\n%s", out)
}
