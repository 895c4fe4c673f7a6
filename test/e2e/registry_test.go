//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"

	"github.com/tp-run/tp/internal/version"
)

// testRegistry is the test bed's registry (hack/registry.sh: Debian's
// docker-registry, plain HTTP on 127.0.0.1 only). The cluster's containerd
// runs on this machine in its network namespace, so it reaches it as
// Docker does; hack/cluster/up.sh gives it a hosts.toml for it.
const testRegistry = "127.0.0.1:5000"

// run runs a command with a deadline and returns its combined output.
func run(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ctrK8s runs ctr against the cluster's containerd, namespace k8s.io (the
// kubelet's images).
func ctrK8s(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ctr", append([]string{"-a", "/run/containerd/containerd.sock", "-n", "k8s.io"}, args...)...).CombinedOutput()
	return string(out), err
}

// clientVersion is the version of the tp under test (its image is tp:TAG).
func clientVersion(t *testing.T) string {
	t.Helper()
	var v struct {
		Client string `json:"client"`
	}
	if err := json.Unmarshal([]byte(tpOK(t, "version", "-o", "json")), &v); err != nil || v.Client == "" {
		t.Fatalf("tp version -o json: %v (%+v)", err, v)
	}
	return v.Client
}

// TestConnectFromRegistry: `make image-push REGISTRY=127.0.0.1:5000` pushes
// tp's image to the test bed's registry; `tp connect --image-registry
// 127.0.0.1:5000` installs the traffic-manager with that image, which the
// node pulls from the registry (the name was not in containerd before:
// nothing preloaded), and an intercept injects the agent with the same
// image; the intercepted service answers from the local copy.
func TestConnectFromRegistry(t *testing.T) {
	c := newCluster(t)
	root := repoRoot(t)
	run(t, 3*time.Minute, filepath.Join(root, "hack", "registry.sh"), "up")

	v := clientVersion(t)
	version.Version = v
	ref := testRegistry + "/" + version.Image()
	// Nothing preloaded: drop the name if an earlier run of this version pulled it.
	_, _ = ctrK8s("images", "rm", ref)
	if out, err := ctrK8s("images", "ls", "-q", "name=="+ref); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("containerd still has %s (%v): %s", ref, err, out)
	}
	out := run(t, 5*time.Minute, "make", "-C", root, "--no-print-directory", "image-push", "REGISTRY="+testRegistry, "VERSION="+v)
	t.Logf("make image-push REGISTRY=%s:\n%s", testRegistry, out)
	_, digest, ok := strings.Cut(out, ref+"@")
	if !ok || !strings.HasPrefix(digest, "sha256:") {
		t.Fatalf("make image-push did not report pushing %s:\n%s", ref, out)
	}
	digest = strings.Fields(digest)[0]
	t.Cleanup(func() {
		// This run's manifest goes from the registry (and its layer with
		// the garbage collection), its tag from Docker.
		req, _ := http.NewRequest(http.MethodDelete, "http://"+testRegistry+"/v2/tp/manifests/"+digest, nil)
		if resp, err := http.DefaultClient.Do(req); err != nil {
			t.Logf("delete %s@%s from the registry: %v", ref, digest, err)
		} else if resp.Body.Close(); resp.StatusCode != http.StatusAccepted {
			t.Logf("delete %s@%s from the registry: %s", ref, digest, resp.Status)
		}
		if out, err := exec.Command(filepath.Join(root, "hack", "registry.sh"), "gc").CombinedOutput(); err != nil {
			t.Logf("hack/registry.sh gc: %v\n%s", err, out)
		}
		_, _ = docker("rmi", ref)
	})

	// The shared manager (namespace tp) goes, so that connect installs it
	// with the registry's image; afterwards it is reinstalled as before.
	tpOK(t, "helm", "uninstall", "--namespace", "tp")
	t.Cleanup(func() {
		if out, err := tp(t, "helm", "upgrade", "--namespace", "tp"); err != nil {
			t.Errorf("reinstall the traffic-manager: %v\n%s", err, out)
		}
		_, _ = ctrK8s("images", "rm", ref)
	})
	// Nor the content under another name: the image make e2e-run loaded
	// (tp:TAG) goes from containerd while no pod runs it, so the node must
	// fetch the manifest, the config and the layers from the registry (but
	// a layer another loaded image shares, as tp's CA bundle, which
	// containerd keeps once). It is loaded again for the tests after this one.
	loaded := "docker.io/library/" + version.Image()
	t.Cleanup(func() {
		if out, err := exec.Command(filepath.Join(root, "hack", "cluster", "load.sh"), version.Image()).CombinedOutput(); err != nil {
			t.Errorf("load %s into the cluster again: %v\n%s", version.Image(), err, out)
		}
	})
	c.waitNoPods(t, "tp", time.Minute)
	// The CRI names each image by its ID (the config's digest) too.
	id := strings.TrimSpace(run(t, time.Minute, "docker", "image", "inspect", "-f", "{{.Id}}", version.Image()))
	for _, name := range []string{loaded, id} {
		if out, err := ctrK8s("images", "rm", "--sync", name); err != nil && !strings.Contains(out, "not found") {
			t.Fatalf("remove %s from containerd: %v\n%s", name, err, out)
		}
	}
	logStart := fileSize(t, registryLog)

	ns := c.echoNamespace(t, "registry")
	name := "reg-" + rand.String(4)
	start := time.Now()
	out, err := tp(t, "connect", "--name", name, "-n", ns, "--image-registry", testRegistry)
	if err != nil {
		t.Fatalf("tp connect --image-registry %s: %v\n%s", testRegistry, err, out)
	}
	t.Logf("tp connect --image-registry %s (%v):\n%s", testRegistry, time.Since(start).Round(time.Millisecond), out)
	conn := connection{name: name, container: "tp-" + name}
	t.Cleanup(func() {
		if out, err := tp(t, "quit", "--name", name); err != nil {
			t.Logf("tp quit --name %s: %v\n%s", name, err, out)
		}
	})
	if !strings.Contains(out, "Installing the traffic-manager") {
		t.Errorf("tp connect did not install the traffic-manager:\n%s", out)
	}

	mgr := c.runningPod(t, "tp", "app=traffic-manager")
	if got := mgr.Spec.Containers[0].Image; got != ref {
		t.Fatalf("traffic-manager pod %s runs image %s, want %s", mgr.Name, got, ref)
	}
	c.waitPulled(t, "tp", mgr.Name, ref)
	// containerd fetches what it has not got: at least the image's config
	// (its name and ID were removed above). tp's layer too, unless an
	// image still on the node shares it (an agent of an earlier test whose
	// namespace is still terminating runs tp:TAG).
	if blobs := registryBlobGets(t, logStart); len(blobs) < 1 {
		t.Errorf("the node fetched no blob from the registry, want at least the image's config")
	} else {
		t.Logf("the node fetched %d blobs from the registry: %v", len(blobs), blobs)
	}
	if out, err := ctrK8s("images", "ls", "-q", "name=="+ref); err != nil || strings.TrimSpace(out) != ref {
		t.Errorf("containerd's images named %s after the pull: %q (%v)", ref, out, err)
	}

	localEcho(t, conn, "local")
	tpOK(t, "intercept", "echo", "--name", name, "--service", "echo", "--port", "8080:http")
	c.waitCopy(t, ns, "http://echo."+ns+"/from-registry", "local", 90*time.Second)
	pods, err := c.client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=echo"})
	if err != nil {
		t.Fatal(err)
	}
	agents := 0
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil || !podIsReady(&p) {
			continue
		}
		for _, ctr := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
			if ctr.Image == ref {
				agents++
			} else if strings.Contains(ctr.Image, "tp:") {
				t.Errorf("pod %s container %s runs %s, want the registry's %s", p.Name, ctr.Name, ctr.Image, ref)
			}
		}
	}
	if agents == 0 {
		t.Errorf("no ready echo pod has a container with the registry's image %s (the agent)", ref)
	}
	tpOK(t, "leave", "echo", "--name", name)
	c.waitCopy(t, ns, "http://echo."+ns+"/after-leave", "cluster", 30*time.Second)
}

