//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/wait"
)

// The fault suite (issue 10): for each fault, under a steady load from a pod
// in the cluster to an intercepted workload (answered by the local
// --docker-run copy) and from a container joined to the daemon container to
// a cluster service, the fault is injected; afterwards, without any user
// action, the intercept must still be there and both loads must succeed
// again. Each test logs one line
//
//	fault-result fault=NAME recovered=true recovery_s=S fault_s=F failed_inbound=N failed_outbound=M ok_inbound=.. ok_outbound=..
//
// and, when $TP_FAULTS_OUT names a file, appends the same as one JSON object
// per line to it (test/bench's -faults reads it). A fault is skipped only when
// named in $TP_FAULTS_SKIP (comma-separated fault names, or "all").

const (
	// faultRecoveryTimeout bounds the wait for both loads to succeed again
	// after a fault is over.
	faultRecoveryTimeout = 100 * time.Second
	// faultSteadySeconds is how many whole seconds in a row every request of
	// a load must succeed for it to count as working (before the fault) or
	// recovered (after it).
	faultSteadySeconds = 5
)

// faultResult is what the suite records for a fault.
type faultResult struct {
	Fault     string `json:"fault"`
	Recovered bool   `json:"recovered"`
	// RecoverySeconds is from the end of the fault (its injection returned:
	// the pod deleted, the apiserver ready again, the container unpaused...)
	// to the first second of the clean streak of both loads; -1 when they did
	// not recover within faultRecoveryTimeout.
	RecoverySeconds int64 `json:"recoverySeconds"`
	// FaultSeconds is how long the injection took (e.g. 60 s of pause).
	FaultSeconds   float64 `json:"faultSeconds"`
	FailedInbound  int64   `json:"failedInbound"`
	FailedOutbound int64   `json:"failedOutbound"`
	OKInbound      int64   `json:"okInbound"`
	OKOutbound     int64   `json:"okOutbound"`
	// Problems are the assertions that failed after the fault (intercept
	// gone, tp intercept exited, ...).
	Problems []string `json:"problems,omitempty"`
}

// skipFault skips the test when $TP_FAULTS_SKIP names the fault: never
// silently, and never otherwise.
func skipFault(t *testing.T, fault string) {
	t.Helper()
	skip := strings.Split(os.Getenv("TP_FAULTS_SKIP"), ",")
	if slices.Contains(skip, fault) || slices.Contains(skip, "all") {
		t.Skipf("fault %s skipped: named in TP_FAULTS_SKIP=%s", fault, os.Getenv("TP_FAULTS_SKIP"))
	}
}

// loadSecond is one line of `probe load`: the requests that ended in the
// second Unix, by outcome.
type loadSecond struct {
	Unix   int64  `json:"t"`
	OK     int64  `json:"ok"`
	Failed int64  `json:"failed"`
	Err    string `json:"err,omitempty"`
}

// steadyLoad is a running `probe load` whose whole output read returns.
type steadyLoad struct {
	name string
	read func() (string, error)

	mu   sync.Mutex
	last []loadSecond // the last successful read
}

// seconds reads the load's record; when it cannot be read (the API server
// or Docker is down) it returns the last one it could.
func (l *steadyLoad) seconds() []loadSecond {
	l.mu.Lock()
	defer l.mu.Unlock()
	out, err := l.read()
	if err != nil {
		return l.last
	}
	bySecond := map[int64]loadSecond{}
	for _, line := range lines(out) {
		var s loadSecond
		if json.Unmarshal([]byte(line), &s) != nil || s.Unix == 0 {
			continue
		}
		// A load restarted by Docker prints the second it was restarted in
		// again: add both.
		if prev, ok := bySecond[s.Unix]; ok {
			s.OK += prev.OK
			s.Failed += prev.Failed
			if s.Err == "" {
				s.Err = prev.Err
			}
		}
		bySecond[s.Unix] = s
	}
	secs := make([]loadSecond, 0, len(bySecond))
	for _, s := range bySecond {
		secs = append(secs, s)
	}
	slices.SortFunc(secs, func(a, b loadSecond) int { return int(a.Unix - b.Unix) })
	if len(secs) >= len(l.last) {
		l.last = secs
	}
	return l.last
}

