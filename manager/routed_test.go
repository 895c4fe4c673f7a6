package manager

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tp-run/tp/internal/sessionid"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// endpoint is a pod behind a service, as an EndpointSlice lists it.
type endpoint struct {
	pod         string
	ready       bool
	terminating bool // and still serving
}

// endpointSlice is the EndpointSlice name of service svc in shop with eps
// (pods with podIdentity's UIDs).
func endpointSlice(svc, name string, eps ...endpoint) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "shop", Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	for i, e := range eps {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{"10.1.0." + string(rune('1'+i))},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(e.ready), Serving: ptr(e.ready || e.terminating), Terminating: ptr(e.terminating)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: e.pod, UID: types.UID("uid-" + e.pod)},
		})
	}
	return s
}

// watchAndAck opens the agent's intercept watch and returns a func that
// receives the next snapshot and acknowledges its intercepts.
func (h *harness) watchAndAck(agent string) (next func() []string) {
	h.t.Helper()
	ctx, cancel := context.WithCancel(h.ctx())
	h.t.Cleanup(cancel)
	watch, err := h.agentClient(agent).WatchIntercepts(ctx, &managerv1.SessionRef{SessionId: agent})
	if err != nil {
		h.t.Fatal(err)
	}
	return func() []string {
		h.t.Helper()
		snap, err := watch.Recv()
		if err != nil {
			h.t.Fatalf("WatchIntercepts: %v", err)
		}
		var ids []string
		for _, ic := range snap.GetIntercepts() {
			ids = append(ids, ic.GetId())
		}
		if _, err := h.agentClient(agent).RoutesApplied(h.ctx(), &managerv1.RoutesAppliedRequest{SessionId: agent, InterceptIds: ids}); err != nil {
			h.t.Fatalf("RoutesApplied: %v", err)
		}
		return ids
	}
}

type created struct {
	info *managerv1.InterceptInfo
	err  error
}

// createAsync starts CreateIntercept of echo for session with ctx.
func (h *harness) createAsync(ctx context.Context, session string) <-chan created {
	h.t.Helper()
	h.authorize(session, "echo")
	done := make(chan created, 1)
	go func() {
		info, err := h.mc.CreateIntercept(ctx, &managerv1.CreateInterceptRequest{SessionId: session, Spec: &managerv1.InterceptSpec{
			Workload: "echo", Namespace: "shop", LocalPort: 8000,
		}})
		done <- created{info, err}
	}()
	return done
}

// TestCreateInterceptWaitsForEveryReadyEndpoint: a rollout in progress, an
// old pod without the agent still ready, and a new one whose agent has not
// acknowledged the intercept: CreateIntercept waits until every ready
// endpoint's agent has applied the intercept.
func TestCreateInterceptWaitsForEveryReadyEndpoint(t *testing.T) {
	objs := append(echoObjects(), runtime.Object(endpointSlice("echo", "echo-1",
		endpoint{pod: "echo-old", ready: true}, endpoint{pod: "echo-new", ready: false})))
	h := newHarness(t, objs...)
	alice := h.arriveClient("tp", "laptop", "alice")
	done := h.createAsync(h.ctx(), alice)
	notYet := func(when string) {
		t.Helper()
		select {
		case r := <-done:
			t.Fatalf("CreateIntercept returned %s: %v, %v", when, r.info, r.err)
		default:
		}
	}

	agent := h.arriveAgent(echoRef, "echo-new", nil, 8080)
	eventually(t, "intercept registered", func() bool {
		ics, _ := h.m.registry.list(context.Background(), nil)
		return len(ics) == 1
	})
	notYet("before the agent acknowledged")
	next := h.watchAndAck(agent)
	if ids := next(); len(ids) != 1 {
		t.Fatalf("first snapshot: got %v, want the intercept", ids)
	}
	notYet("while a pod without the agent is ready")

	// The new pod becomes ready, the old one stops being ready.
	slice := endpointSlice("echo", "echo-1", endpoint{pod: "echo-old", ready: false}, endpoint{pod: "echo-new", ready: true})
	if _, err := h.kube.DiscoveryV1().EndpointSlices("shop").Update(h.ctx(), slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var r created
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("CreateIntercept did not return once every ready endpoint routes to it")
	}
	if r.err != nil {
		t.Fatalf("CreateIntercept: %v", r.err)
	}
	if got, want := [2]int32{r.info.GetRoutedEndpoints(), r.info.GetReadyEndpoints()}, [2]int32{1, 1}; got != want {
		t.Errorf("routed, ready endpoints: got %v, want %v", got, want)
	}
}

