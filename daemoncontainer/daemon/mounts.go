//go:build linux

package daemon

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tp-run/tp/daemoncontainer/wire"
	daemonv1 "github.com/tp-run/tp/rpc/daemon/v1"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/tunnel"
)

// The daemon's half of volume mounts (docs/intercepts.md, "Volumes"). It
// listens on wire.MountPort in its network namespace; a client
// (tp's Docker volume plugin, which reaches the daemon container's address
// from the Docker host) authenticates with the token OpenMount minted for
// one of this daemon's intercepts, and its connection is spliced to a
// tunnel flow "mount/<intercept id>/<random>" that the traffic-manager pairs
// with the agent of the intercepted pod, which serves SFTP on it.

// handshakeTimeout bounds a client's handshake and the opening of its flow.
const handshakeTimeout = 10 * time.Second

// mountGrant is the token of one intercept and the connections it opened.
type mountGrant struct {
	token string
	conns map[net.Conn]struct{}
}

// mounts keeps the tokens of this daemon's intercepts and serves the mount
// listener.
type mounts struct {
	log *slog.Logger
	// dial opens the flow of a mount (pairing id mount/...).
	dial func(ctx context.Context, pairingID string) (tunnel.Conn, error)

	// state keeps owned and the tokens for the container's next start.
	state State

	mu sync.Mutex
	// owned are the intercepts this daemon created, id by namespace/name.
	owned  map[string]string
	grants map[string]*mountGrant // by intercept id
}

func newMounts(log *slog.Logger, dial func(context.Context, string) (tunnel.Conn, error)) *mounts {
	return &mounts{log: log, dial: dial, owned: map[string]string{}, grants: map[string]*mountGrant{}}
}

func interceptKey(namespace, name string) string { return namespace + "/" + name }

// created records an intercept this daemon created for its session.
func (m *mounts) created(info *managerv1.InterceptInfo) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.owned[interceptKey(info.GetSpec().GetNamespace(), info.GetSpec().GetName())] = info.GetId()
	m.saveLocked()
}

// restore takes up the intercepts and tokens of the container's previous
// start (its session was saved with them).
func (m *mounts) restore(saved savedMounts) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for key, id := range saved.Owned {
		m.owned[key] = id
	}
	for id, tok := range saved.Tokens {
		m.grants[id] = &mountGrant{token: tok, conns: map[net.Conn]struct{}{}}
	}
}

// saveLocked writes owned and the tokens to the state (m.mu held). A
// failure only costs the mounts after a restart of the container.
func (m *mounts) saveLocked() {
	v := savedMounts{Owned: m.owned, Tokens: make(map[string]string, len(m.grants))}
	for id, g := range m.grants {
		v.Tokens[id] = g.token
	}
	if err := m.state.saveMounts(v); err != nil {
		m.log.Warn("cannot save the mount tokens: after a restart of the daemon container, tp's volumes will not mount", "error", err)
	}
}

// token returns the token of an intercept this daemon owns, minting it the
// first time.
func (m *mounts) token(interceptID string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	owned := false
	for _, id := range m.owned {
		owned = owned || id == interceptID
	}
	if !owned {
		return "", status.Errorf(codes.NotFound, "no intercept %q of this connection (create it with tp intercept first)", interceptID)
	}
	if g := m.grants[interceptID]; g != nil {
		return g.token, nil
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", status.Errorf(codes.Internal, "mint a mount token: %v", err)
	}
	g := &mountGrant{token: hex.EncodeToString(b), conns: map[net.Conn]struct{}{}}
	m.grants[interceptID] = g
	m.saveLocked()
	m.log.Info("mount token minted", "intercept", interceptID)
	return g.token, nil
}

// removed forgets the intercept namespace/name (removed through the
// daemon): its token, and its open mounts are closed.
func (m *mounts) removed(namespace, name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	key := interceptKey(namespace, name)
	if id, ok := m.owned[key]; ok {
		delete(m.owned, key)
		m.forgetLocked(id)
		m.saveLocked()
	}
}

// sessionEnded forgets every intercept: they ended with the session.
func (m *mounts) sessionEnded() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for key, id := range m.owned {
		delete(m.owned, key)
		m.forgetLocked(id)
	}
	m.saveLocked()
}

