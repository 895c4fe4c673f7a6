//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"

	"github.com/tp-run/tp/internal/kube"
	"github.com/tp-run/tp/manager"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// namespacedDeveloper writes a kubeconfig for a service account that may do
// everything in namespace ns, may port-forward to (and find) the
// traffic-manager in namespace tp, and nothing else: the shape of a team
// member's RBAC on a shared cluster.
func namespacedDeveloper(t *testing.T, c *cluster, ns, dir string) (kubeconfig, user string) {
	t.Helper()
	ctx := context.Background()
	sa := "dev-" + rand.String(4)
	if _, err := c.client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	grant := func(namespace string, rules []rbacv1.PolicyRule) {
		name := sa + "-" + ns
		if _, err := c.client.RbacV1().Roles(namespace).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		binding := &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: name},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: ns}},
		}
		if _, err := c.client.RbacV1().RoleBindings(namespace).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if namespace == "tp" {
			t.Cleanup(func() {
				_ = c.client.RbacV1().RoleBindings("tp").Delete(context.Background(), name, metav1.DeleteOptions{})
				_ = c.client.RbacV1().Roles("tp").Delete(context.Background(), name, metav1.DeleteOptions{})
			})
		}
	}
	grant(ns, []rbacv1.PolicyRule{{APIGroups: []string{"*"}, Resources: []string{"*"}, Verbs: []string{"*"}}})
	grant("tp", []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"pods/portforward"}, Verbs: []string{"get", "create"}},
	})
	path := filepath.Join(dir, sa)
	c.tokenKubeconfig(t, ns, sa, ns, path)
	return path, fmt.Sprintf("system:serviceaccount:%s:%s", ns, sa)
}

// TestInterceptWithTheUsersOwnRights: a developer who may do everything in
// namespace A, and only port-forward to the manager in tp, intercepts in A,
// gets a clear "forbidden" for namespace B (whose workload stays untouched),
// is named in tp list by the identity the API server authenticated, and
// nobody else sees the intercept's environment.
func TestInterceptWithTheUsersOwnRights(t *testing.T) {
	c := newCluster(t)
	nsA, nsB := c.echoNamespace(t, "rbac-a"), c.echoNamespace(t, "rbac-b")
	kubeconfig, user := namespacedDeveloper(t, c, nsA, t.TempDir())
	suffix := rand.String(4)
	dev := connect(t, "dev-"+suffix, "--kubeconfig", kubeconfig, "-n", nsA)
	envFile := filepath.Join(t.TempDir(), "echo.env")
	tpOK(t, "intercept", "echo", "--name", dev.name, "--service", "echo", "--port", "8080:http", "--env-file", envFile)
	env, err := os.ReadFile(envFile)
	if err != nil || !strings.Contains(string(env), "API_TOKEN=") {
		t.Errorf("the owner's env file: %v, %q; want the pod's environment with API_TOKEN", err, env)
	}

	// Namespace B: the API server refuses the user's patch; nothing changes there.
	out, err := tp(t, "intercept", "echo", "--name", dev.name, "-n", nsB, "--service", "echo", "--port", "8081:http")
	if err == nil || !strings.Contains(out, "forbidden") || !strings.Contains(out, nsB) {
		t.Errorf("intercept in namespace %s without rights: err %v, output %q; want a forbidden error naming the namespace", nsB, err, out)
	}
	d, err := c.client.AppsV1().Deployments(nsB).Get(context.Background(), "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := d.Spec.Template.Labels[kube.AgentLabel]; ok {
		t.Errorf("namespace %s: the refused intercept labelled the pod template for injection", nsB)
	}

	// The manager knows the user from the API server; and nobody (not even
	// the owner, through ListWorkloads) gets the environment from a listing.
	admin := connect(t, "admin-"+suffix, "-n", nsA)
	out = tpOK(t, "list", "--name", admin.name, "-n", nsA, "-o", "json")
	var listed []struct {
		Name       string `json:"name"`
		Intercepts []struct {
			Owner string `json:"owner"`
		} `json:"intercepts"`
	}
	if err := json.Unmarshal([]byte(out), &listed); err != nil {
		t.Fatalf("decode tp list %q: %v", out, err)
	}
	var owners []string
	for _, w := range listed {
		for _, i := range w.Intercepts {
			owners = append(owners, i.Owner)
		}
	}
	if len(owners) != 1 || !strings.HasPrefix(owners[0], user+"@") {
		t.Errorf("tp list owners %q, want one intercept owned by %s (the authenticated user)", owners, user)
	}
	for _, w := range listWorkloads(t, c, nsA) {
		for _, i := range w.GetIntercepts() {
			if len(i.GetEnvironment()) > 0 {
				t.Errorf("ListWorkloads shows the environment of intercept %s to a caller that does not own it", i.GetSpec().GetName())
			}
		}
	}
	tpOK(t, "leave", "echo", "--name", dev.name)
}

