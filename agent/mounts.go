package agent

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/tunnel"
)

// watchMounts serves the SFTP sessions the manager asks for
// (WatchMountRequests): for each MountRequest it opens a tunnel flow with
// the request's pairing id, which the manager splices to the flow of the
// intercept's owner, and serves one SFTP session of the export on it. When
// the stream breaks it subscribes again; it returns errSessionGone when the
// manager no longer knows the session. A manager without the RPC gets no
// mounts.
func (a *agent) watchMounts(ctx context.Context, client managerv1.ManagerClient, id string) error {
	backoff := newBackoff()
	for {
		err := a.watchMountsOnce(ctx, client, id, backoff)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case sessionUnknown(err):
			return fmt.Errorf("watch mount requests: %w: %v", errSessionGone, err)
		case status.Code(err) == codes.Unimplemented:
			a.log.Info("the traffic-manager serves no volume mounts; the pod's volumes are not exported", "err", err)
			<-ctx.Done()
			return ctx.Err()
		}
		a.log.Debug("mount request watch broke; subscribing again", "err", err)
		if !sleep(ctx, backoff.next()) {
			return ctx.Err()
		}
	}
}

func (a *agent) watchMountsOnce(ctx context.Context, client managerv1.ManagerClient, id string, backoff *backoff) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.WatchMountRequests(ctx, &managerv1.SessionRef{SessionId: id})
	if err != nil {
		return err
	}
	for {
		req, err := stream.Recv()
		if err != nil {
			return err
		}
		backoff.reset()
		a.connsWG.Add(1)
		go func() {
			defer a.connsWG.Done()
			a.serveMount(ctx, req)
		}()
	}
}

// serveMount answers one MountRequest: a flow with its pairing id, one SFTP
// session on it.
func (a *agent) serveMount(ctx context.Context, req *managerv1.MountRequest) {
	log := a.log.With("intercept", req.GetInterceptId(), "pairing", req.GetPairingId())
	d := a.dialer.Load()
	if d == nil {
		log.Debug("mount request without a session; ignored")
		return
	}
	dctx, cancel := context.WithTimeout(ctx, a.dialTimeout)
	flow, err := d.DialFlow(dctx, tunnel.Flow{Network: "tcp", PairingID: req.GetPairingId()})
	cancel()
	if err != nil {
		log.Warn("mount: cannot open the paired flow", "err", err)
		return
	}
	a.connsMu.Lock()
	a.conns[flow] = struct{}{} // closed at shutdown
	a.connsMu.Unlock()
	defer func() {
		a.connsMu.Lock()
		delete(a.conns, flow)
		a.connsMu.Unlock()
	}()
	if a.export == nil {
		log.Warn("mount: the volumes of the pod cannot be exported (see the agent's start-up log); closing the session")
		flow.Close()
		return
	}
	log.Info("serving the pod's volumes over SFTP to the intercept's owner")
	if err := a.export.serve(ctx, flow); err != nil {
		log.Debug("SFTP session ended", "err", err)
	}
	log.Debug("SFTP session closed")
}
