//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/wait"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// The traffic-manager Deployment the e2e setup installs.
const (
	managerNamespace  = "tp"
	managerDeployment = "traffic-manager"
)

// scaleManager sets the traffic-manager Deployment's replicas.
func (c *cluster) scaleManager(t testing.TB, replicas int) {
	t.Helper()
	patch := []byte(fmt.Sprintf(`{"spec":{"replicas":%d}}`, replicas))
	err := wait.PollUntilContextTimeout(context.Background(), time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := c.client.AppsV1().Deployments(managerNamespace).Patch(ctx, managerDeployment, types.MergePatchType, patch, metav1.PatchOptions{})
		if err != nil {
			t.Logf("scale %s/%s to %d: %v (retrying)", managerNamespace, managerDeployment, replicas, err)
		}
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("scale %s/%s to %d: %v", managerNamespace, managerDeployment, replicas, err)
	}
}

// stopManager scales the traffic-manager to 0 until the test ends (other
// tests share it: it is back to 1 replica and Ready when the test ends, and
// restoreManager does it earlier) and waits until no manager pod is left.
func (c *cluster) stopManager(t *testing.T) (restoreManager func()) {
	t.Helper()
	var once sync.Once
	restore := func() {
		once.Do(func() {
			c.scaleManager(t, 1)
			c.waitDeployment(t, managerNamespace, managerDeployment, 3*time.Minute)
		})
	}
	t.Cleanup(restore)
	c.scaleManager(t, 0)
	err := wait.PollUntilContextTimeout(context.Background(), 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := c.client.CoreV1().Pods(managerNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + managerDeployment})
		return err == nil && len(pods.Items) == 0, nil
	})
	if err != nil {
		t.Fatalf("traffic-manager pods still there 2 min after scaling to 0: %v", err)
	}
	return restore
}

// containerStatus is the status of the container name of p.
func containerStatus(p *corev1.Pod, name string) (corev1.ContainerStatus, bool) {
	for _, s := range p.Status.ContainerStatuses {
		if s.Name == name {
			return s, true
		}
	}
	return corev1.ContainerStatus{}, false
}

// restartAgentInPlace makes the kubelet restart pod's tp-agent container in
// the same pod (as after a crash or an OOM kill): an ephemeral container in
// the agent's process namespace sends it SIGTERM. Deleting the pod would
// not do: its replacement is admitted without the agent while the manager
// (which serves the injection webhook, failurePolicy Ignore) is down.
func (c *cluster) restartAgentInPlace(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	uid := int64(65532) // the agent's user: a process may signal its own user's processes
	yes, no := true, false
	pod = pod.DeepCopy()
	pod.Spec.EphemeralContainers = append(pod.Spec.EphemeralContainers, corev1.EphemeralContainer{
		EphemeralContainerCommon: corev1.EphemeralContainerCommon{
			Name: "kill-agent", Image: probeImage, ImagePullPolicy: corev1.PullNever,
			Args: []string{"kill", "/tp", "agent"},
			SecurityContext: &corev1.SecurityContext{
				RunAsUser: &uid, RunAsNonRoot: &yes, AllowPrivilegeEscalation: &no,
				Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			},
		},
		TargetContainerName: "tp-agent",
	})
	if _, err := c.client.CoreV1().Pods(pod.Namespace).UpdateEphemeralContainers(context.Background(), pod.Name, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("add an ephemeral container to %s: %v", pod.Name, err)
	}
}

