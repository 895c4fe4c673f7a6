package compose

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestTransformClusterWaits(t *testing.T) {
	tr, err := transformYAML(t, `
services:
  api: {image: a, depends_on: {db: {condition: service_healthy}, cache: {condition: service_started}}, x-tp: {intercept: {ports: ["8080"]}}}
  worker: {image: w, depends_on: {db: {condition: service_started, required: false}}}
  cache: {image: redis}
  db: {image: postgres, expose: ["5432", "9187/udp"], ports: ["127.0.0.1:15432:5432", "6000:6432"], x-tp: {use-cluster: postgres}}
  search: {image: es, x-tp: {use-cluster: elastic}}
  tools: {image: t, depends_on: [search]}
`)
	if err != nil {
		t.Fatal(err)
	}
	want := []ClusterWait{
		{Service: "api", Dependency: "db", ClusterService: "postgres", Ports: []uint32{5432, 6432}, Required: true},
		{Service: "tools", Dependency: "search", ClusterService: "elastic", Required: true},
		{Service: "worker", Dependency: "db", ClusterService: "postgres", Ports: []uint32{5432, 6432}, Required: false},
	}
	if len(tr.ClusterWaits) != len(want) {
		t.Fatalf("cluster waits %+v, want %+v", tr.ClusterWaits, want)
	}
	for i, w := range want {
		got := tr.ClusterWaits[i]
		if got.Service != w.Service || got.Dependency != w.Dependency || got.ClusterService != w.ClusterService || !slices.Equal(got.Ports, w.Ports) || got.Required != w.Required {
			t.Errorf("cluster wait %d: got %+v, want %+v", i, got, w)
		}
	}
	if note := "service api starts once db, the cluster's service postgres, answers on postgres:5432 or postgres:6432 (depends_on)"; !slices.Contains(tr.Notes, note) {
		t.Errorf("notes %q lack %q", tr.Notes, note)
	}
	if _, ok := tr.Project.Services["api"].DependsOn["db"]; ok {
		t.Errorf("api still depends on db for compose: %v", tr.Project.Services["api"].DependsOn)
	}
	if _, ok := tr.Project.Services["api"].DependsOn["cache"]; !ok {
		t.Errorf("api lost its depends_on on the local cache: %v", tr.Project.Services["api"].DependsOn)
	}
}

func TestTransformRefusesCompletedOnClusterService(t *testing.T) {
	_, err := transformYAML(t, `
services:
  migrate: {image: m, depends_on: {db: {condition: service_completed_successfully}}}
  db: {image: postgres, x-tp: {use-cluster: postgres}}
`)
	var ee *ExtensionError
	if !errors.As(err, &ee) || ee.Service != "migrate" || ee.Key != "depends_on.db" || !strings.Contains(ee.Msg, "never completes") {
		t.Errorf("Transform: %v, want an ExtensionError for migrate's depends_on.db", err)
	}
}

// fakeDialer answers for the addresses in up once they were dialed after
// answerAfter calls.
type fakeDialer struct {
	mu          sync.Mutex
	dialed      []string
	up          map[string]bool
	answerAfter int
}

func (f *fakeDialer) DialCluster(_ context.Context, addr string, _ time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dialed = append(f.dialed, addr)
	if f.up[addr] && len(f.dialed) > f.answerAfter {
		return nil
	}
	return errors.New("connection refused")
}

