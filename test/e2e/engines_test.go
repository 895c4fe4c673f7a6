//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/rand"
)

// engine2 is the second Docker engine of hack/docker2.sh.
type engine2 struct{ host string }

// startEngine2 starts the second engine (idempotent), loads the images tp
// and the test need into it from the main engine, and stops it when the
// test ends.
func startEngine2(t *testing.T) engine2 {
	t.Helper()
	script := filepath.Join(repoRoot(t), "hack", "docker2.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, script, "up").Output()
	if err != nil {
		t.Fatalf("hack/docker2.sh up: %v\n%s", err, stderrOf(err))
	}
	e := engine2{host: strings.TrimSpace(string(out))}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if out, err := exec.CommandContext(ctx, script, "down").CombinedOutput(); err != nil {
			t.Logf("hack/docker2.sh down: %v\n%s", err, out)
		}
	})
	var v struct{ Client string }
	vout, err := tp(t, "version", "-o", "json")
	if err := firstErr(err, json.Unmarshal([]byte(vout), &v)); err != nil || !regexp.MustCompile(`^[A-Za-z0-9_.-]+$`).MatchString(v.Client) {
		t.Fatalf("tp version -o json: %v\n%s", err, vout)
	}
	images := []string{"tp:" + v.Client, echoImage, probeImage}
	if out, err := exec.CommandContext(ctx, script, append([]string{"load"}, images...)...).CombinedOutput(); err != nil {
		t.Fatalf("hack/docker2.sh load %v: %v\n%s", images, err, out)
	}
	return e
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

// firstErr is the first non-nil error.
func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// docker runs the docker CLI on this engine.
func (e engine2) docker(args ...string) (string, error) {
	return docker(append([]string{"-H", e.host}, args...)...)
}

