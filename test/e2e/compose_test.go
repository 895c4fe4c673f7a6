//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/rand"
)

// TestComposeUpDown: `tp compose up -d` on a compose file with x-tp
// connects (publishing the joined service's port on the daemon
// container), intercepts the cluster's echo for the compose service echo
// (which gets the pod's environment, its own ECHO_COPY winning, and the
// pod's volumes at their paths, x-tp mounts' default), and runs a
// connect-role worker that reaches the cluster's service by name, which the
// intercept routes back to the compose service; a use-cluster service is not
// started, and the worker's depends_on on it (service_healthy) waits until
// the cluster's service answers on its exposed port. `tp compose down`
// removes the containers and tp's volumes, leaves the intercept (the
// cluster's copy answers again) and quits the connection, which its up
// started.
func TestComposeUpDown(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "compose")
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	conn := "cmp-" + rand.String(4)
	project := "tpe2e" + rand.String(4)
	port := freePort(t)

	dir := t.TempDir()
	file := filepath.Join(dir, "compose.yaml")
	yaml := fmt.Sprintf(`name: %s
x-tp:
  connection: {name: %s, namespace: %s}
services:
  echo:
    image: %s
    command: ["serve"]
    environment: {ECHO_COPY: compose}
    ports: ["127.0.0.1:%d:8080"]
    x-tp:
      intercept: {workload: echo, service: echo, ports: ["8080:http"]}
  worker:
    image: %s
    entrypoint: ["/bin/sh", "-c", "while sleep 1; do curl -s -m 3 http://echo.%s/from-worker; echo; done"]
    depends_on: {db: {condition: service_healthy}}
    x-tp: {connect: true}
  db:
    image: postgres-that-is-not-here
    expose: ["80"]
    x-tp: {use-cluster: echo}
`, project, conn, ns, echoImage, port, debianImage, ns)
	if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	composeTP := composeWith(t, file)
	t.Cleanup(func() {
		if out, err := composeTP("down"); err != nil {
			t.Logf("tp compose down (cleanup): %v\n%s", err, out)
		}
		_, _ = tp(t, "quit", "--name", conn)
	})

	if out, err := composeTP("config"); err != nil || !strings.Contains(out, "network_mode: container:tp-"+conn) {
		t.Fatalf("tp compose config: %v\n%s", err, out)
	}
	out, err := composeTP("up", "-d")
	if err != nil {
		t.Fatalf("tp compose up -d: %v\n%s", err, out)
	}
	t.Logf("tp compose up -d:\n%s", out)
	// up waited for the cluster's echo before it started the worker.
	if !strings.Contains(out, "db (the cluster's service echo) answers on echo:80") {
		t.Errorf("tp compose up -d did not wait for the use-cluster db (echo:80) that the worker depends on:\n%s", out)
	}

	// The cluster's callers reach the compose service, which has the pod's
	// environment (GREETING) and its own ECHO_COPY.
	c.waitCopy(t, ns, "http://echo."+ns+"/from-cluster", "compose", 90*time.Second)
	env := c.podOutput(t, ns, probeImage, "http", "http://echo."+ns+"/env?keys=GREETING,ECHO_COPY,TP_INTERCEPT_NAME")
	for _, want := range []string{`"GREETING":"hello-from-configmap"`, `"ECHO_COPY":"compose"`, `"TP_INTERCEPT_NAME":"` + project + `-echo"`} {
		if !strings.Contains(env, want) {
			t.Errorf("the compose service's environment %s lacks %s", env, want)
		}
	}
	// The compose service has the pod's volumes at their paths: the Secret's file.
	if got, err := docker("exec", project+"-echo-1", "/echo", "cat", "/etc/echo/secret/API_TOKEN"); err != nil || strings.TrimSpace(got) != "s3cr3t-from-secret" {
		t.Errorf("the compose service reads the pod's Secret at /etc/echo/secret/API_TOKEN: %v %q, want s3cr3t-from-secret", err, got)
	}
	projectVolumes := func() string {
		out, _ := docker("volume", "ls", "-q", "--filter", "label=tp.run/compose-project="+project)
		return strings.TrimSpace(out)
	}
	if projectVolumes() == "" {
		t.Errorf("no tp volume of project %s while it runs", project)
	}
	// The host reaches the compose service through the daemon container's published port.
	if body, err := httpGet(context.Background(), fmt.Sprintf("http://127.0.0.1:%d/from-host", port)); err != nil || !strings.Contains(body, `"compose"`) {
		t.Errorf("GET the published port from the host: %v %q, want the compose copy", err, body)
	}
	// The worker (connect role) reaches the cluster's echo by name.
	deadline := time.Now().Add(60 * time.Second)
	for {
		logs, _ := docker("logs", project+"-worker-1")
		if strings.Contains(logs, `"copy":"compose"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the worker's requests to echo.%s never reached the intercept; its log:\n%s", ns, logs)
		}
		time.Sleep(time.Second)
	}
	if ps, _ := docker("ps", "-a", "--filter", "label=com.docker.compose.project="+project, "--format", "{{.Names}}"); strings.Contains(ps, "db") {
		t.Errorf("the use-cluster service db was started: %s", ps)
	}

	// up again is harmless: it reuses the volumes, and the container.
	volsBefore := projectVolumes()
	idBefore, _ := docker("inspect", "-f", "{{.Id}}", project+"-echo-1")
	if out, err := composeTP("up", "-d"); err != nil {
		t.Errorf("tp compose up -d again: %v\n%s", err, out)
	}
	if vols := projectVolumes(); vols != volsBefore {
		t.Errorf("up again changed tp's volumes of the project: %q, were %q", vols, volsBefore)
	}
	if id, _ := docker("inspect", "-f", "{{.Id}}", project+"-echo-1"); id != idBefore {
		t.Errorf("up again recreated the unchanged echo container: %s, was %s", id, idBefore)
	}

	out, err = composeTP("down")
	if err != nil {
		t.Fatalf("tp compose down: %v\n%s", err, out)
	}
	c.waitCopy(t, ns, "http://echo."+ns+"/after-down", "cluster", 30*time.Second)
	if ps, _ := docker("ps", "-a", "--filter", "label=com.docker.compose.project="+project, "--format", "{{.Names}}"); strings.TrimSpace(ps) != "" {
		t.Errorf("containers left after down: %s", ps)
	}
	if vols := projectVolumes(); vols != "" {
		t.Errorf("tp volumes of the project left after down: %s", vols)
	}
	// up started the connection, so down quits it (and with it any intercept).
	if out, err := docker("inspect", "tp-"+conn); err == nil {
		t.Errorf("the connection that up started is still there after down:\n%s", out)
	}
}

// TestComposeUseClusterAlias: a use-cluster service whose name differs
// from its cluster service (backend: use-cluster echo) is not started, and
// its name resolves, through tp's DNS, to the cluster's echo for the joined
// services: a connect-role client reaches http://backend/ and gets echo's
// answer, also with the namespace's search suffix. `tp compose down`
// removes the alias (the connection, started by hand, stays and no longer
// resolves backend).
func TestComposeUseClusterAlias(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "alias")
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	conn := "als-" + rand.String(4)
	project := "tpe2ealias" + rand.String(4)
	if out, err := tp(t, "connect", "--name", conn, "-n", ns); err != nil {
		t.Fatalf("tp connect: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = tp(t, "quit", "--name", conn) })

	dir := t.TempDir()
	file := filepath.Join(dir, "compose.yaml")
	yaml := fmt.Sprintf(`name: %s
x-tp:
  connection: {name: %s, namespace: %s}
services:
  client:
    image: %s
    entrypoint: ["/bin/sh", "-c", "while sleep 1; do curl -s -m 3 http://backend/bare; echo; curl -s -m 3 http://backend.%s.svc.cluster.local/suffixed; echo; done"]
    depends_on: {backend: {condition: service_started}}
    x-tp: {connect: true}
  backend:
    image: backend-that-is-not-here
    expose: ["80"]
    x-tp: {use-cluster: echo}
`, project, conn, ns, debianImage, ns)
	if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	composeTP := composeWith(t, file)
	t.Cleanup(func() {
		if out, err := composeTP("down"); err != nil {
			t.Logf("tp compose down (cleanup): %v\n%s", err, out)
		}
	})
	// resolves says whether a container joined to the connection resolves name.
	resolves := func(name string) (string, bool) {
		out, err := docker("run", "--rm", "--network", "container:tp-"+conn, debianImage, "getent", "hosts", name)
		return strings.TrimSpace(out), err == nil && strings.TrimSpace(out) != ""
	}
	if out, ok := resolves("backend"); ok {
		t.Fatalf("backend resolves before up (%s): the test cannot tell the alias from something else", out)
	}

	if out, err := composeTP("config"); err != nil || !strings.Contains(out, "the name backend resolves to the cluster's service echo") {
		t.Fatalf("tp compose config does not note the alias backend -> echo: %v\n%s", err, out)
	}
	out, err := composeTP("up", "-d")
	if err != nil {
		t.Fatalf("tp compose up -d: %v\n%s", err, out)
	}
	t.Logf("tp compose up -d:\n%s", out)
	deadline := time.Now().Add(60 * time.Second)
	for {
		logs, _ := docker("logs", project+"-client-1")
		if strings.Contains(logs, `"path":"/bare"`) && strings.Contains(logs, `"path":"/suffixed"`) && strings.Contains(logs, `"copy":"cluster"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the client's requests to http://backend/ never got the cluster's echo; its log:\n%s", logs)
		}
		time.Sleep(time.Second)
	}
	if ps, _ := docker("ps", "-a", "--filter", "label=com.docker.compose.project="+project, "--format", "{{.Names}}"); strings.Contains(ps, "backend") {
		t.Errorf("the use-cluster service backend was started: %s", ps)
	}
	if out, ok := resolves("backend"); !ok {
		t.Errorf("a joined container does not resolve backend while the project is up: %s", out)
	}

	if out, err := composeTP("down"); err != nil {
		t.Fatalf("tp compose down: %v\n%s", err, out)
	}
	if out, ok := resolves("backend"); ok {
		t.Errorf("backend still resolves after down: %s", out)
	}
	if _, err := docker("inspect", "tp-"+conn); err != nil {
		t.Errorf("down quit the connection it had not started: %v", err)
	}
}

// composeWith returns a runner of `tp compose -f file ARGS...` (4 minutes at
// most each) that returns the combined output.
func composeWith(t *testing.T, file string) func(args ...string) (string, error) {
	return func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, tpBin(t), append([]string{"compose", "-f", file}, args...)...).CombinedOutput()
		return string(out), err
	}
}
