//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
)

// inCluster asks, from a pod in ns, for url (probe http with headers) and
// returns the echo reply.
func (c *cluster) echoFromPod(t *testing.T, ns, url string, headers ...string) echoReply {
	t.Helper()
	args := []string{"http"}
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	return decodeEcho(t, c.podOutput(t, ns, probeImage, append(args, url)...))
}

// waitCopy polls from a pod in ns until url is answered by the wanted copy.
func (c *cluster) waitCopy(t *testing.T, ns, url, want string, timeout time.Duration, headers ...string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	args := []string{"http"}
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	args = append(args, url)
	var last string
	for time.Now().Before(deadline) {
		out, err := c.runPod(ns, probeImage, args...)
		if err == nil {
			var got echoReply
			if json.Unmarshal([]byte(out), &got) == nil && got.Copy == want {
				return
			}
			last = out
		} else {
			last = err.Error()
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("%s %v: last answer %s; want copy %s within %s", url, headers, last, want, timeout)
}

// localEcho runs a local copy of the echo example in a connection's network
// namespace, answering as copy.
func localEcho(t *testing.T, conn connection, copy string) {
	t.Helper()
	name := "tp-e2e-local-" + rand.String(4)
	if out, err := docker("run", "-d", "--name", name, "--network", "container:"+conn.container, "-e", "ECHO_COPY="+copy, echoImage, "serve"); err != nil {
		t.Fatalf("start local echo: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = docker("rm", "-f", name) })
}

func tpOK(t *testing.T, args ...string) string {
	t.Helper()
	out, err := tp(t, args...)
	if err != nil {
		t.Fatalf("tp %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// TestInterceptGlobalDockerRun: a global intercept with --docker-run sends the
// cluster's requests to the local container, which has the pod's
// environment; after the container ends (the intercept with it) the
// cluster's copy answers again. Then the numeric gRPC port.
func TestInterceptGlobalDockerRun(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "icept")
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	conn := connect(t, "ig-"+rand.String(4), "-n", ns)

	bin := tpBin(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	envFile := filepath.Join(t.TempDir(), "echo.env")
	run := exec.CommandContext(ctx, bin, "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http",
		"--env-file", envFile, "--docker-run", "--", "-e", "ECHO_COPY=local", echoImage, "serve")
	run.Cancel = func() error { return run.Process.Signal(os.Interrupt) }
	var out strings.Builder
	run.Stdout, run.Stderr = &out, &out
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- run.Wait() }()

	select {
	case err := <-done:
		t.Fatalf("tp intercept --docker-run ended early: %v\n%s", err, out.String())
	case <-time.After(time.Second):
	}
	c.waitCopy(t, ns, "http://echo."+ns+"/global", "local", 90*time.Second)
	env := map[string]string{}
	if err := json.Unmarshal([]byte(c.podOutput(t, ns, probeImage, "http", "http://echo."+ns+"/env?keys=ECHO_SERVICE,GREETING,API_TOKEN,POD_NAME,TP_INTERCEPT_NAME")), &env); err != nil {
		t.Fatal(err)
	}
	pods, _ := c.client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=echo"})
	podNames := map[string]bool{}
	for _, p := range pods.Items {
		podNames[p.Name] = true
	}
	for k, want := range map[string]string{"ECHO_SERVICE": "echo", "GREETING": "hello-from-configmap", "API_TOKEN": "s3cr3t-from-secret", "TP_INTERCEPT_NAME": "echo"} {
		if env[k] != want {
			t.Errorf("--docker-run container: %s=%q, want %q (the pod's value)", k, env[k], want)
		}
	}
	if !podNames[env["POD_NAME"]] {
		t.Errorf("--docker-run container: POD_NAME=%q, want one of the workload's pods %v", env["POD_NAME"], podNames)
	}
	if b, err := os.ReadFile(envFile); err != nil || !strings.Contains(string(b), "API_TOKEN=s3cr3t-from-secret") {
		t.Errorf("--env-file: %v\n%s", err, b)
	}

	cancel() // Ctrl-C: the container stops and the intercept ends
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("tp intercept did not end after Ctrl-C:\n%s", out.String())
	}
	c.waitCopy(t, ns, "http://echo."+ns+"/after-leave", "cluster", 30*time.Second)
	if strings.Contains(tpOK(t, "list", "--name", conn.name, "-o", "json"), `"intercepts"`) {
		t.Errorf("intercept still listed after Ctrl-C")
	}

	// gRPC on the numeric targetPort 9091, with a local copy already running.
	localEcho(t, conn, "local")
	tpOK(t, "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "9091:grpc")
	grpcCopy := func() string {
		var r echoReply
		_ = json.Unmarshal([]byte(c.podOutput(t, ns, probeImage, "grpc", "echo."+ns+":9091")), &r)
		return r.Copy
	}
	if got := grpcCopy(); got != "local" {
		t.Errorf("gRPC through a global intercept answered by %q, want local", got)
	}
	// The other port of the two-port service still reaches the app.
	if r := c.echoFromPod(t, ns, "http://echo."+ns+"/other-port"); r.Copy != "cluster" {
		t.Errorf("HTTP port while gRPC is intercepted answered by %q, want cluster", r.Copy)
	}
	tpOK(t, "leave", "echo", "--name", conn.name)
	if got := grpcCopy(); got != "cluster" {
		t.Errorf("gRPC after leave answered by %q, want cluster", got)
	}
}

// TestInterceptPersonal: two connections intercept one workload with
// different header values; each gets only its requests, the rest reach the app.
func TestInterceptPersonal(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "personal")
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	suffix := rand.String(4)
	alice := connect(t, "alice-"+suffix, "-n", ns)
	bob := connect(t, "bob-"+suffix, "-n", ns)
	localEcho(t, alice, "local-alice")
	localEcho(t, bob, "local-bob")
	tpOK(t, "intercept", "echo", "--name", alice.name, "--service", "echo", "--port", "8080:http", "--http-header", "x-dev=alice")
	tpOK(t, "intercept", "echo", "--name", bob.name, "--service", "echo", "--port", "8080:http", "--http-header", "x-dev=bob")

	url := "http://echo." + ns + "/personal"
	c.waitCopy(t, ns, url, "local-alice", 90*time.Second, "x-dev=alice")
	for _, tc := range []struct {
		headers []string
		want    string
	}{
		{[]string{"x-dev=alice"}, "local-alice"},
		{[]string{"x-dev=bob"}, "local-bob"},
		{nil, "cluster"},
		{[]string{"x-dev=carol"}, "cluster"},
	} {
		if r := c.echoFromPod(t, ns, url, tc.headers...); r.Copy != tc.want {
			t.Errorf("request with %v answered by %q, want %q", tc.headers, r.Copy, tc.want)
		}
	}
	// A global intercept by a third developer would take the others'
	// requests: refused, naming an owner.
	carol := connect(t, "carol-"+suffix, "-n", ns)
	out, err := tp(t, "intercept", "echo", "--name", carol.name, "--service", "echo", "--port", "8080:http")
	if err == nil || !strings.Contains(out, "bob-"+suffix) && !strings.Contains(out, "alice-"+suffix) {
		t.Errorf("global intercept over personal ones: err %v, output %q; want a refusal naming the owner", err, out)
	}
}

// TestInterceptCrashAndUninstall: once the daemon container is killed, its
// intercept's traffic returns to the app (the agent serves it while the
// owner is away; the intercept itself stays for the session TTL);
// uninstalling the agent restores the pod template exactly.
func TestInterceptCrashAndUninstall(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "crash")
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	before := c.waitDeployment(t, ns, "echo", 2*time.Minute).Spec.Template
	conn := connect(t, "crash-"+rand.String(4), "-n", ns)
	localEcho(t, conn, "local")
	// Two services select echo's pods (echo, echo-headless): without
	// --service the non-headless one with the port is meant.
	tpOK(t, "intercept", "echo", "--name", conn.name, "--port", "8080:http")
	url := "http://echo." + ns + "/crash"
	c.waitCopy(t, ns, url, "local", 90*time.Second)

	if out, err := docker("kill", conn.container); err != nil {
		t.Fatalf("kill daemon container: %v\n%s", err, out)
	}
	killed := time.Now()
	c.waitCopy(t, ns, url, "cluster", 35*time.Second)
	t.Logf("traffic back at the app %s after the daemon container was killed", time.Since(killed).Round(time.Second))
	_, _ = tp(t, "quit", "--name", conn.name)

	conn2 := connect(t, "restore-"+rand.String(4), "-n", ns)
	tpOK(t, "uninstall", "--name", conn2.name, "--agent", "echo")
	after := c.waitDeployment(t, ns, "echo", 2*time.Minute).Spec.Template
	if !equality.Semantic.DeepEqual(before, after) {
		b, _ := json.MarshalIndent(before, "", " ")
		a, _ := json.MarshalIndent(after, "", " ")
		t.Errorf("pod template after uninstall differs from the original:\nbefore %s\nafter %s", b, a)
	}
	if p := c.runningPod(t, ns, "app=echo"); len(p.Spec.Containers) != 1 || len(p.Spec.InitContainers) != 0 {
		t.Errorf("pod after uninstall has containers %d, init containers %d; want 1, 0", len(p.Spec.Containers), len(p.Spec.InitContainers))
	}
}

// TestInterceptHeadless: a headless service's clients connect to the pod IP
// itself; the agent-init redirect hands those connections to the agent.
func TestInterceptHeadless(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "headless")
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	conn := connect(t, "hl-"+rand.String(4), "-n", ns)
	localEcho(t, conn, "local")
	tpOK(t, "intercept", "echo", "--name", conn.name, "--service", "echo-headless", "--port", "8080:http")
	c.waitCopy(t, ns, "http://echo-headless."+ns+":8080/headless", "local", 90*time.Second)
	tpOK(t, "leave", "echo", "--name", conn.name)
	c.waitCopy(t, ns, "http://echo-headless."+ns+":8080/headless", "cluster", 30*time.Second)
}

// TestInterceptDockerBuild: --docker-build builds the user's directory with
// --docker-build-opt and runs the image where IMAGE stands in the
// arguments; the cluster's requests reach it. A directory that does not
// build leaves no intercept.
func TestInterceptDockerBuild(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "ibuild")
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	conn := connect(t, "ib-"+rand.String(4), "-n", ns)

	dir := t.TempDir()
	// The pod's environment wins over the image's ENV (ECHO_COPY is the
	// pod's), so the build argument shows in a variable of its own.
	dockerfile := "FROM " + echoImage + " AS base\nARG BUILT=unset\nENV BUILT_WITH=$BUILT\nFROM base AS dev\n"
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	run := exec.CommandContext(ctx, tpBin(t), "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http",
		"--docker-build", dir, "--docker-build-opt", "build-arg=BUILT=yes", "--docker-build-opt", "target=dev", "--", "-e", "ECHO_COPY=built", "IMAGE", "serve")
	run.Cancel = func() error { return run.Process.Signal(os.Interrupt) }
	var out strings.Builder
	run.Stdout, run.Stderr = &out, &out
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- run.Wait() }()
	c.waitCopy(t, ns, "http://echo."+ns+"/built", "built", 90*time.Second)
	if env := c.podOutput(t, ns, probeImage, "http", "http://echo."+ns+"/env?keys=BUILT_WITH"); !strings.Contains(env, `"BUILT_WITH":"yes"`) {
		t.Errorf("the built image's BUILT_WITH: %s, want yes (--docker-build-opt build-arg=BUILT=yes)", env)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("tp intercept --docker-build did not end after Ctrl-C\n%s", out.String())
	}
	c.waitCopy(t, ns, "http://echo."+ns+"/after", "cluster", 30*time.Second)

	// A build that fails: an error with docker build's output, no intercept.
	bad := t.TempDir()
	if err := os.WriteFile(filepath.Join(bad, "Dockerfile"), []byte("FROM "+echoImage+"\nRUN /no-such-command\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	o, err := tp(t, "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http", "--docker-build", bad, "--", "IMAGE")
	if err == nil || !strings.Contains(o, "docker build") {
		t.Errorf("intercept with a failing build: %v\n%s\nwant an error from docker build", err, o)
	}
	if l := tpOK(t, "list", "--name", conn.name, "-n", ns, "-o", "json"); strings.Contains(l, `"intercepts"`) {
		t.Errorf("a failed build left an intercept:\n%s", l)
	}
}