func TestWaitCluster(t *testing.T) {
	db := ClusterWait{Service: "api", Dependency: "db", ClusterService: "postgres", Ports: []uint32{5432}, Required: true}
	search := ClusterWait{Service: "tools", Dependency: "search", ClusterService: "elastic", Required: false}
	all := func(string) bool { return true }
	tests := []struct {
		name       string
		waits      []ClusterWait
		started    func(string) bool
		up         map[string]bool
		after      int
		wantErr    string
		wantDialed []string
		wantOut    string
	}{
		{name: "answers at once", waits: []ClusterWait{db}, started: all, up: map[string]bool{"postgres:5432": true},
			wantDialed: []string{"postgres:5432"}, wantOut: "db (the cluster's service postgres) answers on postgres:5432"},
		{name: "answers later", waits: []ClusterWait{db}, started: all, up: map[string]bool{"postgres:5432": true}, after: 2,
			wantDialed: []string{"postgres:5432", "postgres:5432", "postgres:5432"}},
		{name: "once per dependency", waits: []ClusterWait{db, {Service: "worker", Dependency: "db", ClusterService: "postgres", Ports: []uint32{5432}, Required: true}},
			started: all, up: map[string]bool{"postgres:5432": true}, wantDialed: []string{"postgres:5432"}},
		{name: "no ports: the name", waits: []ClusterWait{search}, started: all, up: map[string]bool{"elastic": true},
			wantDialed: []string{"elastic"}, wantOut: "give search expose: [PORT]"},
		{name: "not started", waits: []ClusterWait{db}, started: func(s string) bool { return s != "api" }},
		{name: "required fails", waits: []ClusterWait{db}, started: all,
			wantErr: "service api depends on db, the cluster's service postgres: no answer within"},
		{name: "not required warns", waits: []ClusterWait{search}, started: all, wantOut: "tp: warning: service tools depends on search (required: false)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &fakeDialer{up: tt.up, answerAfter: tt.after}
			var out strings.Builder
			err := waitCluster(context.Background(), d, tt.waits, tt.started, time.Millisecond, 200*time.Millisecond, &out)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("waitCluster: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("waitCluster: got %v, want an error with %q", err, tt.wantErr)
			}
			if tt.wantDialed != nil && !slices.Equal(d.dialed, tt.wantDialed) {
				t.Errorf("dialed %v, want %v", d.dialed, tt.wantDialed)
			}
			if tt.started != nil && !tt.started("api") && len(d.dialed) > 0 {
				t.Errorf("dialed %v for a service up does not start", d.dialed)
			}
			if !strings.Contains(out.String(), tt.wantOut) {
				t.Errorf("progress %q, want it to contain %q", out.String(), tt.wantOut)
			}
		})
	}
}

func TestWaitClusterStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := waitCluster(ctx, &fakeDialer{}, []ClusterWait{{Service: "api", Dependency: "db", ClusterService: "pg", Required: true}},
		func(string) bool { return true }, time.Millisecond, time.Minute, io.Discard)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("waitCluster with a cancelled context: %v, want context.Canceled", err)
	}
}

func TestMountsOptions(t *testing.T) {
	tests := []struct {
		mounts               string // the value of mounts: ("" none)
		wantDisabled, wantRO bool
		wantPaths            []string
		wantErr              string
	}{
		{mounts: ""},
		{mounts: "true"},
		{mounts: "false", wantDisabled: true},
		{mounts: "[/etc/config, /etc/secret]", wantPaths: []string{"/etc/config", "/etc/secret"}},
		{mounts: "{read-only: true}", wantRO: true},
		{mounts: "{read-only: true, paths: [/etc/secret]}", wantRO: true, wantPaths: []string{"/etc/secret"}},
		{mounts: "{paths: [/etc/secret]}", wantPaths: []string{"/etc/secret"}},
		{mounts: "[]", wantErr: "write mounts: false"},
		{mounts: "{readonly: true}", wantErr: "unknown key readonly (known: paths, read-only)"},
		{mounts: "{paths: [etc]}", wantErr: `path "etc" is not absolute`},
		{mounts: "{read-only: maybe}", wantErr: "want {paths: [PATH...], read-only: true|false}"},
		{mounts: "yes", wantErr: "want true, false, a list of paths or {paths: [...], read-only: true}"},
	}
	for _, tt := range tests {
		t.Run(tt.mounts, func(t *testing.T) {
			ic := `{ports: ["1"]}`
			if tt.mounts != "" {
				ic = `{ports: ["1"], mounts: ` + tt.mounts + `}`
			}
			yaml := `services: {api: {image: a, x-tp: {intercept: ` + ic + `}}}`
			o, _ := writeProject(t, map[string]string{"compose.yaml": yaml})
			p, err := Load(context.Background(), o)
			if err != nil {
				t.Fatalf("Load %s: %v", yaml, err)
			}
			plan, err := ParsePlan(p)
			if tt.wantErr != "" {
				var ee *ExtensionError
				if !errors.As(err, &ee) || ee.Key != "x-tp.intercept.mounts" || !strings.Contains(ee.Msg, tt.wantErr) {
					t.Fatalf("ParsePlan: got %v, want an error on x-tp.intercept.mounts with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParsePlan %s: %v", yaml, err)
			}
			got := plan.Roles["api"].Intercept.Mounts.Options()
			if got.Disabled != tt.wantDisabled || got.ReadOnly != tt.wantRO || !slices.Equal(got.Paths, tt.wantPaths) {
				t.Errorf("options %+v, want disabled %v, read-only %v, paths %v", got, tt.wantDisabled, tt.wantRO, tt.wantPaths)
			}
		})
	}
}
