package manager

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/tp-run/tp/internal/sessionid"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/tunnel"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	a, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := lis.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

func acceptWith(c tunnel.Conn) func() (tunnel.Conn, error) {
	return func() (tunnel.Conn, error) { return c, nil }
}

// pairSetup: an agent of echo, alice's global intercept of it, and alice's
// WatchDials stream.
type pairSetup struct {
	h                 *harness
	agent, alice, bob string
	ic                *managerv1.InterceptInfo
	dials             managerv1.Manager_WatchDialsClient
	cancelWatch       context.CancelFunc
}

func newPairSetup(t *testing.T, watch bool) *pairSetup {
	t.Helper()
	h := newHarness(t, echoObjects()...)
	s := &pairSetup{h: h}
	s.agent = h.arriveAgent(echoRef, "echo-abc", nil, 8080)
	s.alice = h.arriveClient("tp", "laptop", "alice")
	s.bob = h.arriveClient("tp", "desktop", "bob")
	s.ic = h.intercept(s.alice, "echo", nil)
	if !watch {
		return s
	}
	ctx, cancel := context.WithCancel(h.ctx())
	t.Cleanup(cancel)
	dials, err := h.mc.WatchDials(ctx, &managerv1.SessionRef{SessionId: s.alice})
	if err != nil {
		t.Fatal(err)
	}
	s.dials, s.cancelWatch = dials, cancel
	eventually(t, "WatchDials subscribed", func() bool {
		h.m.dials.mu.Lock()
		defer h.m.dials.mu.Unlock()
		return h.m.dials.queues[sessionid.Public(s.alice)] != nil
	})
	return s
}

func TestPairSplicesAgentAndClient(t *testing.T) {
	s := newPairSetup(t, true)
	ctx := s.h.ctx()
	agentPeer, agentFlow := tcpPair(t)
	clientPeer, clientFlow := tcpPair(t)

	pairingID := s.ic.GetId() + "/r1"
	agentDone := make(chan error, 1)
	go func() { agentDone <- s.h.m.pair(ctx, s.agent, pairingID, acceptWith(agentFlow)) }()

	req, err := s.dials.Recv()
	if err != nil {
		t.Fatalf("WatchDials: %v", err)
	}
	if req.GetPairingId() != pairingID || req.GetInterceptId() != s.ic.GetId() || req.GetLocalPort() != 8000 {
		t.Errorf("DialRequest: got %v, want pairing %s, intercept %s, local port 8000", req, pairingID, s.ic.GetId())
	}
	// Only the owner may answer.
	if err := s.h.m.pair(ctx, s.bob, pairingID, acceptWith(clientFlow)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("bob answering alice's pairing: got %v, want ECONNREFUSED", err)
	}
	clientDone := make(chan error, 1)
	go func() { clientDone <- s.h.m.pair(ctx, s.alice, pairingID, acceptWith(clientFlow)) }()

	roundTrip := func(from, to net.Conn, msg string) {
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
	roundTrip(agentPeer, clientPeer, "request from the cluster")
	roundTrip(clientPeer, agentPeer, "answer from the workstation")

	agentPeer.CloseWrite()
	clientPeer.CloseWrite()
	for name, ch := range map[string]chan error{"agent": agentDone, "client": clientDone} {
		select {
		case err := <-ch:
			if err != nil {
				t.Errorf("%s side: got %v, want nil", name, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s side did not return after both ends closed", name)
		}
	}
	// A finished pairing id is gone.
	if err := s.h.m.pair(ctx, s.alice, pairingID, acceptWith(clientFlow)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("answering a finished pairing: got %v, want ECONNREFUSED", err)
	}
}

func TestPairFailures(t *testing.T) {
	t.Run("client does not answer", func(t *testing.T) {
		s := newPairSetup(t, true)
		_, agentFlow := tcpPair(t)
		start := time.Now()
		err := s.h.m.pair(s.h.ctx(), s.agent, s.ic.GetId()+"/r1", acceptWith(agentFlow))
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("got %v, want os.ErrDeadlineExceeded", err)
		}
		if took := time.Since(start); took < s.h.m.cfg.PairWait {
			t.Errorf("gave up after %s, want PairWait %s", took, s.h.m.cfg.PairWait)
		}
		if _, err := s.dials.Recv(); err != nil {
			t.Errorf("WatchDials: %v", err)
		}
		s.h.m.pairings.mu.Lock()
		n := len(s.h.m.pairings.waiting)
		s.h.m.pairings.mu.Unlock()
		if n != 0 {
			t.Errorf("waiting pairings after the timeout: got %d, want 0", n)
		}
	})
	t.Run("client fails to accept", func(t *testing.T) {
		s := newPairSetup(t, true)
		_, agentFlow := tcpPair(t)
		pairingID := s.ic.GetId() + "/r1"
		agentDone := make(chan error, 1)
		go func() { agentDone <- s.h.m.pair(s.h.ctx(), s.agent, pairingID, acceptWith(agentFlow)) }()
		if _, err := s.dials.Recv(); err != nil {
			t.Fatal(err)
		}
		boom := errors.New("stream gone")
		err := s.h.m.pair(s.h.ctx(), s.alice, pairingID, func() (tunnel.Conn, error) { return nil, boom })
		if !errors.Is(err, boom) {
			t.Errorf("client side: got %v, want its accept error", err)
		}
		if err := <-agentDone; !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("agent side: got %v, want ECONNREFUSED", err)
		}
	})
	t.Run("refused", func(t *testing.T) {
		s := newPairSetup(t, false)
		other := s.h.arriveAgent(workloadRef{Namespace: "shop", Kind: kindDeployment, Name: "other"}, "other-1", nil, 8080)
		_, conn := tcpPair(t)
		for _, c := range []struct {
			name, session, pairingID string
		}{
			{"no WatchDials", s.agent, s.ic.GetId() + "/r1"},
			{"unknown intercept", s.agent, "nope/r1"},
			{"no random part", s.agent, s.ic.GetId()},
			{"agent of another workload", other, s.ic.GetId() + "/r1"},
			{"unknown session", "nope", s.ic.GetId() + "/r1"},
			{"client with an unknown pairing", s.alice, s.ic.GetId() + "/r1"},
		} {
			if err := s.h.m.pair(s.h.ctx(), c.session, c.pairingID, acceptWith(conn)); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("%s: got %v, want ECONNREFUSED", c.name, err)
			}
		}
	})
}

