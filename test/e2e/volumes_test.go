//go:build e2e

package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/rand"
)

// The echo example's mounts (examples/echo/k8s/echo.yaml) and the
// ServiceAccount token nested inside the /var emptyDir.
var mountedFiles = []string{
	"/etc/echo/secret/API_TOKEN",
	"/etc/echo/config/GREETING",
	"/var/run/secrets/kubernetes.io/serviceaccount/token",
	"/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
}

// tpVolumes lists the tp volumes on the Docker engine, and the FUSE mounts
// of tp's plugin in the host's mount table.
func tpVolumes(t *testing.T) (vols, fuse []string) {
	t.Helper()
	out, err := docker("volume", "ls", "-q", "--filter", "label=tp.run/volume")
	if err != nil {
		t.Fatalf("docker volume ls: %v\n%s", err, out)
	}
	mounts, err := os.ReadFile("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(l); len(f) > 2 && (f[2] == "fuse.tp" || strings.HasPrefix(f[0], "tp:")) {
			fuse = append(fuse, f[1])
		}
	}
	return lines(out), fuse
}

// waitNoVolumes waits until no tp volume and no FUSE mount of tp's plugin remain.
func waitNoVolumes(t *testing.T, after string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		vols, fuse := tpVolumes(t)
		if len(vols) == 0 && len(fuse) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: tp volumes %q and FUSE mounts %q remain", after, vols, fuse)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// TestInterceptMountsVolumes: `tp intercept --docker-run` mounts the app
// container's volumes at their paths in the local container (a Debian
// image with coreutils): the Secret's and ConfigMap's files and the
// ServiceAccount token (nested in an emptyDir) are byte-identical to the
// pod's; a file written to the emptyDir is read by the app in the pod; a
// write to the read-only Secret mount fails. After the container exits no tp
// volume and no FUSE mount remains. Then --mount-path and --mount-readonly,
// and --mount-volumes without --docker-run, which tp leave cleans up.
func TestInterceptMountsVolumes(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "mounts")
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	conn := connect(t, "mv-"+rand.String(4), "-n", ns)
	waitNoVolumes(t, "the start")

	marker := "written-by-the-local-container-" + rand.String(6)
	script := "set -u; echo POD=$TP_POD; sha256sum " + strings.Join(mountedFiles, " ") +
		"; echo " + marker + " > /var/from-local.txt && echo WROTE-EMPTYDIR" +
		"; if echo x > /etc/echo/secret/new 2>/dev/null; then echo WROTE-SECRET; else echo SECRET-REFUSED; fi"
	out, err := tp(t, "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http",
		"--docker-run", "--", debianImage, "sh", "-c", script)
	if err != nil {
		t.Fatalf("tp intercept --docker-run: %v\n%s", err, out)
	}
	t.Logf("tp intercept --docker-run:\n%s", out)
	pod := ""
	local := map[string]string{}
	for _, l := range lines(out) {
		if p, ok := strings.CutPrefix(l, "POD="); ok {
			pod = p
		}
		if f := strings.Fields(l); len(f) == 2 && len(f[0]) == 64 {
			local[f[1]] = f[0]
		}
	}
	if pod == "" {
		t.Fatalf("the container printed no POD=\n%s", out)
	}
	for _, f := range mountedFiles {
		want := sha(c.kubectlCat(t, ns, pod, "echo", f))
		if local[f] != want {
			t.Errorf("%s: sha256 %q in the local container, %s in pod %s", f, local[f], want, pod)
		}
	}
	if !strings.Contains(out, "WROTE-EMPTYDIR") {
		t.Errorf("writing to the emptyDir /var failed:\n%s", out)
	} else if got := strings.TrimSpace(string(c.kubectlCat(t, ns, pod, "echo", "/var/from-local.txt"))); got != marker {
		t.Errorf("the app reads /var/from-local.txt as %q, want %q", got, marker)
	}
	if !strings.Contains(out, "SECRET-REFUSED") {
		t.Errorf("a write to the read-only Secret mount did not fail:\n%s", out)
	}
	waitNoVolumes(t, "the --docker-run container exited")

	// --mount-path picks one mount, --mount-readonly makes the emptyDir read-only.
	out, err = tp(t, "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http",
		"--mount-path", "/var", "--mount-readonly", "--docker-run", "--", debianImage, "sh", "-c",
		"ls /etc/echo/config 2>/dev/null && echo CONFIG-MOUNTED; cat /var/from-local.txt; if echo y > /var/ro-test 2>/dev/null; then echo WROTE-RO; fi")
	if err != nil {
		t.Fatalf("tp intercept --mount-path /var --mount-readonly: %v\n%s", err, out)
	}
	if strings.Contains(out, "CONFIG-MOUNTED") || strings.Contains(out, "WROTE-RO") || !strings.Contains(out, marker) {
		t.Errorf("--mount-path /var --mount-readonly: want only /var, read-only, with the earlier file:\n%s", out)
	}
	if out, err := tp(t, "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http",
		"--mount-path", "/nope", "--docker-run", "--", debianImage, "true"); err == nil || !strings.Contains(out, "/etc/echo/config") {
		t.Errorf("--mount-path /nope: %v\n%s\nwant an error that lists the app's mounts", err, out)
	}
	waitNoVolumes(t, "the --mount-path runs")

	// --mount-volumes: volumes for the user's own docker run; tp leave removes them.
	out, err = tp(t, "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http", "--mount-volumes", "-o", "json")
	if err != nil {
		t.Fatalf("tp intercept --mount-volumes: %v\n%s", err, out)
	}
	var res struct {
		Volumes []struct{ Name, Path string } `json:"volumes"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Volumes) != 4 {
		t.Fatalf("tp intercept --mount-volumes -o json: %v, want 4 volumes (Secret, ConfigMap, emptyDir, ServiceAccount token)\n%s", err, out)
	}
	for _, v := range res.Volumes {
		if v.Path == "/etc/echo/config" {
			got, err := docker("run", "--rm", "-v", v.Name+":/cfg:ro", debianImage, "cat", "/cfg/GREETING")
			if err != nil || got != "hello-from-configmap" {
				t.Errorf("docker run -v %s: %v %q, want the ConfigMap's GREETING", v.Name, err, got)
			}
		}
	}
	if st := tpOK(t, "status", "--name", conn.name); !strings.Contains(st, "/etc/echo/config") {
		t.Errorf("tp status does not show the volumes:\n%s", st)
	}
	tpOK(t, "leave", "echo", "--name", conn.name, "-n", ns)
	waitNoVolumes(t, "tp leave")

	// tp quit removes the volumes of the connection's intercepts too.
	tpOK(t, "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http", "--mount-volumes")
	if vols, _ := tpVolumes(t); len(vols) == 0 {
		t.Fatal("--mount-volumes made no volume")
	}
	tpOK(t, "quit", "--name", conn.name)
	waitNoVolumes(t, "tp quit")
}

// TestInterceptMountsAfterCtrlC: Ctrl-C of a --docker-run that reads its
// mounts, then the same intercept again: the mount works (the incumbent's
// #3652). Then the agent's pod is deleted while the container reads a
// mounted file: the read fails within 10 s and the container stops
// normally; tp quit leaves no volume.
func TestInterceptMountsAfterCtrlC(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "mountsig")
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	conn := connect(t, "ms-"+rand.String(4), "-n", ns)

	reader := "while true; do if cat /etc/echo/config/GREETING >/dev/null 2>&1; then echo READ-OK; else echo READ-FAILED; exit 3; fi; sleep 0.2; done"
	start := func() (*exec.Cmd, *strings.Builder, chan error) {
		cmd := exec.Command(tpBin(t), "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http",
			"--docker-run", "--", debianImage, "sh", "-c", reader)
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		return cmd, &out, done
	}
	waitOutput := func(out *strings.Builder, done chan error, want string, timeout time.Duration) {
		t.Helper()
		deadline := time.Now().Add(timeout)
		for !strings.Contains(out.String(), want) {
			select {
			case err := <-done:
				t.Fatalf("tp intercept ended (%v) before %q:\n%s", err, want, out.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %q within %s:\n%s", want, timeout, out.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	for round := 1; round <= 2; round++ {
		cmd, out, done := start()
		waitOutput(out, done, "READ-OK", 90*time.Second)
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: tp intercept did not end after Ctrl-C:\n%s", round, out.String())
		}
		waitNoVolumes(t, "Ctrl-C")
	}

	// The agent's pod deleted while the container reads.
	cmd, out, done := start()
	waitOutput(out, done, "READ-OK", 90*time.Second)
	pods, err := c.client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=echo"})
	if err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	for _, p := range pods.Items {
		if err := c.client.CoreV1().Pods(ns).Delete(context.Background(), p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-done:
		if !strings.Contains(out.String(), "READ-FAILED") {
			t.Errorf("tp intercept ended without a failed read:\n%s", out.String())
		}
		t.Logf("the container's read failed and it stopped %.1f s after the pod was deleted", time.Since(deleted).Seconds())
		if took := time.Since(deleted); took > 15*time.Second {
			t.Errorf("the read failed only %s after the pod was deleted, want within 10 s (plus the container's stop)", took)
		}
	case <-time.After(40 * time.Second):
		_ = cmd.Process.Signal(os.Interrupt)
		t.Fatalf("reads of the deleted pod's mount did not fail:\n%s", out.String())
	}
	waitNoVolumes(t, "the container stopped")

	// The next intercept mounts the new pod's files.
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	got, err := tp(t, "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http",
		"--docker-run", "--", debianImage, "sh", "-c", "echo POD=$TP_POD; cat /etc/echo/config/GREETING")
	if err != nil || !strings.Contains(got, "hello-from-configmap") {
		t.Fatalf("the intercept after the pod's deletion: %v\n%s\nwant the new pod's GREETING", err, got)
	}
	for _, p := range pods.Items {
		if strings.Contains(got, "POD="+p.Name) {
			t.Errorf("the new intercept mounted the deleted pod %s:\n%s", p.Name, got)
		}
	}
	waitNoVolumes(t, "the intercept after the deletion")
}

// TestInterceptMountsTwoConnections: two connections hold personal
// intercepts of one workload; each --docker-run mounts the pod's volumes on
// its own, and one ending leaves the other's mount working.
func TestInterceptMountsTwoConnections(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "mounts2")
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	a := connect(t, "m2a-"+rand.String(4), "-n", ns)
	b := connect(t, "m2b-"+rand.String(4), "-n", ns)

	reader := "while true; do cat /etc/echo/config/GREETING >/dev/null 2>&1 && echo READ-OK || { echo READ-FAILED; exit 3; }; sleep 0.3; done"
	cmd := exec.Command(tpBin(t), "intercept", "echo", "--name", a.name, "--service", "echo", "--port", "8080:http",
		"--http-header", "x-dev=a", "--docker-run", "--", debianImage, "sh", "-c", reader)
	var outA strings.Builder
	cmd.Stdout, cmd.Stderr = &outA, &outA
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		<-done
	}()
	deadline := time.Now().Add(90 * time.Second)
	for !strings.Contains(outA.String(), "READ-OK") {
		if time.Now().After(deadline) {
			t.Fatalf("connection a never read its mount:\n%s", outA.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	outB, err := tp(t, "intercept", "echo", "--name", b.name, "--service", "echo", "--port", "8080:http",
		"--http-header", "x-dev=b", "--docker-run", "--", debianImage, "cat", "/etc/echo/secret/API_TOKEN")
	if err != nil || !strings.Contains(outB, "s3cr3t-from-secret") {
		t.Fatalf("connection b's intercept with mounts: %v\n%s", err, outB)
	}
	// b has left; a still reads.
	n := strings.Count(outA.String(), "READ-OK")
	time.Sleep(2 * time.Second)
	if strings.Contains(outA.String(), "READ-FAILED") || strings.Count(outA.String(), "READ-OK") <= n {
		t.Errorf("connection a's mount stopped working after b left:\n%s", outA.String())
	}
}

// startMountReader starts `tp intercept --docker-run` of echo on conn whose
// container reads the ConfigMap's mounted file in a loop (READ-OK, and
// READ-FAILED then exit 3 when a read fails), and waits for its first read.
// The intercept is personal (x-dev: header), so that one whose session
// lingers in the traffic-manager after its daemon container was removed is
// not in the way of the next.
func startMountReader(t *testing.T, conn connection, header string) (*exec.Cmd, *strings.Builder, chan error) {
	t.Helper()
	reader := "while true; do if cat /etc/echo/config/GREETING >/dev/null 2>&1; then echo READ-OK; else echo READ-FAILED; exit 3; fi; sleep 0.2; done"
	cmd := exec.Command(tpBin(t), "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http",
		"--http-header", "x-dev="+header, "--docker-run", "--", debianImage, "sh", "-c", reader)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		select {
		case <-done:
		case <-time.After(30 * time.Second): // the docker CLI child holds the output open
		}
	})
	deadline := time.Now().Add(90 * time.Second)
	for !strings.Contains(out.String(), "READ-OK") {
		select {
		case err := <-done:
			t.Fatalf("tp intercept ended (%v) before its first read:\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no READ-OK within 90 s:\n%s", out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	return cmd, &out, done
}

// dockerRunContainers are the --docker-run containers of connection, in any state.
func dockerRunContainers(t *testing.T, connection string) []string {
	t.Helper()
	out, err := docker("ps", "-aq", "--filter", "label=tp.run/docker-run=true", "--filter", "label=tp.run/connection="+connection)
	if err != nil {
		t.Fatalf("docker ps: %v\n%s", err, out)
	}
	return lines(out)
}

// waitNoDockerRun waits until connection has no --docker-run container.
func waitNoDockerRun(t *testing.T, connection, after string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		cs := dockerRunContainers(t, connection)
		if len(cs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: --docker-run containers %q remain", after, cs)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// mountedNow checks that the reader's volumes and FUSE mounts exist: what
// the cleanup must remove.
func mountedNow(t *testing.T, conn connection) {
	t.Helper()
	vols, fuse := tpVolumes(t)
	if len(vols) == 0 {
		t.Fatalf("while the container reads: no tp volume")
	}
	if len(fuse) == 0 { // then "no FUSE mount remains" proves nothing
		t.Errorf("while the container reads: no FUSE mount of tp's plugin in the host's mount table (volumes %q)", vols)
	}
	if cs := dockerRunContainers(t, conn.name); len(cs) != 1 {
		t.Fatalf("while the container reads: --docker-run containers %q, want one", cs)
	}
}

// TestInterceptMountsAfterCrash: what a killed CLI or a removed daemon
// container leaves goes with the next tp command, and the same intercept
// then mounts again.
//   - The CLI of a --docker-run with mounts is killed (SIGKILL: no cleanup of
//     its own); its container runs on. The next tp status removes the
//     container, the volumes (and so the FUSE mounts) and leaves its
//     intercept; the same intercept then mounts and reads again.
//   - The daemon container is removed (docker rm -f) under a live
//     --docker-run: the CLI stops the container, removes the volumes and
//     says what happened.
//   - Both: the CLI killed, then the daemon container removed; the next tp
//     command (tp status, which finds no connection) removes everything.
func TestInterceptMountsAfterCrash(t *testing.T) {
	c := newCluster(t)
	ns := c.echoNamespace(t, "mountcrash")
	conn := connect(t, "mc-"+rand.String(4), "-n", ns)
	waitNoVolumes(t, "the start")

	cmd, out, _ := startMountReader(t, conn, "killed")
	mountedNow(t, conn)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // the killed CLI does nothing more; its container runs on
	if cs := dockerRunContainers(t, conn.name); len(cs) != 1 {
		t.Fatalf("after SIGKILL of the CLI: --docker-run containers %q, want the one left running", cs)
	}
	t.Logf("tp status after the CLI was killed:\n%s", tpOK(t, "status", "--name", conn.name))
	waitNoDockerRun(t, conn.name, "tp status after the CLI was killed")
	waitNoVolumes(t, "tp status after the CLI was killed")
	t.Logf("the killed CLI's output:\n%s", out.String())
	got, err := tp(t, "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http",
		"--http-header", "x-dev=killed", "--docker-run", "--", debianImage, "cat", "/etc/echo/config/GREETING")
	if err != nil || !strings.Contains(got, "hello-from-configmap") {
		t.Fatalf("the same intercept after the killed CLI: %v\n%s\nwant the ConfigMap's GREETING", err, got)
	}
	waitNoVolumes(t, "the intercept after the killed CLI")

	// The daemon container removed under a live --docker-run.
	_, out, done := startMountReader(t, conn, "daemon-removed")
	mountedNow(t, conn)
	if o, err := docker("rm", "-f", conn.container); err != nil {
		t.Fatalf("docker rm -f %s: %v\n%s", conn.container, err, o)
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(out.String(), "was removed") {
			t.Errorf("tp intercept after docker rm -f of its daemon container: %v, want an error that says so:\n%s", err, out.String())
		}
	case <-time.After(45 * time.Second):
		t.Fatalf("tp intercept did not end within 45 s of docker rm -f %s:\n%s", conn.container, out.String())
	}
	waitNoDockerRun(t, conn.name, "docker rm -f of the daemon container")
	waitNoVolumes(t, "docker rm -f of the daemon container")

	// Both: the CLI killed, then its daemon container removed.
	tpOK(t, "connect", "--name", conn.name, "-n", ns)
	cmd, _, _ = startMountReader(t, conn, "both")
	mountedNow(t, conn)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if o, err := docker("rm", "-f", conn.container); err != nil {
		t.Fatalf("docker rm -f %s: %v\n%s", conn.container, err, o)
	}
	if o, err := tp(t, "status", "--name", conn.name); err == nil {
		t.Errorf("tp status of a removed daemon container succeeded:\n%s", o)
	}
	waitNoDockerRun(t, conn.name, "tp status after the CLI was killed and its daemon container removed")
	waitNoVolumes(t, "tp status after the CLI was killed and its daemon container removed")
}

// kubectlExec runs args in container of pod and returns its output.
func (c *cluster) kubectlExec(ns, pod, container string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "kubectl", append([]string{"--kubeconfig", c.kubeconfig, "-n", ns, "exec", pod, "-c", container, "--"}, args...)...).CombinedOutput()
	return string(out), err
}

// TestInterceptMountsFSGroup: the app runs as a non-root user with the
// pod's securityContext.fsGroup; what the local container (root in it)
// writes into the emptyDir through the mount is the fsGroup's, group
// read-write, its directories setgid, as the kubelet makes them: the app
// appends to the local container's file and creates files in its directory.
func TestInterceptMountsFSGroup(t *testing.T) {
	const appUID, fsGroup = 1000, 2000
	c := newCluster(t)
	ns := c.namespace(t, "mountfsg")
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	patch := fmt.Sprintf(`{"spec":{"template":{"spec":{"securityContext":{"runAsUser":%d,"runAsGroup":%d,"fsGroup":%d}}}}}`, appUID, appUID, fsGroup)
	if _, err := c.client.AppsV1().Deployments(ns).Patch(context.Background(), "echo", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	conn := connect(t, "mf-"+rand.String(4), "-n", ns)

	out, err := tp(t, "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http",
		"--docker-run", "--", debianImage, "sh", "-c", "set -e; echo POD=$TP_POD; mkdir /var/fsg; echo from-local > /var/fsg/local.txt; echo WROTE")
	if err != nil || !strings.Contains(out, "WROTE") {
		t.Fatalf("tp intercept --docker-run writing to the emptyDir: %v\n%s", err, out)
	}
	pod := ""
	for _, l := range lines(out) {
		if p, ok := strings.CutPrefix(l, "POD="); ok {
			pod = p
		}
	}
	if pod == "" {
		t.Fatalf("the container printed no POD=\n%s", out)
	}
	waitNoVolumes(t, "the --docker-run container exited")

	// As the app: the group and modes, then writes of its own.
	st, err := c.kubectlExec(ns, pod, "echo", "/echo", "stat", "/var/fsg", "/var/fsg/local.txt")
	if err != nil {
		t.Fatalf("stat in the app container: %v\n%s", err, st)
	}
	t.Logf("uid gid mode of /var/fsg and /var/fsg/local.txt in the app container:\n%s", st)
	got := lines(st)
	if len(got) != 2 {
		t.Fatalf("stat printed %q, want two lines", got)
	}
	for i, want := range []struct {
		path string
		bits uint64 // that the mode must have
	}{{"/var/fsg", 0o2070}, {"/var/fsg/local.txt", 0o060}} {
		var uid, gid int
		var mode uint64
		if _, err := fmt.Sscanf(got[i], "%d %d %o", &uid, &gid, &mode); err != nil {
			t.Fatalf("stat line %q: %v", got[i], err)
		}
		if gid != fsGroup || mode&want.bits != want.bits {
			t.Errorf("%s: group %d, mode %o; want the fsGroup %d and mode bits %o (as the kubelet makes them)", want.path, gid, mode, fsGroup, want.bits)
		}
	}
	if o, err := c.kubectlExec(ns, pod, "echo", "/echo", "append", "/var/fsg/local.txt", "from-app"); err != nil {
		t.Errorf("the app (uid %d) appends to the local container's file: %v\n%s", appUID, err, o)
	}
	if o, err := c.kubectlExec(ns, pod, "echo", "/echo", "append", "/var/fsg/by-app.txt", "x"); err != nil {
		t.Errorf("the app (uid %d) creates a file in the local container's directory: %v\n%s", appUID, err, o)
	} else if o, _ := c.kubectlExec(ns, pod, "echo", "/echo", "stat", "/var/fsg/by-app.txt"); !strings.HasPrefix(o, fmt.Sprintf("%d %d ", appUID, fsGroup)) {
		t.Errorf("the app's file: %q, want uid %d (the app runs as it) and group %d", o, appUID, fsGroup)
	}
	if got := string(c.kubectlCat(t, ns, pod, "echo", "/var/fsg/local.txt")); got != "from-local\nfrom-app\n" {
		t.Errorf("/var/fsg/local.txt in the pod: %q, want the local container's line and the app's", got)
	}
}

// TestInterceptMountsSkipsFiles: the app container mounts a ConfigMap key
// with subPath at a file path next to the ConfigMap's directory mount.
// `tp intercept --docker-run` mounts the directory (its file is
// byte-identical to the pod's) and skips the file, which a Docker volume
// cannot mount, naming it in its output; --mount-volumes -o json marks it
// not mountable and makes no volume for it; --mount-path naming the file fails with an error that says so.
func TestInterceptMountsSkipsFiles(t *testing.T) {
	const filePath = "/etc/app/greeting.txt"
	c := newCluster(t)
	ns := c.namespace(t, "mountfile")
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	patch := `{"spec":{"template":{"spec":{"containers":[{"name":"echo","volumeMounts":[{"name":"config","mountPath":"` + filePath + `","subPath":"GREETING"}]}]}}}}`
	if _, err := c.client.AppsV1().Deployments(ns).Patch(context.Background(), "echo", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	conn := connect(t, "mfi-"+rand.String(4), "-n", ns)
	waitNoVolumes(t, "the start")

	out, err := tp(t, "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http",
		"--docker-run", "--", debianImage, "sh", "-c",
		"echo POD=$TP_POD; sha256sum /etc/echo/config/GREETING; if [ -e "+filePath+" ]; then echo FILE-THERE; fi")
	if err != nil {
		t.Fatalf("tp intercept --docker-run with a file mount in the pod: %v\n%s", err, out)
	}
	t.Logf("tp intercept --docker-run:\n%s", out)
	pod, local := "", ""
	for _, l := range lines(out) {
		if p, ok := strings.CutPrefix(l, "POD="); ok {
			pod = p
		}
		if f := strings.Fields(l); len(f) == 2 && f[1] == "/etc/echo/config/GREETING" {
			local = f[0]
		}
	}
	if pod == "" {
		t.Fatalf("the container printed no POD=\n%s", out)
	}
	if want := sha(c.kubectlCat(t, ns, pod, "echo", "/etc/echo/config/GREETING")); local != want {
		t.Errorf("/etc/echo/config/GREETING: sha256 %q in the local container, %s in pod %s", local, want, pod)
	}
	if !strings.Contains(out, "Not mounting "+filePath+": it is a single file") {
		t.Errorf("the output does not name the skipped file mount %s:\n%s", filePath, out)
	}
	if strings.Contains(out, "FILE-THERE") {
		t.Errorf("%s exists in the local container, want it skipped:\n%s", filePath, out)
	}
	waitNoVolumes(t, "the --docker-run container exited")

	out, err = tp(t, "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http",
		"--mount-path", filePath, "--docker-run", "--", debianImage, "true")
	if err == nil || !strings.Contains(out, filePath) || !strings.Contains(out, "a single file, and Docker volumes mount directories only") {
		t.Errorf("--mount-path %s: %v\n%s\nwant an error that says it is a single file", filePath, err, out)
	}
	waitNoVolumes(t, "the --mount-path run")

	// --mount-volumes -o json: the note on stderr, the mounts (with the
	// file marked) and only the directories' volumes on stdout.
	cmd := exec.Command(tpBin(t), "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http", "--mount-volumes", "-o", "json")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("tp intercept --mount-volumes -o json: %v\n%s\n%s", err, stdout, stderr.String())
	}
	var res struct {
		Mounts  []string                      `json:"mounts"`
		Volumes []struct{ Name, Path string } `json:"volumes"`
	}
	if err := json.Unmarshal(stdout, &res); err != nil {
		t.Fatalf("tp intercept --mount-volumes -o json: %v\n%s", err, stdout)
	}
	if !slices.Contains(res.Mounts, filePath+":ro (file, not mountable)") || !slices.Contains(res.Mounts, "/etc/echo/config:ro") {
		t.Errorf("mounts %q, want /etc/echo/config:ro and %s marked as a file, not mountable", res.Mounts, filePath)
	}
	if len(res.Volumes) != 4 || slices.ContainsFunc(res.Volumes, func(v struct{ Name, Path string }) bool { return v.Path == filePath }) {
		t.Errorf("volumes %v, want the 4 directory mounts and none for %s", res.Volumes, filePath)
	}
	if !strings.Contains(stderr.String(), "Not mounting "+filePath) {
		t.Errorf("stderr of --mount-volumes does not name the skipped file mount:\n%s", stderr.String())
	}
	tpOK(t, "leave", "echo", "--name", conn.name, "-n", ns)
	waitNoVolumes(t, "tp leave")
}
