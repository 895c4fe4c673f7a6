//go:build linux

package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/rest"

	"github.com/tp-run/tp/internal/kube"
	"github.com/tp-run/tp/internal/sessionid"
	daemonv1 "github.com/tp-run/tp/rpc/daemon/v1"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/tunnel"
)

// managerSelector finds the traffic-manager's pods.
const managerSelector = "app=traffic-manager"

// managerPort is the traffic-manager's gRPC port (manager.Port; not imported
// to keep the daemon independent of the manager's code).
const managerPort = 8081

// maxHeartbeat bounds the heartbeat interval.
const maxHeartbeat = 5 * time.Second

// slowDial is the dial time worth a warning.
const slowDial = 500 * time.Millisecond

const connectedState = daemonv1.ConnectionState_CONNECTION_STATE_CONNECTED

// connector owns the connection to the traffic-manager: port-forward, gRPC
// connection, session and heartbeats, and reconnects when any of them fails.
type connector struct {
	cfg  Config
	rest *rest.Config
	kube *kube.Client
	log  *slog.Logger

	// dialer carries flows while connected; nil while not.
	dialer atomic.Pointer[tunnel.Dialer]
	// parked runs the parked flows of the current WatchDials stream (parking.go).
	parked atomic.Pointer[parker]
	// sessions receives every new session (first connect and reconnects).
	sessions chan *managerv1.SessionInfo
	// cluster is the latest ClusterInfo of the session (routes.go).
	cluster *clusterFeed

	mu             sync.Mutex
	state          daemonv1.ConnectionState
	lastErr        string
	session        *managerv1.SessionInfo
	connectedSince time.Time
	reconnects     int32
	// resumes counts the reconnects that resumed the session; lastResumed
	// is when the last one did.
	resumes     int32
	lastResumed time.Time
	client      managerv1.ManagerClient

	// newSession, if set, is called for every session taken (resumed: the
	// previous one was taken up again, with its intercepts).
	newSession func(resumed bool)
	// savedSession is the session a previous start of this container held
	// (State): the first connect resumes it, so that a daemon restarted by
	// Docker keeps its intercepts.
	savedSession string
	// depart says the daemon ends the connection (Quit): the session is
	// given up at the manager. Without it (SIGTERM from `docker stop` or an
	// engine shutdown) the session stays for the next start to resume, and
	// expires after its TTL if none comes.
	depart atomic.Bool
}

func newConnector(cfg Config, rc *rest.Config, kc *kube.Client, log *slog.Logger) *connector {
	return &connector{cfg: cfg, rest: rc, kube: kc, log: log,
		sessions: make(chan *managerv1.SessionInfo, 1),
		cluster:  newClusterFeed(),
		state:    daemonv1.ConnectionState_CONNECTION_STATE_CONNECTING}
}

// permanentError marks failures that retrying will not fix (RBAC, protocol
// mismatch, bad credentials): the first connect gives up on them.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// permanent marks err as one that retrying will not fix.
func permanent(err error) error { return permanentError{err} }

func isPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

