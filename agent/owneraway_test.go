package agent

import (
	"testing"
	"time"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// away marks info's owner as not connected (its daemon reconnects).
func away(info *managerv1.InterceptInfo) *managerv1.InterceptInfo {
	info.OwnerConnected = false
	return info
}

// TestOwnerAwayServesFromAppAfterGrace: while an intercept's owner is away,
// its connections and requests are held for the grace, then the app serves
// them; nothing is reset.
func TestOwnerAwayServesFromAppAfterGrace(t *testing.T) {
	for _, tt := range []struct {
		name    string
		info    func(containerPort int32) *managerv1.InterceptInfo
		headers map[string]string
	}{
		{"global", func(cp int32) *managerv1.InterceptInfo { return globalIntercept("ic-1", cp) }, nil},
		{"personal", func(cp int32) *managerv1.InterceptInfo {
			return personalIntercept("ic-1", cp, map[string]string{"x-dev": "alice"}, "")
		}, map[string]string{"X-Dev": "alice"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			e.agent.ownerGrace = 200 * time.Millisecond
			e.mgr.setIntercepts(away(tt.info(e.agent.containerPt)))
			e.agent.waitRoutes(t, "ic-1")

			if got := servedBy(dialHTTP(t, e.agent.addr).mustGet("/", tt.headers)); got != "app" {
				t.Errorf("owner away: served by %q, want app", got)
			}
			// Back: the client serves again.
			e.mgr.setIntercepts(tt.info(e.agent.containerPt))
			waitFor(t, "the owner to be back in the routes", func() bool {
				ic := e.agent.routes.Load().port(e.agent.containerPt)
				return ic != nil && (ic.global != nil && ic.global.ownerConnected || len(ic.personal) == 1 && ic.personal[0].ownerConnected)
			})
			if got := servedBy(dialHTTP(t, e.agent.addr).mustGet("/", tt.headers)); got != "dev" {
				t.Errorf("owner back: served by %q, want dev", got)
			}
		})
	}
}

// TestOwnerBackWithinGrace: a connection that arrives while the owner is
// away goes to the owner when it comes back within the grace.
func TestOwnerBackWithinGrace(t *testing.T) {
	e := newEnv(t)
	e.agent.ownerGrace = time.Minute // the test's deadline comes first
	e.mgr.setIntercepts(away(globalIntercept("ic-1", e.agent.containerPt)))
	e.agent.waitRoutes(t, "ic-1")

	served := make(chan string, 1)
	c := dialHTTP(t, e.agent.addr)
	go func() {
		_, body, err := c.get("/", nil) // not mustGet: no Fatal outside the test's goroutine
		if err != nil {
			body = err.Error()
		}
		served <- servedBy(body)
	}()
	select {
	case got := <-served:
		t.Fatalf("served by %q while the owner is away, want it held", got)
	case <-time.After(100 * time.Millisecond):
	}
	e.mgr.setIntercepts(globalIntercept("ic-1", e.agent.containerPt))
	select {
	case got := <-served:
		if got != "dev" {
			t.Errorf("served by %q after the owner came back, want dev", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the held connection was not served within 10 s of the owner's return")
	}
}
