package manager

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tp-run/tp/internal/sessionid"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/tunnel"
)

// errAgentPortOnly refuses agent RPCs on the client port.
func errAgentPortOnly(method string) error {
	return status.Errorf(codes.PermissionDenied, "%s is served to traffic-agents only, on port %d with TLS and the pod's token", method, AgentPort)
}

// ArriveAsAgent implements managerv1.ManagerServer on the client port:
// refused (agents arrive on the agent port, agentServer).
func (m *Manager) ArriveAsAgent(context.Context, *managerv1.AgentInfo) (*managerv1.SessionInfo, error) {
	return nil, errAgentPortOnly("ArriveAsAgent")
}

// WatchIntercepts implements managerv1.ManagerServer on the client port:
// refused (agents watch on the agent port, agentServer).
func (m *Manager) WatchIntercepts(*managerv1.SessionRef, grpc.ServerStreamingServer[managerv1.InterceptSnapshot]) error {
	return errAgentPortOnly("WatchIntercepts")
}

// arriveAgent opens a session for the traffic-agent (one per pod) that
// caller verified, which reports its pod's environment and ports: accepted
// only for the verified pod and the workload and ports its webhook gave it.
func (m *Manager) arriveAgent(ctx context.Context, caller *agentIdentity, a *managerv1.AgentInfo) (*managerv1.SessionInfo, error) {
	if a.GetProtocolVersion() != tunnel.ProtocolVersion {
		return nil, status.Errorf(codes.FailedPrecondition,
			"traffic-agent speaks protocol %d, traffic-manager %s speaks %d: run `tp uninstall` for the workload and intercept again to get the manager's agent",
			a.GetProtocolVersion(), m.cfg.Version, tunnel.ProtocolVersion)
	}
	if a.GetWorkload() == "" || a.GetNamespace() == "" || a.GetKind() == "" {
		return nil, status.Errorf(codes.InvalidArgument, "agent: workload %q, namespace %q and kind %q must all be set",
			a.GetWorkload(), a.GetNamespace(), a.GetKind())
	}
	if err := caller.checkClaims(a); err != nil {
		m.log.Warn("agent refused", "caller", caller.String(), "peer", peerAddr(ctx), "err", status.Convert(err).Message())
		return nil, err
	}
	s, secret := m.sessions.addAgent(proto.Clone(a).(*managerv1.AgentInfo), caller.PodUID)
	m.changes.notify()
	m.log.Info("agent arrived", "session", s.id, "workload", a.GetWorkload(), "kind", a.GetKind(),
		"namespace", a.GetNamespace(), "pod", a.GetPodName(), "ports", len(a.GetPorts()), "version", a.GetVersion())
	return &managerv1.SessionInfo{
		SessionId: secret, Cluster: m.cluster.current(),
		Ttl: durationpb.New(m.cfg.AgentSessionTTL), ManagerVersion: m.cfg.Version,
	}, nil
}

// watchIntercepts sends the intercepts of the agent's workload now and after
// every change, until the agent's session ends (NotFound) or the agent goes
// away.
func (m *Manager) watchIntercepts(ref *managerv1.SessionRef, stream grpc.ServerStreamingServer[managerv1.InterceptSnapshot]) error {
	ctx := stream.Context()
	defer m.applied.watching(sessionid.Public(ref.GetSessionId()))() // sessions are named by their public ids
	var last *managerv1.InterceptSnapshot
	for {
		changed := m.changes.wait()
		s, ok := m.sessions.get(ref.GetSessionId())
		if !ok {
			return status.Errorf(codes.NotFound, "session %q is unknown to the traffic-manager (expired or the manager restarted); arrive again", ref.GetSessionId())
		}
		if s.kind != agentSession {
			return status.Errorf(codes.PermissionDenied, "session %q is a client's; only traffic-agents watch intercepts", ref.GetSessionId())
		}
		snap, err := m.snapshot(ctx, workloadRef{Namespace: s.agent.GetNamespace(), Kind: s.agent.GetKind(), Name: s.agent.GetWorkload()})
		if err != nil {
			return status.Errorf(codes.Internal, "list intercepts: %v", err)
		}
		if last == nil || !proto.Equal(last, snap) {
			if err := stream.Send(snap); err != nil {
				return err
			}
			last = snap
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-changed:
		}
	}
}
