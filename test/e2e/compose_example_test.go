//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/rand"
)

// shopReply is what the shop example's servers answer (examples/shop).
type shopReply struct {
	Service string `json:"service"`
	Copy    string `json:"copy"`
	Host    string `json:"host"`
	Error   string `json:"error"`
	API     *struct {
		Copy  string `json:"copy"`
		Error string `json:"error"`
		DB    *struct {
			Version string `json:"version"`
			User    string `json:"user"`
			Auth    string `json:"auth"`
		} `json:"db"`
	} `json:"api"`
	DB *struct {
		Version string `json:"version"`
		User    string `json:"user"`
		Auth    string `json:"auth"`
	} `json:"db"`
	Mailer *shopReply `json:"mailer"`
}

// shopEnv runs the shop example's compose file (examples/shop) with tp
// compose in its own namespace, connection, project and host port.
type shopEnv struct {
	c                 *cluster
	ns, conn, project string
	port              int
	root              string
}

func (e *shopEnv) compose(t *testing.T, personal bool, args ...string) (string, error) {
	t.Helper()
	files := []string{"-f", filepath.Join(e.root, "examples/shop/compose.yaml")}
	if personal {
		files = append(files, "-f", filepath.Join(e.root, "examples/shop/compose.personal.yaml"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tpBin(t), append(append([]string{"compose", "-p", e.project}, files...), args...)...)
	cmd.Env = append(os.Environ(), "SHOP_NAMESPACE="+e.ns, "SHOP_CONNECTION="+e.conn,
		fmt.Sprintf("SHOP_API_PORT=%d", e.port), "SHOP_DEV=e2e")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// frontend asks the cluster's frontend from a pod (with headers) until the
// API copy that answers it is want and has reached the database.
func (e *shopEnv) waitFrontend(t *testing.T, want string, timeout time.Duration, headers ...string) shopReply {
	t.Helper()
	args := []string{"http"}
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	args = append(args, "http://frontend."+e.ns+"/")
	deadline := time.Now().Add(timeout)
	var last string
	for {
		out, err := e.c.runPod(e.ns, probeImage, args...)
		var r shopReply
		switch {
		case err != nil:
			last = err.Error()
		case json.Unmarshal([]byte(out), &r) != nil:
			last = out
		case r.API != nil && r.API.Copy == want && r.API.DB != nil:
			return r
		default:
			last = out
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cluster's frontend %v: last answer %s; want the %s API with the database within %s", headers, last, want, timeout)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestComposeExample is issue 9's first must-show on the shop example
// (examples/shop): `tp compose up -d` intercepts the cluster's api with the
// local one, which reaches the cluster's PostgreSQL by its compose name db
// with the password of the pod's Secret (a file of the pod's volume, which
// x-tp mounts gives the local API at the pod's path; up starts the API once
// the cluster's db answers on its exposed port, depends_on); the worker
// (connect) reaches the cluster's frontend; the API's published port answers
// on the host; the local mailer (not joined) and the joined API reach each
// other by name through Docker's DNS; `tp compose down` leaves no container,
// volume, intercept or connection behind and the cluster's api answers its
// frontend again. Then the same with a personal intercept (x-dev header):
// only matching requests reach the local API. Last, on a connection made by
// hand that also holds an intercept made by hand (tp intercept), `down`
// leaves that intercept and the connection.
func TestComposeExample(t *testing.T) {
	c := newCluster(t)
	e := &shopEnv{c: c, ns: c.namespace(t, "shop"), conn: "shop-" + rand.String(4),
		project: "shop" + rand.String(4), port: freePort(t), root: repoRoot(t)}
	c.apply(t, e.ns, "examples/shop/k8s/shop.yaml")
	for _, d := range []string{"db", "api", "frontend"} {
		c.waitDeployment(t, e.ns, d, 3*time.Minute)
	}
	t.Cleanup(func() {
		if out, err := e.compose(t, false, "down"); err != nil {
			t.Logf("tp compose down (cleanup): %v\n%s", err, out)
		}
		_, _ = tp(t, "quit", "--name", e.conn)
	})
	before := e.waitFrontend(t, "cluster", 60*time.Second)
	t.Logf("before up, the frontend gets the cluster's API, which reached %s as %s", before.API.DB.Version, before.API.DB.User)

	t.Run("intercept", func(t *testing.T) {
		e.up(t, false)
		r := e.waitFrontend(t, "local", 90*time.Second)
		if !strings.Contains(r.API.DB.Version, "PostgreSQL") || r.API.DB.User != "shop" {
			t.Errorf("the local API's database: got %+v, want the cluster's PostgreSQL as user shop", *r.API.DB)
		}
		if want := "PGPASSWORD_FILE /etc/shop/db/password"; r.API.DB.Auth != want {
			t.Errorf("the local API authenticated with %q, want %q (the pod's Secret mounted by x-tp mounts)", r.API.DB.Auth, want)
		}
		e.checkLocal(t)
		e.down(t)
	})

	t.Run("personal", func(t *testing.T) {
		e.up(t, true)
		r := e.waitFrontend(t, "local", 90*time.Second, "x-dev=e2e")
		if r.API.DB == nil || r.API.DB.User != "shop" {
			t.Errorf("the local API's database: got %+v, want user shop", r.API)
		}
		// Requests without the header, or with another value, stay in the cluster.
		e.waitFrontend(t, "cluster", 10*time.Second)
		e.waitFrontend(t, "cluster", 10*time.Second, "x-dev=someone-else")
		e.checkLocal(t)
		e.down(t, "x-dev=e2e")
	})

	t.Run("shared connection", func(t *testing.T) {
		// The connection is made by hand (publishing the API's port, as
		// up would) and holds a personal intercept of the frontend made by
		// hand: requests without its header still reach the frontend.
		if out, err := tp(t, "connect", "--name", e.conn, "-n", e.ns, "-p", fmt.Sprintf("127.0.0.1:%d:8080", e.port)); err != nil {
			t.Fatalf("tp connect: %v\n%s", err, out)
		}
		if out, err := tp(t, "intercept", "frontend", "--name", e.conn, "-n", e.ns, "--port", "9099:http", "--http-header", "x-by-hand=1"); err != nil {
			t.Fatalf("tp intercept frontend (by hand): %v\n%s", err, out)
		}
		e.up(t, false)
		e.waitFrontend(t, "local", 90*time.Second)
		out, err := e.compose(t, false, "down")
		if err != nil {
			t.Fatalf("tp compose down: %v\n%s", err, out)
		}
		t.Logf("tp compose down:\n%s", out)
		if !strings.Contains(out, "Kept connection tp-"+e.conn+": tp compose up did not start it") {
			t.Errorf("tp compose down did not say that it keeps the connection it did not start:\n%s", out)
		}
		e.waitFrontend(t, "cluster", 60*time.Second)
		if ps, _ := docker("ps", "-q", "--filter", "name=^tp-"+e.conn+"$"); strings.TrimSpace(ps) == "" {
			t.Errorf("tp compose down quit the connection %s, which up did not start", e.conn)
		}
		// The intercept made by hand is still there: tp leave finds it.
		if out, err := tp(t, "leave", "frontend", "--name", e.conn, "-n", e.ns); err != nil {
			t.Errorf("tp leave frontend after tp compose down: %v\n%s; want the intercept made by hand still in place", err, out)
		}
		if out, err := tp(t, "quit", "--name", e.conn); err != nil {
			t.Errorf("tp quit: %v\n%s", err, out)
		}
	})
}

func (e *shopEnv) up(t *testing.T, personal bool) {
	t.Helper()
	out, err := e.compose(t, personal, "up", "-d")
	if err != nil {
		t.Fatalf("tp compose up -d: %v\n%s", err, out)
	}
	t.Logf("tp compose up -d:\n%s", out)
	// up started the API once the cluster's db answered (depends_on).
	if !strings.Contains(out, "db (the cluster's service db) answers on db:5432") {
		t.Errorf("tp compose up -d did not wait for the cluster's db that the API depends on:\n%s", out)
	}
	if vols, _ := docker("volume", "ls", "-q", "--filter", "label=tp.run/compose-project="+e.project); strings.TrimSpace(vols) == "" {
		t.Errorf("no tp volume of project %s after up (the API mounts the pod's Secret)", e.project)
	}
}

// checkLocal checks the local side of the running project: the published
// port, the worker's reach into the cluster and names in both directions.
func (e *shopEnv) checkLocal(t *testing.T) {
	t.Helper()
	// The API's port, published by the daemon container, answers on the host.
	body, err := httpGet(context.Background(), fmt.Sprintf("http://127.0.0.1:%d/orders", e.port))
	var r shopReply
	if err != nil || json.Unmarshal([]byte(body), &r) != nil || r.Copy != "local" || r.DB == nil {
		t.Errorf("GET the API's published port from the host: %v %q, want the local API with its database", err, body)
	}
	// The worker (connect) reaches the cluster's frontend by name.
	deadline := time.Now().Add(60 * time.Second)
	for {
		logs, _ := docker("logs", e.project+"-worker-1")
		if slices.ContainsFunc(lines(logs), func(l string) bool {
			return strings.Contains(l, `"copy":"cluster"`) && strings.Contains(l, `"service":"frontend"`)
		}) {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the worker never reached the cluster's frontend; its log:\n%s", logs)
			break
		}
		time.Sleep(time.Second)
	}
	// A local service (not joined) reaches the joined API by its compose name...
	out, err := docker("exec", e.project+"-mailer-1", "/shop", "get", "http://api:8080/healthz")
	if err != nil || json.Unmarshal([]byte(out), &r) != nil || r.Service != "api" || r.Copy != "local" {
		t.Errorf("the mailer asks http://api:8080/healthz: %v %q, want the local API", err, out)
	}
	// ...and the joined API reaches the local mailer by its name.
	body, err = httpGet(context.Background(), fmt.Sprintf("http://127.0.0.1:%d/mailer", e.port))
	r = shopReply{}
	if err != nil || json.Unmarshal([]byte(body), &r) != nil || r.Mailer == nil || r.Mailer.Service != "mailer" {
		t.Errorf("the API asks http://mailer:8080: %v %q, want the mailer's answer", err, body)
	}
}

// down runs tp compose down and checks that nothing of the project stays and
// that the cluster's API answers its frontend again.
func (e *shopEnv) down(t *testing.T, headers ...string) {
	t.Helper()
	out, err := e.compose(t, false, "down")
	if err != nil {
		t.Fatalf("tp compose down: %v\n%s", err, out)
	}
	t.Logf("tp compose down:\n%s", out)
	// The intercept is gone: the cluster's api answers (the matching
	// requests too, for a personal intercept).
	e.waitFrontend(t, "cluster", 60*time.Second, headers...)
	label := "label=com.docker.compose.project=" + e.project
	if ps, _ := docker("ps", "-a", "-q", "--filter", label); strings.TrimSpace(ps) != "" {
		t.Errorf("containers left after down: %s", ps)
	}
	if vols, _ := docker("volume", "ls", "-q", "--filter", label); strings.TrimSpace(vols) != "" {
		t.Errorf("volumes left after down: %s", vols)
	}
	if vols, _ := docker("volume", "ls", "-q", "--filter", "label=tp.run/compose-project="+e.project); strings.TrimSpace(vols) != "" {
		t.Errorf("tp volumes of the project left after down: %s", vols)
	}
	if vols, _ := tpVolumes(t); len(vols) > 0 && strings.TrimSpace(strings.Join(vols, "")) != "" {
		t.Errorf("tp volumes left after down: %v", vols)
	}
	if nets, _ := docker("network", "ls", "-q", "--filter", label); strings.TrimSpace(nets) != "" {
		t.Errorf("networks left after down: %s", nets)
	}
	if ps, _ := docker("ps", "-a", "-q", "--filter", "name=^tp-"+e.conn+"$"); strings.TrimSpace(ps) != "" {
		t.Errorf("the connection %s that up started is still there after down", e.conn)
	}
}