// cleanSince is the first second of the run of clean seconds (every request
// succeeded, at least one did) that ends at the load's last second, when it
// starts at from or later and is at least n seconds long; ok says whether
// there is one. A second missing from the record (no request ended in it) is
// not clean.
func cleanSince(secs []loadSecond, from int64, n int) (start int64, ok bool) {
	if len(secs) == 0 {
		return 0, false
	}
	run := 0
	next := secs[len(secs)-1].Unix
	for i := len(secs) - 1; i >= 0; i-- {
		s := secs[i]
		if s.Unix < from || s.Unix != next || s.Failed > 0 || s.OK == 0 {
			break
		}
		run++
		start, next = s.Unix, s.Unix-1
	}
	return start, run >= n
}

// totals sums ok and failed requests of the seconds from from on.
func totals(secs []loadSecond, from int64) (ok, failed int64, firstErr string) {
	for _, s := range secs {
		if s.Unix >= from {
			ok += s.OK
			failed += s.Failed
			if firstErr == "" {
				firstErr = s.Err
			}
		}
	}
	return ok, failed, firstErr
}

// uncleanSeconds lists, as ranges relative to the second end, the seconds
// from from on in which a request failed or none ended, with the first error
// of each range: the fault's timeline, for the log.
func uncleanSeconds(secs []loadSecond, from, end int64) string {
	if len(secs) == 0 {
		return "no record"
	}
	clean := map[int64]bool{}
	errs := map[int64]string{}
	for _, s := range secs {
		clean[s.Unix] = s.Failed == 0 && s.OK > 0
		errs[s.Unix] = s.Err
	}
	var ranges []string
	last := secs[len(secs)-1].Unix
	for t := from; t <= last; t++ {
		if clean[t] {
			continue
		}
		first, firstErr := t, ""
		for ; t <= last && !clean[t]; t++ {
			if firstErr == "" {
				firstErr = errs[t]
			}
		}
		ranges = append(ranges, fmt.Sprintf("[%+d..%+d] %q", first-end, t-1-end, firstErr))
	}
	if len(ranges) == 0 {
		return "none"
	}
	return strings.Join(ranges, ", ")
}

// faultRig is an intercepted workload under load, ready for a fault.
type faultRig struct {
	t         *testing.T
	c         *cluster
	fault     string
	ns        string // the intercepted echo's namespace
	otherNS   string // the namespace of the echo the joined container calls
	conn      connection
	intercept *exec.Cmd // tp intercept echo --docker-run
	out       *syncBuffer
	done      chan error // tp intercept's exit
	inbound   *steadyLoad
	outbound  *steadyLoad
}