// registryLog is hack/registry.sh's log: the registry's access log.
const registryLog = "/var/log/tp-registry.log"

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// registryBlobGets are the blobs (digests) containerd fetched from the test
// registry, by its access log from offset on.
func registryBlobGets(t *testing.T, offset int64) []string {
	t.Helper()
	b, err := os.ReadFile(registryLog)
	if err != nil {
		t.Fatal(err)
	}
	var blobs []string
	for _, l := range lines(string(b[offset:])) {
		// 127.0.0.1 - - [date] "GET /v2/tp/blobs/sha256:... HTTP/1.1" 200 N "" "containerd/1.6.20~ds1"
		if _, rest, ok := strings.Cut(l, `"GET /v2/tp/blobs/`); ok && strings.Contains(l, `"containerd/`) && strings.Contains(rest, `" 200 `) {
			blobs = append(blobs, strings.Fields(rest)[0])
		}
	}
	return blobs
}

// waitNoPods waits until namespace ns has no pods (a deleted Deployment's).
func (c *cluster) waitNoPods(t *testing.T, ns string, timeout time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(timeout); ; time.Sleep(500 * time.Millisecond) {
		pods, err := c.client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
		if err == nil && len(pods.Items) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("namespace %s still has pods after %v: %v", ns, timeout, err)
		}
	}
}

