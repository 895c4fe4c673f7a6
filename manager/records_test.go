package manager

import (
	"bytes"
	"context"
	"reflect"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tp-run/tp/internal/sessionid"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/tunnel"
)

// records lists the session records in the manager's namespace by name.
func (h *harness) records() map[string][]byte {
	h.t.Helper()
	l, err := h.kube.CoreV1().Secrets("tp").List(h.ctx(), metav1.ListOptions{LabelSelector: recordLabel + "=" + recordComponent})
	if err != nil {
		h.t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, s := range l.Items {
		out[s.Name] = s.Data[recordKey]
	}
	return out
}

// snapshotNames receives the next snapshot and returns its intercepts' names.
func snapshotNames(t testing.TB, watch interface {
	Recv() (*managerv1.InterceptSnapshot, error)
}) []string {
	t.Helper()
	snap, err := watch.Recv()
	if err != nil {
		t.Fatalf("WatchIntercepts: %v", err)
	}
	var got []string
	for _, ic := range snap.GetIntercepts() {
		got = append(got, ic.GetSpec().GetName())
	}
	return got
}

func TestRestartedManagerRestoresSessionsAndIntercepts(t *testing.T) {
	h := newHarness(t, echoObjects()...)
	h.arriveAgent(echoRef, "echo-abc", nil, 8080)
	alice := h.arriveClient("tp", "laptop", "alice")
	bob := h.arriveClient("dev", "desktop", "bob")
	h.intercept(alice, "a", map[string]string{"x-user": "alice"})
	h.intercept(bob, "b", map[string]string{"x-user": "bob"})
	if _, err := h.mc.Depart(h.ctx(), &managerv1.SessionRef{SessionId: bob}); err != nil {
		t.Fatal(err)
	}

	recs := h.records()
	if got, want := len(recs), 1; got != want {
		t.Fatalf("%d session records %v, want %d (alice's; bob departed)", got, recs, want)
	}
	data, ok := recs[recordPrefix+sessionid.Public(alice)]
	if !ok {
		t.Fatalf("records %v: none named after alice's public id", recs)
	}
	if bytes.Contains(data, []byte(alice)) {
		t.Errorf("alice's record holds her secret session id: %s", data)
	}
	if !bytes.Contains(data, []byte(sessionid.Verifier(alice))) {
		t.Errorf("alice's record holds no verifier of her secret: %s", data)
	}

	// The manager's next pod: same cluster, nothing in memory.
	h2 := newHarnessWith(t, h.kube)
	if err := h2.m.restoreSessions(h2.ctx()); err != nil {
		t.Fatalf("restoreSessions: %v", err)
	}
	sessions, err := h2.mc.ListSessions(h2.ctx(), &managerv1.ListSessionsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got := sessions.GetSessions(); len(got) != 1 || got[0].GetSessionId() != sessionid.Public(alice) || got[0].GetClient().GetHost() != "laptop" {
		t.Errorf("sessions after the restart: got %v, want alice's on laptop", got)
	}

	// The agent arrives again and routes alice's intercept without her doing anything.
	agent := h2.arriveAgent(echoRef, "echo-abc", nil, 8080)
	ctx, cancel := context.WithCancel(h2.ctx())
	defer cancel()
	watch, err := h2.agentClient(agent).WatchIntercepts(ctx, &managerv1.SessionRef{SessionId: agent})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := snapshotNames(t, watch), []string{"a"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("snapshot after the restart: got %v, want %v", got, want)
	}
	resp, err := h2.mc.ListWorkloads(h2.ctx(), &managerv1.ListWorkloadsRequest{Namespace: "shop"})
	if err != nil {
		t.Fatal(err)
	}
	ics := resp.GetWorkloads()[0].GetIntercepts()
	if len(ics) != 1 || ics[0].GetOwner().GetUser() != "alice" || ics[0].GetState() != managerv1.InterceptState_INTERCEPT_STATE_ACTIVE {
		t.Errorf("intercepts after the restart: got %v, want alice's, ACTIVE", ics)
	}
	if ics[0].GetOwnerConnected() {
		t.Errorf("intercept after the restart: owner connected before alice resumed")
	}

	// Only the holder of the secret resumes: not bob, not the public id.
	for _, wrong := range []string{bob, sessionid.Public(alice), sessionid.Verifier(alice), alice[:len(alice)-1] + "0"} {
		_, err := h2.mc.ResumeSession(h2.ctx(), &managerv1.ResumeSessionRequest{SessionId: wrong,
			Client: &managerv1.ClientInfo{ProtocolVersion: tunnel.ProtocolVersion}})
		if status.Code(err) != codes.NotFound {
			t.Errorf("ResumeSession(%q): got %v, want NotFound", wrong, err)
		}
	}
	info, err := h2.mc.ResumeSession(h2.ctx(), &managerv1.ResumeSessionRequest{SessionId: alice,
		Client: &managerv1.ClientInfo{Name: "tp", Host: "laptop", ProtocolVersion: tunnel.ProtocolVersion}})
	if err != nil {
		t.Fatalf("ResumeSession of alice: %v", err)
	}
	if info.GetSessionId() != alice {
		t.Errorf("resumed session id: got %q, want alice's", info.GetSessionId())
	}
	if _, err := h2.mc.Remain(h2.ctx(), &managerv1.SessionRef{SessionId: alice}); err != nil {
		t.Errorf("Remain after the resume: %v", err)
	}
	// Her daemon watches dials again: the agent learns that she is back.
	if _, err := h2.mc.WatchDials(ctx, &managerv1.SessionRef{SessionId: alice}); err != nil {
		t.Fatal(err)
	}
	snap, err := watch.Recv()
	if err != nil {
		t.Fatalf("WatchIntercepts: %v", err)
	}
	if ics := snap.GetIntercepts(); len(ics) != 1 || !ics[0].GetOwnerConnected() {
		t.Errorf("snapshot after alice watches dials: got %v, want intercept a with its owner connected", ics)
	}

	// Her departure ends the intercept and the record.
	if _, err := h2.mc.Depart(h2.ctx(), &managerv1.SessionRef{SessionId: alice}); err != nil {
		t.Fatal(err)
	}
	for got := snapshotNames(t, watch); len(got) != 0; got = snapshotNames(t, watch) {
		// intermediate snapshots (her dials stream ending) until the intercept is gone
	}
	if recs := h.records(); len(recs) != 0 {
		t.Errorf("records after alice departed: got %v, want none", recs)
	}
}

func TestRestoredSessionExpiresAfterTTL(t *testing.T) {
	h := newHarness(t, echoObjects()...)
	h.arriveAgent(echoRef, "echo-abc", nil, 8080)
	alice := h.arriveClient("tp", "laptop", "alice")
	h.intercept(alice, "a", nil)

	h2 := newHarnessWith(t, h.kube)
	if err := h2.m.restoreSessions(h2.ctx()); err != nil {
		t.Fatal(err)
	}
	h2.clock.advance(testTTL / 2)
	h2.m.expireSessions(context.Background())
	if _, ok := h2.m.sessions.get(alice); !ok {
		t.Fatalf("restored session gone after half its TTL, want a full TTL from the restart")
	}
	h2.clock.advance(testTTL/2 + 1)
	h2.m.expireSessions(context.Background())
	if _, err := h2.mc.ResumeSession(h2.ctx(), &managerv1.ResumeSessionRequest{SessionId: alice,
		Client: &managerv1.ClientInfo{ProtocolVersion: tunnel.ProtocolVersion}}); status.Code(err) != codes.NotFound {
		t.Errorf("ResumeSession after the TTL: got %v, want NotFound", err)
	}
	if recs := h.records(); len(recs) != 0 {
		t.Errorf("records after the session expired: got %v, want none", recs)
	}
}

// TestResumeAtTheNextPodDuringRollingUpdate: the next manager pod started
// before a session arrived at the previous one (both run during a rolling
// update); the session resumes there with its intercept all the same.
func TestResumeAtTheNextPodDuringRollingUpdate(t *testing.T) {
	h := newHarness(t, echoObjects()...)
	h2 := newHarnessWith(t, h.kube)
	if err := h2.m.restoreSessions(h2.ctx()); err != nil {
		t.Fatal(err)
	}
	h.arriveAgent(echoRef, "echo-abc", nil, 8080)
	alice := h.arriveClient("tp", "laptop", "alice")
	h.intercept(alice, "a", nil)

	if _, err := h2.mc.ResumeSession(h2.ctx(), &managerv1.ResumeSessionRequest{SessionId: alice,
		Client: &managerv1.ClientInfo{ProtocolVersion: tunnel.ProtocolVersion}}); err != nil {
		t.Fatalf("ResumeSession at the next pod: %v", err)
	}
	resp, err := h2.mc.ListWorkloads(h2.ctx(), &managerv1.ListWorkloadsRequest{Namespace: "shop"})
	if err != nil {
		t.Fatal(err)
	}
	if ics := resp.GetWorkloads()[0].GetIntercepts(); len(ics) != 1 || ics[0].GetSpec().GetName() != "a" {
		t.Errorf("intercepts at the next pod after the resume: got %v, want a", ics)
	}
}
