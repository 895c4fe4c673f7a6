//go:build linux

package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"

	"github.com/tp-run/tp/internal/kube"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/tunnel"
)

// flowSessions is how many port-forward sessions to the manager carry flows,
// the session's own included. Each is its own TLS connection to the API
// server and its own stream to the kubelet: one of them is the ceiling of
// the flows it carries (one goroutine decrypts it, spdystream frames it,
// the API server relays it), so flows spread over several (least loaded
// first, tunnel.Spread) move more in total.
const flowSessions = 4

// spreadFlows adds flowSessions-1 port-forward sessions to the manager pod
// to spread, each with its own gRPC connection, and keeps them up until ctx
// ends: one that fails is removed (its flows fail with it, as on the first
// connection) and opened again. The first connection carries the session,
// its heartbeats and the unary calls; its loss ends the connection as before.
func (c *connector) spreadFlows(ctx context.Context, spread *tunnel.Spread, pod string, log *slog.Logger) {
	var wg sync.WaitGroup
	for i := 1; i < flowSessions; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.keepFlowSession(ctx, spread, pod, log.With("flowSession", i))
		}()
	}
	wg.Wait()
}

// keepFlowSession keeps one extra port-forward session in spread. The
// pause before the next attempt grows while attempts fail and starts small
// again after a session that carried flows.
func (c *connector) keepFlowSession(ctx context.Context, spread *tunnel.Spread, pod string, log *slog.Logger) {
	const firstBackoff = 500 * time.Millisecond
	backoff := firstBackoff
	for {
		added, err := c.flowSession(ctx, spread, pod)
		if ctx.Err() != nil {
			return
		}
		if added {
			backoff = firstBackoff
		}
		log.Warn("extra port-forward session to the traffic-manager lost or failed; flows use the others; retrying",
			"error", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

// flowSession opens one port-forward session and gRPC connection, adds it
// to spread while it lasts and removes it when the session ends; added says
// whether it got that far.
func (c *connector) flowSession(ctx context.Context, spread *tunnel.Spread, pod string) (added bool, err error) {
	pf, err := kube.NewPortForwarder(ctx, c.rest, c.cfg.ManagerNamespace, pod)
	if err != nil {
		return false, err
	}
	defer pf.Close()
	// Without calls of its own the connection must not go idle: it would
	// leave Ready, which counts as lost below.
	cc, err := pf.DialGRPC(managerPort, append(tunnel.DialOptions(), grpc.WithIdleTimeout(0))...)
	if err != nil {
		return false, err
	}
	defer cc.Close()
	// A call connects it: flows never wait for this connection's handshake.
	vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = managerv1.NewManagerClient(cc).Version(vctx, &managerv1.VersionRequest{})
	cancel()
	if err != nil {
		return false, fmt.Errorf("traffic-manager pod %s/%s: version: %w", c.cfg.ManagerNamespace, pod, err)
	}
	spread.Add(cc)
	defer spread.Remove(cc)
	// The connection leaves Ready when its port-forward stream breaks (the
	// session closed, the manager gone, keepalive timed out): then it
	// would only fail new flows.
	if cc.WaitForStateChange(ctx, connectivity.Ready) {
		sessionClosed := false
		select {
		case <-pf.Done():
			sessionClosed = true
		default:
		}
		return true, fmt.Errorf("gRPC connection to traffic-manager pod %s/%s: %s (port-forward session closed: %t)",
			c.cfg.ManagerNamespace, pod, cc.GetState(), sessionClosed)
	}
	return true, ctx.Err()
}
