package manager

import (
	"context"
	"fmt"
	"maps"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/tunnel"
)

// DefaultPairWait is how long an agent's flow waits for the client's.
const DefaultPairWait = 5 * time.Second

// dialQueues holds, per client session, the DialRequests its WatchDials
// streams deliver.
type dialQueues = queues[*managerv1.DialRequest]

func newDialQueues() *dialQueues { return newQueues[*managerv1.DialRequest]() }

// queues holds, per session (public id), the requests its watch streams
// deliver (WatchDials for clients, WatchMountRequests for agents).
type queues[T any] struct {
	mu     sync.Mutex
	queues map[string]*queue[T]
}

type queue[T any] struct {
	ch       chan T
	watchers int
}

func newQueues[T any]() *queues[T] { return &queues[T]{queues: map[string]*queue[T]{}} }

// subscribe returns the session's queue; unsubscribe when the stream ends.
func (d *queues[T]) subscribe(sessionID string) (<-chan T, func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	q := d.queues[sessionID]
	if q == nil {
		q = &queue[T]{ch: make(chan T, 64)}
		d.queues[sessionID] = q
	}
	q.watchers++
	return q.ch, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if q.watchers--; q.watchers == 0 {
			delete(d.queues, sessionID)
		}
	}
}

// watched reports whether a stream of the session (public id) is open.
func (d *queues[T]) watched(sessionID string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.queues[sessionID] != nil
}

// send queues req for the session; false when nobody watches or the queue is full.
func (d *queues[T]) send(sessionID string, req T) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	q := d.queues[sessionID]
	if q == nil {
		return false
	}
	select {
	case q.ch <- req:
		return true
	default:
		return false
	}
}

// WatchDials implements managerv1.ManagerServer: it streams to a client the
// intercepted connections it must accept, until its session ends.
func (m *Manager) WatchDials(ref *managerv1.SessionRef, stream grpc.ServerStreamingServer[managerv1.DialRequest]) error {
	s, err := m.clientSession(ref.GetSessionId())
	if err != nil {
		return err
	}
	ctx := stream.Context()
	reqs, unsubscribe := m.dials.subscribe(s.id)
	m.changes.notify() // the agents' snapshots say the owner is connected
	defer func() {
		unsubscribe()
		m.changes.notify()
	}()
	for {
		changed := m.changes.wait()
		if _, ok := m.sessions.get(ref.GetSessionId()); !ok {
			return status.Errorf(codes.NotFound, "session %s ended", s.id)
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-changed:
		case req := <-reqs:
			if err := stream.Send(req); err != nil {
				return err
			}
		}
	}
}

// pairings holds the agents' flows waiting for their clients' flows.
type pairings struct {
	mu      sync.Mutex
	waiting map[string]*pairing
}

// pairing is an agent's flow waiting for the client's.
type pairing struct {
	owner  string          // the client session that must answer
	client chan clientHalf // buffered 1: the client's flow
}

// clientHalf is a client's flow handed to the waiting agent side. The agent
// side calls accept, and sends on done when it is done with the flow (or the
// error the client's dial fails with).
type clientHalf struct {
	accept func() (tunnel.Conn, error)
	done   chan error // buffered 1
}

func newPairings() *pairings { return &pairings{waiting: map[string]*pairing{}} }

// refused is a dial error that reaches the dialer as ECONNREFUSED.
func refused(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), syscall.ECONNREFUSED)
}

// pair is the tunnel's PairFunc: it serves flows whose Open carries a
// pairing id "<intercept id>/<random>" (or "mount/<intercept id>/<random>",
// mounts.go) instead of dialing. An agent's flow
// asks the intercept's owner (a DialRequest on its WatchDials stream) and
// waits up to PairWait for the client's flow with the same pairing id; then
// the manager splices the two.
func (m *Manager) pair(ctx context.Context, sessionID, pairingID string, accept func() (tunnel.Conn, error)) error {
	s, ok := m.sessions.get(sessionID)
	if !ok {
		return refused("session %q is unknown", sessionID)
	}
	mount := strings.HasPrefix(pairingID, mountPrefix)
	switch {
	case s.kind == agentSession && mount:
		return m.pairClient(ctx, s, pairingID, accept) // an agent answers a mount (mounts.go)
	case s.kind == agentSession:
		return m.pairAgent(ctx, s, pairingID, accept)
	case mount:
		return m.pairMount(ctx, s, pairingID, accept)
	case strings.HasPrefix(pairingID, parkPrefix):
		return m.pairParked(ctx, s, pairingID, accept) // parking.go
	}
	return m.pairClient(ctx, s, pairingID, accept)
}

func (m *Manager) pairAgent(ctx context.Context, s session, pairingID string, accept func() (tunnel.Conn, error)) error {
	interceptID, _, ok := strings.Cut(pairingID, "/")
	if !ok || interceptID == "" {
		return refused("pairing id %q is not <intercept id>/<random>", pairingID)
	}
	ic, ok := m.registry.get(ctx, interceptID)
	if !ok {
		return refused("intercept %s ended", interceptID)
	}
	a := s.agent
	if ic.Workload != (workloadRef{Namespace: a.GetNamespace(), Kind: a.GetKind(), Name: a.GetWorkload()}) {
		return refused("intercept %s is not of the agent's workload", interceptID)
	}

	who := "the client of intercept " + ic.Spec.GetName()
	// A flow the client parked answers at once; one that fails to (its
	// stream broke) gives way to the next, then to a DialRequest.
	for {
		half, ok := m.takeParked(ic.ID, ic.Owner)
		if !ok {
			break
		}
		if done, err := m.splicePair(ctx, pairingID, who, half, accept); done {
			return err
		}
	}
	return m.pairWith(ctx, pairingID, ic.Owner, who, func() error {
		if !m.dials.send(ic.Owner, &managerv1.DialRequest{
			PairingId: pairingID, InterceptId: ic.ID, LocalPort: ic.Spec.GetLocalPort(),
		}) {
			return refused("the client of intercept %s does not accept connections (no WatchDials)", ic.Spec.GetName())
		}
		return nil
	}, accept)
}