// waitPulled waits (10 s) for the kubelet's events saying it pulled image
// for pod ns/name: Pulling, then Pulled with "Successfully pulled" (not
// "already present on machine").
func (c *cluster) waitPulled(t *testing.T, ns, name, image string) {
	t.Helper()
	var seen []string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		evs, err := c.client.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
		if err != nil {
			t.Fatal(err)
		}
		seen = seen[:0]
		pulling, pulled := false, false
		for _, e := range evs.Items {
			seen = append(seen, e.Reason+": "+e.Message)
			switch {
			case e.Reason == "Pulling" && strings.Contains(e.Message, image):
				pulling = true
			case e.Reason == "Pulled" && strings.Contains(e.Message, "Successfully pulled image \""+image+"\""):
				pulled = true
			}
		}
		if pulling && pulled {
			t.Logf("pod %s/%s: %s", ns, name, strings.Join(seen, "; "))
			return
		}
	}
	t.Fatalf("pod %s/%s: no Pulling and Successfully pulled events for %s; events: %s", ns, name, image, strings.Join(seen, "; "))
}

// TestImageHasCABundle: tp's FROM-scratch image carries a CA bundle at the
// path Go's crypto/x509 reads on Linux, so the manager, agents and daemon
// verify TLS endpoints signed by public CAs.
func TestImageHasCABundle(t *testing.T) {
	version.Version = clientVersion(t)
	image := version.Image()
	id := strings.TrimSpace(run(t, time.Minute, "docker", "create", image))
	t.Cleanup(func() { _, _ = docker("rm", "-f", id) })
	tarball := run(t, time.Minute, "docker", "cp", id+":/etc/ssl/certs/ca-certificates.crt", "-")
	// docker cp - writes a tar stream: the PEM blocks are in it as they are.
	rest := []byte(tarball)
	n := 0
	subjects := map[string]bool{}
	for {
		i := bytes.Index(rest, []byte("-----BEGIN CERTIFICATE-----"))
		if i < 0 {
			break
		}
		var b *pem.Block
		b, rest = pem.Decode(rest[i:])
		if b == nil {
			break
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatalf("certificate %d of %s's CA bundle: %v", n+1, image, err)
		}
		if !cert.IsCA {
			t.Errorf("certificate %q of the bundle is no CA", cert.Subject)
		}
		subjects[cert.Subject.CommonName] = true
		n++
	}
	if n < 100 {
		t.Fatalf("%s: /etc/ssl/certs/ca-certificates.crt holds %d certificates, want Debian's bundle (over 100)", image, n)
	}
	if !subjects["ISRG Root X1"] {
		t.Errorf("%s's CA bundle (%d certificates) lacks ISRG Root X1 (Let's Encrypt)", image, n)
	}
	t.Logf("%s: %d CA certificates at /etc/ssl/certs/ca-certificates.crt", image, n)
}
