//go:build linux

package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tp-run/tp/daemoncontainer/wire"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/tunnel"
)

// mountBed is a mount listener whose flows go to a loopback "agent".
type mountBed struct {
	m       *mounts
	addr    string
	agent   net.Listener
	mu      sync.Mutex
	pairing []string
}

func newMountBed(t *testing.T) *mountBed {
	t.Helper()
	agent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Close() })
	b := &mountBed{agent: agent}
	b.m = newMounts(slog.New(slog.DiscardHandler), func(ctx context.Context, pairingID string) (tunnel.Conn, error) {
		b.mu.Lock()
		b.pairing = append(b.pairing, pairingID)
		b.mu.Unlock()
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", agent.Addr().String())
		if err != nil {
			return nil, err
		}
		return c.(*net.TCPConn), nil
	})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = lis.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.m.serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("the mount listener did not stop")
		}
	})
	return b
}

func (b *mountBed) intercept(t *testing.T, id, ns, name string) string {
	t.Helper()
	b.m.created(&managerv1.InterceptInfo{Id: id, Spec: &managerv1.InterceptSpec{Name: name, Namespace: ns}})
	tok, err := b.m.token(id)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func dialMount(t *testing.T, addr, token string) (net.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return wire.DialMount(ctx, addr, token)
}

func TestMountTokens(t *testing.T) {
	b := newMountBed(t)
	tok := b.intercept(t, "ic-1", "shop", "echo")
	if len(tok) != 64 {
		t.Errorf("token %q: want 32 bytes in hex", tok)
	}
	if again, _ := b.m.token("ic-1"); again != tok {
		t.Errorf("second OpenMount: got %q, want the same token", again)
	}
	other := b.intercept(t, "ic-2", "shop", "db")
	if other == tok {
		t.Error("two intercepts got the same token")
	}
	if _, err := b.m.token("ic-of-someone-else"); status.Code(err) != codes.NotFound {
		t.Errorf("token of an intercept this daemon does not own: got %v, want NotFound", err)
	}
	b.m.removed("shop", "echo")
	if _, err := b.m.token("ic-1"); status.Code(err) != codes.NotFound {
		t.Errorf("token after the intercept was removed: got %v, want NotFound", err)
	}
	if _, ok := b.m.lookup(tok); ok {
		t.Error("the removed intercept's token is still accepted")
	}
	b.m.sessionEnded()
	if _, ok := b.m.lookup(other); ok {
		t.Error("a token is still accepted after the session ended")
	}
}

func TestMountHandshake(t *testing.T) {
	b := newMountBed(t)
	tok := b.intercept(t, "ic-1", "shop", "echo")

	for name, hello := range map[string]string{
		"wrong token":      wire.MountHello(strings.Repeat("0", 64)),
		"empty token":      "TP-MOUNT 1 \n",
		"other version":    "TP-MOUNT 2 " + tok + "\n",
		"not a handshake":  "SSH-2.0-OpenSSH_9.6\r\n",
		"token of nothing": "TP-MOUNT 1 x\n",
	} {
		c, err := net.Dial("tcp", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, hello)
		line, err := wire.ReadMountLine(c)
		if err != nil || !strings.HasPrefix(line, "ERR ") {
			t.Errorf("%s: got %q, %v, want ERR <reason>", name, line, err)
		}
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Errorf("%s: after ERR got %v, want the connection closed", name, err)
		}
		c.Close()
	}
	if _, err := dialMount(t, b.addr, "bad"); !errors.Is(err, wire.ErrMountRefused) {
		t.Errorf("DialMount with a wrong token: got %v, want ErrMountRefused", err)
	}
	b.mu.Lock()
	if len(b.pairing) != 0 {
		t.Errorf("refused handshakes opened flows: %v", b.pairing)
	}
	b.mu.Unlock()

	// The right token: OK, then the connection is spliced to the flow.
	c, err := dialMount(t, b.addr, tok)
	if err != nil {
		t.Fatalf("DialMount: %v", err)
	}
	defer c.Close()
	agent, err := b.agent.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	b.mu.Lock()
	if len(b.pairing) != 1 || !strings.HasPrefix(b.pairing[0], "mount/ic-1/") || len(b.pairing[0]) <= len("mount/ic-1/") {
		t.Errorf("flow pairing ids: got %v, want one mount/ic-1/<random>", b.pairing)
	}
	b.mu.Unlock()
	io.WriteString(c, "sftp bytes")
	buf := make([]byte, 10)
	agent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(agent, buf); err != nil || string(buf) != "sftp bytes" {
		t.Fatalf("at the agent: got %q, %v", buf, err)
	}
	io.WriteString(agent, "answer")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf[:6]); err != nil || string(buf[:6]) != "answer" {
		t.Fatalf("at the client: got %q, %v", buf[:6], err)
	}

	// Removing the intercept through the daemon closes its mounts.
	b.m.removed("shop", "echo")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(buf); err == nil {
		t.Error("mount still open after the intercept was removed")
	}
	if _, err := dialMount(t, b.addr, tok); !errors.Is(err, wire.ErrMountRefused) {
		t.Errorf("DialMount with the removed intercept's token: got %v, want ErrMountRefused", err)
	}
}

// A client that connects and says nothing is cut after the handshake timeout
// (here: does not block the listener for others).
func TestMountSilentClient(t *testing.T) {
	b := newMountBed(t)
	tok := b.intercept(t, "ic-1", "shop", "echo")
	silent, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	c, err := dialMount(t, b.addr, tok)
	if err != nil {
		t.Fatalf("DialMount next to a silent client: %v", err)
	}
	c.Close()
}
