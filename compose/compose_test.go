package compose

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/tp-run/tp/intercept"
)

// project writes files (name -> content) into a directory and loads it
// with discovery from there.
func writeProject(t *testing.T, files map[string]string) (LoadOptions, string) {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"COMPOSE_FILE", "COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES", "COMPOSE_PATH_SEPARATOR"} {
		t.Setenv(k, "") // restored after the test
		os.Unsetenv(k)
	}
	return LoadOptions{ProjectDirectory: dir}, dir
}

// transformYAML loads compose.yaml with content yaml, parses its plan
// (both must succeed) and returns what Transform makes of it for the daemon
// container tp-dev.
func transformYAML(t *testing.T, yaml string) (*Transformed, error) {
	t.Helper()
	o, _ := writeProject(t, map[string]string{"compose.yaml": yaml})
	p, err := Load(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := ParsePlan(p)
	if err != nil {
		t.Fatal(err)
	}
	return Transform(p, plan, "tp-dev")
}

func TestParsePlanRefuses(t *testing.T) {
	tests := []struct {
		name, yaml, wantKey, wantMsg string
	}{
		{"unknown key", `services: {api: {image: a, x-tp: {intercept: {ports: ["8080"], portz: 1}}}}`, "x-tp.intercept", "unknown key portz"},
		{"two roles", `services: {api: {image: a, x-tp: {connect: true, use-cluster: api}}}`, "x-tp", "exactly one role"},
		{"unknown role", `services: {api: {image: a, x-tp: {replace: true}}}`, "x-tp", "unknown key replace"},
		{"network_mode", `services: {api: {image: a, network_mode: host, x-tp: {connect: true}}}`, "x-tp.connect", "network_mode"},
		{"networks", "services: {api: {image: a, networks: [back], x-tp: {connect: true}}}\nnetworks: {back: {}}", "x-tp.connect", "networks"},
		{"no ports", `services: {api: {image: a, x-tp: {intercept: {workload: api}}}}`, "x-tp.intercept.ports", "at least one"},
		{"use-cluster without name", `services: {db: {image: a, x-tp: {use-cluster: ""}}}`, "x-tp.use-cluster", "name of the cluster's service"},
		{"bad mounts", `services: {api: {image: a, x-tp: {intercept: {ports: ["1"], mounts: [rel/path]}}}}`, "x-tp.intercept.mounts", "not absolute"},
		{"same port", `services: {a: {image: a, ports: ["80:80"], x-tp: {connect: true}}, b: {image: b, expose: ["80"], x-tp: {connect: true}}}`, "ports", "also published or exposed by a"},
		{"top-level unknown", "x-tp: {connection: {nam: dev}}\nservices: {a: {image: a}}", "x-tp.connection", "unknown key nam"},
		{"top-level unknown key", "x-tp: {connexion: {name: dev}}\nservices: {a: {image: a}}", "x-tp", "unknown key connexion"},
		{"top-level not a mapping", "x-tp: dev\nservices: {a: {image: a}}", "x-tp", "want a mapping"},
		{"connection not a mapping", "x-tp: {connection: dev}\nservices: {a: {image: a}}", "x-tp.connection", "want a mapping"},
		{"connection name not a string", "x-tp: {connection: {name: [a]}}\nservices: {a: {image: a}}", "x-tp.connection.name", "want a string, got a list"},
		{"service x-tp not a mapping", `services: {api: {image: a, x-tp: intercept}}`, "x-tp", "want a mapping"},
		{"no role", `services: {api: {image: a, x-tp: {}}}`, "x-tp", "exactly one role"},
		{"three roles", `services: {api: {image: a, x-tp: {connect: true, ingest: {}, use-cluster: api}}}`, "x-tp", "got connect, ingest, use-cluster"},
		{"connect false", `services: {api: {image: a, x-tp: {connect: false}}}`, "x-tp.connect", "want true"},
		{"connect not a bool", `services: {api: {image: a, x-tp: {connect: "yes"}}}`, "x-tp.connect", "want true"},
		{"intercept not a mapping", `services: {api: {image: a, x-tp: {intercept: true}}}`, "x-tp.intercept", "want a mapping"},
		{"ports not a list", `services: {api: {image: a, x-tp: {intercept: {ports: {a: 1}}}}}`, "x-tp.intercept.ports", "want a list of strings, got a mapping"},
		{"bad local port", `services: {api: {image: a, x-tp: {intercept: {ports: ["http:8080"]}}}}`, "x-tp.intercept.ports", `"http:8080": want LOCAL[:SVCPORT]`},
		{"local port zero", `services: {api: {image: a, x-tp: {intercept: {ports: ["0:http"]}}}}`, "x-tp.intercept.ports", "LOCAL a port number"},
		{"local port twice", `services: {api: {image: a, x-tp: {intercept: {ports: ["8080:http", "8080:grpc"]}}}}`, "x-tp.intercept.ports", "local port 8080 is given twice"},
		{"headers not a map", `services: {api: {image: a, x-tp: {intercept: {ports: ["1"], headers: [x-dev]}}}}`, "x-tp.intercept.headers", "want a mapping of strings, got a list"},
		{"path-prefix relative", `services: {api: {image: a, x-tp: {intercept: {ports: ["1"], path-prefix: api}}}}`, "x-tp.intercept.path-prefix", "must start with /"},
		{"env not a bool", `services: {api: {image: a, x-tp: {intercept: {ports: ["1"], env: "all"}}}}`, "x-tp.intercept.env", "want true or false, got a string"},
		{"mounts not a bool or list", `services: {api: {image: a, x-tp: {intercept: {ports: ["1"], mounts: "yes"}}}}`, "x-tp.intercept.mounts", "want true, false, a list of paths or {paths: [...], read-only: true}"},
		{"ingest unknown key", `services: {t: {image: a, x-tp: {ingest: {workload: api, ports: ["1"]}}}}`, "x-tp.ingest", "unknown key ports"},
		{"ingest with network_mode", `services: {t: {image: a, network_mode: none, x-tp: {ingest: {workload: api}}}}`, "x-tp.ingest", "network_mode"},
		{"intercept with networks", "services: {api: {image: a, networks: [back], x-tp: {intercept: {ports: [\"1\"]}}}}\nnetworks: {back: {}}", "x-tp.intercept", "remove networks"},
		{"use-cluster not a string", `services: {db: {image: a, x-tp: {use-cluster: {name: pg}}}}`, "x-tp.use-cluster", "name of the cluster's service"},
		{"same published port", `services: {a: {image: a, ports: ["80:80"], x-tp: {connect: true}}, b: {image: b, ports: ["8080:80"], x-tp: {intercept: {ports: ["1"]}}}}`, "ports", "port 80/tcp is also published or exposed by a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, dir := writeProject(t, map[string]string{"compose.yaml": tt.yaml})
			p, err := Load(context.Background(), o)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			_, err = ParsePlan(p)
			var ee *ExtensionError
			if !errors.As(err, &ee) {
				t.Fatalf("ParsePlan: %v, want an ExtensionError", err)
			}
			if ee.Key != tt.wantKey || !strings.Contains(ee.Msg, tt.wantMsg) {
				t.Errorf("got key %q msg %q, want key %q and a message with %q", ee.Key, ee.Msg, tt.wantKey, tt.wantMsg)
			}
			if want := filepath.Join(dir, "compose.yaml"); ee.File != want {
				t.Errorf("file %q, want %q", ee.File, want)
			}
		})
	}
}