// run connects and reconnects until ctx ends; then it departs.
func (c *connector) run(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	for {
		connected, err := c.connectOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		c.mu.Lock()
		everConnected := c.session != nil || c.reconnects > 0
		c.lastErr = err.Error()
		if isPermanent(err) && !everConnected {
			c.state = daemonv1.ConnectionState_CONNECTION_STATE_FAILED
			c.mu.Unlock()
			c.log.Error("cannot connect; giving up", "error", err)
			<-ctx.Done() // stay up so `tp connect` can read why, then be removed
			return nil
		}
		if everConnected {
			c.state = daemonv1.ConnectionState_CONNECTION_STATE_RECONNECTING
		}
		c.mu.Unlock()
		if connected {
			backoff = 100 * time.Millisecond
		}
		c.log.Warn("connection to traffic-manager lost or failed; retrying", "error", err, "in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// connectOnce runs one connection: it returns when the connection fails
// (connected says whether a session was established) or ctx ends.
func (c *connector) connectOnce(ctx context.Context) (connected bool, err error) {
	pod, err := c.managerPod(ctx)
	if err != nil {
		return false, err
	}
	if err := c.checkPortForwardAllowed(ctx); err != nil {
		return false, err
	}
	pf, err := kube.NewPortForwarder(ctx, c.rest, c.cfg.ManagerNamespace, pod)
	if err != nil {
		return false, classifyKubeErr(err, c.cfg.ManagerNamespace)
	}
	defer pf.Close()
	cc, err := pf.DialGRPC(managerPort, tunnel.DialOptions()...)
	if err != nil {
		return false, err
	}
	defer cc.Close()
	client := managerv1.NewManagerClient(cc)

	rpcCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := client.Version(rpcCtx, &managerv1.VersionRequest{})
	if err != nil {
		return false, fmt.Errorf("traffic-manager pod %s/%s: version: %w", c.cfg.ManagerNamespace, pod, classifyKubeErr(err, c.cfg.ManagerNamespace))
	}
	if v.GetProtocolVersion() != tunnel.ProtocolVersion {
		return false, permanent(fmt.Errorf("traffic-manager %s speaks protocol %d, this tp %s speaks %d: run `tp helm upgrade` to install the manager of this version", v.GetVersion(), v.GetProtocolVersion(), c.cfg.Version, tunnel.ProtocolVersion))
	}
	host := os.Getenv("TP_HOST") // the workstation's name, set by tp connect
	if host == "" {
		host, _ = os.Hostname()
	}
	info := &managerv1.ClientInfo{
		Name: c.cfg.Connection, Namespace: c.cfg.Namespace, Host: host, User: os.Getenv("TP_USER"),
		Version: c.cfg.Version, ProtocolVersion: tunnel.ProtocolVersion,
	}
	sess, resumed, err := c.takeSession(rpcCtx, client, info)
	if err != nil {
		return false, err
	}
	if c.newSession != nil {
		c.newSession(resumed)
	}
	log := c.log.With("session", sessionid.Public(sess.GetSessionId()), "managerPod", pod)
	if err := c.cfg.State.saveSession(sess.GetSessionId()); err != nil {
		log.Warn("cannot save the session: a restart of the daemon container will not resume it", "error", err)
	}
	spread := tunnel.NewSpread(cc)
	c.dialer.Store(tunnel.NewDialer(spread, sess.GetSessionId(), log))
	defer c.dialer.Store(nil)
	c.mu.Lock()
	if c.session != nil {
		c.reconnects++
	}
	if resumed {
		c.resumes++
		c.lastResumed = time.Now()
	}
	c.session, c.client = sess, client
	c.state = daemonv1.ConnectionState_CONNECTION_STATE_CONNECTED
	c.lastErr = ""
	c.connectedSince = time.Now()
	c.mu.Unlock()
	log.Info("connected to traffic-manager", "resumed", resumed, "managerVersion", sess.GetManagerVersion(),
		"podCIDRs", sess.GetCluster().GetPodCidrs(), "serviceCIDRs", sess.GetCluster().GetServiceCidrs())
	select {
	case c.sessions <- sess:
	default: // the network is set up once; later sessions only replace the dialer
	}

	defer func() { // leave nicely when we are the ones ending the session
		if ctx.Err() != nil && c.depart.Load() {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			_, _ = client.Depart(dctx, &managerv1.SessionRef{SessionId: sess.GetSessionId()})
			log.Info("departed from traffic-manager")
		} else if ctx.Err() != nil {
			log.Info("stopping without departing: the session stays for the container's next start (or expires after its TTL)",
				"ttl", sess.GetTtl().AsDuration())
		}
	}()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.heartbeat(gctx, client, sess, pf.Done()) })
	g.Go(func() error { return c.watchCluster(gctx, client, sess, log) })
	g.Go(func() error { c.spreadFlows(gctx, spread, pod, log); return nil })
	g.Go(func() error {
		if err := c.watchDials(gctx, client, c.dialer.Load(), sess.GetSessionId(), log); err != nil {
			return err
		}
		<-gctx.Done() // the stream ended cleanly: keep the session until the heartbeat fails
		return nil
	})
	return true, g.Wait()
}

// takeSession resumes the session of the previous connection, if there was
// one, so that its intercepts stay; it arrives anew when there was none or
// the manager no longer has it (expired or removed: its intercepts ended).
func (c *connector) takeSession(ctx context.Context, client managerv1.ManagerClient, info *managerv1.ClientInfo) (sess *managerv1.SessionInfo, resumed bool, err error) {
	c.mu.Lock()
	prevID := c.session.GetSessionId()
	c.mu.Unlock()
	if prevID == "" {
		prevID = c.savedSession
	}
	if prevID != "" {
		sess, err := client.ResumeSession(ctx, &managerv1.ResumeSessionRequest{SessionId: prevID, Client: info})
		switch status.Code(err) {
		case codes.OK:
			return sess, true, nil
		case codes.NotFound:
			c.log.Warn("the traffic-manager no longer has the session (it expired or was removed); its intercepts ended; arriving anew",
				"session", sessionid.Public(prevID), "error", status.Convert(err).Message())
		case codes.FailedPrecondition:
			return nil, false, permanent(errors.New(status.Convert(err).Message()))
		default:
			return nil, false, fmt.Errorf("resume the session at the traffic-manager: %w", err)
		}
	}
	sess, err = client.ArriveAsClient(ctx, info)
	if err != nil {
		if status.Code(err) == codes.FailedPrecondition {
			return nil, false, permanent(errors.New(status.Convert(err).Message()))
		}
		return nil, false, fmt.Errorf("arrive at traffic-manager: %w", err)
	}
	return sess, false, nil
}

// heartbeat keeps the session alive until it fails or ctx ends.
func (c *connector) heartbeat(ctx context.Context, client managerv1.ManagerClient, sess *managerv1.SessionInfo, pfDone <-chan bool) error {
	interval := c.cfg.Heartbeat
	if interval <= 0 {
		// TTL/3, but at most maxHeartbeat: with a TTL of minutes the
		// heartbeat is also what notices a connection that hangs.
		interval = min(max(sess.GetTtl().AsDuration()/3, 500*time.Millisecond), maxHeartbeat)
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	missed := 0
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-pfDone:
			return errors.New("port-forward to the traffic-manager closed (manager pod gone or API server unreachable)")
		case <-tick.C:
			rctx, cancel := context.WithTimeout(ctx, interval)
			_, err := client.Remain(rctx, &managerv1.SessionRef{SessionId: sess.GetSessionId()})
			cancel()
			switch {
			case err == nil:
				missed = 0
			case status.Code(err) == codes.NotFound:
				return fmt.Errorf("heartbeat: the manager no longer knows the session: %w", err)
			default:
				// One slow heartbeat (a busy API server or node) is not a lost
				// connection: tearing it down would fail the calls in flight. The
				// session survives a miss (interval is TTL/3); two in a row end it.
				missed++
				c.log.Warn("heartbeat failed", "missed", missed, "error", err)
				if missed >= 2 {
					return fmt.Errorf("heartbeat: %w", err)
				}
			}
		}
	}
}

