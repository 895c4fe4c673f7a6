//go:build linux

package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/tp-run/tp/internal/kube"
	"github.com/tp-run/tp/internal/sessionid"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/tunnel"
)

// The daemon's half of intercepts: it forwards the CLI's requests to the
// traffic-manager with its session, and accepts intercepted connections. For
// each DialRequest on WatchDials it dials 127.0.0.1:local_port in its own
// network namespace (where the --docker-run container, or any joined
// container, listens) and opens the paired tunnel flow back to the manager.

// managerClient returns the connected session's manager client.
func (c *connector) managerClient() (managerv1.ManagerClient, string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client == nil || c.session == nil || c.state != connectedState {
		return nil, "", status.Errorf(codes.Unavailable, "not connected to the traffic-manager (state %s): see `tp status`", c.state)
	}
	return c.client, c.session.GetSessionId(), nil
}

// watchDials serves the session's intercepted connections until ctx ends or
// the stream breaks (the connection then reconnects as a whole).
func (c *connector) watchDials(ctx context.Context, client managerv1.ManagerClient, dialer *tunnel.Dialer, sessionID string, log *slog.Logger) error {
	stream, err := client.WatchDials(ctx, &managerv1.SessionRef{SessionId: sessionID})
	if err != nil {
		return fmt.Errorf("watch dials: %w", err)
	}
	var wg sync.WaitGroup
	defer wg.Wait() // every accepted connection and parked flow ends before we return
	// Parked flows wait until this stream ends; the connections they serve
	// live on like the DialRequests' ones.
	parkCtx, stopParking := context.WithCancel(ctx)
	defer stopParking() // before wg.Wait
	parked := &parker{
		ctx: parkCtx, serveCtx: ctx, wg: &wg, dialer: dialer, log: log, now: time.Now, serve: acceptParked,
		intercepts: map[string]*parkedIntercept{},
	}
	c.parked.Store(parked)
	defer c.parked.CompareAndSwap(parked, nil)
	for {
		req, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("watch dials: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.acceptIntercepted(ctx, dialer, req, log)
		}()
		// The intercept's next connections take parked flows (parking.go).
		parked.ensure(req.GetInterceptId(), localTarget(req.GetLocalPort()))
	}
}

// acceptIntercepted connects one intercepted connection to the local target.
func (c *connector) acceptIntercepted(ctx context.Context, dialer *tunnel.Dialer, req *managerv1.DialRequest, log *slog.Logger) {
	log = log.With("intercept", req.GetInterceptId(), "pairing", req.GetPairingId(), "localPort", req.GetLocalPort(), "source", req.GetSource())
	target := localTarget(req.GetLocalPort())
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	local, localErr := d.DialContext(dctx, "tcp", target.String())
	cancel()
	flow, err := dialer.DialFlow(ctx, tunnel.Flow{Network: "tcp", Destination: target, PairingID: req.GetPairingId()})
	if err != nil {
		log.Warn("intercepted connection: open the paired flow", "error", err)
		if local != nil {
			local.Close()
		}
		return
	}
	if localErr != nil {
		// Reset the cluster side at once rather than let it time out.
		log.Warn("intercepted connection: nothing listens on the local port; is the intercept's container running?",
			"target", target, "error", localErr)
		flow.Close()
		return
	}
	if err := tunnel.Splice(ctx, flow, local); err != nil {
		log.Debug("intercepted connection ended", "error", err)
	}
}

// CreateIntercept implements daemonv1.DaemonServer.
func (d *daemon) CreateIntercept(ctx context.Context, spec *managerv1.InterceptSpec) (*managerv1.InterceptInfo, error) {
	client, session, err := d.conn.managerClient()
	if err != nil {
		return nil, err
	}
	if spec.GetNamespace() == "" {
		spec.Namespace = d.cfg.Namespace
	}
	// The user's own credentials ask for the intercept on the workload: the
	// API server checks that they may patch it, the manager's webhook learns
	// who they are (docs/security.md).
	info, err := withAuthorization(ctx, d.cfg.Log.With("connection", d.cfg.Connection, "intercept", spec.GetName()), "intercept",
		func() error {
			if _, err := kube.Authorize(ctx, d.conn.kube, spec.GetNamespace(), spec.GetWorkload(), sessionid.Public(session)); err != nil {
				return kubeStatus(err)
			}
			return nil
		},
		func() (*managerv1.InterceptInfo, error) {
			return client.CreateIntercept(ctx, &managerv1.CreateInterceptRequest{SessionId: session, Spec: spec})
		})
	if err != nil {
		return nil, err
	}
	d.mounts.created(info)
	if p := d.conn.parked.Load(); p != nil {
		// The first connection takes a parked flow too (parking.go).
		p.ensure(info.GetId(), localTarget(info.GetSpec().GetLocalPort()))
	}
	d.cfg.Log.Info("intercept created", "connection", d.cfg.Connection, "intercept", info.GetId(),
		"workload", spec.GetWorkload(), "namespace", spec.GetNamespace(), "localPort", spec.GetLocalPort(), "headers", spec.GetHeaders())
	return info, nil
}