// pairWith serves a flow (accept) that waits for its peer: it registers
// pairingID for the session answerer (public id), asks it with ask, waits up
// to PairWait for its flow (pairClient hands it over) and splices the two.
// who names the answerer in errors.
func (m *Manager) pairWith(ctx context.Context, pairingID, answerer, who string, ask func() error, accept func() (tunnel.Conn, error)) error {
	p := &pairing{owner: answerer, client: make(chan clientHalf, 1)}
	m.pairings.mu.Lock()
	if _, dup := m.pairings.waiting[pairingID]; dup {
		m.pairings.mu.Unlock()
		return refused("pairing id %q is in use", pairingID)
	}
	m.pairings.waiting[pairingID] = p
	m.pairings.mu.Unlock()
	unregister := func() {
		m.pairings.mu.Lock()
		delete(m.pairings.waiting, pairingID)
		m.pairings.mu.Unlock()
	}

	if err := ask(); err != nil {
		unregister()
		return err
	}

	timer := time.NewTimer(m.cfg.PairWait)
	defer timer.Stop()
	var half clientHalf
	select {
	case half = <-p.client:
		unregister()
	case <-timer.C:
	case <-ctx.Done():
	}
	if half.accept == nil {
		// A peer may have come between the timeout and unregister.
		unregister()
		select {
		case half = <-p.client:
		default:
			if err := ctx.Err(); err != nil {
				return err
			}
			return fmt.Errorf("%s did not answer within %s: %w", who, m.cfg.PairWait, os.ErrDeadlineExceeded)
		}
	}

	_, err := m.splicePair(ctx, pairingID, who, half, accept)
	return err
}

// splicePair answers the peer's flow (half) and the waiting one (accept) and
// splices the two. done is false when the peer's flow could not be answered
// (its stream broke): accept is untouched then, and err says why.
func (m *Manager) splicePair(ctx context.Context, pairingID, who string, half clientHalf, accept func() (tunnel.Conn, error)) (done bool, err error) {
	peerFlow, err := half.accept()
	if err != nil {
		half.done <- err
		return false, refused("%s's flow: %v", who, err)
	}
	flow, err := accept()
	if err != nil {
		peerFlow.Close()
		half.done <- nil
		return true, err
	}
	err = tunnel.Splice(ctx, peerFlow, flow)
	half.done <- nil
	if err != nil && ctx.Err() == nil {
		m.log.Debug("paired flow ended", "pairing", pairingID, "err", err)
	}
	return true, nil
}

func (m *Manager) pairClient(ctx context.Context, s session, pairingID string, accept func() (tunnel.Conn, error)) error {
	half := clientHalf{accept: accept, done: make(chan error, 1)}
	m.pairings.mu.Lock()
	p := m.pairings.waiting[pairingID]
	switch {
	case p == nil || p.owner != s.id:
		m.pairings.mu.Unlock()
		return refused("no connection waits for pairing id %q (the agent gave up after %s?)", pairingID, m.cfg.PairWait)
	default:
		select {
		case p.client <- half:
		default:
			m.pairings.mu.Unlock()
			return refused("pairing id %q is answered already", pairingID)
		}
	}
	m.pairings.mu.Unlock()

	select {
	case err := <-half.done:
		return err
	case <-ctx.Done():
	}
	// Take the flow back unless the agent side has it; then it answers on done.
	m.pairings.mu.Lock()
	select {
	case h := <-p.client:
		if h.done == half.done {
			m.pairings.mu.Unlock()
			return ctx.Err()
		}
		p.client <- h // another client's (a duplicate); not ours to take
	default:
	}
	m.pairings.mu.Unlock()
	if err := <-half.done; err != nil {
		return err
	}
	return ctx.Err()
}

// ownerStale is how long after its last heartbeat an owner counts as away
// although its WatchDials stream is still open: a daemon that was killed or
// lost its network leaves the stream half-open until TCP gives up, and its
// intercepts would wait for pairings that never come. Daemons heartbeat at
// least every 5 s.
const ownerStale = 12 * time.Second

// ownerConnected reports whether the client session owner (public id) can
// take intercepted connections now: it watches dials and was seen lately.
func (m *Manager) ownerConnected(owner string) bool {
	s, ok := m.sessions.byPublic(owner)
	return ok && m.dials.watched(owner) && m.sessions.now().Sub(s.lastSeen) < ownerStale
}

// watchOwners tells the agents (a new snapshot) when an owner goes stale or
// comes back: ownerConnected changes with time, not only with an event.
func (m *Manager) watchOwners(ctx context.Context, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	last := map[string]bool{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		cur := map[string]bool{}
		for _, s := range m.sessions.list(clientSession) {
			cur[s.id] = m.ownerConnected(s.id)
		}
		if !maps.Equal(cur, last) {
			m.changes.notify()
		}
		last = cur
	}
}
