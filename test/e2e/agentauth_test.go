//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/wait"
)

// Where the probe pods of TestAgentAuth find the manager's CA and their
// tokens.
const (
	probeCADir    = "/etc/tp-ca"
	probeTPToken  = "/var/run/secrets/tp.run/agent/token"
	probeAPIToken = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	agentAddr     = "traffic-manager.tp.svc:8082"
)

// arriveResult is what probe agent-arrive prints per attempt.
type arriveResult struct {
	Code, Message, Session string
}

// TestAgentAuth: ordinary pods in a test namespace cannot pose as
// traffic-agents of a workload there. On the agent port they get nothing
// in plain text, without a token, with the API token the kubelet mounts,
// with a projected token of audience tp of their own (even dressed up as an
// injected pod), and the client port serves them no agent RPC. That real
// agents still arrive is TestIntercept*.
func TestAgentAuth(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "agentauth")
	ctx := context.Background()
	// A real workload to claim.
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")

	// The CA is public: the webhook puts it into every agent's env.
	tlsSecret, err := c.client.CoreV1().Secrets("tp").Get(ctx, "traffic-manager-webhook-tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "manager-ca"},
		Data:       map[string]string{"ca.crt": string(tlsSecret.Data["ca.crt"])},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	since := metav1.Now()

	attempts := []string{"plain", "tls", "tls:" + probeAPIToken, "tls:" + probeTPToken}
	ordinary := "ordinary-" + rand.String(5)
	pod := probePod(ordinary, "probe", agentArriveArgs(ns, ordinary, agentAddr, attempts...))
	// The client port: it listens on the manager pod's loopback only, so
	// from a pod there is nothing on the pod IP (and no agent RPC anyway).
	managerPod := c.runningPod(t, "tp", "app=traffic-manager")
	pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{
		Name: "client-port", Image: probeImage, ImagePullPolicy: corev1.PullNever,
		Args: agentArriveArgs(ns, ordinary, net.JoinHostPort(managerPod.Status.PodIP, "8081"), "plain"),
	})
	out := c.runProbePod(t, ns, pod)

	got := decodeArrive(t, out["probe"])
	for attempt, want := range map[string][]string{
		"plain":                {"Unavailable"},
		"tls":                  {"Unauthenticated"},
		"tls:" + probeAPIToken: {"Unauthenticated"},
		"tls:" + probeTPToken:  {"PermissionDenied"},
	} {
		r, ok := got[attempt]
		switch {
		case !ok:
			t.Errorf("%s: no result in %v", attempt, got)
		case r.Session != "" || !slices.Contains(want, r.Code):
			t.Errorf("ordinary pod, %s: got %s %q (session %q), want %v and no session", attempt, r.Code, r.Message, r.Session, want)
		}
	}
	if r := decodeArrive(t, out["client-port"])["plain"]; r.Session != "" || !slices.Contains([]string{"PermissionDenied", "Unavailable"}, r.Code) {
		t.Errorf("ordinary pod on the client port: got %s %q (session %q), want PermissionDenied or Unavailable", r.Code, r.Message, r.Session)
	}

	// A pod dressed up as an injected one: the annotation, a tp-agent
	// container with the webhook's variables, its own tp token; but no
	// workload owns it.
	fake := "echo-fake-" + rand.String(5)
	fakePod := probePod(fake, "tp-agent", agentArriveArgs(ns, fake, agentAddr, "tls:"+probeTPToken))
	fakePod.Annotations = map[string]string{"tp.run/agent-injected": "true"}
	fakePod.Spec.Containers[0].Env = []corev1.EnvVar{
		{Name: "TP_AGENT_CONTAINER", Value: "echo"},
		{Name: "TP_AGENT_PORTS", Value: `[{"name":"http","containerPort":8080,"agentPort":9900,"protocol":"TCP","mechanism":"rename"}]`},
	}
	fakePod.Labels = map[string]string{"app": "echo"}
	if r := decodeArrive(t, c.runProbePod(t, ns, fakePod)["tp-agent"])["tls:"+probeTPToken]; r.Session != "" || r.Code != "PermissionDenied" {
		t.Errorf("pod dressed up as an agent: got %s %q (session %q), want PermissionDenied", r.Code, r.Message, r.Session)
	}

	// The manager logged the refusals, naming the pods.
	mgr := c.runningPod(t, "tp", "app=traffic-manager")
	logs, err := c.client.CoreV1().Pods("tp").GetLogs(mgr.Name, &corev1.PodLogOptions{SinceTime: &since}).DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{ordinary, fake} {
		if !strings.Contains(string(logs), "agent refused") || !strings.Contains(string(logs), ns+"/"+p) {
			t.Errorf("manager logs: no refusal naming pod %s/%s:\n%s", ns, p, logs)
		}
	}
}

// agentArriveArgs are the probe's arguments to claim to be the agent of
// Deployment echo in pod.
func agentArriveArgs(ns, pod, addr string, attempts ...string) []string {
	return append([]string{"agent-arrive", "-timeout", "40s", "-ca", probeCADir + "/ca.crt",
		"-claim", ns + "/Deployment/echo/" + pod, addr}, attempts...)
}

// probePod is a one-shot pod named name whose container (named container)
// runs the probe with args, with the manager's CA and a projected token of
// audience tp mounted where the webhook mounts an agent's.
func probePod(name, container string, args []string) *corev1.Pod {
	expiry := int64(600)
	mounts := []corev1.VolumeMount{
		{Name: "ca", MountPath: probeCADir, ReadOnly: true},
		{Name: "tp-token", MountPath: "/var/run/secrets/tp.run/agent", ReadOnly: true},
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name: container, Image: probeImage, Args: args, ImagePullPolicy: corev1.PullNever, VolumeMounts: mounts,
			}},
			Volumes: []corev1.Volume{
				{Name: "ca", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
					LocalObjectReference: corev1.LocalObjectReference{Name: "manager-ca"},
				}}},
				{Name: "tp-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
					Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
						Audience: "tp", ExpirationSeconds: &expiry, Path: "token",
					}}},
				}}},
			},
		},
	}
	return p
}

// runProbePod runs pod until it ends and returns the logs of each container
// (every container must succeed).
func (c *cluster) runProbePod(t *testing.T, ns string, pod *corev1.Pod) map[string]string {
	t.Helper()
	for i := range pod.Spec.Containers {
		pod.Spec.Containers[i].VolumeMounts = pod.Spec.Containers[0].VolumeMounts
	}
	ctx := context.Background()
	if _, err := c.client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.client.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{}) })
	var phase corev1.PodPhase
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := c.client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		phase = p.Status.Phase
		return phase == corev1.PodSucceeded || phase == corev1.PodFailed, nil
	})
	out := map[string]string{}
	var all strings.Builder
	for _, ctr := range pod.Spec.Containers {
		logs, _ := c.client.CoreV1().Pods(ns).GetLogs(pod.Name, &corev1.PodLogOptions{Container: ctr.Name}).DoRaw(ctx)
		out[ctr.Name] = string(logs)
		fmt.Fprintf(&all, "%s:\n%s\n", ctr.Name, logs)
	}
	if err != nil || phase != corev1.PodSucceeded {
		t.Fatalf("pod %s/%s: phase %s, err %v, logs:\n%s", ns, pod.Name, phase, err, all.String())
	}
	return out
}

func decodeArrive(t *testing.T, out string) map[string]arriveResult {
	t.Helper()
	got := map[string]arriveResult{}
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &got); err != nil {
		t.Fatalf("probe agent-arrive printed %q: %v", out, err)
	}
	return got
}