func TestWatchDialsEndsWithSession(t *testing.T) {
	s := newPairSetup(t, true)
	if _, err := s.h.mc.Depart(s.h.ctx(), &managerv1.SessionRef{SessionId: s.alice}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.dials.Recv(); err == nil {
		t.Error("WatchDials after Depart: got a request, want the stream to end")
	}
}

// TestPairThroughTunnel runs an intercepted connection the way agent and
// daemon do: the agent opens a flow with a pairing id, the client gets the
// DialRequest and opens its flow with the same id, the manager splices them.
func TestPairThroughTunnel(t *testing.T) {
	s := newPairSetup(t, true)
	ctx := s.h.ctx()
	agentDialer := tunnel.NewDialer(s.h.agents[s.agent], s.agent, nil)
	clientDialer := tunnel.NewDialer(s.h.cc, s.alice, nil)
	pairingID := s.ic.GetId() + "/7f3a"

	type dialed struct {
		conn tunnel.Conn
		err  error
	}
	agentSide := make(chan dialed, 1)
	go func() {
		c, err := agentDialer.DialFlow(ctx, tunnel.Flow{Network: "tcp", PairingID: pairingID})
		agentSide <- dialed{c, err}
	}()
	req, err := s.dials.Recv()
	if err != nil {
		t.Fatalf("WatchDials: %v", err)
	}
	if req.GetPairingId() != pairingID || req.GetLocalPort() != 8000 {
		t.Fatalf("DialRequest: got %v, want pairing %s on local port 8000", req, pairingID)
	}
	// The daemon has dialed its local port; it opens the paired flow.
	client, err := clientDialer.DialFlow(ctx, tunnel.Flow{Network: "tcp", PairingID: req.GetPairingId()})
	if err != nil {
		t.Fatalf("client DialFlow: %v", err)
	}
	defer client.Close()
	a := <-agentSide
	if a.err != nil {
		t.Fatalf("agent DialFlow: %v", a.err)
	}
	agent := a.conn
	defer agent.Close()

	exchange := func(from, to net.Conn, msg string) {
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
	exchange(agent, client, "GET / HTTP/1.1\r\n\r\n")
	exchange(client, agent, "HTTP/1.1 200 OK\r\n\r\n")
	// Half-close travels through the splice.
	if err := agent.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := client.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("client read after the agent's CloseWrite: got %d, %v, want EOF", n, err)
	}

	// A pairing nobody answers: the agent's dial times out.
	_, err = agentDialer.DialFlow(ctx, tunnel.Flow{Network: "tcp", PairingID: s.ic.GetId() + "/unanswered"})
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("agent dial nobody answers: got %v, want os.ErrDeadlineExceeded", err)
	}
	// A client answering an unknown pairing: refused.
	_, err = clientDialer.DialFlow(ctx, tunnel.Flow{Network: "tcp", PairingID: "nope/1"})
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("client dial of an unknown pairing: got %v, want ECONNREFUSED", err)
	}
}