// newFaultRig connects, intercepts echo with a local --docker-run copy, and
// starts both loads; it returns once both have succeeded for
// faultSteadySeconds in a row.
func newFaultRig(t *testing.T, fault string) *faultRig {
	t.Helper()
	skipFault(t, fault)
	c := newCluster(t)
	r := &faultRig{t: t, c: c, fault: fault, out: &syncBuffer{}, done: make(chan error, 1)}
	r.ns = c.echoNamespace(t, "fault")
	r.otherNS = c.echoNamespace(t, "faultsvc")
	r.conn = connect(t, "fault-"+rand.String(4), "-n", r.ns)

	ctx, cancel := context.WithCancel(context.Background())
	run := exec.CommandContext(ctx, tpBin(t), "intercept", "echo", "--name", r.conn.name, "--service", "echo", "--port", "8080:http",
		"--docker-run", "--", "-e", "ECHO_COPY=local", echoImage, "serve")
	run.Cancel = func() error { return run.Process.Signal(os.Interrupt) }
	run.Stdout, run.Stderr = r.out, r.out
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	r.intercept = run
	go func() { r.done <- run.Wait() }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(30 * time.Second):
			_ = run.Process.Kill()
		}
		for _, id := range interceptContainers(t, r.conn, "echo") {
			_, _ = docker("rm", "-f", id)
		}
		if t.Failed() {
			t.Logf("tp intercept --docker-run output:\n%s", r.out.String())
			logs, _ := docker("logs", "--tail", "60", r.conn.container)
			t.Logf("daemon container %s, last lines of its log:\n%s", r.conn.container, logs)
			c.logAgents(t, r.ns, "app=echo")
			c.logManager(t)
		}
	})
	c.waitCopy(t, r.ns, "http://echo."+r.ns+"/fault", "local", 90*time.Second)

	r.inbound = c.podLoad(t, r.ns, "http://echo."+r.ns+"/fault-inbound", "local")
	r.outbound = r.conn.joinedLoad(t, "http://echo."+r.otherNS+"/fault-outbound", "cluster")
	for _, l := range []*steadyLoad{r.inbound, r.outbound} {
		from := time.Now().Unix()
		err := wait.PollUntilContextTimeout(context.Background(), time.Second, 60*time.Second, true, func(context.Context) (bool, error) {
			_, ok := cleanSince(l.seconds(), from, faultSteadySeconds)
			return ok, nil
		})
		if err != nil {
			_, failed, firstErr := totals(l.seconds(), from)
			t.Fatalf("%s load not steady before the fault (%d failed, first error %q)", l.name, failed, firstErr)
		}
	}
	return r
}

// podLoad runs `probe load` against url in a pod of ns: every request must be
// answered by copy.
func (c *cluster) podLoad(t *testing.T, ns, url, copy string) *steadyLoad {
	t.Helper()
	name := "load-" + rand.String(5)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name: "load", Image: probeImage, ImagePullPolicy: corev1.PullNever,
				Args: []string{"load", "-url", url, "-copy", copy},
			}},
		},
	}
	if _, err := c.client.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create load pod: %v", err)
	}
	t.Cleanup(func() { _ = c.client.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{}) })
	return &steadyLoad{name: "inbound", read: func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		b, err := c.client.CoreV1().Pods(ns).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(ctx)
		return string(b), err
	}}
}

// joinedLoad runs `probe load` against url in a container joined to the
// connection (restarted by Docker with it): every request must be answered
// by copy.
func (c connection) joinedLoad(t *testing.T, url, copy string) *steadyLoad {
	t.Helper()
	name := "tp-e2e-load-" + rand.String(4)
	if out, err := docker("run", "-d", "--name", name, "--restart", "unless-stopped", "--network", "container:"+c.container,
		probeImage, "load", "-url", url, "-copy", copy); err != nil {
		t.Fatalf("start the joined load: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = docker("rm", "-f", name) })
	return &steadyLoad{name: "outbound", read: func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "docker", "logs", name).Output()
		return string(out), err
	}}
}

// run injects the fault (inject returns when it is over), waits for both
// loads to recover, checks that the intercept survived, and records the
// result.
func (r *faultRig) run(inject func()) {
	t := r.t
	t.Helper()
	start := time.Now()
	inject()
	end := time.Now()
	res := faultResult{Fault: r.fault, FaultSeconds: end.Sub(start).Seconds(), RecoverySeconds: -1}

	// Whole seconds after the fault: the second it ended in may still hold
	// failures of the fault itself.
	from := end.Unix() + 1
	var recoveredAt int64
	err := wait.PollUntilContextTimeout(context.Background(), 2*time.Second, faultRecoveryTimeout, true, func(context.Context) (bool, error) {
		recoveredAt = 0
		for _, l := range []*steadyLoad{r.inbound, r.outbound} {
			secs := l.seconds()
			if _, ok := cleanSince(secs, from, faultSteadySeconds); !ok {
				return false, nil
			}
			// Where the clean streak began, during the fault or before
			// it when nothing failed.
			at, _ := cleanSince(secs, start.Unix(), 1)
			recoveredAt = max(recoveredAt, at)
		}
		return true, nil
	})
	res.Recovered = err == nil
	if res.Recovered {
		res.RecoverySeconds = max(0, recoveredAt-end.Unix())
	}
	var inErr, outErr string
	res.OKInbound, res.FailedInbound, inErr = totals(r.inbound.seconds(), start.Unix())
	res.OKOutbound, res.FailedOutbound, outErr = totals(r.outbound.seconds(), start.Unix())
	if !res.Recovered {
		res.Problems = append(res.Problems, fmt.Sprintf("loads not steady within %s after the fault (inbound: first error %q; outbound: first error %q)",
			faultRecoveryTimeout, inErr, outErr))
	}
	res.Problems = append(res.Problems, r.interceptProblems()...)
	for _, l := range []*steadyLoad{r.inbound, r.outbound} {
		t.Logf("fault %s: %s load, seconds without a clean record, relative to the fault's end: %s",
			r.fault, l.name, uncleanSeconds(l.seconds(), start.Unix(), end.Unix()))
	}
	r.record(res)
	for _, p := range res.Problems {
		t.Errorf("after fault %s: %s", r.fault, p)
	}
}