// TestSecondEngine: with DOCKER_HOST naming a second Docker engine, with a
// docker context as the current one, and with --docker-context over a
// DOCKER_HOST that names the main engine, `tp connect`, `tp intercept
// --docker-run` (the docker CLI, the volume plugin) and `tp quit` all use
// the second engine, and nothing of the connection lands on the main one.
func TestSecondEngine(t *testing.T) {
	c := newCluster(t)
	e := startEngine2(t)

	// The second engine is isolated from the cluster as the main one is:
	// without tp its containers reach the API server, not pods or services.
	pod := c.runningPod(t, "kube-system", "k8s-app=kube-dns")
	for _, target := range []string{pod.Status.PodIP + ":53", "10.96.0.10:53", "10.96.0.1:443"} {
		if out, err := e.docker("run", "--rm", probeImage, "tcp", "-timeout", "3s", target); err == nil {
			t.Fatalf("a container of the second engine reached %s without tp (%s): its bridge must be blocked like Docker's", target, strings.TrimSpace(out))
		}
	}
	if out, err := e.docker("run", "--rm", "--add-host", "host.docker.internal:host-gateway", probeImage, "tcp", "host.docker.internal:6443"); err != nil {
		t.Fatalf("a container of the second engine cannot reach the API server: %v\n%s", err, out)
	}

	ns := c.echoNamespace(t, "engines")
	configDir := t.TempDir()
	const contextName = "tp-e2e-docker2"
	cfgEnv := "DOCKER_CONFIG=" + configDir
	if out, err := docker("--config", configDir, "context", "create", contextName, "--docker", "host="+e.host); err != nil {
		t.Fatalf("docker context create: %v\n%s", err, out)
	}
	useDir := t.TempDir() // a configuration whose current context is the second engine
	if out, err := docker("--config", useDir, "context", "create", contextName, "--docker", "host="+e.host); err != nil {
		t.Fatalf("docker context create: %v\n%s", err, out)
	}
	if out, err := docker("--config", useDir, "context", "use", contextName); err != nil {
		t.Fatalf("docker context use: %v\n%s", err, out)
	}

	for _, tc := range []struct {
		name        string
		env, flags  []string
		wantContext string
	}{
		{"DOCKER_HOST", []string{"DOCKER_HOST=" + e.host, cfgEnv}, nil, "default"},
		{"current docker context", []string{"DOCKER_HOST=", "DOCKER_CONTEXT=", "DOCKER_CONFIG=" + useDir}, nil, contextName},
		{"--docker-context over DOCKER_HOST", []string{"DOCKER_HOST=unix:///var/run/docker.sock", cfgEnv}, []string{"--docker-context", contextName}, contextName},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "eng-" + rand.String(4)
			tpc := func(args ...string) (string, error) { return tpEnv(t, tc.env, append(args, tc.flags...)...) }
			start := time.Now()
			out, err := tpc("connect", "--name", name, "-n", ns)
			if err != nil {
				t.Fatalf("tp connect: %v\n%s", err, out)
			}
			t.Logf("tp connect: %s", strings.TrimSpace(out))
			t.Cleanup(func() { _, _ = tpc("quit", "--name", name) })
			container := "tp-" + name
			id, err := e.docker("inspect", "-f", "{{.Id}}", container)
			if err != nil {
				t.Fatalf("no daemon container %s on the second engine: %v\n%s", container, err, id)
			}
			id = strings.TrimSpace(id)
			var st struct{ DockerContext, DockerHost, State string }
			out, err = tpc("status", "--name", name, "-o", "json")
			if err := firstErr(err, json.Unmarshal([]byte(out), &st)); err != nil {
				t.Fatalf("tp status: %v\n%s", err, out)
			}
			if st.DockerContext != tc.wantContext || st.DockerHost != e.host || st.State != "connected" {
				t.Errorf("tp status: engine %q %q, state %s; want %q %q, connected", st.DockerContext, st.DockerHost, st.State, tc.wantContext, e.host)
			}

			// --docker-run: the docker CLI joins the daemon container, which
			// exists on the second engine only, and the pod's volumes come
			// from the volume plugin there.
			local := "tp-e2e-eng-" + rand.String(4)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			args := append([]string{"intercept", "echo", "--name", name, "--service", "echo", "--port", "8080:http"}, tc.flags...)
			args = append(args, "--docker-run", "--", "--name", local, "-e", "ECHO_COPY=engine2", echoImage, "serve")
			run := exec.CommandContext(ctx, tpBin(t), args...)
			run.Env = append(os.Environ(), tc.env...)
			run.Cancel = func() error { return run.Process.Signal(os.Interrupt) }
			var iout strings.Builder
			run.Stdout, run.Stderr = &iout, &iout
			if err := run.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- run.Wait() }()
			select {
			case err := <-done:
				t.Fatalf("tp intercept --docker-run ended early: %v\n%s", err, iout.String())
			case <-time.After(time.Second):
			}
			c.waitCopy(t, ns, "http://echo."+ns+"/engine2", "engine2", 90*time.Second)
			if out, err := e.docker("inspect", "-f", "{{.HostConfig.NetworkMode}}", local); err != nil || strings.TrimSpace(out) != "container:"+id {
				t.Errorf("--docker-run container %s on the second engine: %v %q, want network container:%s (%s)", local, err, out, id, container)
			}
			vols, err := e.docker("volume", "ls", "-q", "--filter", "label=tp.run/connection="+name)
			if err != nil || len(lines(vols)) == 0 {
				t.Errorf("no tp volume of connection %s on the second engine: %v %q", name, err, vols)
			}
			assertNothingOnMain(t, name, local, start)

			cancel() // Ctrl-C: the container stops, the intercept ends
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Fatalf("tp intercept did not end after Ctrl-C:\n%s", iout.String())
			}
			if out, err := tpc("quit", "--name", name); err != nil || !strings.Contains(out, "Disconnected") {
				t.Fatalf("tp quit: %v\n%s", err, out)
			}
			if _, err := e.docker("inspect", container); err == nil {
				t.Errorf("daemon container %s still on the second engine after tp quit", container)
			}
			if vols, _ := e.docker("volume", "ls", "-q", "--filter", "label=tp.run/connection="+name); len(lines(vols)) > 0 {
				t.Errorf("tp volumes of %s left on the second engine after tp quit: %q", name, vols)
			}
			assertNothingOnMain(t, name, local, start)
		})
	}

	// compose: the project's containers and the connection go to the
	// engine of --docker-context, not to DOCKER_HOST's main engine.
	t.Run("compose with --docker-context over DOCKER_HOST", func(t *testing.T) {
		env := []string{"DOCKER_HOST=unix:///var/run/docker.sock", cfgEnv}
		conn, project := "engc-"+rand.String(4), "tpe2eng"+rand.String(4)
		file := filepath.Join(t.TempDir(), "compose.yaml")
		yaml := fmt.Sprintf(`name: %s
x-tp:
  connection: {name: %s, namespace: %s}
services:
  echo:
    image: %s
    command: ["serve"]
    environment: {ECHO_COPY: compose-engine2}
    x-tp:
      intercept: {workload: echo, service: echo, ports: ["8080:http"]}
`, project, conn, ns, echoImage)
		if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		composeTP := func(args ...string) (string, error) {
			return tpEnv(t, env, append(append([]string{"compose", "-f", file}, args...), "--docker-context", contextName)...)
		}
		start := time.Now()
		t.Cleanup(func() {
			_, _ = composeTP("down")
			_, _ = tpEnv(t, env, "quit", "--name", conn, "--docker-context", contextName)
		})
		if out, err := composeTP("up", "-d"); err != nil {
			t.Fatalf("tp compose up -d: %v\n%s", err, out)
		}
		c.waitCopy(t, ns, "http://echo."+ns+"/compose-engine2", "compose-engine2", 90*time.Second)
		byProject := "label=com.docker.compose.project=" + project
		if out, err := e.docker("ps", "-q", "--filter", byProject); err != nil || len(lines(out)) != 1 {
			t.Errorf("compose containers of %s on the second engine: %v %q, want one", project, err, out)
		}
		if out, err := docker("ps", "-aq", "--filter", byProject); err != nil || len(lines(out)) > 0 {
			t.Errorf("compose containers of %s on the main engine: %v %q, want none", project, err, out)
		}
		if out, err := composeTP("down"); err != nil {
			t.Fatalf("tp compose down: %v\n%s", err, out)
		}
		if out, err := e.docker("ps", "-aq", "--filter", byProject); err != nil || len(lines(out)) > 0 {
			t.Errorf("compose containers of %s on the second engine after down: %v %q", project, err, out)
		}
		if out, err := tpEnv(t, env, "quit", "--name", conn, "--docker-context", contextName); err != nil || !strings.Contains(out, "Disconnected") {
			t.Fatalf("tp quit: %v\n%s", err, out)
		}
		out, err := docker("events", "--since", fmt.Sprint(start.Unix()), "--until", fmt.Sprint(time.Now().Unix()),
			"--format", "{{.Type}} {{.Action}} {{.Actor.ID}}", "--filter", byProject)
		if err != nil || len(lines(out)) > 0 {
			t.Errorf("main engine events of project %s: %v %q, want none", project, err, out)
		}
		assertNothingOnMain(t, conn, "no-such-container-"+conn, start)
	})
}

