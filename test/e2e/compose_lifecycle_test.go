//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/rand"
)

// composePs is what `tp compose ps -o json` prints for one service.
type composePs struct {
	Service        string `json:"service"`
	Role           string `json:"role"`
	ClusterService string `json:"clusterService"`
	Containers     []struct {
		Name  string `json:"name"`
		State string `json:"state"`
	} `json:"containers"`
	Intercepts []struct {
		Name  string `json:"name"`
		State string `json:"state"`
	} `json:"intercepts"`
}

// TestComposeLifecycle runs one project through the lifecycle beyond up -d
// and down, on one connection that its first up starts:
//   - a foreground `tp compose up` intercepts the cluster's echo for the
//     compose service echo; while it runs, `tp compose ps` (table and -o
//     json) shows each service's role and the intercept active, and `tp quit`
//     refuses, naming the project and its down command;
//   - Ctrl-C (SIGINT) of the foreground up stops the services and leaves the
//     intercept: the cluster's pod answers again, the containers (stopped)
//     and the connection stay, but echo's, which mounted the pod's volumes,
//     goes with them;
//   - `up -d` converges: the unchanged services' containers are started, not
//     recreated, and traffic reaches the compose service again; another
//     `up -d` keeps every container;
//   - `tp compose stop` stops the containers and leaves the intercept (echo's
//     container and volumes go, as on Ctrl-C);
//   - after another `up -d`, `tp quit --force` quits with a warning naming
//     the project, and `down` removes the containers.
func TestComposeLifecycle(t *testing.T) {
	c := newCluster(t)
	ns := c.echoNamespace(t, "cmplife")
	conn := "cml-" + rand.String(4)
	project := "tpe2elife" + rand.String(4)
	daemon := "tp-" + conn

	file := filepath.Join(t.TempDir(), "compose.yaml")
	// The sh loops end at once on SIGTERM (as PID 1 they would otherwise
	// wait compose's 10 s stop timeout for SIGKILL).
	const loop = `["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]`
	yaml := fmt.Sprintf(`name: %s
x-tp:
  connection: {name: %s, namespace: %s}
services:
  echo:
    image: %s
    command: ["serve"]
    environment: {ECHO_COPY: compose}
    x-tp:
      intercept: {workload: echo, service: echo, ports: ["8080:http"]}
  worker:
    image: %s
    entrypoint: %s
    x-tp: {connect: true}
  mailer:
    image: %s
    entrypoint: %s
  db:
    image: postgres-that-is-not-here
    x-tp: {use-cluster: echo}
`, project, conn, ns, echoImage, debianImage, loop, debianImage, loop)
	if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	composeTP := composeWith(t, file)
	t.Cleanup(func() {
		if out, err := composeTP("down"); err != nil {
			t.Logf("tp compose down (cleanup): %v\n%s", err, out)
		}
		_, _ = tp(t, "quit", "--force", "--name", conn)
	})
	ps := func() map[string]composePs {
		t.Helper()
		out, err := composeTP("ps", "-o", "json")
		if err != nil {
			t.Fatalf("tp compose ps -o json: %v\n%s", err, out)
		}
		var states []composePs
		if err := json.Unmarshal([]byte(out), &states); err != nil {
			t.Fatalf("tp compose ps -o json: %v\n%s", err, out)
		}
		byName := map[string]composePs{}
		for _, st := range states {
			byName[st.Service] = st
		}
		return byName
	}
	// containers are the project's containers: name -> ID and state.
	type ctr struct{ id, state string }
	containers := func() map[string]ctr {
		t.Helper()
		out, err := docker("ps", "-a", "--filter", "label=com.docker.compose.project="+project, "--format", "{{.Names}} {{.ID}} {{.State}}")
		if err != nil {
			t.Fatalf("docker ps: %v\n%s", err, out)
		}
		m := map[string]ctr{}
		for _, l := range lines(out) {
			if f := strings.Fields(l); len(f) == 3 {
				m[f[0]] = ctr{f[1], f[2]}
			}
		}
		return m
	}
	// wantContainers checks that the project's containers are those of
	// echo, worker and mailer (db is the cluster's) in state want; echo's
	// only while it runs: once its intercept is left, its container goes
	// with the pod's volumes it mounted (up makes it anew).
	wantContainers := func(when string, want string) map[string]ctr {
		t.Helper()
		got := containers()
		services := []string{"echo", "worker", "mailer"}
		if want != "running" {
			services = services[1:]
			if c, ok := got[project+"-echo-1"]; ok {
				t.Errorf("%s: container %s-echo-1 is %q, want it removed with the pod's volumes it mounted", when, project, c.state)
			}
		}
		for _, s := range services {
			if c, ok := got[project+"-"+s+"-1"]; !ok || c.state != want {
				t.Errorf("%s: container %s-%s-1 is %q, want %s (containers: %v)", when, project, s, c.state, want, got)
			}
		}
		if len(got) != len(services) {
			t.Errorf("%s: containers %v, want those of %v", when, got, services)
		}
		return got
	}
	// projectVolumes are tp's volumes of the project (echo's pod volumes).
	projectVolumes := func() string {
		t.Helper()
		out, err := docker("volume", "ls", "-q", "--filter", "label=tp.run/compose-project="+project)
		if err != nil {
			t.Fatalf("docker volume ls: %v\n%s", err, out)
		}
		return strings.TrimSpace(out)
	}
	wantIntercept := func(when, want string) {
		t.Helper()
		st := ps()["echo"]
		if len(st.Intercepts) != 1 || st.Intercepts[0].Name != project+"-echo" || st.Intercepts[0].State != want {
			t.Errorf("%s: tp compose ps: echo's intercepts %+v, want %s-echo %s", when, st.Intercepts, project, want)
		}
	}
	connectionRunning := func(when string) {
		t.Helper()
		if out, err := docker("inspect", "-f", "{{.State.Running}}", daemon); err != nil || strings.TrimSpace(out) != "true" {
			t.Errorf("%s: the connection %s: %v %s, want it running", when, daemon, err, out)
		}
	}

	// A foreground up: it connects, intercepts and streams the logs.
	up := exec.Command(tpBin(t), "compose", "-f", file, "up")
	var upOut syncBuffer
	up.Stdout, up.Stderr = &upOut, &upOut
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	// upDone is closed when up ended, with its result in upErr.
	var upErr error
	upDone := make(chan struct{})
	go func() { upErr = up.Wait(); close(upDone) }()
	t.Cleanup(func() { // before down (cleanups run last first)
		select {
		case <-upDone:
		default:
			_ = up.Process.Kill()
			<-upDone
		}
	})
	deadline := time.Now().Add(3 * time.Minute)
	for !strings.Contains(upOut.String(), "Intercepted ") || containers()[project+"-echo-1"].state != "running" {
		select {
		case <-upDone:
			t.Fatalf("tp compose up ended before its services ran: %v\n%s", upErr, upOut.String())
		case <-time.After(time.Second):
		}
		if time.Now().After(deadline) {
			t.Fatalf("tp compose up did not run the services within 3 minutes:\n%s", upOut.String())
		}
	}
	c.waitCopy(t, ns, "http://echo."+ns+"/foreground", "compose", 60*time.Second)

	// ps: each service's role and the intercept's state.
	states := ps()
	for service, role := range map[string]string{"echo": "intercept", "worker": "connect", "mailer": "local", "db": "use-cluster"} {
		if got := states[service].Role; got != role {
			t.Errorf("tp compose ps: service %s has role %q, want %s (%+v)", service, got, role, states)
		}
	}
	if db := states["db"]; db.ClusterService != "echo" || len(db.Containers) != 0 {
		t.Errorf("tp compose ps: db %+v, want the cluster's service echo and no container", db)
	}
	for _, s := range []string{"echo", "worker", "mailer"} {
		if cs := states[s].Containers; len(cs) != 1 || cs[0].State != "running" {
			t.Errorf("tp compose ps: %s's containers %+v, want one running", s, cs)
		}
	}
	wantIntercept("during the foreground up", "active")
	if projectVolumes() == "" {
		t.Errorf("during the foreground up: no tp volume of the project (echo mounts the pod's volumes by default)")
	}
	table, err := composeTP("ps")
	if err != nil {
		t.Fatalf("tp compose ps: %v\n%s", err, table)
	}
	for _, l := range lines(table) {
		f := strings.Fields(l)
		switch f[0] {
		case "echo":
			if !strings.Contains(l, " intercept ") || !strings.Contains(l, project+"-echo (echo 8080:http) active") {
				t.Errorf("tp compose ps: echo's line %q lacks its role intercept and its active intercept", l)
			}
		case "db":
			if !strings.Contains(l, "use-cluster echo") {
				t.Errorf("tp compose ps: db's line %q lacks its role use-cluster echo", l)
			}
		}
	}
	if !strings.Contains(table, "SERVICE") || len(lines(table)) != 5 {
		t.Errorf("tp compose ps: want a header and one line for each of the 4 services:\n%s", table)
	}

	// tp quit refuses while the project's services run on the connection.
	out, err := tp(t, "quit", "--name", conn)
	if err == nil {
		t.Errorf("tp quit of a connection with running compose services succeeded:\n%s", out)
	}
	for _, want := range []string{"compose project " + project, "tp compose -p " + project + " -f " + file + " down", "tp quit --force"} {
		if !strings.Contains(out, want) {
			t.Errorf("tp quit's refusal lacks %q:\n%s", want, out)
		}
	}
	connectionRunning("after tp quit refused")

	// Ctrl-C: the services stop, the intercept ends, the rest stays.
	if err := up.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case <-upDone:
		t.Logf("tp compose up after Ctrl-C: %v\n%s", upErr, upOut.String())
	case <-time.After(90 * time.Second):
		t.Fatalf("tp compose up did not end within 90 s of Ctrl-C:\n%s", upOut.String())
	}
	if !strings.Contains(upOut.String(), "Left intercept "+project+"-echo") {
		t.Errorf("tp compose up did not say that it left the intercept after Ctrl-C:\n%s", upOut.String())
	}
	c.waitCopy(t, ns, "http://echo."+ns+"/after-ctrl-c", "cluster", 30*time.Second)
	stopped := wantContainers("after Ctrl-C", "exited")
	connectionRunning("after Ctrl-C")
	wantIntercept("after Ctrl-C", "not intercepting")
	if vols := projectVolumes(); vols != "" {
		t.Errorf("after Ctrl-C: tp volumes of the project left: %s", vols)
	}

	// up -d converges: the services' containers start again; echo's, whose
	// environment has the new intercept's ID, may be recreated.
	if out, err := composeTP("up", "-d"); err != nil {
		t.Fatalf("tp compose up -d after Ctrl-C: %v\n%s", err, out)
	}
	c.waitCopy(t, ns, "http://echo."+ns+"/up-again", "compose", 60*time.Second)
	running := wantContainers("after up -d", "running")
	for _, s := range []string{"worker", "mailer"} {
		name := project + "-" + s + "-1"
		if running[name].id != stopped[name].id {
			t.Errorf("up -d recreated the unchanged container %s (%s, was %s)", name, running[name].id, stopped[name].id)
		}
	}
	wantIntercept("after up -d", "active")
	if out, err := composeTP("up", "-d"); err != nil {
		t.Fatalf("tp compose up -d a second time: %v\n%s", err, out)
	}
	if again := wantContainers("after up -d twice", "running"); fmt.Sprint(again) != fmt.Sprint(running) {
		t.Errorf("a second up -d changed the containers: %v, were %v", again, running)
	}
	wantIntercept("after up -d twice", "active")

	// stop: the containers stop and the intercept ends.
	if out, err := composeTP("stop"); err != nil || !strings.Contains(out, "Left intercept "+project+"-echo") {
		t.Fatalf("tp compose stop: %v\n%s", err, out)
	}
	wantIntercept("after stop", "not intercepting")
	c.waitCopy(t, ns, "http://echo."+ns+"/after-stop", "cluster", 30*time.Second)
	wantContainers("after stop", "exited")
	if vols := projectVolumes(); vols != "" {
		t.Errorf("after stop: tp volumes of the project left: %s", vols)
	}
	connectionRunning("after stop")

	// tp quit --force quits a connection that running services use, with a
	// warning that names the project.
	if out, err := composeTP("up", "-d"); err != nil {
		t.Fatalf("tp compose up -d after stop: %v\n%s", err, out)
	}
	wantContainers("after up -d", "running")
	out, err = tp(t, "quit", "--force", "--name", conn)
	if err != nil || !strings.Contains(out, "Disconnected "+daemon) || !strings.Contains(out, "compose project "+project+" lose the connection") {
		t.Errorf("tp quit --force: %v\n%s", err, out)
	}
	if out, err := docker("inspect", daemon); err == nil {
		t.Errorf("the connection is still there after tp quit --force:\n%s", out)
	}
	// down without the connection removes the containers.
	if out, err := composeTP("down"); err != nil {
		t.Errorf("tp compose down after tp quit --force: %v\n%s", err, out)
	}
	if left := containers(); len(left) != 0 {
		t.Errorf("containers left after down: %v", left)
	}
	if vols := projectVolumes(); vols != "" {
		t.Errorf("tp volumes of the project left after down: %s", vols)
	}
}