func (m *mounts) forgetLocked(id string) {
	g := m.grants[id]
	if g == nil {
		return
	}
	delete(m.grants, id)
	for c := range g.conns {
		c.Close()
	}
	m.log.Info("mount token forgotten", "intercept", id, "closedMounts", len(g.conns))
}

// lookup returns the intercept whose token is tok, comparing with every
// token in constant time.
func (m *mounts) lookup(tok string) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	found := ""
	for id, g := range m.grants {
		if subtle.ConstantTimeCompare([]byte(g.token), []byte(tok)) == 1 {
			found = id
		}
	}
	return found, found != ""
}

// track registers c as a mount of intercept id; false when its token was
// forgotten meanwhile.
func (m *mounts) track(id string, c net.Conn) (untrack func(), ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	g := m.grants[id]
	if g == nil {
		return nil, false
	}
	g.conns[c] = struct{}{}
	return func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		delete(g.conns, c)
	}, true
}

// serve accepts mount connections on lis until ctx ends; it returns when
// every connection has ended.
func (m *mounts) serve(ctx context.Context, lis net.Listener) error {
	stop := context.AfterFunc(ctx, func() { lis.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := lis.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			m.log.Warn("mount listener: accept failed", "error", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.handle(ctx, c)
		}()
	}
}

// handle serves one mount connection: handshake, flow, splice.
func (m *mounts) handle(ctx context.Context, c net.Conn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	log := m.log.With("peer", c.RemoteAddr().String())
	_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
	refuse := func(reason string, args ...any) {
		reason = strings.ReplaceAll(fmt.Sprintf(reason, args...), "\n", " ")
		_, _ = io.WriteString(c, "ERR "+reason+"\n")
	}
	line, err := wire.ReadMountLine(c)
	if err != nil {
		log.Warn("mount refused: no handshake", "error", err)
		return
	}
	word, version, tok := splitHello(line)
	switch {
	case word != "TP-MOUNT":
		log.Warn("mount refused: not a tp mount handshake")
		refuse("expected %q", wire.MountProtocol+" <token>")
		return
	case version != "1":
		log.Warn("mount refused: protocol version", "version", version)
		refuse("mount protocol version %q is not supported; this daemon speaks %q (use the tp of the daemon's version)", version, wire.MountProtocol)
		return
	}
	id, ok := m.lookup(tok)
	if !ok {
		log.Warn("mount refused: unknown token")
		refuse("unknown token")
		return
	}
	log = log.With("intercept", id)
	dctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	flow, err := m.dial(dctx, "mount/"+id+"/"+randomHex(8))
	cancel()
	if err != nil {
		log.Warn("mount: cannot reach the intercepted pod's volumes", "error", err)
		refuse("cannot reach the intercepted pod's volumes through the traffic-manager: %v", err)
		return
	}
	untrack, ok := m.track(id, c)
	if !ok {
		flow.Close()
		refuse("the intercept ended")
		return
	}
	defer untrack()
	if _, err := io.WriteString(c, "OK\n"); err != nil {
		flow.Close()
		return
	}
	_ = c.SetDeadline(time.Time{})
	log.Info("mount opened")
	if err := tunnel.Splice(ctx, flow, c); err != nil {
		log.Debug("mount ended", "error", err)
	}
	log.Info("mount closed")
}

// splitHello splits "TP-MOUNT 1 <token>".
func splitHello(line string) (word, version, token string) {
	f := strings.Fields(line)
	if len(f) != 3 {
		return "", "", ""
	}
	return f[0], f[1], f[2]
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// OpenMount implements daemonv1.DaemonServer. It does not need the manager
// now: a mount made while the daemon reconnects gets ERR from the listener
// until the connection is back.
func (d *daemon) OpenMount(_ context.Context, req *daemonv1.OpenMountRequest) (*daemonv1.OpenMountResponse, error) {
	tok, err := d.mounts.token(req.GetInterceptId())
	if err != nil {
		return nil, err
	}
	return &daemonv1.OpenMountResponse{Port: wire.MountPort, Token: tok}, nil
}

// dialMount opens a mount flow through the connection's tunnel.
func (c *connector) dialMount(ctx context.Context, pairingID string) (tunnel.Conn, error) {
	d := c.dialer.Load()
	if d == nil {
		return nil, errors.New("not connected to the traffic-manager")
	}
	return d.DialFlow(ctx, tunnel.Flow{Network: "tcp", PairingID: pairingID})
}