// TestCreateInterceptWaitsForTerminatingEndpoints: the old pod of the
// injection's rollout is terminating but still serving: kube-proxy may still
// send it connections, so CreateIntercept waits until it is gone.
func TestCreateInterceptWaitsForTerminatingEndpoints(t *testing.T) {
	objs := append(echoObjects(), runtime.Object(endpointSlice("echo", "echo-1",
		endpoint{pod: "echo-old", terminating: true}, endpoint{pod: "echo-new", ready: true})))
	h := newHarness(t, objs...)
	alice := h.arriveClient("tp", "laptop", "alice")
	done := h.createAsync(h.ctx(), alice)
	agent := h.arriveAgent(echoRef, "echo-new", nil, 8080)
	eventually(t, "intercept registered", func() bool {
		ics, _ := h.m.registry.list(context.Background(), nil)
		return len(ics) == 1
	})
	next := h.watchAndAck(agent)
	if ids := next(); len(ids) != 1 {
		t.Fatalf("first snapshot: got %v, want the intercept", ids)
	}
	select {
	case r := <-done:
		t.Fatalf("CreateIntercept returned while a terminating pod without the agent still serves: %v, %v", r.info, r.err)
	case <-time.After(500 * time.Millisecond):
	}
	slice := endpointSlice("echo", "echo-1", endpoint{pod: "echo-new", ready: true})
	if _, err := h.kube.DiscoveryV1().EndpointSlices("shop").Update(h.ctx(), slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("CreateIntercept: %v", r.err)
		}
		if got, want := [2]int32{r.info.GetRoutedEndpoints(), r.info.GetReadyEndpoints()}, [2]int32{1, 1}; got != want {
			t.Errorf("routed, ready endpoints: got %v, want %v", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("CreateIntercept did not return once the terminating pod was gone")
	}
}

// TestCreateInterceptSaysHowManyRoute: when time is up with an agent there
// but not every ready endpoint routing, CreateIntercept returns the intercept
// and how many do; a pod is counted once across its slices.
func TestCreateInterceptSaysHowManyRoute(t *testing.T) {
	objs := append(echoObjects(),
		runtime.Object(endpointSlice("echo", "echo-v4", endpoint{pod: "echo-a", ready: true}, endpoint{pod: "echo-b", ready: true})),
		runtime.Object(endpointSlice("echo", "echo-v6", endpoint{pod: "echo-a", ready: true}, endpoint{pod: "echo-b", ready: true})),
		runtime.Object(endpointSlice("other", "other-1", endpoint{pod: "other-a", ready: true})))
	h := newHarness(t, objs...)
	alice := h.arriveClient("tp", "laptop", "alice")
	acked := h.arriveAgent(echoRef, "echo-a", nil, 8080)
	h.arriveAgent(echoRef, "echo-b", nil, 8080) // never acknowledges
	next := h.watchAndAck(acked)
	next()
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	done := h.createAsync(ctx, alice)
	next()
	r := <-done
	if r.err != nil {
		t.Fatalf("CreateIntercept: %v", r.err)
	}
	if got, want := [2]int32{r.info.GetRoutedEndpoints(), r.info.GetReadyEndpoints()}, [2]int32{1, 2}; got != want {
		t.Errorf("routed, ready endpoints: got %v, want %v", got, want)
	}
	if got := r.info.GetState(); got != managerv1.InterceptState_INTERCEPT_STATE_ACTIVE {
		t.Errorf("state: got %v, want ACTIVE", got)
	}
}

// TestRoutesApplied: acknowledgements count only from an agent that
// watches, are forgotten when its watch ends, and are refused on the client
// port.
func TestRoutesApplied(t *testing.T) {
	h := newHarness(t, echoObjects()...)
	agent := h.arriveAgent(echoRef, "echo-a", nil, 8080)
	ack := func(ids ...string) error {
		_, err := h.agentClient(agent).RoutesApplied(h.ctx(), &managerv1.RoutesAppliedRequest{SessionId: agent, InterceptIds: ids})
		return err
	}
	if err := ack("ic-1"); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("RoutesApplied without a watch: got %v, want FailedPrecondition", err)
	}
	ctx, cancel := context.WithCancel(h.ctx())
	watch, err := h.agentClient(agent).WatchIntercepts(ctx, &managerv1.SessionRef{SessionId: agent})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatal(err)
	}
	if err := ack("ic-1"); err != nil {
		t.Fatalf("RoutesApplied while watching: %v", err)
	}
	if !h.m.applied.has(sessionid.Public(agent), "ic-1") {
		t.Errorf("ic-1 not recorded as applied")
	}
	cancel()
	eventually(t, "acknowledgement forgotten with the watch", func() bool { return !h.m.applied.has(sessionid.Public(agent), "ic-1") })

	if _, err := h.mc.RoutesApplied(h.ctx(), &managerv1.RoutesAppliedRequest{SessionId: agent}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("RoutesApplied on the client port: got %v, want PermissionDenied", err)
	}
	other := h.arriveAgent(echoRef, "echo-b", nil, 8080)
	if _, err := h.agentClient(other).RoutesApplied(h.ctx(), &managerv1.RoutesAppliedRequest{SessionId: agent}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("RoutesApplied for another pod's session: got %v, want PermissionDenied", err)
	}
}
