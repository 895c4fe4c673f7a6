package tunnel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sync/errgroup"
)

// testPairer pairs two flows with the same pairing id: the first waits, the
// second splices both.
type testPairer struct {
	mu      sync.Mutex
	waiting map[string]pairHalf
}

type pairHalf struct {
	accept func() (Conn, error)
	done   chan struct{}
}

func (p *testPairer) pair(ctx context.Context, _, id string, accept func() (Conn, error)) error {
	switch id {
	case "refuse":
		return fmt.Errorf("nobody intercepts that: %w", syscall.ECONNREFUSED)
	case "timeout":
		return fmt.Errorf("the client did not answer: %w", os.ErrDeadlineExceeded)
	}
	p.mu.Lock()
	first, ok := p.waiting[id]
	if !ok {
		me := pairHalf{accept: accept, done: make(chan struct{})}
		p.waiting[id] = me
		p.mu.Unlock()
		select {
		case <-me.done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	delete(p.waiting, id)
	p.mu.Unlock()
	defer close(first.done)
	a, err := first.accept()
	if err != nil {
		return err
	}
	b, err := accept()
	if err != nil {
		a.Close()
		return err
	}
	return Splice(ctx, a, b)
}

func TestPairing(t *testing.T) {
	env := newEnv(t, envConfig{})
	env.server.HandlePairing((&testPairer{waiting: map[string]pairHalf{}}).pair)
	ctx := testContext(t)

	var agent, client Conn
	var g errgroup.Group
	g.Go(func() (err error) {
		agent, err = env.dialer.DialFlow(ctx, Flow{
			Network:     "tcp",
			Destination: netip.MustParseAddrPort("10.1.2.3:8080"),
			Source:      netip.MustParseAddrPort("10.9.9.9:40000"),
			PairingID:   "ic-1/r1",
		})
		return err
	})
	g.Go(func() (err error) {
		client, err = env.dialer.DialFlow(ctx, Flow{Network: "tcp", PairingID: "ic-1/r1"})
		return err
	})
	if err := g.Wait(); err != nil {
		t.Fatalf("DialFlow: %v", err)
	}
	defer agent.Close()
	defer client.Close()

	// The agent side sends a request and half-closes; the client side
	// answers it, like an intercepted HTTP exchange.
	request := pattern(3<<20, 5)
	g.Go(func() error {
		if _, err := agent.Write(request); err != nil {
			return err
		}
		return agent.CloseWrite()
	})
	got, err := io.ReadAll(client)
	if err != nil {
		t.Fatalf("client ReadAll: %v", err)
	}
	if !bytes.Equal(got, request) {
		t.Fatalf("client got %d bytes, want the %d the agent sent", len(got), len(request))
	}
	client.Write([]byte("response"))
	client.CloseWrite()
	reply, err := io.ReadAll(agent)
	if err != nil || string(reply) != "response" {
		t.Fatalf("agent ReadAll: got %q, %v, want %q", reply, err, "response")
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("agent write: %v", err)
	}
}

func TestPairingErrors(t *testing.T) {
	tests := []struct {
		id   string
		want error
	}{
		{id: "refuse", want: syscall.ECONNREFUSED},
		{id: "timeout", want: os.ErrDeadlineExceeded},
	}
	env := newEnv(t, envConfig{})
	flow := Flow{Network: "tcp", Destination: netip.MustParseAddrPort("10.1.2.3:80")}

	flow.PairingID = "no-pairing-handler"
	if _, err := env.dialer.DialFlow(testContext(t), flow); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("DialFlow without a PairFunc: got %v, want ECONNREFUSED", err)
	}

	env.server.HandlePairing((&testPairer{waiting: map[string]pairHalf{}}).pair)
	for _, tt := range tests {
		flow.PairingID = tt.id
		if _, err := env.dialer.DialFlow(testContext(t), flow); !errors.Is(err, tt.want) {
			t.Errorf("DialFlow(%q): got %v, want %v", tt.id, err, tt.want)
		}
	}

	// A flow whose partner never comes ends when its dial is cancelled.
	ctx, cancel := context.WithCancel(testContext(t))
	flow.PairingID = "lonely"
	errc := make(chan error, 1)
	go func() {
		_, err := env.dialer.DialFlow(ctx, flow)
		errc <- err
	}()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("DialFlow(lonely), cancelled: got %v, want context.Canceled", err)
	}
}