// managerPod returns the name of a ready traffic-manager pod.
func (c *connector) managerPod(ctx context.Context) (string, error) {
	pods, err := c.kube.ListPods(ctx, c.cfg.ManagerNamespace, managerSelector)
	if err != nil {
		return "", classifyKubeErr(err, c.cfg.ManagerNamespace)
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && podReady(&p) {
			return p.Name, nil
		}
	}
	return "", fmt.Errorf("no ready traffic-manager pod in namespace %s (%d found): is it installed? run `tp helm install`", c.cfg.ManagerNamespace, len(pods.Items))
}

// checkPortForwardAllowed asks the API server whether this user may
// port-forward to the manager, so that a missing permission is reported as
// such at once instead of as a failed upgrade retried forever.
func (c *connector) checkPortForwardAllowed(ctx context.Context) error {
	review := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: c.cfg.ManagerNamespace, Verb: "create", Resource: "pods", Subresource: "portforward",
		},
	}}
	resp, err := c.kube.CreateSelfSubjectAccessReview(ctx, review)
	if err != nil {
		return nil // cannot tell; the port-forward itself will say
	}
	if !resp.Status.Allowed {
		return permanent(fmt.Errorf("your user may not port-forward to pods in namespace %s (RBAC): ask your cluster admin for create on pods/portforward there", c.cfg.ManagerNamespace))
	}
	return nil
}

func podReady(p *corev1.Pod) bool {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// classifyKubeErr marks API errors retrying cannot fix and says what to do.
func classifyKubeErr(err error, namespace string) error {
	switch {
	case apierrors.IsForbidden(err):
		return permanent(fmt.Errorf("%w: your user may not list or port-forward to pods in namespace %s; ask for RBAC on pods (get, list) and pods/portforward (create)", err, namespace))
	case apierrors.IsUnauthorized(err):
		return permanent(fmt.Errorf("%w: the cluster rejected the kubeconfig's credentials; refresh them (e.g. log in again) and reconnect", err))
	}
	return err
}

// dial opens a flow through the tunnel, or fails like an unreachable network
// while disconnected.
func (c *connector) dial(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
	d := c.dialer.Load()
	if d == nil {
		return nil, fmt.Errorf("not connected to the traffic-manager: %w", syscall.EHOSTUNREACH)
	}
	start := time.Now()
	conn, err := d.Dial(ctx, network, dst)
	if took := time.Since(start); took > slowDial {
		// A client retransmits its SYN after 1 s: say so when the tunnel is that slow.
		c.log.Warn("slow dial through the tunnel", "network", network, "dst", dst, "took", took, "error", err)
	}
	return conn, err
}

// status fills the connection part of the daemon's status.
func (c *connector) status(s *daemonv1.StatusResponse) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s.State = c.state
	s.LastError = c.lastErr
	s.Reconnects = c.reconnects
	s.Resumes = c.resumes
	if !c.lastResumed.IsZero() {
		s.LastResumed = timestamppb.New(c.lastResumed)
	}
	if c.session != nil {
		s.SessionId = sessionid.Public(c.session.GetSessionId()) // the secret stays in the daemon
		s.ManagerVersion = c.session.GetManagerVersion()
	}
	if !c.connectedSince.IsZero() && c.state == daemonv1.ConnectionState_CONNECTION_STATE_CONNECTED {
		s.ConnectedSince = timestamppb.New(c.connectedSince)
	}
}
