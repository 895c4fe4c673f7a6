package manager

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tp-run/tp/agent"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/tunnel"
)

var testMounts = []agent.Mount{{Path: "/etc/secret", ReadOnly: true}, {Path: "/var/data"}}

// arriveAgentWithMounts is arriveAgent for an agent the webhook gave mounts.
func (h *harness) arriveAgentWithMounts(ref workloadRef, pod string, mounts []agent.Mount, ports ...int32) string {
	h.t.Helper()
	a := &managerv1.AgentInfo{
		Workload: ref.Name, Namespace: ref.Namespace, Kind: ref.Kind, PodName: pod, PodIp: "10.1.0.7",
		Container: "app", ProtocolVersion: tunnel.ProtocolVersion,
	}
	for i, p := range ports {
		a.Ports = append(a.Ports, &managerv1.AgentPort{ContainerPort: p, AgentPort: agent.FirstAgentPort + int32(i), Protocol: "TCP"})
	}
	for _, m := range mounts {
		a.Mounts = append(a.Mounts, &managerv1.AgentMount{Path: m.Path, ReadOnly: m.ReadOnly})
	}
	id := podIdentity(ref, pod, ports...)
	id.Mounts = mounts
	cc := h.agentConn(id)
	info, err := managerv1.NewManagerClient(cc).ArriveAsAgent(h.ctx(), a)
	if err != nil {
		h.t.Fatalf("ArriveAsAgent: %v", err)
	}
	h.agents[info.GetSessionId()] = cc
	return info.GetSessionId()
}

// watchMounts opens the agent's WatchMountRequests stream and waits until
// the manager has subscribed it.
func (h *harness) watchMounts(agentID string) managerv1.Manager_WatchMountRequestsClient {
	h.t.Helper()
	w, err := h.agentClient(agentID).WatchMountRequests(h.ctx(), &managerv1.SessionRef{SessionId: agentID})
	if err != nil {
		h.t.Fatal(err)
	}
	s, _ := h.m.sessions.get(agentID)
	eventually(h.t, "WatchMountRequests subscribed", func() bool { return h.m.mountReqs.watched(s.id) })
	return w
}

func roundTrip(t *testing.T, from, to net.Conn, msg string) {
	t.Helper()
	if _, err := from.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	to.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(to, buf); err != nil || string(buf) != msg {
		t.Fatalf("read: got %q, %v, want %q", buf, err, msg)
	}
}

// TestMountPairsOwnerWithAgent: the owner's flow "mount/<intercept>/<random>"
// reaches the agent of the intercept's pod as a MountRequest, and the
// agent's flow of that pairing id is spliced to it, over the real client and
// agent tunnels. The mounts travel in CreateIntercept's answer (for the
// owner) and in no listing.
func TestMountPairsOwnerWithAgent(t *testing.T) {
	h := newHarness(t, echoObjects()...)
	ctx := h.ctx()
	agentID := h.arriveAgentWithMounts(echoRef, "echo-abc", testMounts, 8080)
	alice := h.arriveClient("tp", "laptop", "alice")
	ic := h.intercept(alice, "echo", nil)
	if got := ic.GetMounts(); len(got) != 2 || got[0].GetPath() != "/etc/secret" || !got[0].GetReadOnly() ||
		got[1].GetPath() != "/var/data" || got[1].GetReadOnly() {
		t.Errorf("CreateIntercept mounts: got %v, want %v", got, testMounts)
	}
	ws, err := h.mc.ListWorkloads(ctx, &managerv1.ListWorkloadsRequest{Namespace: "shop"})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range ws.GetWorkloads() {
		for _, i := range w.GetIntercepts() {
			if len(i.GetMounts()) > 0 {
				t.Errorf("ListWorkloads shows the mounts of intercept %s", i.GetId())
			}
		}
	}
	mounts := h.watchMounts(agentID)

	pairingID := "mount/" + ic.GetId() + "/r1"
	type dialed struct {
		c   tunnel.Conn
		err error
	}
	client := make(chan dialed, 1)
	go func() {
		c, err := tunnel.NewDialer(h.cc, alice, nil).DialFlow(ctx, tunnel.Flow{Network: "tcp", PairingID: pairingID})
		client <- dialed{c, err}
	}()
	req, err := mounts.Recv()
	if err != nil {
		t.Fatalf("WatchMountRequests: %v", err)
	}
	if req.GetPairingId() != pairingID || req.GetInterceptId() != ic.GetId() {
		t.Errorf("MountRequest: got %v, want pairing %s, intercept %s", req, pairingID, ic.GetId())
	}
	agentFlow, err := tunnel.NewDialer(h.agents[agentID], agentID, nil).DialFlow(ctx, tunnel.Flow{Network: "tcp", PairingID: req.GetPairingId()})
	if err != nil {
		t.Fatalf("the agent's flow: %v", err)
	}
	defer agentFlow.Close()
	d := <-client
	if d.err != nil {
		t.Fatalf("the owner's flow: %v", d.err)
	}
	defer d.c.Close()
	roundTrip(t, d.c, agentFlow, "SFTP init from the workstation")
	roundTrip(t, agentFlow, d.c, "SFTP version from the pod")
}

