package manager

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// maxAppliedIntercepts bounds what one RoutesApplied may claim: a workload
// never has that many intercepts.
const maxAppliedIntercepts = 1024

// appliedRoutes remembers, per agent session, the intercepts its agent's
// routes carry (RoutesApplied), for as long as the agent watches its
// intercepts: an agent whose watch broke routes everything to the app.
type appliedRoutes struct {
	changes *changes // notified on every acknowledgement

	mu sync.Mutex
	// watches counts the open WatchIntercepts streams of each session.
	watches map[string]int
	// bySession holds the acknowledged intercept ids of sessions that watch.
	bySession map[string]map[string]bool
}

func newAppliedRoutes() *appliedRoutes {
	return &appliedRoutes{changes: newChanges(), watches: map[string]int{}, bySession: map[string]map[string]bool{}}
}

// watching records an open watch of session; the returned func ends it. When
// the session's last watch ends, its acknowledgements are forgotten.
func (r *appliedRoutes) watching(session string) (end func()) {
	r.mu.Lock()
	r.watches[session]++
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.watches[session]--; r.watches[session] > 0 {
			return
		}
		delete(r.watches, session)
		if _, ok := r.bySession[session]; ok {
			delete(r.bySession, session)
			r.changes.notify()
		}
	}
}

// set records that session's routes carry exactly ids. It reports false
// when the session has no watch open (the acknowledgement is stale).
func (r *appliedRoutes) set(session string, ids []string) bool {
	applied := make(map[string]bool, len(ids))
	for _, id := range ids {
		applied[id] = true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.watches[session] == 0 {
		return false
	}
	r.bySession[session] = applied
	r.changes.notify()
	return true
}

// has reports whether session's routes carry intercept id.
func (r *appliedRoutes) has(session, id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.bySession[session][id]
}

// RoutesApplied implements managerv1.ManagerServer on the client port:
// refused (agents acknowledge on the agent port, agentServer).
func (m *Manager) RoutesApplied(context.Context, *managerv1.RoutesAppliedRequest) (*managerv1.RoutesAppliedResponse, error) {
	return nil, errAgentPortOnly("RoutesApplied")
}

func (a agentServer) RoutesApplied(ctx context.Context, req *managerv1.RoutesAppliedRequest) (*managerv1.RoutesAppliedResponse, error) {
	s, err := a.m.agentSessionOf(ctx, req.GetSessionId())
	if err != nil {
		return nil, err
	}
	if n := len(req.GetInterceptIds()); n > maxAppliedIntercepts {
		return nil, status.Errorf(codes.InvalidArgument, "routes applied: %d intercepts, at most %d", n, maxAppliedIntercepts)
	}
	if !a.m.applied.set(s.id, req.GetInterceptIds()) {
		return nil, status.Errorf(codes.FailedPrecondition, "session %s watches no intercepts: acknowledge the snapshots of WatchIntercepts",
			s.id)
	}
	a.m.log.Debug("agent routes applied", "session", s.id, "pod", s.agent.GetPodName(), "intercepts", req.GetInterceptIds())
	return &managerv1.RoutesAppliedResponse{}, nil
}

// routing is how many ready endpoints of an intercept's service route to it.
// draining counts terminating endpoints without the intercept that still
// serve: kube-proxy stops sending them new connections only at its next
// sync after their EndpointSlice changed, so "Intercepted" waits until
// they are gone too (seen in e2e: a request answered by the old pod of the
// injection's rollout right after "Intercepted").
type routing struct {
	routed, ready, draining int
}

func (r routing) complete() bool { return r.routed == r.ready && r.draining == 0 }

// routing counts the ready endpoints of ic's service (a pod counted once
// across its EndpointSlices) and those among them whose pod's agent has
// applied ic.
func (m *Manager) routing(ctx context.Context, ic *intercept) (routing, error) {
	list, err := m.kube.DiscoveryV1().EndpointSlices(ic.Workload.Namespace).List(ctx, endpointSlicesOf(ic.ServiceName))
	if err != nil {
		return routing{}, err
	}
	routedPods := map[types.UID]bool{}
	for _, s := range m.agentsOf(ic.Workload) {
		if m.applied.has(s.id, ic.ID) {
			routedPods[s.agentPod] = true
		}
	}
	var r routing
	seen := map[string]bool{}
	for _, slice := range list.Items {
		for _, e := range slice.Endpoints {
			key := "addresses/" + strings.Join(e.Addresses, ",")
			pod := e.TargetRef != nil && e.TargetRef.Kind == "Pod" && e.TargetRef.UID != ""
			if pod {
				key = "pod/" + string(e.TargetRef.UID)
			}
			// A nil ready condition means ready (discovery/v1).
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				terminating := e.Conditions.Terminating != nil && *e.Conditions.Terminating
				serving := e.Conditions.Serving == nil || *e.Conditions.Serving
				if terminating && serving && !(pod && routedPods[e.TargetRef.UID]) && !seen["draining/"+key] {
					seen["draining/"+key] = true
					r.draining++
				}
				continue
			}
			if seen[key] {
				continue
			}
			seen[key] = true
			r.ready++
			if pod && routedPods[e.TargetRef.UID] {
				r.routed++
			}
		}
	}
	return r, nil
}

func endpointSlicesOf(service string) metav1.ListOptions {
	return metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + service}
}

// endpointWatch signals changes of a service's EndpointSlices. Its channel
// is nil (never ready) while no watch is open; the caller restarts it when
// the API server ends the watch.
type endpointWatch struct {
	m       *Manager
	ns, svc string
	w       watch.Interface
}

func (e *endpointWatch) start(ctx context.Context) error {
	e.stop()
	w, err := e.m.kube.DiscoveryV1().EndpointSlices(e.ns).Watch(ctx, endpointSlicesOf(e.svc))
	if err != nil {
		return fmt.Errorf("watch the endpoints of service %s/%s: %w", e.ns, e.svc, err)
	}
	e.w = w
	return nil
}

func (e *endpointWatch) events() <-chan watch.Event {
	if e.w == nil {
		return nil
	}
	return e.w.ResultChan()
}

func (e *endpointWatch) stop() {
	if e.w != nil {
		e.w.Stop()
		e.w = nil
	}
}
