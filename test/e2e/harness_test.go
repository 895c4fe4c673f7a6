//go:build e2e

// Package e2e holds tp's end-to-end tests. They run against the real local
// cluster (`make cluster-up`, kubeconfig in $KUBECONFIG) and the real Docker
// engine, with the images built by `make image` and the CLI in $TP_BIN.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/wait"
	yamlutil "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/tp-run/tp/internal/kube"
	"github.com/tp-run/tp/manager"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

const (
	echoImage  = "tp-echo:dev"
	probeImage = "tp-probe:dev"
	// debianImage holds off-the-shelf Debian tools (sh, coreutils, curl): hack/images/debian.sh.
	debianImage = "tp-debian:dev"
)

// cluster is the test's handle on the real cluster.
type cluster struct {
	kubeconfig string
	config     *rest.Config
	client     kubernetes.Interface
	dynamic    dynamic.Interface
	mapper     *restmapper.DeferredDiscoveryRESTMapper
}

func newCluster(t testing.TB) *cluster {
	t.Helper()
	path := os.Getenv("KUBECONFIG")
	if path == "" {
		path = "/var/lib/tp-cluster/kubeconfig"
	}
	config, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatalf("load kubeconfig %s (run `make cluster-up`): %v", path, err)
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(client.Discovery()))
	return &cluster{kubeconfig: path, config: config, client: client, dynamic: dyn, mapper: mapper}
}

// namespace creates a fresh namespace that is deleted when the test ends.
func (c *cluster) namespace(t testing.TB, prefix string) string {
	t.Helper()
	ns := prefix + "-" + rand.String(5)
	ctx := context.Background()
	_, err := c.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace %s: %v", ns, err)
	}
	t.Cleanup(func() {
		_ = c.client.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
	})
	return ns
}

// apply creates every object of a multi-document YAML file in ns.
func (c *cluster) apply(t testing.TB, ns, file string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), file))
	if err != nil {
		t.Fatal(err)
	}
	dec := yamlutil.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var obj unstructured.Unstructured
		if err := dec.Decode(&obj.Object); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("decode %s: %v", file, err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		gvk := obj.GroupVersionKind()
		mapping, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("map %s: %v", gvk, err)
		}
		_, err = c.dynamic.Resource(mapping.Resource).Namespace(ns).Create(context.Background(), &obj, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create %s %s in %s: %v", gvk.Kind, obj.GetName(), ns, err)
		}
	}
}

// waitDeployment waits until the deployment has all replicas updated and ready.
func (c *cluster) waitDeployment(t testing.TB, ns, name string, timeout time.Duration) *appsv1.Deployment {
	t.Helper()
	var dep *appsv1.Deployment
	err := wait.PollUntilContextTimeout(context.Background(), 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		d, err := c.client.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		dep = d
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		return d.Status.ObservedGeneration >= d.Generation && d.Status.UpdatedReplicas == want &&
			d.Status.ReadyReplicas == want && d.Status.Replicas == want, nil
	})
	if err != nil {
		t.Fatalf("deployment %s/%s not ready within %s: %v (status %+v)", ns, name, timeout, err, dep.Status)
	}
	return dep
}

// runningPod returns a running, ready pod with the given label selector.
func (c *cluster) runningPod(t testing.TB, ns, selector string) *corev1.Pod {
	t.Helper()
	pods, err := c.client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatal(err)
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil && p.Status.PodIP != "" {
			return p
		}
	}
	t.Fatalf("no running pod for %q in %s", selector, ns)
	return nil
}

// podOutput runs a one-shot pod of image with args in ns and returns its logs
// once it succeeded. A new service is programmed by kube-proxy a moment after
// its pods are Ready, and CoreDNS may still hold a negative answer for its
// name from a moment before: a failed run is retried for up to 45 s.
func (c *cluster) podOutput(t testing.TB, ns, image string, args ...string) string {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for {
		out, err := c.runPod(ns, image, args...)
		if err == nil {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v", err)
		}
		time.Sleep(time.Second)
	}
}

func (c *cluster) runPod(ns, image string, args ...string) (string, error) {
	ctx := context.Background()
	name := "probe-" + rand.String(5)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name: "probe", Image: image, Args: args, ImagePullPolicy: corev1.PullNever,
			}},
		},
	}
	if _, err := c.client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return "", err
	}
	defer func() { _ = c.client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{}) }()
	var phase corev1.PodPhase
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := c.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		phase = p.Status.Phase
		return phase == corev1.PodSucceeded || phase == corev1.PodFailed, nil
	})
	logs, _ := c.client.CoreV1().Pods(ns).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil || phase != corev1.PodSucceeded {
		return "", fmt.Errorf("pod %s %v: phase %s, err %v, logs:\n%s", name, args, phase, err, logs)
	}
	return string(logs), nil
}

// docker runs the docker CLI and returns its combined output and error.
func docker(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	return string(out), err
}

// probe runs the probe image in a throwaway container (extra docker run flags
// first, e.g. --network container:tp) and returns its output and error.
func probe(flags []string, args ...string) (string, error) {
	all := append([]string{"run", "--rm"}, flags...)
	all = append(all, probeImage)
	return docker(append(all, args...)...)
}

// tpBin is the tp CLI under test: $TP_BIN, or bin/tp of this checkout.
func tpBin(t testing.TB) string {
	t.Helper()
	if bin := os.Getenv("TP_BIN"); bin != "" {
		return bin
	}
	return filepath.Join(repoRoot(t), "bin", "tp")
}

// tp runs the tp CLI under test.
func tp(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return tpWithKubeconfig(t, os.Getenv("KUBECONFIG"), args...)
}

// tpWithKubeconfig runs the tp CLI under test with $KUBECONFIG set to path.
func tpWithKubeconfig(t testing.TB, path string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tpBin(t), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+path)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// tokenKubeconfig writes to path a copy of the test bed's kubeconfig whose
// user is service account sa of ns (a fresh token) and whose context's
// namespace is namespace when not empty.
func (c *cluster) tokenKubeconfig(t testing.TB, ns, sa, namespace, path string) {
	t.Helper()
	tok, err := c.client.CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), sa, &authv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := clientcmd.LoadFromFile(c.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	kctx := raw.Contexts[raw.CurrentContext]
	if namespace != "" {
		kctx.Namespace = namespace
	}
	raw.AuthInfos[kctx.AuthInfo] = &clientcmdapi.AuthInfo{Token: tok.Status.Token}
	if err := clientcmd.WriteToFile(*raw, path); err != nil {
		t.Fatal(err)
	}
}

// managerClient is a client of the traffic-manager's client API through a
// port-forward, as any holder of pods/portforward in tp has; it is closed
// when the test ends.
func (c *cluster) managerClient(t testing.TB) managerv1.ManagerClient {
	t.Helper()
	// The port-forward lives as long as ctx: until the test ends.
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	pod := c.runningPod(t, "tp", "app=traffic-manager")
	pf, err := kube.NewPortForwarder(ctx, c.config, "tp", pod.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pf.Close() })
	cc, err := pf.DialGRPC(manager.Port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return managerv1.NewManagerClient(cc)
}

// echoNamespace is a fresh namespace (prefix-...) with the example app
// applied and its Deployment echo ready.
func (c *cluster) echoNamespace(t testing.TB, prefix string) string {
	t.Helper()
	ns := c.namespace(t, prefix)
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	return ns
}

func repoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// lines splits output into trimmed non-empty lines.
func lines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	return out
}

func podIsReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
