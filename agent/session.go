package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tp-run/tp/internal/version"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/tunnel"
)

const (
	// rpcTimeout bounds the unary calls to the manager.
	rpcTimeout = 10 * time.Second
	// defaultTTL is assumed when the manager announces no session TTL.
	defaultTTL = 15 * time.Second
	minBackoff = 200 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// errSessionGone ends a session: the manager forgot it (expired, or the
// manager restarted) or could not be reached for longer than its TTL.
var errSessionGone = errors.New("session gone")

// manage keeps a session with the traffic-manager until ctx ends: it
// arrives, keeps the session alive, watches the intercepts, and arrives anew
// with backoff whenever the session is lost. Without a session everything
// goes to the app.
func (a *agent) manage(ctx context.Context, client managerv1.ManagerClient, cc grpc.ClientConnInterface) {
	backoff := newBackoff()
	var lastErr string
	for ctx.Err() == nil {
		sess, err := a.arrive(ctx, client)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			// Say it once at warning level; repeats go to debug.
			if msg := err.Error(); msg != lastErr {
				a.log.Warn("cannot arrive at the traffic-manager; routing everything to the app meanwhile",
					"manager", a.cfg.ManagerAddr, "err", err)
				lastErr = msg
			} else {
				a.log.Debug("cannot arrive at the traffic-manager", "err", err)
			}
			if !sleep(ctx, backoff.next()) {
				return
			}
			continue
		}
		lastErr = ""
		backoff.reset()
		err = a.session(ctx, client, cc, sess)
		a.dialer.Store(nil)
		a.clearRoutes()
		if ctx.Err() != nil {
			a.depart(ctx, client, sess)
			return
		}
		a.log.Warn("lost the session with the traffic-manager; routing everything to the app and arriving anew",
			"session", sess.GetSessionId(), "err", err)
		if !sleep(ctx, backoff.next()) {
			return
		}
	}
}

// arrive registers the agent with the manager.
func (a *agent) arrive(ctx context.Context, client managerv1.ManagerClient) (*managerv1.SessionInfo, error) {
	info := &managerv1.AgentInfo{
		Workload:        a.cfg.Workload,
		Namespace:       a.cfg.Namespace,
		Kind:            a.cfg.Kind,
		PodName:         a.cfg.PodName,
		PodIp:           a.cfg.PodIP.String(),
		Container:       a.cfg.Container,
		Environment:     a.cfg.Environment,
		Version:         version.Version,
		ProtocolVersion: tunnel.ProtocolVersion,
	}
	for _, m := range a.cfg.Mounts {
		info.Mounts = append(info.Mounts, &managerv1.AgentMount{Path: m.Path, ReadOnly: m.ReadOnly, File: a.export.isFile(m.Path)})
	}
	for _, p := range a.cfg.Ports {
		proto := p.Protocol
		if proto == "" {
			proto = "TCP"
		}
		info.Ports = append(info.Ports, &managerv1.AgentPort{
			ContainerPortName: p.Name, ContainerPort: p.ContainerPort, AgentPort: p.AgentPort, Protocol: proto,
		})
	}
	rctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	sess, err := client.ArriveAsAgent(rctx, info)
	if err != nil {
		if status.Code(err) == codes.FailedPrecondition {
			return nil, fmt.Errorf("the traffic-manager refuses this agent (%s); run `tp helm upgrade` so that manager and agents run the same tp release: %w",
				version.Version, err)
		}
		return nil, fmt.Errorf("arrive: %w", err)
	}
	if sess.GetSessionId() == "" {
		return nil, errors.New("arrive: the traffic-manager answered without a session id")
	}
	return sess, nil
}

// session runs one session: heartbeats and the intercept watch, until the
// session is lost or ctx ends.
func (a *agent) session(ctx context.Context, client managerv1.ManagerClient, cc grpc.ClientConnInterface, sess *managerv1.SessionInfo) error {
	ttl := sess.GetTtl().AsDuration()
	if ttl <= 0 {
		ttl = defaultTTL
	}
	log := a.log.With("session", sess.GetSessionId())
	a.dialer.Store(tunnel.NewDialer(cc, sess.GetSessionId(), log.With("component", "tunnel")))
	if !a.arrived.Swap(true) {
		log.Info("arrived at the traffic-manager", "manager", a.cfg.ManagerAddr,
			"managerVersion", sess.GetManagerVersion(), "ttl", ttl)
	} else {
		log.Info("arrived at the traffic-manager again", "managerVersion", sess.GetManagerVersion())
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.remain(gctx, client, sess.GetSessionId(), ttl) })
	g.Go(func() error { return a.watch(gctx, client, sess.GetSessionId()) })
	if len(a.cfg.Mounts) > 0 {
		g.Go(func() error { return a.watchMounts(gctx, client, sess.GetSessionId()) })
	}
	return g.Wait()
}

