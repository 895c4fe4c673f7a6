//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"maps"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/wait"
)

// The manager's Secrets that an upgrade keeps (charts/tp, tp.webhookTLS).
var managerSecrets = []string{"traffic-manager-webhook-tls", "traffic-manager-ca"}

// upgradeState is what an upgrade must not change, or changes.
type upgradeState struct {
	manager types.UID            // the manager's pod
	agents  map[string]types.UID // the workload's pods, all with the agent
	secrets map[string]*corev1.Secret
}

// settledPods waits until the pods of selector in ns are exactly want, none
// terminating, all ready and (agent) all with the tp-agent container, and
// returns their UIDs by name.
func (c *cluster) settledPods(t testing.TB, ns, selector string, want int, agent bool) map[string]types.UID {
	t.Helper()
	var last []corev1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 250*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := c.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, nil
		}
		last = pods.Items
		if len(last) != want {
			return false, nil
		}
		for i := range last {
			_, hasAgent := containerStatus(&last[i], "tp-agent")
			if last[i].DeletionTimestamp != nil || !podIsReady(&last[i]) || (agent && !hasAgent) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		var names []string
		for _, p := range last {
			names = append(names, p.Name)
		}
		t.Fatalf("pods %s in %s: want %d ready ones (agent %v) within 3 min, have %v: %v", selector, ns, want, agent, names, err)
	}
	uids := map[string]types.UID{}
	for _, p := range last {
		uids[p.Name] = p.UID
	}
	return uids
}

// upgradeState reads the manager's pod and Secrets and the agent pods of
// app=echo in ns (replicas of them).
func (c *cluster) upgradeState(t testing.TB, ns string, replicas int) upgradeState {
	t.Helper()
	managers := c.settledPods(t, managerNamespace, "app="+managerDeployment, 1, false)
	s := upgradeState{agents: c.settledPods(t, ns, "app=echo", replicas, true), secrets: map[string]*corev1.Secret{}}
	for _, uid := range managers {
		s.manager = uid
	}
	for _, name := range managerSecrets {
		sec, err := c.client.CoreV1().Secrets(managerNamespace).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("Secret %s/%s: %v", managerNamespace, name, err)
		}
		s.secrets[name] = sec
	}
	return s
}

// sameSecrets fails the test if an upgrade replaced the Secrets or changed their data.
func sameSecrets(t testing.TB, what string, before, after upgradeState) {
	t.Helper()
	for _, name := range managerSecrets {
		b, a := before.secrets[name], after.secrets[name]
		if !maps.EqualFunc(b.Data, a.Data, bytes.Equal) {
			t.Errorf("%s: Secret %s/%s changed its data, want it kept", what, managerNamespace, name)
		}
		if a.UID != b.UID {
			t.Errorf("%s: Secret %s/%s was replaced (UID %s, was %s), want it kept", what, managerNamespace, name, a.UID, b.UID)
		}
	}
}