// interceptProblems says what is wrong with the intercept after the fault:
// tp intercept --docker-run must still run, and the manager must still list
// the intercept as the connection's.
func (r *faultRig) interceptProblems() []string {
	var problems []string
	select {
	case err := <-r.done:
		r.done <- err // for the cleanup
		problems = append(problems, fmt.Sprintf("tp intercept --docker-run exited: %v", err))
	default:
	}
	out, err := tp(r.t, "list", "--name", r.conn.name, "-n", r.ns, "-o", "json")
	if err != nil {
		return append(problems, fmt.Sprintf("tp list: %v: %s", err, strings.TrimSpace(out)))
	}
	var workloads []struct {
		Name       string `json:"name"`
		Intercepts []struct {
			Name  string `json:"name"`
			State string `json:"state"`
			Owner string `json:"owner"`
		} `json:"intercepts"`
	}
	if err := json.Unmarshal([]byte(out), &workloads); err != nil {
		return append(problems, fmt.Sprintf("decode tp list %q: %v", out, err))
	}
	for _, w := range workloads {
		for _, i := range w.Intercepts {
			if w.Name == "echo" && i.Name == "echo" && strings.Contains(i.Owner, "(connection "+r.conn.name+")") {
				return problems
			}
		}
	}
	return append(problems, fmt.Sprintf("tp list shows no intercept echo of connection %s: %s", r.conn.name, strings.TrimSpace(out)))
}

// record logs the result in the suite's fixed format and appends it to
// $TP_FAULTS_OUT.
func (r *faultRig) record(res faultResult) {
	t := r.t
	t.Logf("fault-result fault=%s recovered=%t recovery_s=%d fault_s=%.1f failed_inbound=%d failed_outbound=%d ok_inbound=%d ok_outbound=%d",
		res.Fault, res.Recovered, res.RecoverySeconds, res.FaultSeconds, res.FailedInbound, res.FailedOutbound, res.OKInbound, res.OKOutbound)
	path := os.Getenv("TP_FAULTS_OUT")
	if path == "" {
		return
	}
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatalf("TP_FAULTS_OUT: %v", err)
	}
	defer f.Close()
	if _, err := f.Write(append(b, '\n')); err != nil {
		t.Fatalf("TP_FAULTS_OUT: %v", err)
	}
}

// TestFaultAgentKilled: the tp-agent container of the intercepted pod is
// killed (SIGTERM from an ephemeral container in its process namespace);
// the kubelet restarts it in the same pod.
func TestFaultAgentKilled(t *testing.T) {
	r := newFaultRig(t, "agent-killed")
	pod := r.c.runningPod(t, r.ns, "app=echo")
	before, _ := containerStatus(pod, "tp-agent")
	r.run(func() {
		r.c.restartAgentInPlace(t, pod)
		err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
			p, err := r.c.client.CoreV1().Pods(r.ns).Get(ctx, pod.Name, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			s, _ := containerStatus(p, "tp-agent")
			return s.RestartCount > before.RestartCount, nil
		})
		if err != nil {
			t.Fatalf("tp-agent of %s not restarted within 60 s of the kill: %v", pod.Name, err)
		}
	})
}

