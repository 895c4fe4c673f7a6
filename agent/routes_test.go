package agent

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

func TestRoute(t *testing.T) {
	snap := &managerv1.InterceptSnapshot{Intercepts: []*managerv1.InterceptInfo{
		personalIntercept("alice", 8080, map[string]string{"x-dev": "alice"}, ""),
		personalIntercept("alice-api", 8080, map[string]string{"X-Dev": "alice"}, "/api"),
		personalIntercept("bob-team", 8080, map[string]string{"x-dev": "bob", "x-team": "b"}, ""),
		personalIntercept("bob", 8080, map[string]string{"x-dev": "bob"}, ""),
		personalIntercept("by-host", 8080, map[string]string{"Host": "preview.example"}, ""),
		personalIntercept("carol", 8080, map[string]string{"x-dev": " carol "}, ""), // matched as "carol"
		globalIntercept("global", 9090),
		globalIntercept("elsewhere", 7070), // a port the agent does not serve
	}}
	r, ignored := newRoutes(snap, map[int32]bool{8080: true, 9090: true, 6060: true})
	if len(ignored) != 1 || ignored[0].GetId() != "elsewhere" {
		t.Errorf("ignored %v, want [elsewhere]", ignored)
	}
	cases := []struct {
		name   string
		port   int32
		target string
		header map[string][]string
		want   string // intercept id; "" for the app
	}{
		{"no header", 8080, "/", nil, ""},
		{"header", 8080, "/", map[string][]string{"X-Dev": {"alice"}}, "alice"},
		{"value is exact", 8080, "/", map[string][]string{"X-Dev": {"Alice"}}, ""},
		{"value is not folded", 8080, "/", map[string][]string{"X-Dev": {"alice x"}}, ""},
		{"whitespace around a value does not count", 8080, "/", map[string][]string{"X-Dev": {" alice\t"}}, "alice"},
		{"intercept value with whitespace", 8080, "/", map[string][]string{"X-Dev": {"carol"}}, "carol"},
		{"any of several values", 8080, "/", map[string][]string{"X-Dev": {"carol", "alice"}}, "alice"},
		{"longer path prefix wins", 8080, "/api/v1", map[string][]string{"X-Dev": {"alice"}}, "alice-api"},
		{"prefix is a string prefix", 8080, "/apiary", map[string][]string{"X-Dev": {"alice"}}, "alice-api"},
		{"more headers win", 8080, "/", map[string][]string{"X-Dev": {"bob"}, "X-Team": {"b"}}, "bob-team"},
		{"missing one header", 8080, "/", map[string][]string{"X-Team": {"b"}}, ""},
		{"fewer headers", 8080, "/", map[string][]string{"X-Dev": {"bob"}, "X-Team": {"c"}}, "bob"},
		{"host", 8080, "/", map[string][]string{"Host": {"preview.example"}}, "by-host"},
		{"global takes all", 9090, "/", nil, "global"},
		{"no intercept", 6060, "/", map[string][]string{"X-Dev": {"alice"}}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, "http://echo"+tc.target, nil)
			for k, vs := range tc.header {
				if k == "Host" {
					req.Host = vs[0]
					continue
				}
				for _, v := range vs {
					req.Header.Add(k, v)
				}
			}
			got := ""
			if ic := r.port(tc.port).route(req); ic != nil {
				got = ic.id
			}
			if got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
	if pr := r.port(9090); pr.global == nil || len(pr.personal) != 0 {
		t.Errorf("port 9090: %+v, want the global intercept only", pr)
	}
	if len(r.byHost) != 7 {
		t.Errorf("%d intercepts by host, want 7", len(r.byHost))
	}
}

// TestOwnerGraceRunsFromDeparture: the owner grace starts when the owner
// went away and is kept across snapshots while it stays away.
func TestOwnerGraceRunsFromDeparture(t *testing.T) {
	away := &managerv1.InterceptSnapshot{Intercepts: []*managerv1.InterceptInfo{globalIntercept("ic-1", 8080)}}
	back := &managerv1.InterceptSnapshot{Intercepts: []*managerv1.InterceptInfo{globalIntercept("ic-1", 8080)}}
	away.Intercepts[0].OwnerConnected = false
	back.Intercepts[0].OwnerConnected = true
	served := map[int32]bool{8080: true}
	t0 := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	first, _ := newRoutes(away, served)
	carryAwaySince(noRoutes, first, t0)
	again, _ := newRoutes(away, served)
	carryAwaySince(first, again, t0.Add(time.Minute))
	if got := again.port(8080).global.awaySince; !got.Equal(t0) {
		t.Errorf("still away: awaySince %v, want %v (kept from the departure)", got, t0)
	}
	connected, _ := newRoutes(back, served)
	carryAwaySince(again, connected, t0.Add(2*time.Minute))
	if got := connected.port(8080).global.awaySince; !got.IsZero() {
		t.Errorf("back: awaySince %v, want zero", got)
	}
	gone, _ := newRoutes(away, served)
	carryAwaySince(connected, gone, t0.Add(3*time.Minute))
	if got := gone.port(8080).global.awaySince; !got.Equal(t0.Add(3 * time.Minute)) {
		t.Errorf("away again: awaySince %v, want the new departure", got)
	}
}

// TestRoutesIngest: an ingest (env and mounts, no traffic) never takes a
// connection or a request, even on a port it happens to name; and it is
// not a port the agent "does not serve" either.
func TestRoutesIngest(t *testing.T) {
	ingest := globalIntercept("ingest", 8080)
	ingest.Spec.Ingest = true
	noPort := globalIntercept("ingest-no-port", 0)
	noPort.Spec.Ingest = true
	r, ignored := newRoutes(&managerv1.InterceptSnapshot{Intercepts: []*managerv1.InterceptInfo{ingest, noPort}}, map[int32]bool{8080: true})
	if len(ignored) != 0 {
		t.Errorf("ignored %v, want none", ignored)
	}
	if pr := r.port(8080); pr != nil {
		t.Errorf("port 8080 routes %+v, want nothing (to the app)", pr)
	}
	if len(r.byHost) != 0 {
		t.Errorf("byHost has %d intercepts, want 0", len(r.byHost))
	}
	// Next to a personal intercept, requests without its header go to the app.
	personal := personalIntercept("alice", 8080, map[string]string{"x-dev": "alice"}, "")
	r, _ = newRoutes(&managerv1.InterceptSnapshot{Intercepts: []*managerv1.InterceptInfo{ingest, personal}}, map[int32]bool{8080: true})
	req := httptest.NewRequest(http.MethodGet, "http://echo/", nil)
	if ic := r.port(8080).route(req); ic != nil {
		t.Errorf("request without header goes to %s, want the app", ic.id)
	}
}