// remain sends heartbeats every ttl/3. It returns errSessionGone when the
// manager does not know the session or no heartbeat got through for a TTL.
func (a *agent) remain(ctx context.Context, client managerv1.ManagerClient, id string, ttl time.Duration) error {
	interval := max(ttl/3, 10*time.Millisecond)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	lastOK := time.Now()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		rctx, cancel := context.WithTimeout(ctx, max(interval, time.Second))
		_, err := client.Remain(rctx, &managerv1.SessionRef{SessionId: id})
		cancel()
		switch {
		case err == nil:
			lastOK = time.Now()
		case ctx.Err() != nil:
			return ctx.Err()
		case sessionUnknown(err):
			return fmt.Errorf("heartbeat: %w: %v", errSessionGone, err)
		case time.Since(lastOK) > ttl:
			return fmt.Errorf("heartbeat: %w: no heartbeat got through for %s: %v", errSessionGone, ttl, err)
		default:
			a.log.Debug("heartbeat failed; retrying", "err", err)
		}
	}
}

// watch keeps the routes up to date with the manager's snapshots. When the
// stream breaks it routes everything to the app and subscribes again; it
// returns errSessionGone when the manager no longer knows the session.
func (a *agent) watch(ctx context.Context, client managerv1.ManagerClient, id string) error {
	backoff := newBackoff()
	for {
		err := a.watchOnce(ctx, client, id, backoff)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case sessionUnknown(err):
			return fmt.Errorf("watch intercepts: %w: %v", errSessionGone, err)
		}
		a.clearRoutes()
		a.log.Debug("intercept watch broke; subscribing again", "err", err)
		if !sleep(ctx, backoff.next()) {
			return ctx.Err()
		}
	}
}

func (a *agent) watchOnce(ctx context.Context, client managerv1.ManagerClient, id string, backoff *backoff) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.WatchIntercepts(ctx, &managerv1.SessionRef{SessionId: id})
	if err != nil {
		return err
	}
	for {
		snap, err := stream.Recv()
		if err != nil {
			return err
		}
		backoff.reset()
		applied := a.setRoutes(snap)
		if err := a.ackRoutes(ctx, client, id, applied); err != nil {
			return err
		}
	}
}

// ackRoutes tells the manager which intercepts the routes now carry
// (RoutesApplied): CreateIntercept waits for it. A manager that does not
// know the RPC gets no acknowledgements; any other failure breaks the watch,
// which subscribes again and acknowledges its first snapshot anew.
func (a *agent) ackRoutes(ctx context.Context, client managerv1.ManagerClient, id string, applied []string) error {
	rctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	_, err := client.RoutesApplied(rctx, &managerv1.RoutesAppliedRequest{SessionId: id, InterceptIds: applied})
	switch {
	case status.Code(err) == codes.Unimplemented:
		a.log.Debug("the traffic-manager takes no routes acknowledgements", "err", err)
		return nil
	case err != nil:
		return fmt.Errorf("acknowledge routes: %w", err)
	}
	return nil
}

// sessionUnknown reports whether err says the manager does not know the
// session (NOT_FOUND, as Remain answers; UNAUTHENTICATED, as the tunnel
// does).
func sessionUnknown(err error) bool {
	switch status.Code(err) {
	case codes.NotFound, codes.Unauthenticated:
		return true
	}
	return false
}

// depart ends the session now, so the manager need not wait for its TTL.
func (a *agent) depart(ctx context.Context, client managerv1.ManagerClient, sess *managerv1.SessionInfo) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if _, err := client.Depart(dctx, &managerv1.SessionRef{SessionId: sess.GetSessionId()}); err != nil {
		a.log.Debug("depart failed", "err", err)
		return
	}
	a.log.Info("departed from the traffic-manager", "session", sess.GetSessionId())
}

// backoff is an exponential backoff with jitter.
type backoff struct{ cur time.Duration }

func newBackoff() *backoff { return &backoff{} }

func (b *backoff) reset() { b.cur = 0 }

func (b *backoff) next() time.Duration {
	b.cur = min(max(2*b.cur, minBackoff), maxBackoff)
	// ±20 % so that the agents of a workload do not arrive in lockstep
	// when the manager comes back.
	return time.Duration(float64(b.cur) * (0.8 + 0.4*rand.Float64()))
}

// sleep waits for d or ctx; it reports whether ctx is still alive.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