// TestMountRefusals: nobody but the owner gets a mount, and a mount the
// agent cannot serve fails at once or within the pair wait.
func TestMountRefusals(t *testing.T) {
	h := newHarness(t, echoObjects()...)
	ctx := h.ctx()
	agentID := h.arriveAgentWithMounts(echoRef, "echo-abc", testMounts, 8080)
	alice := h.arriveClient("tp", "laptop", "alice")
	bob := h.arriveClient("tp", "desktop", "bob")
	ic := h.intercept(alice, "echo", nil)
	_, flow := tcpPair(t)

	// Before the agent watches mount requests: refused at once.
	if err := h.m.pair(ctx, alice, "mount/"+ic.GetId()+"/r0", acceptWith(flow)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("mount while the agent does not watch: got %v, want ECONNREFUSED", err)
	}
	mounts := h.watchMounts(agentID)
	for name, tc := range map[string]struct{ session, pairing string }{
		"another client's mount of alice's intercept": {bob, "mount/" + ic.GetId() + "/r1"},
		"an unknown intercept":                        {alice, "mount/no-such-intercept/r2"},
		"no random part":                              {alice, "mount/" + ic.GetId()},
		"an empty intercept id":                       {alice, "mount//r3"},
		"an agent opening a mount nobody asked for":   {agentID, "mount/" + ic.GetId() + "/r4"},
	} {
		if err := h.m.pair(ctx, tc.session, tc.pairing, acceptWith(flow)); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%s: got %v, want ECONNREFUSED", name, err)
		}
	}
	// The agent was asked nothing.
	got := make(chan *managerv1.MountRequest, 1)
	go func() {
		if req, err := mounts.Recv(); err == nil {
			got <- req
		}
	}()
	select {
	case req := <-got:
		t.Fatalf("the agent got a MountRequest for a refused mount: %v", req)
	case <-time.After(200 * time.Millisecond):
	}
	// The owner's mount that the agent does not answer times out.
	start := time.Now()
	if err := h.m.pair(ctx, alice, "mount/"+ic.GetId()+"/r5", acceptWith(flow)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("unanswered mount: got %v, want a timeout", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("unanswered mount took %s, want about the pair wait", took)
	}
	select {
	case req := <-got:
		if req.GetPairingId() != "mount/"+ic.GetId()+"/r5" {
			t.Errorf("MountRequest: got %v, want pairing r5", req)
		}
	case <-time.After(5 * time.Second):
		t.Error("the agent got no MountRequest for the owner's mount")
	}
	// A late answer of the agent finds nobody.
	if err := h.m.pair(ctx, agentID, "mount/"+ic.GetId()+"/r5", acceptWith(flow)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("late agent flow: got %v, want ECONNREFUSED", err)
	}
}