// TestFaultManagerDeleted: the traffic-manager pod is deleted; its
// Deployment replaces it.
func TestFaultManagerDeleted(t *testing.T) {
	r := newFaultRig(t, "manager-deleted")
	pod := r.c.runningPod(t, managerNamespace, "app="+managerDeployment)
	t.Cleanup(func() { r.c.waitDeployment(t, managerNamespace, managerDeployment, 3*time.Minute) })
	r.run(func() {
		if err := r.c.client.CoreV1().Pods(managerNamespace).Delete(context.Background(), pod.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("delete manager pod %s: %v", pod.Name, err)
		}
	})
}

// TestFaultPortForwardCut: every TCP connection between the daemon container
// and the API server is aborted (ss -K on the host: both ends see a reset),
// which cuts the port-forward to the manager and the daemon's watches.
func TestFaultPortForwardCut(t *testing.T) {
	r := newFaultRig(t, "portforward-cut")
	ip := strings.TrimSpace(mustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", r.conn.container))
	addrs := strings.Fields(ip)
	if len(addrs) == 0 {
		t.Fatalf("daemon container %s has no IP address", r.conn.container)
	}
	r.run(func() {
		killed := 0
		for _, a := range addrs {
			out, err := exec.Command("ss", "-K", "-tn", "state", "established", "( sport = :6443 )", "dst", a).CombinedOutput()
			if err != nil {
				t.Fatalf("ss -K: %v\n%s", err, out)
			}
			killed += len(lines(string(out))) - 1 // a header line, then one per socket
		}
		if killed < 1 {
			t.Fatalf("no connection from the daemon container (%v) to the API server :6443 to cut", addrs)
		}
		t.Logf("cut %d connections between %s and the API server", killed, r.conn.container)
	})
}

// TestFaultDaemonPaused: the daemon container is frozen for 60 s (docker
// pause: a laptop asleep) and thawed.
func TestFaultDaemonPaused(t *testing.T) {
	r := newFaultRig(t, "daemon-paused")
	t.Cleanup(func() { _, _ = docker("unpause", r.conn.container) })
	r.run(func() {
		mustDocker(t, "pause", r.conn.container)
		time.Sleep(60 * time.Second) // the fault itself: 60 s asleep
		mustDocker(t, "unpause", r.conn.container)
	})
}

// TestFaultAPIServerRestarted: the API server process is stopped and started
// again with the same command line (as an upgrade of the control plane
// does); the fault ends when it is ready.
func TestFaultAPIServerRestarted(t *testing.T) {
	r := newFaultRig(t, "apiserver-restart")
	r.run(func() { r.c.restartAPIServer(t) })
}

// TestFaultHelmUpgrade: `tp helm upgrade` to a changed value (a pod
// annotation: a new manager pod rolls out), then the values are restored
// the same way TestMain installed them.
func TestFaultHelmUpgrade(t *testing.T) {
	r := newFaultRig(t, "helm-upgrade")
	t.Cleanup(func() {
		if out, err := tp(t, "helm", "upgrade", "--namespace", managerNamespace); err != nil {
			t.Errorf("restore the chart's values: %v\n%s", err, out)
		}
		r.c.waitDeployment(t, managerNamespace, managerDeployment, 3*time.Minute)
	})
	r.run(func() {
		tpOK(t, "helm", "upgrade", "--namespace", managerNamespace, "--set", "podAnnotations.tp-e2e-fault="+rand.String(6))
	})
}

// TestFaultDockerRestarted: the Docker engine is stopped and started again
// (as hack/install-deps.sh starts it). The daemon container must come back
// by itself (restart policy; its kubeconfig, session and mount tokens in its
// state dir), resume its session so that the intercept stays, `tp status`
// must say it is connected, `tp intercept --docker-run` must run its
// container again, and the joined load container (restart policy
// unless-stopped) must work again once Docker restarted it.
func TestFaultDockerRestarted(t *testing.T) {
	r := newFaultRig(t, "docker-restart")
	t.Cleanup(func() { ensureDocker(t) })
	r.run(func() {
		restartDocker(t)
		// The daemon container is back (by its restart policy): tp status
		// answers from it, and says whether it is connected.
		err := wait.PollUntilContextTimeout(context.Background(), time.Second, 60*time.Second, true, func(context.Context) (bool, error) {
			out, err := docker("inspect", "-f", "{{.State.Running}}", r.conn.container)
			return err == nil && strings.TrimSpace(out) == "true", nil
		})
		if err != nil {
			out, _ := docker("inspect", "-f", "{{json .State}} {{json .HostConfig.RestartPolicy}}", r.conn.container)
			logs, _ := docker("logs", "--tail", "20", r.conn.container)
			t.Errorf("daemon container %s not running 60 s after Docker restarted: %s\n%s", r.conn.container, out, logs)
		}
	})
	out, err := tp(t, "status", "--name", r.conn.name, "-o", "json")
	var st statusOut
	if err == nil {
		err = json.Unmarshal([]byte(out), &st)
	}
	if err != nil || st.State != "connected" {
		t.Errorf("tp status after the Docker restart: %v, state %q, want connected\n%s", err, st.State, out)
	}
	// What carried the connection across: root's files, owner-only, in the
	// container's own layer.
	modes := stateModes(t, r.conn.container)
	for name, want := range map[string]os.FileMode{"tp": 0o700, "tp/kubeconfig": 0o600, "tp/session.json": 0o600} {
		if got, ok := modes[name]; !ok || got != want {
			t.Errorf("daemon state %s: mode %v (present %v), want %v; all: %v", name, got, ok, want, modes)
		}
	}
}

// stateModes lists the daemon container's state dir (docker cp, as a tar):
// the permission bits by path, for entries owned by root.
func stateModes(t *testing.T, container string) map[string]os.FileMode {
	t.Helper()
	out, err := exec.Command("docker", "cp", container+":/var/lib/tp", "-").Output()
	if err != nil {
		t.Fatalf("docker cp %s:/var/lib/tp: %v", container, err)
	}
	modes := map[string]os.FileMode{}
	tr := tar.NewReader(bytes.NewReader(out))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read the state dir's tar: %v", err)
		}
		if h.Uid == 0 && h.Gid == 0 {
			modes[strings.TrimSuffix(h.Name, "/")] = h.FileInfo().Mode().Perm()
		}
	}
	return modes
}

