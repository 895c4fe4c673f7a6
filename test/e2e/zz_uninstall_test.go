//go:build e2e

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
)

// TestHelmUninstallRestoresWorkloads runs last (file order): `tp helm
// uninstall` first restores every intercepted workload's pod template, then
// removes the traffic-manager. TestMain installs it again on the next run.
func TestHelmUninstallRestoresWorkloads(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "uninstall")
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	before := c.waitDeployment(t, ns, "echo", 2*time.Minute).Spec.Template
	conn := connect(t, "un-"+rand.String(4), "-n", ns)
	tpOK(t, "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http")
	if d := c.waitDeployment(t, ns, "echo", 2*time.Minute); equality.Semantic.DeepEqual(before, d.Spec.Template) {
		t.Fatalf("intercept did not change the pod template: the agent was not injected")
	}

	out := tpOK(t, "helm", "uninstall", "--namespace", "tp")
	if !strings.Contains(out, "Restored "+ns+"/") {
		t.Errorf("tp helm uninstall did not restore %s/echo first:\n%s", ns, out)
	}
	after := c.waitDeployment(t, ns, "echo", 2*time.Minute).Spec.Template
	if !equality.Semantic.DeepEqual(before, after) {
		t.Errorf("pod template after tp helm uninstall differs from the original")
	}
	if _, err := c.client.AppsV1().Deployments("tp").Get(context.Background(), "traffic-manager", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("traffic-manager deployment after uninstall: %v, want not found", err)
	}
}