// TestMountNeedsMounts: an agent whose app has no volume mounts gets no
// mount request.
func TestMountNeedsMounts(t *testing.T) {
	h := newHarness(t, echoObjects()...)
	ctx := h.ctx()
	agentID := h.arriveAgent(echoRef, "echo-abc", nil, 8080)
	h.watchMounts(agentID)
	alice := h.arriveClient("tp", "laptop", "alice")
	ic := h.intercept(alice, "echo", nil)
	if len(ic.GetMounts()) != 0 {
		t.Errorf("mounts of an app without volumes: %v", ic.GetMounts())
	}
	_, flow := tcpPair(t)
	if err := h.m.pair(ctx, alice, "mount/"+ic.GetId()+"/r1", acceptWith(flow)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("mount without volumes: got %v, want ECONNREFUSED", err)
	}
}

// TestWatchMountRequestsAgentPortOnly: like WatchIntercepts, the client port
// refuses it, and an agent may watch its own session only.
func TestWatchMountRequestsAgentPortOnly(t *testing.T) {
	h := newHarness(t, echoObjects()...)
	ctx := h.ctx()
	agentID := h.arriveAgentWithMounts(echoRef, "echo-abc", testMounts, 8080)
	recvCode := func(w managerv1.Manager_WatchMountRequestsClient, err error) codes.Code {
		if err != nil {
			return status.Code(err)
		}
		_, err = w.Recv()
		return status.Code(err)
	}
	if got := recvCode(h.mc.WatchMountRequests(ctx, &managerv1.SessionRef{SessionId: agentID})); got != codes.PermissionDenied {
		t.Errorf("WatchMountRequests on the client port: got %v, want PermissionDenied", got)
	}
	other := managerv1.NewManagerClient(h.agentConn(podIdentity(echoRef, "echo-xyz", 8080)))
	if got := recvCode(other.WatchMountRequests(ctx, &managerv1.SessionRef{SessionId: agentID})); got != codes.PermissionDenied {
		t.Errorf("WatchMountRequests of another pod's session: got %v, want PermissionDenied", got)
	}
	alice := h.arriveClient("tp", "laptop", "alice")
	if got := recvCode(h.agentClient(agentID).WatchMountRequests(ctx, &managerv1.SessionRef{SessionId: alice})); got != codes.PermissionDenied && got != codes.NotFound {
		t.Errorf("WatchMountRequests of a client session on the agent port: got %v, want PermissionDenied", got)
	}
	// The stream ends with the agent's session.
	w, err := h.agentClient(agentID).WatchMountRequests(ctx, &managerv1.SessionRef{SessionId: agentID})
	if err != nil {
		t.Fatal(err)
	}
	if s, ok := h.m.sessions.remove(agentID); ok {
		h.m.endSession(ctx, s, "departed")
	}
	if _, err := w.Recv(); status.Code(err) != codes.NotFound && status.Code(err) != codes.PermissionDenied {
		t.Errorf("WatchMountRequests after the session ended: got %v, want NotFound", err)
	}
}

// TestInterceptMountsCarryFile: the agent's file flag reaches the
// intercept's mounts, which the CLI skips.
func TestInterceptMountsCarryFile(t *testing.T) {
	got := interceptMounts(&managerv1.AgentInfo{Mounts: []*managerv1.AgentMount{
		{Path: "/etc/app"}, {Path: "/etc/app.yaml", ReadOnly: true, File: true},
	}})
	if len(got) != 2 || got[0].GetFile() || !got[1].GetFile() || !got[1].GetReadOnly() || got[1].GetPath() != "/etc/app.yaml" {
		t.Errorf("got %v, want /etc/app a directory and /etc/app.yaml a read-only file", got)
	}
}
