package manager

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/tp-run/tp/internal/sessionid"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/tunnel"
)

// queuedDials returns how many DialRequests wait in session's queue.
func queuedDials(m *Manager, session string) int {
	m.dials.mu.Lock()
	defer m.dials.mu.Unlock()
	q := m.dials.queues[sessionid.Public(session)]
	if q == nil {
		return 0
	}
	return len(q.ch)
}

func waitErr(t *testing.T, what string, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(5 * time.Second):
		t.Fatalf("%s did not return", what)
		return nil
	}
}

// An agent's flow takes the owner's parked flow at once: no DialRequest.
func TestPairTakesParkedFlow(t *testing.T) {
	s := newPairSetup(t, true)
	ctx := s.h.ctx()
	id := s.ic.GetId()
	clientPeer, clientFlow := tcpPair(t)
	parkDone := make(chan error, 1)
	go func() { parkDone <- s.h.m.pair(ctx, s.alice, parkPrefix+id+"/p1", acceptWith(clientFlow)) }()
	eventually(t, "the flow is parked", func() bool { return s.h.m.parked.count(id) == 1 })

	agentPeer, agentFlow := tcpPair(t)
	agentDone := make(chan error, 1)
	go func() { agentDone <- s.h.m.pair(ctx, s.agent, id+"/r1", acceptWith(agentFlow)) }()

	msg := "request from the cluster"
	agentPeer.Write([]byte(msg))
	buf := make([]byte, len(msg))
	clientPeer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(clientPeer, buf); err != nil || string(buf) != msg {
		t.Fatalf("parked side read: got %q, %v, want %q", buf, err, msg)
	}
	if n := queuedDials(s.h.m, s.alice); n != 0 {
		t.Errorf("DialRequests queued with a parked flow: got %d, want 0", n)
	}
	if n := s.h.m.parked.count(id); n != 0 {
		t.Errorf("parked flows after one was taken: got %d, want 0", n)
	}
	agentPeer.CloseWrite()
	clientPeer.CloseWrite()
	if err := waitErr(t, "the agent side", agentDone); err != nil {
		t.Errorf("agent side: got %v, want nil", err)
	}
	if err := waitErr(t, "the parked side", parkDone); err != nil {
		t.Errorf("parked side: got %v, want nil", err)
	}
}

func TestParkRules(t *testing.T) {
	t.Run("only the owner parks", func(t *testing.T) {
		s := newPairSetup(t, true)
		_, flow := tcpPair(t)
		for _, id := range []string{parkPrefix + s.ic.GetId() + "/p1", parkPrefix + "nosuch/p1", parkPrefix + "bad"} {
			if err := s.h.m.pair(s.h.ctx(), s.bob, id, acceptWith(flow)); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("bob parks %q: got %v, want ECONNREFUSED", id, err)
			}
		}
		if n := s.h.m.parked.count(s.ic.GetId()); n != 0 {
			t.Errorf("parked: got %d, want 0", n)
		}
	})
	t.Run("bounded", func(t *testing.T) {
		s := newPairSetup(t, true)
		ctx, cancel := context.WithCancel(s.h.ctx())
		done := make(chan error, MaxParked)
		for i := range MaxParked {
			_, flow := tcpPair(t)
			go func() {
				done <- s.h.m.pair(ctx, s.alice, fmt.Sprintf("%s%s/p%d", parkPrefix, s.ic.GetId(), i), acceptWith(flow))
			}()
		}
		eventually(t, "all parked", func() bool { return s.h.m.parked.count(s.ic.GetId()) == MaxParked })
		_, flow := tcpPair(t)
		if err := s.h.m.pair(ctx, s.alice, parkPrefix+s.ic.GetId()+"/more", acceptWith(flow)); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("one park too many: got %v, want ECONNREFUSED", err)
		}
		// A client that gives up takes its flow back.
		cancel()
		for range MaxParked {
			if err := waitErr(t, "a cancelled park", done); !errors.Is(err, context.Canceled) {
				t.Errorf("cancelled park: got %v, want context.Canceled", err)
			}
		}
		if n := s.h.m.parked.count(s.ic.GetId()); n != 0 {
			t.Errorf("parked after the client gave up: got %d, want 0", n)
		}
	})
	t.Run("intercept ends", func(t *testing.T) {
		s := newPairSetup(t, true)
		_, flow := tcpPair(t)
		done := make(chan error, 1)
		go func() { done <- s.h.m.pair(s.h.ctx(), s.alice, parkPrefix+s.ic.GetId()+"/p1", acceptWith(flow)) }()
		eventually(t, "parked", func() bool { return s.h.m.parked.count(s.ic.GetId()) == 1 })
		if _, err := s.h.mc.RemoveIntercept(s.h.ctx(), &managerv1.RemoveInterceptRequest{SessionId: s.alice, Name: "echo", Namespace: "shop"}); err != nil {
			t.Fatalf("RemoveIntercept: %v", err)
		}
		if err := waitErr(t, "the park of an ended intercept", done); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("park after the intercept ended: got %v, want ECONNREFUSED", err)
		}
		if n := s.h.m.parked.count(s.ic.GetId()); n != 0 {
			t.Errorf("parked after the intercept ended: got %d, want 0", n)
		}
	})
	t.Run("broken parked flow falls back to a DialRequest", func(t *testing.T) {
		s := newPairSetup(t, true)
		done := make(chan error, 1)
		broken := func() (tunnel.Conn, error) { return nil, net.ErrClosed }
		go func() { done <- s.h.m.pair(s.h.ctx(), s.alice, parkPrefix+s.ic.GetId()+"/p1", broken) }()
		eventually(t, "parked", func() bool { return s.h.m.parked.count(s.ic.GetId()) == 1 })
		_, agentFlow := tcpPair(t)
		pairingID := s.ic.GetId() + "/r1"
		go s.h.m.pair(s.h.ctx(), s.agent, pairingID, acceptWith(agentFlow))
		req, err := s.dials.Recv()
		if err != nil || req.GetPairingId() != pairingID {
			t.Fatalf("DialRequest after a broken parked flow: got %v, %v, want pairing %s", req, err, pairingID)
		}
		if err := waitErr(t, "the broken park", done); !errors.Is(err, net.ErrClosed) {
			t.Errorf("broken park: got %v, want its accept's error", err)
		}
	})
	t.Run("owner away: not taken", func(t *testing.T) {
		s := newPairSetup(t, true)
		_, flow := tcpPair(t)
		go s.h.m.pair(s.h.ctx(), s.alice, parkPrefix+s.ic.GetId()+"/p1", acceptWith(flow))
		eventually(t, "parked", func() bool { return s.h.m.parked.count(s.ic.GetId()) == 1 })
		s.cancelWatch()
		eventually(t, "WatchDials ended", func() bool { return !s.h.m.dials.watched(sessionid.Public(s.alice)) })
		_, agentFlow := tcpPair(t)
		if err := s.h.m.pair(s.h.ctx(), s.agent, s.ic.GetId()+"/r1", acceptWith(agentFlow)); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("agent flow with the owner away: got %v, want ECONNREFUSED", err)
		}
		if n := s.h.m.parked.count(s.ic.GetId()); n != 1 {
			t.Errorf("parked with the owner away: got %d, want 1 (not taken)", n)
		}
	})
}