// assertNothingOnMain fails when the main engine has, or had since start, a
// container or volume of the connection or the --docker-run container.
func assertNothingOnMain(t *testing.T, connection, local string, start time.Time) {
	t.Helper()
	for _, args := range [][]string{
		{"ps", "-a", "--format", "{{.Names}}", "--filter", "label=run.tp.connection=" + connection},
		{"ps", "-a", "--format", "{{.Names}}", "--filter", "name=^/(tp-" + connection + "|" + local + ")$"},
		{"volume", "ls", "-q", "--filter", "label=tp.run/connection=" + connection},
		// Events of the test's span, so a container that came and went counts too.
		{"events", "--since", fmt.Sprint(start.Unix()), "--until", fmt.Sprint(time.Now().Unix()), "--format", "{{.Type}} {{.Action}} {{.Actor.ID}}",
			"--filter", "label=run.tp.connection=" + connection},
		{"events", "--since", fmt.Sprint(start.Unix()), "--until", fmt.Sprint(time.Now().Unix()), "--format", "{{.Type}} {{.Action}} {{.Actor.ID}}",
			"--filter", "label=tp.run/connection=" + connection},
		{"events", "--since", fmt.Sprint(start.Unix()), "--until", fmt.Sprint(time.Now().Unix()), "--format", "{{.Type}} {{.Action}} {{.Actor.ID}}",
			"--filter", "container=" + local},
	} {
		out, err := docker(args...)
		if err != nil {
			t.Fatalf("docker %v on the main engine: %v\n%s", args, err, out)
		}
		if l := lines(out); len(l) > 0 {
			t.Errorf("the main engine has what belongs on the second (docker %s): %q", strings.Join(args, " "), l)
		}
	}
}