func TestParsePlanNamesTheOverrideFile(t *testing.T) {
	o, dir := writeProject(t, map[string]string{
		"compose.yaml":          `services: {api: {image: a}}`,
		"compose.override.yaml": `services: {api: {x-tp: {intercept: {ports: ["8080"], header: {}}}}}`,
	})
	p, err := Load(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ParsePlan(p)
	want := filepath.Join(dir, "compose.override.yaml") + ": service api: x-tp.intercept: unknown key header"
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("ParsePlan: %v, want it to start with %q", err, want)
	}
}

func TestParsePlanRoles(t *testing.T) {
	o, _ := writeProject(t, map[string]string{"compose.yaml": `
x-tp: {connection: {name: dev, namespace: shop}}
services:
  api: {image: a, x-tp: {intercept: {ports: ["8080:http"], headers: {x-dev: alice}, mounts: [/etc/config]}}}
  worker: {image: w, x-tp: {connect: true}}
  tools: {image: t, x-tp: {ingest: {workload: api}}}
  db: {image: postgres, x-tp: {use-cluster: postgres}}
  web: {image: nginx}
`})
	p, err := Load(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := ParsePlan(p)
	if err != nil {
		t.Fatal(err)
	}
	if plan.Connection != (Connection{Name: "dev", Namespace: "shop"}) {
		t.Errorf("connection %+v", plan.Connection)
	}
	api := plan.Roles["api"]
	if api.Kind != RoleIntercept || api.Intercept.Workload != "api" || api.Intercept.Headers["x-dev"] != "alice" {
		t.Errorf("api: %+v %+v", api, api.Intercept)
	}
	if !api.Intercept.Mounts.Wanted("/etc/config") || api.Intercept.Mounts.Wanted("/var/run/secrets") {
		t.Errorf("api mounts: %+v", api.Intercept.Mounts)
	}
	if !plan.Roles["tools"].Ingest.Mounts.Wanted("/any") {
		t.Errorf("ingest mounts default to all: %+v", plan.Roles["tools"].Ingest.Mounts)
	}
	if plan.Roles["worker"].Kind != RoleConnect || plan.Roles["db"].ClusterService != "postgres" {
		t.Errorf("roles %+v", plan.Roles)
	}
	if _, ok := plan.Roles["web"]; ok {
		t.Errorf("web has no x-tp, got role %+v", plan.Roles["web"])
	}
}

func TestTransform(t *testing.T) {
	o, _ := writeProject(t, map[string]string{"compose.yaml": `
services:
  api: {image: a, ports: ["8080:8080"], expose: ["9000"], depends_on: [db, cache], x-tp: {intercept: {ports: ["8080"]}}}
  worker: {image: w, depends_on: {db: {condition: service_healthy}}}
  cache: {image: redis}
  db: {image: postgres, x-tp: {use-cluster: postgres}}
`})
	p, err := Load(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := ParsePlan(p)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := Transform(p, plan, "tp-dev")
	if err != nil {
		t.Fatal(err)
	}
	api := tr.Project.Services["api"]
	if api.NetworkMode != "container:tp-dev" || len(api.Networks) != 0 || len(api.Ports) != 0 || len(api.Expose) != 0 {
		t.Errorf("api: network_mode %q networks %v ports %v expose %v", api.NetworkMode, api.Networks, api.Ports, api.Expose)
	}
	if _, ok := api.DependsOn["db"]; ok || api.DependsOn["cache"].Condition == "" {
		t.Errorf("api depends_on %v: want cache only", api.DependsOn)
	}
	if len(tr.Publish) != 1 || tr.Publish[0].Target != 8080 || tr.Publish[0].Published != "8080" {
		t.Errorf("publish %+v", tr.Publish)
	}
	if w := tr.Project.Services["worker"]; w.NetworkMode != "container:tp-dev" || w.Labels[LabelRole] != "connect" {
		t.Errorf("worker depends on the replaced db, so it joins: %q %v", w.NetworkMode, w.Labels)
	}
	if c := tr.Project.Services["cache"]; c.NetworkMode != "" || len(c.Networks) == 0 {
		t.Errorf("cache stays local: %q %v", c.NetworkMode, c.Networks)
	}
	if _, ok := tr.Project.Services["db"]; ok || tr.Replaced["db"] != "postgres" {
		t.Errorf("db replaced: services %v, replaced %v", tr.Project.ServiceNames(), tr.Replaced)
	}
	// The input project is unchanged.
	if p.Services["api"].NetworkMode != "" || len(p.Services["api"].Ports) != 1 || len(p.Services["api"].DependsOn) != 2 || p.Services["worker"].Labels[LabelRole] != "" {
		t.Errorf("Transform changed its input: %+v", p.Services["api"])
	}
}

// TestTransformAliases: a use-cluster service named unlike its cluster
// service becomes a DNS alias (with a note); one named like it needs none.
func TestTransformAliases(t *testing.T) {
	o, _ := writeProject(t, map[string]string{"compose.yaml": `
services:
  client: {image: c, depends_on: [backend], x-tp: {connect: true}}
  backend: {image: b, x-tp: {use-cluster: echo}}
  postgres: {image: postgres, x-tp: {use-cluster: postgres}}
`})
	p, err := Load(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := ParsePlan(p)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := Transform(p, plan, "tp-dev")
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.Aliases) != 1 || tr.Aliases["backend"] != "echo" {
		t.Errorf("aliases: got %v, want backend -> echo only", tr.Aliases)
	}
	want := "the name backend resolves to the cluster's service echo"
	if !slices.ContainsFunc(tr.Notes, func(n string) bool { return strings.HasPrefix(n, want) }) {
		t.Errorf("notes %q: want one starting %q", tr.Notes, want)
	}
	var out strings.Builder
	if err := Config(context.Background(), o, ConfigOptions{}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "# tp: "+want) {
		t.Errorf("config does not note the alias:\n%s", out.String())
	}
}

// TestTransformAliasNames: an alias's name and target must be DNS labels.
func TestTransformAliasNames(t *testing.T) {
	for _, tc := range []struct{ name, yaml, msg string }{
		{"service name", `services: {my_db: {image: p, x-tp: {use-cluster: postgres}}}`, "is not a DNS label"},
		{"target", `services: {db: {image: p, x-tp: {use-cluster: Postgres_1}}}`, "is not a DNS label"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := transformYAML(t, tc.yaml)
			var ee *ExtensionError
			if !errors.As(err, &ee) || ee.Key != "x-tp.use-cluster" || !strings.Contains(ee.Msg, tc.msg) {
				t.Errorf("Transform: got %v, want an ExtensionError on x-tp.use-cluster saying %q", err, tc.msg)
			}
		})
	}
}

func TestConfigWithoutExtensionIsComposes(t *testing.T) {
	o, _ := writeProject(t, map[string]string{
		"compose.yaml":          "services:\n  web: {image: \"nginx:${TAG:-1}\", ports: [\"80:80\"]}\n",
		"compose.override.yaml": "services:\n  web: {environment: {A: \"1\"}}\n",
		".env":                  "TAG=2\n",
	})
	var out strings.Builder
	if err := Config(context.Background(), o, ConfigOptions{}, &out); err != nil {
		t.Fatal(err)
	}
	want, err := dockerComposeConfig(t, "--project-directory", o.ProjectDirectory, "config")
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != want {
		t.Errorf("config:\n%s\nwant docker compose's:\n%s", out.String(), want)
	}
	for _, s := range []string{"image: nginx:2", "A: \"1\""} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("config lacks %q (interpolation from .env, override file):\n%s", s, out.String())
		}
	}
}