// TestAgentReadyWithoutManager: a traffic-agent (re)started while the
// traffic-manager is down becomes Ready and its pod serves the Service,
// everything going to the app (issue 10). A pod deleted meanwhile is
// replaced by one that serves too.
func TestAgentReadyWithoutManager(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "survive")
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	conn := connect(t, "surv-"+rand.String(4), "-n", ns)
	// Intercept and leave: the workload keeps its agent.
	tpOK(t, "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http")
	tpOK(t, "leave", "echo", "--name", conn.name)
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	pod := c.runningPod(t, ns, "app=echo")
	before, ok := containerStatus(pod, "tp-agent")
	if !ok || !before.Ready {
		t.Fatalf("pod %s: tp-agent status %+v (found %v), want a ready agent", pod.Name, before, ok)
	}

	restoreManager := c.stopManager(t)

	// The agent restarts while the manager is down: its pod must get Ready
	// again (before issue 10 it waited for the manager forever).
	c.restartAgentInPlace(t, pod)
	var last *corev1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := c.client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = p
		s, _ := containerStatus(p, "tp-agent")
		return s.RestartCount > before.RestartCount && s.Ready && podIsReady(p), nil
	})
	if err != nil {
		b, _ := json.MarshalIndent(last.Status, "", " ")
		t.Fatalf("pod %s not Ready with a restarted agent while the manager is down: %v\nstatus %s", pod.Name, err, b)
	}
	if r := c.echoFromPod(t, ns, "http://echo."+ns+"/no-manager"); r.Copy != "cluster" {
		t.Errorf("request while the manager is down, restarted agent: answered by %q, want cluster", r.Copy)
	}

	// The pod is deleted while the manager is down: its replacement serves.
	if err := c.client.CoreV1().Pods(ns).Delete(context.Background(), pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := c.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
		if err != nil {
			return false, nil
		}
		for i := range pods.Items {
			if p := &pods.Items[i]; p.Name != pod.Name && p.DeletionTimestamp == nil && podIsReady(p) {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no new echo pod Ready while the manager is down: %v", err)
	}
	if r := c.echoFromPod(t, ns, "http://echo."+ns+"/no-manager-new-pod"); r.Copy != "cluster" {
		t.Errorf("request while the manager is down, new pod: answered by %q, want cluster", r.Copy)
	}

	restoreManager()
}

// syncBuffer is an io.Writer safe to read while a command writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// interceptContainers are the containers (running or not) that tp
// intercept --docker-run started for the connection: named
// tp-intercept-<intercept>-*, with TP_CONNECTION=<connection> in their
// environment.
func interceptContainers(t *testing.T, conn connection, intercept string) []string {
	t.Helper()
	out, err := docker("ps", "-a", "-q", "--filter", "name=^tp-intercept-"+intercept+"-")
	if err != nil {
		t.Fatalf("docker ps: %v\n%s", err, out)
	}
	var ids []string
	for _, id := range lines(out) {
		env, err := docker("inspect", "--format", "{{json .Config.Env}}", id)
		if err != nil {
			continue // removed meanwhile
		}
		if strings.Contains(env, `"TP_CONNECTION=`+conn.name+`"`) {
			ids = append(ids, id)
		}
	}
	return ids
}

// dockerRun is a running `tp intercept --docker-run`.
type dockerRun struct {
	out *syncBuffer
	// exited is closed when the command exited, with err.
	exited chan struct{}
	err    error
}

// dockerRunIntercept starts `tp intercept echo --docker-run` of the echo
// image (ECHO_COPY=local) on conn. It is interrupted, and its containers
// removed, when the test ends.
func dockerRunIntercept(t *testing.T, conn connection) *dockerRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, tpBin(t), "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http",
		"--docker-run", "--", "-e", "ECHO_COPY=local", echoImage, "serve")
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	run := &dockerRun{out: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = run.out, run.out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		run.err = cmd.Wait()
		close(run.exited)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-run.exited:
		case <-time.After(30 * time.Second):
			t.Logf("tp intercept --docker-run still runs 30 s after the interrupt")
		}
		for _, id := range interceptContainers(t, conn, "echo") {
			_, _ = docker("rm", "-f", id)
		}
	})
	return run
}

// TestInterceptEndedElsewhere: `tp leave` from another shell ends a running
// `tp intercept --docker-run`: it stops and removes its container, says why
// and exits non-zero.
func TestInterceptEndedElsewhere(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "ended")
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	conn := connect(t, "ended-"+rand.String(4), "-n", ns)

	run := dockerRunIntercept(t, conn)
	out := run.out

	c.waitCopy(t, ns, "http://echo."+ns+"/before-leave", "local", 90*time.Second)
	containers := interceptContainers(t, conn, "echo")
	if len(containers) != 1 {
		t.Fatalf("containers of the intercept: %v, want one\n%s", containers, out.String())
	}

	tpOK(t, "leave", "echo", "--name", conn.name)
	select {
	case <-run.exited:
	case <-time.After(20 * time.Second):
		t.Fatalf("tp intercept --docker-run still runs 20 s after `tp leave` elsewhere:\n%s", out.String())
	}
	var exitErr *exec.ExitError
	if !errors.As(run.err, &exitErr) || exitErr.ExitCode() == 0 {
		t.Errorf("tp intercept --docker-run after `tp leave` elsewhere: %v, want a non-zero exit\n%s", run.err, out.String())
	}
	want := "intercept echo was ended elsewhere (tp leave, the session TTL or an administrator); the container was stopped"
	if !strings.Contains(out.String(), want) {
		t.Errorf("tp intercept --docker-run output does not say %q:\n%s", want, out.String())
	}
	if left := interceptContainers(t, conn, "echo"); len(left) != 0 {
		t.Errorf("containers of the intercept after it ended: %v, want none", left)
	}
	c.waitCopy(t, ns, "http://echo."+ns+"/after-leave", "cluster", 30*time.Second)
}

