package manager

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sort"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/tp-run/tp/internal/sessionid"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// sessionKind tells workstation daemons from traffic-agents.
type sessionKind int

const (
	clientSession sessionKind = iota
	agentSession
)

func (k sessionKind) String() string {
	if k == agentSession {
		return "agent"
	}
	return "client"
}

// session is one workstation daemon's (client) or traffic-agent's presence
// in the cluster. Both keep it alive with Remain.
type session struct {
	// id is the public id (sessionid.Public of the secret); the manager
	// keeps only verifier of the secret, which it handed to the session's
	// client once (sessions.add returns it).
	id       string
	verifier string
	kind     sessionKind
	client   *managerv1.ClientInfo // clientSession only
	agent    *managerv1.AgentInfo  // agentSession only
	// agentPod is the verified pod of an agent session: only its agent
	// may use the session.
	agentPod types.UID
	arrived  time.Time
	lastSeen time.Time
}

// sessions is the registry of live sessions, by public id. Callers name a
// session by its secret id, which get, touch and remove check against the
// session's verifier. A session that is not seen within ttl is expired by
// the manager's reaper loop.
type sessions struct {
	ttl, agentTTL time.Duration
	now           func() time.Time

	mu   sync.Mutex
	byID map[string]*session
}

func newSessions(ttl, agentTTL time.Duration, now func() time.Time) *sessions {
	return &sessions{ttl: ttl, agentTTL: agentTTL, now: now, byID: map[string]*session{}}
}

func newSessionID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// add opens a client session and returns it with its secret id.
func (s *sessions) add(client *managerv1.ClientInfo) (session, string) {
	return s.insert(&session{kind: clientSession, client: client})
}

// addAgent opens an agent session and returns it with its secret id.
func (s *sessions) addAgent(agent *managerv1.AgentInfo, pod types.UID) (session, string) {
	return s.insert(&session{kind: agentSession, agent: agent, agentPod: pod})
}

func (s *sessions) insert(sess *session) (session, string) {
	secret := newSessionID()
	now := s.now()
	sess.id, sess.verifier, sess.arrived, sess.lastSeen = sessionid.Public(secret), sessionid.Verifier(secret), now, now
	s.mu.Lock()
	s.byID[sess.id] = sess
	s.mu.Unlock()
	return *sess, secret
}

// restore takes up a client session a previous manager kept (records.go):
// it counts as seen now, so that its client has a full TTL to resume it.
func (s *sessions) restore(sess session) {
	sess.kind = clientSession
	sess.lastSeen = s.now()
	s.mu.Lock()
	s.byID[sess.id] = &sess
	s.mu.Unlock()
}

// lookup returns the session whose secret id is secret; s.mu is held.
func (s *sessions) lookup(secret string) (*session, bool) {
	sess, ok := s.byID[sessionid.Public(secret)]
	if !ok || !sessionid.Verify(secret, sess.verifier) {
		return nil, false
	}
	return sess, true
}

// errUnknownSession says the session expired, departed or never existed (a
// restarted manager knows none of the old ones).
var errUnknownSession = fmt.Errorf("unknown session")

// touch marks the session whose secret id is secret as seen now.
func (s *sessions) touch(secret string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.lookup(secret)
	if !ok {
		return fmt.Errorf("session %s: %w", sessionid.Public(secret), errUnknownSession)
	}
	sess.lastSeen = s.now()
	return nil
}

// get returns the session whose secret id is secret.
func (s *sessions) get(secret string) (session, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.lookup(secret)
	if !ok {
		return session{}, false
	}
	return *sess, true
}

// byPublic returns the session whose public id is id.
func (s *sessions) byPublic(id string) (session, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.byID[id]
	if !ok {
		return session{}, false
	}
	return *sess, true
}

// remove ends the session whose secret id is secret.
func (s *sessions) remove(secret string) (session, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.lookup(secret)
	if ok {
		delete(s.byID, sess.id)
		return *sess, true
	}
	return session{}, false
}

// expire removes and returns the sessions not seen within their kind's TTL.
func (s *sessions) expire() []session {
	now := s.now()
	deadline := map[sessionKind]time.Time{clientSession: now.Add(-s.ttl), agentSession: now.Add(-s.agentTTL)}
	s.mu.Lock()
	defer s.mu.Unlock()
	var gone []session
	for id, sess := range s.byID {
		if sess.lastSeen.Before(deadline[sess.kind]) {
			delete(s.byID, id)
			gone = append(gone, *sess)
		}
	}
	return gone
}

// list returns the sessions of kind, oldest first.
func (s *sessions) list(kind sessionKind) []session {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]session, 0, len(s.byID))
	for _, sess := range s.byID {
		if sess.kind == kind {
			out = append(out, *sess)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].arrived.Equal(out[j].arrived) {
			return out[i].arrived.Before(out[j].arrived)
		}
		return out[i].id < out[j].id
	})
	return out
}
