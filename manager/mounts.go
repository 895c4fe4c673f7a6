package manager

import (
	"context"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tpagent "github.com/tp-run/tp/agent"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/tunnel"
)

// Volume mounts (docs/intercepts.md, "Volumes"): the owner of an intercept
// reaches the SFTP export of the intercepted pod's agent through a pair of
// tunnel flows that the manager splices, the mirror of intercepted
// connections: here the client opens its flow first, with the pairing id
// "mount/<intercept id>/<random>"; the manager checks that the flow's
// session owns the intercept, sends the agent a MountRequest on its
// WatchMountRequests stream (agent port only) and waits up to PairWait for
// the agent's flow with the same pairing id. No one but the intercept's
// owner can make an agent serve SFTP, and the agent listens on no port for
// it.

// mountPrefix starts the pairing ids of mount flows.
const mountPrefix = "mount/"

// WatchMountRequests implements managerv1.ManagerServer on the client port:
// refused (agents watch on the agent port, agentServer).
func (m *Manager) WatchMountRequests(*managerv1.SessionRef, grpc.ServerStreamingServer[managerv1.MountRequest]) error {
	return errAgentPortOnly("WatchMountRequests")
}

// WatchMountRequests streams to the calling agent the SFTP sessions it must
// serve, until its session ends (NotFound).
func (a agentServer) WatchMountRequests(ref *managerv1.SessionRef, stream grpc.ServerStreamingServer[managerv1.MountRequest]) error {
	s, err := a.m.agentSessionOf(stream.Context(), ref.GetSessionId())
	if err != nil {
		return err
	}
	ctx := stream.Context()
	reqs, unsubscribe := a.m.mountReqs.subscribe(s.id)
	defer unsubscribe()
	for {
		changed := a.m.changes.wait()
		if _, ok := a.m.sessions.get(ref.GetSessionId()); !ok {
			return status.Errorf(codes.NotFound, "session %s ended", s.id)
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-changed:
		case req := <-reqs:
			if err := stream.Send(req); err != nil {
				return err
			}
		}
	}
}

// pairMount serves a client's mount flow: only the intercept's owner may
// open one; every other session is refused and logged.
func (m *Manager) pairMount(ctx context.Context, s session, pairingID string, accept func() (tunnel.Conn, error)) error {
	interceptID, random, ok := strings.Cut(strings.TrimPrefix(pairingID, mountPrefix), "/")
	if !ok || interceptID == "" || random == "" {
		return refused("pairing id %q is not %s<intercept id>/<random>", pairingID, mountPrefix)
	}
	ic, ok := m.registry.get(ctx, interceptID)
	if !ok || ic.Owner != s.id {
		m.log.Warn("mount refused: the session does not own the intercept", "session", s.id, "intercept", interceptID,
			"connection", s.client.GetName(), "host", s.client.GetHost(), "known", ok)
		return refused("no intercept %s of this session to mount", interceptID)
	}
	a, ok := m.mountAgent(ic)
	if !ok {
		return refused("no traffic-agent of %s has arrived", ic.Workload)
	}
	pod := a.agent.GetPodName()
	if len(a.agent.GetMounts()) == 0 {
		return refused("the app container of pod %s has no volume mounts", pod)
	}
	m.log.Info("mount", "intercept", ic.ID, "name", ic.Spec.GetName(), "pod", pod, "session", s.id, "pairing", pairingID)
	return m.pairWith(ctx, pairingID, a.id, "the traffic-agent of pod "+pod, func() error {
		if !m.mountReqs.send(a.id, &managerv1.MountRequest{PairingId: pairingID, InterceptId: ic.ID}) {
			return refused("the traffic-agent of pod %s serves no mounts (no WatchMountRequests; an agent of another tp version?)", pod)
		}
		return nil
	}, accept)
}

// mountAgent is the agent whose export an intercept's owner mounts: the one
// of the intercept's pod (InterceptInfo.pod_name), else any arrived agent of
// the workload.
func (m *Manager) mountAgent(ic *intercept) (session, bool) {
	if a, ok := m.agentOf(ic); ok {
		return a, true
	}
	if agents := m.agentsOf(ic.Workload); len(agents) > 0 {
		return agents[0], true
	}
	return session{}, false
}

// interceptMounts are the mounts of InterceptInfo, from an agent's report.
func interceptMounts(a *managerv1.AgentInfo) []*managerv1.Mount {
	var out []*managerv1.Mount
	for _, am := range a.GetMounts() {
		out = append(out, &managerv1.Mount{Path: am.GetPath(), ReadOnly: am.GetReadOnly(), File: am.GetFile()})
	}
	return out
}

// sameAgentMounts reports whether an agent claims exactly the mounts the
// webhook gave it (TP_AGENT_MOUNTS).
func sameAgentMounts(claimed []*managerv1.AgentMount, given []tpagent.Mount) bool {
	if len(claimed) != len(given) {
		return false
	}
	want := make(map[tpagent.Mount]bool, len(given))
	for _, g := range given {
		want[g] = true
	}
	for _, c := range claimed {
		if !want[tpagent.Mount{Path: c.GetPath(), ReadOnly: c.GetReadOnly()}] {
			return false
		}
	}
	return true
}