// TestInterceptSurvivesManagerRestart: the traffic-manager pod is deleted
// under a running `tp intercept --docker-run`. The new pod takes up the
// session and the intercept from their record in the cluster, the daemon
// resumes the session (not a new one), in-cluster requests reach the local
// container again, and the container ran on throughout.
func TestInterceptSurvivesManagerRestart(t *testing.T) {
	c := newCluster(t)
	ns := c.echoNamespace(t, "survive")
	conn := connect(t, "survive-"+rand.String(4), "-n", ns)
	run := dockerRunIntercept(t, conn)
	c.waitCopy(t, ns, "http://echo."+ns+"/before-restart", "local", 90*time.Second)
	containers := interceptContainers(t, conn, "echo")
	if len(containers) != 1 {
		t.Fatalf("containers of the intercept: %v, want one\n%s", containers, run.out.String())
	}
	before := conn.status(t)

	ctx := context.Background()
	pods, err := c.client.CoreV1().Pods(managerNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + managerDeployment})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("traffic-manager pods: %v, %v; want one", pods, err)
	}
	old := pods.Items[0]
	if err := c.client.CoreV1().Pods(managerNamespace).Delete(ctx, old.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete the traffic-manager pod: %v", err)
	}
	deleted := time.Now()
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := c.client.CoreV1().Pods(managerNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + managerDeployment})
		if err != nil {
			return false, nil
		}
		for _, p := range pods.Items {
			if p.UID != old.UID && p.DeletionTimestamp == nil && podIsReady(&p) {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no new ready traffic-manager pod 3 min after deleting %s: %v", old.Name, err)
	}

	c.waitCopy(t, ns, "http://echo."+ns+"/after-restart", "local", 2*time.Minute)
	t.Logf("in-cluster requests reach the local container again %s after the manager pod was deleted", time.Since(deleted).Round(time.Second))

	resp, err := c.managerClient(t).ListWorkloads(ctx, &managerv1.ListWorkloadsRequest{Namespace: ns})
	if err != nil {
		t.Fatalf("ListWorkloads: %v", err)
	}
	var owners []string
	for _, w := range resp.GetWorkloads() {
		for _, ic := range w.GetIntercepts() {
			if ic.GetSpec().GetName() == "echo" {
				owners = append(owners, ic.GetSessionId())
			}
		}
	}
	if len(owners) != 1 || owners[0] != before.SessionID {
		t.Errorf("intercepts named echo after the restart, by owner session: %v; want one of session %s", owners, before.SessionID)
	}

	var after statusOut
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		after = conn.status(t)
		return after.State == "connected", nil
	})
	if err != nil {
		t.Fatalf("tp status after the restart: %+v, want connected", after)
	}
	if after.SessionID != before.SessionID || after.Resumes < before.Resumes+1 || after.LastResumed == "" {
		t.Errorf("tp status after the restart: session %s, resumes %d (last %q); want session %s resumed (resumes > %d)",
			after.SessionID, after.Resumes, after.LastResumed, before.SessionID, before.Resumes)
	}

	select {
	case <-run.exited:
		t.Fatalf("tp intercept --docker-run exited across the manager restart: %v\n%s", run.err, run.out.String())
	default:
	}
	if now := interceptContainers(t, conn, "echo"); len(now) != 1 || now[0] != containers[0] {
		t.Errorf("containers of the intercept after the restart: %v, want the same one %v", now, containers)
	}
	if strings.Contains(run.out.String(), "Lost the connection") {
		// It polls every 2 s: the resume comes with its next poll.
		err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
			return strings.Contains(run.out.String(), "Connection to the traffic-manager resumed"), nil
		})
		if err != nil {
			t.Errorf("tp intercept --docker-run said the connection was lost but not that it resumed:\n%s", run.out.String())
		}
	}
	t.Logf("tp intercept --docker-run output:\n%s", run.out.String())
}