func mustDocker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := docker(args...)
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// The test bed's control plane: plain processes started by
// hack/cluster/up.sh, each with a pid file in clusterRun and a log in
// clusterLogs.
const (
	clusterRun  = "/var/lib/tp-cluster/run"
	clusterLogs = "/var/lib/tp-cluster/logs"
)

// restartAPIServer stops kube-apiserver (SIGTERM, as up.sh's stop_pid) and
// starts it again exactly as up.sh's start_bg did: the same command line and
// environment, in its own session, appending to its log, its pid in its pid
// file (so that up.sh still sees its own, unchanged apiserver). It returns
// when /readyz answers ok.
func (c *cluster) restartAPIServer(t *testing.T) {
	t.Helper()
	pidFile := filepath.Join(clusterRun, "kube-apiserver.pid")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("the API server's pid file (hack/cluster/up.sh): %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("pid file %s: %v", pidFile, err)
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil || filepath.Base(strings.TrimSuffix(exe, " (deleted)")) != "kube-apiserver" {
		t.Fatalf("pid %d of %s is not kube-apiserver (%q, %v)", pid, pidFile, exe, err)
	}
	argv := procStrings(t, pid, "cmdline")
	env := procStrings(t, pid, "environ")

	// Whatever happens next, the shared cluster gets its API server back.
	t.Cleanup(func() {
		if !c.apiserverReady(5 * time.Second) {
			t.Logf("API server not ready at cleanup: starting it")
			startAPIServer(t, argv, env, pidFile)
			c.waitAPIServer(t)
		}
	})
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatalf("stop kube-apiserver %d: %v", pid, err)
	}
	err = wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return syscall.Kill(pid, 0) != nil, nil
	})
	if err != nil {
		t.Logf("kube-apiserver %d ignored SIGTERM for 30 s: killing it", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	startAPIServer(t, argv, env, pidFile)
	c.waitAPIServer(t)
}

func startAPIServer(t *testing.T, argv, env []string, pidFile string) {
	t.Helper()
	logFile, err := os.OpenFile(filepath.Join(clusterLogs, "kube-apiserver.log"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	fmt.Fprintf(logFile, "\n==== %s starting kube-apiserver (restarted by e2e %s)\n", time.Now().Format(time.RFC3339), t.Name())
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start kube-apiserver: %v", err)
	}
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The API server outlives the test (it is the shared cluster's):
	// reap it if it ends while the test runs, never wait for it.
	go func() { _ = cmd.Wait() }()
}

func (c *cluster) apiserverReady(timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	b, err := c.client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	return err == nil && string(b) == "ok"
}

func (c *cluster) waitAPIServer(t *testing.T) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, 3*time.Minute, true, func(context.Context) (bool, error) {
		return c.apiserverReady(5 * time.Second), nil
	})
	if err != nil {
		t.Fatalf("API server not ready 3 min after its start; see %s/kube-apiserver.log", clusterLogs)
	}
}

// procStrings is /proc/PID/NAME split at NULs (cmdline, environ).
func procStrings(t *testing.T, pid int, name string) []string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

// restartDocker stops dockerd (SIGTERM: it stops the containers as a
// shutdown does) and starts it again the way the test bed does
// (hack/install-deps.sh, which also keeps dockerd off the cluster's
// containerd); it returns when `docker info` answers.
func restartDocker(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile("/var/run/docker.pid")
	if err != nil {
		t.Fatalf("dockerd's pid file: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("/var/run/docker.pid: %v", err)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatalf("stop dockerd %d: %v", pid, err)
	}
	err = wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 90*time.Second, true, func(context.Context) (bool, error) {
		return syscall.Kill(pid, 0) != nil, nil
	})
	if err != nil {
		t.Fatalf("dockerd %d still runs 90 s after SIGTERM", pid)
	}
	ensureDocker(t)
}

// ensureDocker starts dockerd with hack/install-deps.sh unless it answers.
func ensureDocker(t *testing.T) {
	t.Helper()
	if _, err := docker("info"); err == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(repoRoot(t), "hack", "install-deps.sh"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("start dockerd (hack/install-deps.sh): %v\n%s", err, out)
	}
}

// logAgents logs the last lines of the tp-agent containers of the pods
// matching selector in ns (a failed fault test says what the agents saw).
func (c *cluster) logAgents(t *testing.T, ns, selector string) {
	t.Helper()
	pods, err := c.client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Logf("list the pods of %s for their agents' logs: %v", selector, err)
		return
	}
	tail := int64(40)
	for _, p := range pods.Items {
		b, err := c.client.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{Container: "tp-agent", TailLines: &tail}).DoRaw(context.Background())
		t.Logf("agent of pod %s, last lines of its log (err %v):\n%s", p.Name, err, b)
	}
}

// logManager logs the last lines of every traffic-manager pod (a replaced
// manager's too, while it terminates).
func (c *cluster) logManager(t *testing.T) {
	t.Helper()
	pods, err := c.client.CoreV1().Pods(managerNamespace).List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + managerDeployment})
	if err != nil {
		t.Logf("list the traffic-manager pods for their logs: %v", err)
		return
	}
	tail := int64(80)
	for _, p := range pods.Items {
		b, err := c.client.CoreV1().Pods(managerNamespace).GetLogs(p.Name, &corev1.PodLogOptions{TailLines: &tail}).DoRaw(context.Background())
		t.Logf("traffic-manager pod %s, last lines of its log (err %v):\n%s", p.Name, err, b)
	}
}