// interceptEventually intercepts echo (port http of Service echo) on conn,
// retrying while the daemon reconnects to a new manager pod.
func interceptEventually(t *testing.T, conn connection) {
	t.Helper()
	var out string
	err := wait.PollUntilContextTimeout(context.Background(), time.Second, 2*time.Minute, true, func(context.Context) (bool, error) {
		var err error
		out, err = tp(t, "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http")
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("tp intercept echo after the upgrade: %v\n%s", err, out)
	}
}

// TestHelmUpgradeRestartsNothing (issue 10): `tp helm upgrade` with the
// values the manager runs with restarts neither the manager nor the agents
// and keeps the webhook's certificate, and intercepts work on; then an
// upgrade to a changed value restarts only the manager, still with the same
// certificate, so the agents already injected (which trust its CA) serve the
// next intercept without being replaced.
func TestHelmUpgradeRestartsNothing(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "upgrade")
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	conn := connect(t, "up-"+rand.String(4), "-n", ns)
	localEcho(t, conn, "local")
	tpOK(t, "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http")
	url := "http://echo." + ns + "/upgrade"
	c.waitCopy(t, ns, url, "local", 90*time.Second)
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	before := c.upgradeState(t, ns, 1)

	// The values TestMain installed (none): unchanged.
	tpOK(t, "helm", "upgrade", "--namespace", managerNamespace)
	after := c.upgradeState(t, ns, 1)
	if after.manager != before.manager {
		t.Errorf("unchanged upgrade: manager pod %s replaced by %s, want it kept", before.manager, after.manager)
	}
	if !maps.Equal(after.agents, before.agents) {
		t.Errorf("unchanged upgrade: agent pods %v, were %v; want them kept", after.agents, before.agents)
	}
	sameSecrets(t, "unchanged upgrade", before, after)
	for _, name := range managerSecrets {
		if a, b := after.secrets[name].ResourceVersion, before.secrets[name].ResourceVersion; a != b {
			t.Errorf("unchanged upgrade: Secret %s/%s written (resourceVersion %s, was %s), want it untouched", managerNamespace, name, a, b)
		}
	}
	c.waitCopy(t, ns, url, "local", 30*time.Second)
	// Intercepting the workload again (same manager version) rolls nothing.
	tpOK(t, "leave", "echo", "--name", conn.name)
	c.waitCopy(t, ns, url, "cluster", 30*time.Second)
	tpOK(t, "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http")
	c.waitCopy(t, ns, url, "local", 90*time.Second)
	if again := c.upgradeState(t, ns, 1); !maps.Equal(again.agents, before.agents) {
		t.Errorf("intercept again: agent pods %v, were %v; want them kept", again.agents, before.agents)
	}

	// A changed value: the manager restarts, nothing else.
	t.Cleanup(func() {
		if out, err := tp(t, "helm", "upgrade", "--namespace", managerNamespace); err != nil {
			t.Errorf("restore the traffic-manager's values: %v\n%s", err, out)
		}
	})
	tpOK(t, "helm", "upgrade", "--namespace", managerNamespace, "--set", "logLevel=debug")
	c.waitDeployment(t, managerNamespace, managerDeployment, 3*time.Minute)
	changed := c.upgradeState(t, ns, 1)
	if changed.manager == before.manager {
		t.Errorf("upgrade to logLevel=debug: manager pod %s kept, want a new one with the new value", before.manager)
	}
	if !maps.Equal(changed.agents, before.agents) {
		t.Errorf("upgrade to logLevel=debug: agent pods %v, were %v; want them kept", changed.agents, before.agents)
	}
	sameSecrets(t, "upgrade to logLevel=debug", before, changed)
	// The agents reconnect to the new manager, which serves the same
	// certificate; an intercept through them works.
	_, _ = tp(t, "leave", "echo", "--name", conn.name) // gone with the old manager, unless intercepts are durable
	interceptEventually(t, conn)
	c.waitCopy(t, ns, url, "local", 90*time.Second)
	if final := c.upgradeState(t, ns, 1); !maps.Equal(final.agents, before.agents) {
		t.Errorf("intercept after the manager's restart: agent pods %v, were %v; want them kept", final.agents, before.agents)
	}
}

// TestInterceptRollsAgentsOfAnotherVersion: pods whose agent a manager of
// another version enabled (simulated: the pod template's tp.run/agent-version
// names an older one) keep it until the workload is intercepted again; then
// the manager sets its own version there, so the pods are replaced with its
// agent, and the intercept works.
func TestInterceptRollsAgentsOfAnotherVersion(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "agentver")
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	conn := connect(t, "av-"+rand.String(4), "-n", ns)
	localEcho(t, conn, "local")
	tpOK(t, "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http")
	url := "http://echo." + ns + "/agent-version"
	c.waitCopy(t, ns, url, "local", 90*time.Second)
	tpOK(t, "leave", "echo", "--name", conn.name)
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	current := c.settledPods(t, ns, "app=echo", 1, true)

	const older = "v0.0.0-older"
	patch := []byte(`{"spec":{"template":{"metadata":{"annotations":{"tp.run/agent-version":"` + older + `"}}}}}`)
	if _, err := c.client.AppsV1().Deployments(ns).Patch(context.Background(), "echo", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	old := c.settledPods(t, ns, "app=echo", 1, true)
	if maps.Equal(old, current) {
		t.Fatalf("pods %v kept after the template changed", old)
	}

	tpOK(t, "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http")
	dep := c.waitDeployment(t, ns, "echo", 2*time.Minute)
	if v := dep.Spec.Template.Annotations["tp.run/agent-version"]; v == older || v == "" {
		t.Errorf("pod template's tp.run/agent-version after the intercept: %q, want the manager's version", v)
	}
	if now := c.settledPods(t, ns, "app=echo", 1, true); maps.Equal(now, old) {
		t.Errorf("pods %v of the older agent kept after the intercept, want them replaced", now)
	}
	c.waitCopy(t, ns, url, "local", 90*time.Second)
}
