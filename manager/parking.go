package manager

import (
	"context"
	"strings"
	"sync"

	"github.com/tp-run/tp/tunnel"
)

// Parked flows: a client (the workstation daemon) may open flows for one of
// its intercepts ahead of time, with the pairing id
// "park/<intercept id>/<random>". The manager holds them, unanswered, and
// pairs the intercept's next agent flow with the oldest at once, instead of
// asking with a DialRequest and waiting for the client's flow (a round trip
// through the port-forward per connection). The client opens a replacement
// when one of its parked flows is answered. Without a parked flow (none
// opened yet, an older client, all in use) the agent's flow takes the
// DialRequest path as before.

// parkPrefix starts the pairing id of a parked flow.
const parkPrefix = "park/"

// MaxParked bounds the flows one intercept may have parked; more are refused.
const MaxParked = 4

// parkedFlows holds the parked client flows, per intercept, oldest first.
type parkedFlows struct {
	mu          sync.Mutex
	byIntercept map[string][]*parkedFlow
}

// parkedFlow is a client's flow waiting for an agent's.
type parkedFlow struct {
	owner string // the client session (public id) that parked it
	half  clientHalf
}

func newParkedFlows() *parkedFlows {
	return &parkedFlows{byIntercept: map[string][]*parkedFlow{}}
}

// park adds p for the intercept; false when MaxParked flows wait already.
func (pf *parkedFlows) park(interceptID string, p *parkedFlow) bool {
	pf.mu.Lock()
	defer pf.mu.Unlock()
	l := pf.byIntercept[interceptID]
	if len(l) >= MaxParked {
		return false
	}
	pf.byIntercept[interceptID] = append(l, p)
	return true
}

// take removes and returns the intercept's oldest flow parked by owner.
func (pf *parkedFlows) take(interceptID, owner string) (*parkedFlow, bool) {
	pf.mu.Lock()
	defer pf.mu.Unlock()
	l := pf.byIntercept[interceptID]
	for i, p := range l {
		if p.owner != owner {
			continue // parked by an earlier owner of the intercept
		}
		l = append(l[:i:i], l[i+1:]...)
		if len(l) == 0 {
			delete(pf.byIntercept, interceptID)
		} else {
			pf.byIntercept[interceptID] = l
		}
		return p, true
	}
	return nil, false
}

// unpark removes p unless an agent's flow took it; true when it removed p.
func (pf *parkedFlows) unpark(interceptID string, p *parkedFlow) bool {
	pf.mu.Lock()
	defer pf.mu.Unlock()
	l := pf.byIntercept[interceptID]
	for i, q := range l {
		if q != p {
			continue
		}
		l = append(l[:i:i], l[i+1:]...)
		if len(l) == 0 {
			delete(pf.byIntercept, interceptID)
		} else {
			pf.byIntercept[interceptID] = l
		}
		return true
	}
	return false
}

// count returns how many flows the intercept has parked.
func (pf *parkedFlows) count(interceptID string) int {
	pf.mu.Lock()
	defer pf.mu.Unlock()
	return len(pf.byIntercept[interceptID])
}

// pairParked serves a client's parked flow: it waits, unanswered, until an
// agent's flow of the intercept takes it (and is done with it), the client
// gives up (ctx), or the intercept ends or changes owner (the flow is then
// refused: the client stops parking for it).
func (m *Manager) pairParked(ctx context.Context, s session, pairingID string, accept func() (tunnel.Conn, error)) error {
	interceptID, _, ok := strings.Cut(strings.TrimPrefix(pairingID, parkPrefix), "/")
	if !ok || interceptID == "" {
		return refused("pairing id %q is not %s<intercept id>/<random>", pairingID, parkPrefix)
	}
	ic, ok := m.registry.get(ctx, interceptID)
	if !ok || ic.Owner != s.id {
		return refused("intercept %s ended or is not the session's", interceptID)
	}
	p := &parkedFlow{owner: s.id, half: clientHalf{accept: accept, done: make(chan error, 1)}}
	if !m.parked.park(interceptID, p) {
		return refused("intercept %s has %d flows parked already", interceptID, MaxParked)
	}
	for {
		changed := m.changes.wait()
		ic, ok := m.registry.get(ctx, interceptID)
		if !ok || ic.Owner != s.id {
			if m.parked.unpark(interceptID, p) {
				return refused("intercept %s ended", interceptID)
			}
			return <-p.half.done // an agent's flow has it: it ends the flow
		}
		select {
		case err := <-p.half.done:
			return err
		case <-changed:
		case <-ctx.Done():
			if m.parked.unpark(interceptID, p) {
				return ctx.Err()
			}
			if err := <-p.half.done; err != nil {
				return err
			}
			return ctx.Err()
		}
	}
}

// takeParked returns a parked flow of the intercept's owner for an agent's
// flow, if one waits and the owner is connected (a parked flow of an owner
// that stopped heartbeating may be dead: the DialRequest path then decides).
func (m *Manager) takeParked(interceptID, owner string) (clientHalf, bool) {
	if !m.ownerConnected(owner) {
		return clientHalf{}, false
	}
	p, ok := m.parked.take(interceptID, owner)
	if !ok {
		return clientHalf{}, false
	}
	return p.half, true
}
