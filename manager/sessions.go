package manager

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sort"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

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
	id     string
	kind   sessionKind
	client *managerv1.ClientInfo // clientSession only
	agent  *managerv1.AgentInfo  // agentSession only
	// agentPod is the verified pod of an agent session: only its agent
	// may use the session.
	agentPod types.UID
	arrived  time.Time
	lastSeen time.Time
}

// sessions is the registry of live sessions. A session that is not seen
// within ttl is expired by the manager's reaper loop.
type sessions struct {
	ttl time.Duration
	now func() time.Time

	mu   sync.Mutex
	byID map[string]*session
}

func newSessions(ttl time.Duration, now func() time.Time) *sessions {
	return &sessions{ttl: ttl, now: now, byID: map[string]*session{}}
}

func newSessionID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (s *sessions) add(client *managerv1.ClientInfo) *session {
	return s.insert(&session{kind: clientSession, client: client})
}

func (s *sessions) addAgent(agent *managerv1.AgentInfo, pod types.UID) *session {
	return s.insert(&session{kind: agentSession, agent: agent, agentPod: pod})
}

func (s *sessions) insert(sess *session) *session {
	now := s.now()
	sess.id, sess.arrived, sess.lastSeen = newSessionID(), now, now
	s.mu.Lock()
	s.byID[sess.id] = sess
	s.mu.Unlock()
	return sess
}

// errUnknownSession says the session expired, departed or never existed (a
// restarted manager knows none of the old ones).
var errUnknownSession = fmt.Errorf("unknown session")

// touch marks a session as seen now.
func (s *sessions) touch(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.byID[id]
	if !ok {
		return fmt.Errorf("session %q: %w", id, errUnknownSession)
	}
	sess.lastSeen = s.now()
	return nil
}

func (s *sessions) get(id string) (session, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.byID[id]
	if !ok {
		return session{}, false
	}
	return *sess, true
}

func (s *sessions) remove(id string) (session, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.byID[id]
	if ok {
		delete(s.byID, id)
		return *sess, true
	}
	return session{}, false
}

// expire removes and returns the sessions not seen within the TTL.
func (s *sessions) expire() []session {
	deadline := s.now().Add(-s.ttl)
	s.mu.Lock()
	defer s.mu.Unlock()
	var gone []session
	for id, sess := range s.byID {
		if sess.lastSeen.Before(deadline) {
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
