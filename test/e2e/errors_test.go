//go:build e2e

package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/tools/clientcmd"
)

// TestConnectErrors: each bad input gives one clear sentence that says what
// to do, and leaves no daemon container behind.
func TestConnectErrors(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "errors")
	name := "err-" + rand.String(4)
	dir := t.TempDir()

	unreachable := filepath.Join(dir, "unreachable")
	raw, err := clientcmd.LoadFromFile(c.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	bad := raw.DeepCopy()
	bad.Clusters[bad.Contexts[bad.CurrentContext].Cluster].Server = "https://127.0.0.1:1"
	if err := clientcmd.WriteToFile(*bad, unreachable); err != nil {
		t.Fatal(err)
	}

	inUse := "tp-inuse-" + rand.String(4)
	if out, err := docker("run", "-d", "--name", inUse, probeImage, "dns-server", "x.test=192.0.2.1"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = docker("rm", "-f", inUse) })

	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"docker not running", []string{"DOCKER_HOST=unix:///nonexistent/docker.sock"}, []string{"-n", ns}, "Docker is not running"},
		{"context not found", nil, []string{"-n", ns, "--context", "nope"}, `context "nope" not found`},
		{"namespace not found", nil, []string{"-n", "no-such-namespace-" + rand.String(4)}, "not found in context"},
		{"cluster unreachable", nil, []string{"-n", ns, "--kubeconfig", unreachable}, "cannot reach the cluster"},
		{"name in use", nil, []string{"-n", ns, "--name", strings.TrimPrefix(inUse, "tp-")}, "is not a tp daemon"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"connect", "--name", name, "--timeout", "60s"}, tc.args...)
			if tc.name == "name in use" {
				args = append([]string{"connect", "--timeout", "60s"}, tc.args...)
			}
			out, err := tpEnv(t, tc.env, args...)
			if err == nil {
				t.Fatalf("tp connect succeeded, want an error containing %q:\n%s", tc.want, out)
			}
			if !strings.Contains(out, tc.want) {
				t.Errorf("tp connect said %q, want it to contain %q", strings.TrimSpace(out), tc.want)
			}
			if n := len(lines(out)); n > 3 {
				t.Errorf("error takes %d lines, want one clear sentence:\n%s", n, out)
			}
			if out, err := docker("inspect", "tp-"+name); err == nil {
				t.Errorf("a failed connect left container tp-%s behind:\n%.200s", name, out)
			}
		})
	}

	t.Run("RBAC denies port-forward", func(t *testing.T) {
		kubeconfig := limitedUser(t, c, ns, dir)
		out, err := tp(t, "connect", "--name", name, "-n", ns, "--kubeconfig", kubeconfig, "--timeout", "60s")
		if err == nil {
			t.Fatalf("connect without pods/portforward succeeded:\n%s", out)
		}
		t.Logf("tp connect said: %s", out)
		if !strings.Contains(out, "pods/portforward") {
			t.Errorf("tp connect said %q, want it to name the missing pods/portforward permission", strings.TrimSpace(out))
		}
		if out, err := docker("inspect", "tp-"+name); err == nil {
			t.Errorf("a failed connect left container tp-%s behind:\n%.200s", name, out)
		}
	})
}

// limitedUser writes a kubeconfig for a service account that may read what
// connect reads (namespaces, the Helm release, the manager's pods) but may
// not port-forward.
func limitedUser(t *testing.T, c *cluster, ns, dir string) string {
	t.Helper()
	ctx := context.Background()
	sa := "limited-" + rand.String(4)
	if _, err := c.client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: sa},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"namespaces", "pods", "secrets"}, Verbs: []string{"get", "list", "watch"}},
		},
	}
	if _, err := c.client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.client.RbacV1().ClusterRoles().Delete(context.Background(), sa, metav1.DeleteOptions{}) })
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: sa},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: sa},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: ns}},
	}
	if _, err := c.client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.client.RbacV1().ClusterRoleBindings().Delete(context.Background(), sa, metav1.DeleteOptions{})
	})
	path := filepath.Join(dir, "limited")
	c.tokenKubeconfig(t, ns, sa, "", path)
	return path
}

// tpEnv runs tp with extra environment variables.
func tpEnv(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		old, had := os.LookupEnv(k)
		os.Setenv(k, v)
		defer func() {
			if had {
				os.Setenv(k, old)
			} else {
				os.Unsetenv(k)
			}
		}()
	}
	return tp(t, args...)
}
