package manager

import (
	"errors"
	"testing"
	"time"

	"github.com/tp-run/tp/internal/sessionid"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

func TestSessionsExpireAfterTTL(t *testing.T) {
	now := time.Unix(1000, 0)
	s := newSessions(10*time.Second, 10*time.Second, func() time.Time { return now })
	_, a := s.add(&managerv1.ClientInfo{Name: "a"})
	_, b := s.add(&managerv1.ClientInfo{Name: "b"})

	now = now.Add(8 * time.Second)
	if err := s.touch(a); err != nil {
		t.Fatalf("touch a: %v", err)
	}
	now = now.Add(5 * time.Second) // b last seen 13s ago, a 5s ago
	gone := s.expire()
	if len(gone) != 1 || gone[0].id != sessionid.Public(b) {
		t.Fatalf("expired %v, want only b", gone)
	}
	if err := s.touch(b); !errors.Is(err, errUnknownSession) {
		t.Errorf("touch expired session: got %v, want errUnknownSession", err)
	}
	if _, ok := s.get(a); !ok {
		t.Errorf("session a gone, want it alive")
	}
	if got := len(s.list(clientSession)); got != 1 {
		t.Errorf("list has %d sessions, want 1", got)
	}
}