// listWorkloads calls the manager's ListWorkloads directly, as any holder of
// pods/portforward in tp could.
func listWorkloads(t *testing.T, c *cluster, ns string) []*managerv1.WorkloadInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := c.managerClient(t).ListWorkloads(ctx, &managerv1.ListWorkloadsRequest{Namespace: ns})
	if err != nil {
		t.Fatalf("list workloads: %v", err)
	}
	return resp.GetWorkloads()
}

// TestManagerRefusesOrdinaryPods: a pod of the cluster gets no session from
// the traffic-manager on any port of its pod IP or Service, as a client or
// as an agent, in plaintext or TLS.
func TestManagerRefusesOrdinaryPods(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "intruder")
	pod := c.runningPod(t, "tp", "app=traffic-manager")
	svc, err := c.client.CoreV1().Services("tp").Get(context.Background(), "traffic-manager", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, ct := range pod.Spec.Containers {
		for _, p := range ct.Ports {
			addrs = append(addrs, fmt.Sprintf("%s:%d", pod.Status.PodIP, p.ContainerPort))
		}
	}
	// The client API's port, which must not listen on the pod network.
	addrs = append(addrs, fmt.Sprintf("%s:%d", pod.Status.PodIP, manager.Port))
	for _, p := range svc.Spec.Ports {
		addrs = append(addrs, fmt.Sprintf("traffic-manager.tp:%d", p.Port))
	}
	out, err := c.runPod(ns, probeImage, append([]string{"manager-session", "-timeout", "20s"}, addrs...)...)
	if err != nil {
		t.Fatalf("an ordinary pod got a session from the traffic-manager: %v", err)
	}
	for _, a := range addrs {
		if !strings.Contains(out, a+" tls agent: refused") || !strings.Contains(out, a+" plaintext client: refused") {
			t.Errorf("probe output lacks the attempts on %s:\n%s", a, out)
		}
	}
	t.Logf("attempts from an ordinary pod:\n%s", out)
}

// TestLeaveForce: a teammate's intercept that is in the way ends with
// `tp leave --force` for a user who may patch the workload, and stays for a
// user who may not.
func TestLeaveForce(t *testing.T) {
	c := newCluster(t)
	nsA, nsB := c.echoNamespace(t, "force-a"), c.echoNamespace(t, "force-b")
	suffix := rand.String(4)
	holder := connect(t, "holder-"+suffix, "-n", nsA)
	tpOK(t, "intercept", "echo", "--name", holder.name, "--service", "echo", "--port", "8080:http")
	tpOK(t, "intercept", "echo", "--name", holder.name, "-n", nsB, "--service", "echo", "--port", "8081:http")

	kubeconfig, _ := namespacedDeveloper(t, c, nsA, t.TempDir())
	dev := connect(t, "teammate-"+suffix, "--kubeconfig", kubeconfig, "-n", nsA)
	if out, err := tp(t, "leave", "echo", "--name", dev.name); err == nil {
		t.Errorf("tp leave of another's intercept without --force: succeeded (%s), want an error", out)
	}
	out, err := tp(t, "leave", "echo", "--name", dev.name, "-n", nsB, "--force")
	if err == nil || !strings.Contains(out, "forbidden") {
		t.Errorf("tp leave --force in %s without rights: err %v, output %q; want forbidden", nsB, err, out)
	}
	tpOK(t, "leave", "echo", "--name", dev.name, "--force")

	intercepted := func(ns string) bool {
		for _, w := range listWorkloads(t, c, ns) {
			if len(w.GetIntercepts()) > 0 {
				return true
			}
		}
		return false
	}
	if intercepted(nsA) {
		t.Errorf("namespace %s: the intercept is still there after tp leave --force", nsA)
	}
	if !intercepted(nsB) {
		t.Errorf("namespace %s: the intercept ended although the forcing user may not patch the workload", nsB)
	}
}