// RemoveIntercept implements daemonv1.DaemonServer.
func (d *daemon) RemoveIntercept(ctx context.Context, req *managerv1.RemoveInterceptRequest) (*managerv1.RemoveInterceptResponse, error) {
	client, session, err := d.conn.managerClient()
	if err != nil {
		return nil, err
	}
	req.SessionId = session
	if req.GetNamespace() == "" {
		req.Namespace = d.cfg.Namespace
	}
	if req.GetForce() {
		// Whoever may patch the intercepted workload may end its intercept:
		// ask with the user's own credentials on each (docs/security.md).
		ws, err := client.ListWorkloads(ctx, &managerv1.ListWorkloadsRequest{Namespace: req.GetNamespace()})
		if err != nil {
			return nil, err
		}
		for _, w := range ws.GetWorkloads() {
			if !slices.ContainsFunc(w.GetIntercepts(), func(i *managerv1.InterceptInfo) bool { return i.GetSpec().GetName() == req.GetName() }) {
				continue
			}
			if _, err := kube.Authorize(ctx, d.conn.kube, w.GetNamespace(), w.GetName(), sessionid.Public(session)); err != nil {
				return nil, kubeStatus(err)
			}
		}
	}
	resp, err := client.RemoveIntercept(ctx, req)
	if err == nil || status.Code(err) == codes.NotFound {
		d.mounts.removed(req.GetNamespace(), req.GetName())
	}
	if err == nil {
		d.cfg.Log.Info("intercept removed", "connection", d.cfg.Connection, "name", req.GetName(), "namespace", req.GetNamespace(), "force", req.GetForce())
	}
	return resp, err
}

// ListWorkloads implements daemonv1.DaemonServer.
func (d *daemon) ListWorkloads(ctx context.Context, req *managerv1.ListWorkloadsRequest) (*managerv1.ListWorkloadsResponse, error) {
	client, _, err := d.conn.managerClient()
	if err != nil {
		return nil, err
	}
	if req.GetNamespace() == "" {
		req.Namespace = d.cfg.Namespace
	}
	return client.ListWorkloads(ctx, req)
}

// UninstallAgents implements daemonv1.DaemonServer. The pod templates are
// restored with the user's own credentials; the manager then ends their
// intercepts and replaces the pods no controller replaces.
func (d *daemon) UninstallAgents(ctx context.Context, req *managerv1.UninstallAgentsRequest) (*managerv1.UninstallAgentsResponse, error) {
	client, _, err := d.conn.managerClient()
	if err != nil {
		return nil, err
	}
	var names []string
	if !req.GetAll() {
		names = req.GetWorkloads()
	}
	restored, err := kube.RestoreWorkloads(ctx, d.conn.kube, req.GetNamespace(), names)
	if err != nil {
		return nil, kubeStatus(err)
	}
	resp, err := client.UninstallAgents(ctx, req)
	if err != nil {
		return nil, err
	}
	for _, r := range resp.GetRestored() {
		if !slices.Contains(restored, r) {
			restored = append(restored, r)
		}
	}
	d.cfg.Log.Info("agents uninstalled", "connection", d.cfg.Connection, "restored", restored)
	return &managerv1.UninstallAgentsResponse{Restored: restored}, nil
}

// kubeStatus turns an error of the Kubernetes API into a gRPC status with
// the API server's own message (it names the user, verb and resource).
func kubeStatus(err error) error {
	var se apierrors.APIStatus
	switch {
	case errors.Is(err, kube.ErrNoWorkload):
		return status.Error(codes.NotFound, err.Error())
	case errors.As(err, &se) && apierrors.IsForbidden(err):
		return status.Error(codes.PermissionDenied, err.Error())
	case errors.As(err, &se) && apierrors.IsNotFound(err):
		return status.Error(codes.NotFound, err.Error())
	default:
		return status.Error(codes.Unknown, err.Error())
	}
}