// TestRoleIntercepts: an ingest is one intercept without traffic, named by
// the project and service; an intercept is one per port.
func TestRoleIntercepts(t *testing.T) {
	o, _ := writeProject(t, map[string]string{"compose.yaml": `
x-tp: {connection: {name: dev, namespace: shop}}
services:
  api: {image: a, x-tp: {intercept: {ports: ["8080:http", "9090:grpc"]}}}
  tools: {image: t, x-tp: {ingest: {workload: api, container: app, env: false}}}
  worker: {image: w, x-tp: {connect: true}}
`})
	tp, err := Load(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := ParsePlan(tp)
	if err != nil {
		t.Fatal(err)
	}
	p := &project{Transformed: &Transformed{Project: tp}, plan: plan, connection: "dev"}
	tools, err := p.roleIntercepts("tools")
	if err != nil {
		t.Fatal(err)
	}
	if len(tools) != 1 {
		t.Fatalf("tools: got %d intercepts, want 1", len(tools))
	}
	want := intercept.Options{Connection: "dev", Workload: "api", Name: tp.Name + "-tools", Namespace: "shop", Container: "app", Ingest: true}
	if got := tools[0].opts; !reflect.DeepEqual(got, want) {
		t.Errorf("tools: got %+v, want %+v", got, want)
	}
	if e := tools[0].env; e == nil || *e {
		t.Errorf("tools env: got %v, want false", e)
	}
	if !tools[0].mounts.Wanted("/etc/config") {
		t.Errorf("tools mounts: got %+v, want all", tools[0].mounts)
	}
	api, err := p.roleIntercepts("api")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, ri := range api {
		if ri.opts.Ingest || ri.opts.LocalPort == 0 {
			t.Errorf("api intercept %+v: want traffic to a local port", ri.opts)
		}
		names = append(names, ri.opts.Name)
	}
	if want := []string{tp.Name + "-api-8080", tp.Name + "-api-9090"}; !reflect.DeepEqual(names, want) {
		t.Errorf("api intercepts: got %v, want %v", names, want)
	}
	if worker, err := p.roleIntercepts("worker"); err != nil || len(worker) != 0 {
		t.Errorf("worker: got %v, %v, want none", worker, err)
	}
}
