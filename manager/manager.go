// Package manager is the in-cluster traffic-manager. It keeps the sessions of
// workstation daemons and traffic-agents (heartbeats, TTL), tells daemons
// what to route and resolve, and dials destinations in the cluster for their
// flows through the tunnel, only within its dial policy (dialpolicy.go: the
// cluster's pod and service ranges and tunnel.allowCIDRs; no loopback, and
// link-local or node addresses only when allowed), so that the tunnel is no
// open proxy with the manager's network identity. For intercepts
// (docs/intercepts.md) it keeps the intercept registry, injects the
// traffic-agent into workloads (pod template label plus its mutating admission
// webhook) and pairs the agents' connections with the clients' flows.
package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tp-run/tp/internal/sessionid"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/tunnel"
)

// Port is the traffic-manager's client API (Manager and Tunnel for
// workstation daemons, gRPC health). It listens on the pod's loopback only:
// clients reach it through the API server's port-forward, which needs
// pods/portforward in the manager's namespace (docs/security.md).
const Port = 8081

// Config configures a Manager.
type Config struct {
	// Namespace the manager runs in.
	Namespace string
	// ListenAddr of the client API; default "127.0.0.1:8081".
	ListenAddr string
	// HealthAddr of the probes' HTTP listener; default ":8083".
	HealthAddr string
	// SessionTTL: a client session not seen for this long ends.
	SessionTTL time.Duration
	// AgentSessionTTL: an agent session not seen for this long ends;
	// default DefaultAgentSessionTTL. Agents run next to the manager and
	// are replaced, not put to sleep: a short TTL lets the manager forget a
	// killed agent soon.
	AgentSessionTTL time.Duration
	// Version of this build.
	Version string
	// ResolvConf of the manager pod, to learn the cluster DNS; default /etc/resolv.conf.
	ResolvConf string
	// ManagedNamespaces, when set, are the only namespaces the manager may
	// see and intercept in (TP_MANAGED_NAMESPACES; rbac.namespaced).
	ManagedNamespaces []string
	// AgentImage is the traffic-agent's image: the manager's own
	// (TP_AGENT_IMAGE). Without it the manager cannot intercept.
	AgentImage string
	// AgentImagePullPolicy of the injected containers
	// (TP_AGENT_IMAGE_PULL_POLICY); empty leaves Kubernetes' default.
	AgentImagePullPolicy string
	// AgentAddr for the traffic-agents (TLS, token); default ":8082".
	AgentAddr string
	// WebhookAddr for the agent-injection webhook; default ":8443".
	WebhookAddr string
	// WebhookCertDir holds tls.crt and tls.key of the webhook
	// (TP_WEBHOOK_CERT_DIR); default /etc/tp/webhook.
	WebhookCertDir string
	// AgentWait bounds how long CreateIntercept waits for an agent when the
	// request has no deadline; default DefaultAgentWait.
	AgentWait time.Duration
	// PairWait is how long an agent's connection waits for its client;
	// default DefaultPairWait.
	PairWait time.Duration
	// AllowCIDRs are destinations the tunnel may dial besides the cluster's
	// pod and service ranges (TP_TUNNEL_ALLOW_CIDRS; tunnel.allowCIDRs); see
	// dialpolicy.go.
	AllowCIDRs []netip.Prefix
	// NoNodes: the manager may not read Nodes (TP_READ_NODES=false;
	// rbac.readNodes=false). Pod CIDRs and node addresses then come from the
	// pods it may list.
	NoNodes bool
	// HostIP is the address of the manager's node (TP_HOST_IP); the dial
	// policy refuses it like every node address.
	HostIP netip.Addr
	// NodeRefresh is how often the dial policy re-reads the node addresses
	// and, without node podCIDRs, the pod CIDRs are re-read from the pods;
	// default DefaultNodeRefresh.
	NodeRefresh time.Duration
	// RepairEvery is how often pods admitted without their agent are looked
	// for (repair.go); default DefaultRepairEvery.
	RepairEvery time.Duration
	Log         *slog.Logger
}

// DefaultAgentSessionTTL is the default Config.AgentSessionTTL.
const DefaultAgentSessionTTL = 15 * time.Second

// DefaultWebhookCertDir is where the chart mounts the webhook's certificate.
const DefaultWebhookCertDir = "/etc/tp/webhook"

// Manager is the traffic-manager.
type Manager struct {
	managerv1.UnimplementedManagerServer

	cfg      Config
	kube     kubernetes.Interface
	log      *slog.Logger
	sessions *sessions
	// records keep the client sessions and their intercepts in the cluster
	// (records.go); they are the registry's store.
	records *sessionRecords
	// cluster is what daemons route and resolve, kept current by the
	// cluster watcher (clusterwatch.go).
	cluster *clusterState
	dialer  net.Dialer
	// policy decides what the tunnel dials (dialpolicy.go); nil until Run
	// discovered the cluster, and then every dial is refused.
	policy atomic.Pointer[dialPolicy]

	changes  *changes
	applied  *appliedRoutes
	grants   *grants
	registry *registry
	rollouts *rollouts
	dials    *dialQueues
	// mountReqs are the agents' MountRequests, by agent session (mounts.go).
	mountReqs *queues[*managerv1.MountRequest]
	pairings  *pairings
	parked    *parkedFlows // parking.go
	injector  *injector
	// agentAuth verifies the callers on the agent port.
	agentAuth agentAuthenticator
	// injectErr says why the manager cannot inject agents (nil if it can).
	injectErr atomic.Pointer[error]
}

// New checks the configuration and returns a Manager; Run serves it.
func New(cfg Config, kube kubernetes.Interface) (*Manager, error) {
	if kube == nil {
		return nil, errors.New("manager: no Kubernetes client")
	}
	if cfg.Namespace == "" {
		return nil, errors.New("manager: no namespace (set TP_NAMESPACE)")
	}
	if cfg.SessionTTL <= 0 {
		return nil, fmt.Errorf("manager: session TTL must be positive, got %s", cfg.SessionTTL)
	}
	if cfg.AgentSessionTTL <= 0 {
		cfg.AgentSessionTTL = DefaultAgentSessionTTL
	}
	if cfg.ListenAddr == "" {
		cfg.ListenAddr = fmt.Sprintf("127.0.0.1:%d", Port)
	}
	if cfg.HealthAddr == "" {
		cfg.HealthAddr = fmt.Sprintf(":%d", HealthPort)
	}
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = "/etc/resolv.conf"
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.WebhookAddr == "" {
		cfg.WebhookAddr = fmt.Sprintf(":%d", WebhookPort)
	}
	if cfg.AgentAddr == "" {
		cfg.AgentAddr = fmt.Sprintf(":%d", AgentPort)
	}
	if cfg.WebhookCertDir == "" {
		cfg.WebhookCertDir = DefaultWebhookCertDir
	}
	switch corev1.PullPolicy(cfg.AgentImagePullPolicy) {
	case "", corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		return nil, fmt.Errorf("manager: agent image pull policy %q is not Always, IfNotPresent or Never", cfg.AgentImagePullPolicy)
	}
	if cfg.AgentWait <= 0 {
		cfg.AgentWait = DefaultAgentWait
	}
	if cfg.PairWait <= 0 {
		cfg.PairWait = DefaultPairWait
	}
	if cfg.NodeRefresh <= 0 {
		cfg.NodeRefresh = DefaultNodeRefresh
	}
	if cfg.RepairEvery <= 0 {
		cfg.RepairEvery = DefaultRepairEvery
	}
	c := newChanges()
	records := newSessionRecords(kube, cfg.Namespace)
	m := &Manager{
		cfg: cfg, kube: kube, log: cfg.Log,
		sessions:  newSessions(cfg.SessionTTL, cfg.AgentSessionTTL, time.Now),
		records:   records,
		cluster:   newClusterState(),
		dialer:    net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second},
		changes:   c,
		applied:   newAppliedRoutes(),
		grants:    newGrants(time.Now),
		registry:  newRegistry(records, c),
		rollouts:  newRollouts(kube, cfg.Log.With("component", "rollouts")),
		dials:     newDialQueues(),
		mountReqs: newQueues[*managerv1.MountRequest](),
		pairings:  newPairings(),
		parked:    newParkedFlows(),
		injector: &injector{
			kube: kube, log: cfg.Log.With("component", "webhook"),
			agent: agentSpec{
				image: cfg.AgentImage, pullPolicy: corev1.PullPolicy(cfg.AgentImagePullPolicy),
				managerAddr: agentManagerAddr(cfg.Namespace),
			},
			caFile: filepath.Join(cfg.WebhookCertDir, "ca.crt"),
		},
	}
	m.agentAuth = newTokenAuthenticator(kube, m.interceptable, cfg.Log.With("component", "agentauth"))
	if cfg.AgentImage == "" {
		m.setInjectErr(errors.New("no agent image (TP_AGENT_IMAGE is empty); run `tp helm upgrade`"))
	}
	return m, nil
}

func (m *Manager) setInjectErr(err error) { m.injectErr.Store(&err) }

// cannotInject says why the manager cannot inject agents, or nil.
func (m *Manager) cannotInject() error {
	if p := m.injectErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Run discovers the cluster's networks, then serves gRPC until ctx ends;
// the cluster watcher keeps the networks current meanwhile.
func (m *Manager) Run(ctx context.Context) error {
	visible := m.namespacesFor("")
	watcher := newClusterWatcher(m.kube, discovery{
		namespace: m.cfg.Namespace, resolvConf: m.cfg.ResolvConf, noNodes: m.cfg.NoNodes, namespaces: visible,
	}, m.cfg.NodeRefresh, m.log.With("component", "cluster"))
	defer watcher.close()
	info, err := watcher.start(ctx)
	if err != nil {
		return err
	}
	m.cluster.set(info)
	m.log.Info("cluster discovered", "podCIDRs", info.PodCidrs, "serviceCIDRs", info.ServiceCidrs,
		"dns", info.DnsIp, "domain", info.ClusterDomain,
		"watchingNodes", watcher.nodes != nil, "watchingServiceCIDRs", watcher.cidrs != nil)
	policy, err := newDialPolicy(info, m.cfg.AllowCIDRs)
	if err != nil {
		return err
	}
	nodes := &nodeAddresses{kube: m.kube, noNodes: m.cfg.NoNodes, namespaces: visible, hostIP: m.cfg.HostIP}
	addrs, err := nodes.list(ctx)
	if err != nil {
		// Node addresses outside the cluster's ranges are refused anyway; the
		// refresh retries. Give the own node at least.
		m.log.Error("dial policy: reading the node addresses failed; retrying every "+m.cfg.NodeRefresh.String(), "err", err)
		addrs = map[netip.Addr]string{}
		if m.cfg.HostIP.IsValid() {
			addrs[m.cfg.HostIP.Unmap()] = "hosting the traffic-manager"
		}
	}
	policy.setNodes(addrs)
	m.policy.Store(policy)
	m.log.Info("dial policy", "allowCIDRs", m.cfg.AllowCIDRs, "refusedNodeAddresses", addrList(addrs))

	if err := m.restoreSessions(ctx); err != nil {
		return err
	}

	tunnels, err := tunnel.NewServer(m.dial, m.authorize, m.log.With("component", "tunnel"))
	if err != nil {
		return err
	}
	tunnels.HandlePairing(m.pair)
	srv := grpc.NewServer(tunnel.ServerOptions()...)
	managerv1.RegisterManagerServer(srv, m)
	tunnels.Register(srv)
	healthSrv := health.NewServer()
	healthpb.RegisterHealthServer(srv, healthSrv)

	lis, err := net.Listen("tcp", m.cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("manager: listen %s: %w", m.cfg.ListenAddr, err)
	}
	healthLis, err := net.Listen("tcp", m.cfg.HealthAddr)
	if err != nil {
		lis.Close()
		return fmt.Errorf("manager: listen %s: %w", m.cfg.HealthAddr, err)
	}
	m.log.Info("traffic-manager serving", "addr", lis.Addr(), "version", m.cfg.Version, "sessionTTL", m.cfg.SessionTTL)

	// Without its certificate the webhook cannot serve: the manager still
	// connects clients, and CreateIntercept says what to do.
	certs := &certFiles{dir: m.cfg.WebhookCertDir}
	var webhookLis net.Listener
	if _, err := certs.load(); err != nil {
		m.setInjectErr(fmt.Errorf("%w; reinstall the traffic-manager with `tp helm upgrade`", err))
		m.log.Error("agent-injection webhook disabled", "err", err)
	} else if webhookLis, err = net.Listen("tcp", m.cfg.WebhookAddr); err != nil {
		lis.Close()
		healthLis.Close()
		return fmt.Errorf("manager: listen %s: %w", m.cfg.WebhookAddr, err)
	}

	agents, err := m.listenAgents(certs)
	if err != nil {
		lis.Close()
		healthLis.Close()
		if webhookLis != nil {
			webhookLis.Close()
		}
		return err
	}

	ready := &probes{}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Serve(lis) })
	g.Go(func() error { return agents.serve(ctx) })
	g.Go(func() error { return serveHealth(ctx, healthLis, ready, m.log.With("component", "health")) })
	ready.ready.Store(true)
	if webhookLis != nil {
		m.log.Info("agent-injection webhook serving", "addr", webhookLis.Addr(), "path", WebhookPath, "agentImage", m.cfg.AgentImage)
		g.Go(func() error {
			handlers := map[string]http.Handler{
				WebhookPath:   m.injector,
				AuthorizePath: &authorizer{grants: m.grants, log: m.log.With("component", "authorizer")},
			}
			return serveWebhook(ctx, webhookLis, handlers, certs, m.log.With("component", "webhook"))
		})
		g.Go(func() error { m.repairPods(ctx, m.cfg.RepairEvery); return nil })
	}
	g.Go(func() error { m.rollouts.Run(ctx); return nil })
	g.Go(func() error {
		<-ctx.Done()
		healthSrv.Shutdown()
		srv.GracefulStop()
		return nil
	})
	g.Go(func() error { m.reapSessions(ctx); return nil })
	g.Go(func() error { m.watchOwners(ctx, time.Second); return nil })
	g.Go(func() error { m.refreshNodes(ctx, nodes, m.cfg.NodeRefresh); return nil })
	g.Go(func() error { watcher.run(ctx, m.setCluster); return nil })
	if err := g.Wait(); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// reapSessions ends sessions whose daemons stopped sending heartbeats.
func (m *Manager) reapSessions(ctx context.Context) {
	tick := time.NewTicker(max(min(m.cfg.SessionTTL, m.cfg.AgentSessionTTL)/4, 250*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			m.expireSessions(ctx)
		}
	}
}

// expireSessions ends the sessions not seen within the TTL.
func (m *Manager) expireSessions(ctx context.Context) {
	for _, s := range m.sessions.expire() {
		m.endSession(ctx, s, "expired")
	}
}

// endSession cleans up after a session that departed or expired: a client's
// intercepts end (their agents get the new snapshot), an agent's workload may
// fall back to WAITING.
func (m *Manager) endSession(ctx context.Context, s session, why string) {
	m.changes.notify()
	if s.kind == agentSession {
		m.log.Info("agent session "+why, "session", s.id, "workload", s.agent.GetWorkload(), "namespace", s.agent.GetNamespace(),
			"pod", s.agent.GetPodName(), "lastSeen", s.lastSeen)
		return
	}
	m.log.Info("session "+why, "session", s.id, "connection", s.client.GetName(), "host", s.client.GetHost(), "lastSeen", s.lastSeen)
	gone, err := m.registry.remove(ctx, func(ic *intercept) bool { return ic.Owner == s.id })
	if err != nil {
		m.log.Error("removing the intercepts of an ended session failed", "session", s.id, "err", err)
	}
	for _, ic := range gone {
		m.log.Info("intercept ended with its session", "intercept", ic.ID, "name", ic.Spec.GetName(), "workload", ic.Workload.String())
	}
	if err := m.records.removeSession(ctx, s.id); err != nil {
		m.log.Error("removing the record of an ended session failed", "session", s.id, "err", err)
	}
}

// restoreSessions takes up the client sessions and intercepts that the
// records in the cluster hold (a previous manager pod's): every session
// gets a full TTL from now for its client to resume it, and its intercepts
// route again as soon as their agents arrive.
func (m *Manager) restoreSessions(ctx context.Context) error {
	restored, skipped, err := m.records.load(ctx)
	if err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	for _, err := range skipped {
		m.log.Error("session record ignored", "err", err)
	}
	ics, _ := m.records.List(ctx)
	for _, s := range restored {
		m.sessions.restore(s)
		n := 0
		for _, ic := range ics {
			if ic.Owner == s.id {
				n++
			}
		}
		m.log.Info("session restored from its record", "session", s.id, "connection", s.client.GetName(), "host", s.client.GetHost(),
			"arrived", s.arrived, "intercepts", n)
	}
	if len(restored) > 0 {
		m.changes.notify()
	}
	return nil
}

func (m *Manager) authorize(_ context.Context, sessionID string) error {
	// Agent sessions are served on the agent port only (authorizeAgentFlow).
	if s, ok := m.sessions.get(sessionID); !ok || s.kind != clientSession {
		return status.Errorf(codes.Unauthenticated, "session %q is unknown to the traffic-manager (expired or the manager restarted)", sessionID)
	}
	return nil
}

// dial dials a client's flow if the dial policy allows its destination.
func (m *Manager) dial(ctx context.Context, network, address string) (net.Conn, error) {
	dst, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", address, err)
	}
	p := m.policy.Load()
	if p == nil {
		return nil, &dialDeniedError{network: network, dst: dst, reason: "the traffic-manager has not discovered the cluster yet"}
	}
	if err := p.check(network, dst); err != nil {
		m.log.Info("dial refused by the dial policy", "network", network, "dst", dst, "err", err)
		return nil, err
	}
	return m.dialer.DialContext(ctx, network, address)
}

// Version implements managerv1.ManagerServer.
func (m *Manager) Version(context.Context, *managerv1.VersionRequest) (*managerv1.VersionResponse, error) {
	return &managerv1.VersionResponse{Version: m.cfg.Version, ProtocolVersion: tunnel.ProtocolVersion}, nil
}

// ArriveAsClient implements managerv1.ManagerServer.
func (m *Manager) ArriveAsClient(ctx context.Context, c *managerv1.ClientInfo) (*managerv1.SessionInfo, error) {
	if c.GetProtocolVersion() != tunnel.ProtocolVersion {
		return nil, status.Errorf(codes.FailedPrecondition,
			"client speaks protocol %d, traffic-manager %s speaks %d: use a tp client of the manager's version or run `tp helm upgrade`",
			c.GetProtocolVersion(), m.cfg.Version, tunnel.ProtocolVersion)
	}
	s, secret := m.sessions.add(c)
	if err := m.records.addSession(ctx, s); err != nil {
		m.sessions.remove(secret)
		m.log.Error("session refused: cannot record it", "session", s.id, "err", err)
		return nil, status.Errorf(codes.Unavailable, "the traffic-manager cannot record the session: %v", err)
	}
	m.log.Info("session arrived", "session", s.id, "connection", c.GetName(), "namespace", c.GetNamespace(),
		"host", c.GetHost(), "user", c.GetUser(), "version", c.GetVersion())
	return m.sessionInfo(secret), nil
}

func (m *Manager) sessionInfo(secret string) *managerv1.SessionInfo {
	return &managerv1.SessionInfo{
		SessionId: secret, Cluster: m.cluster.current(),
		Ttl: durationpb.New(m.cfg.SessionTTL), ManagerVersion: m.cfg.Version,
	}
}

// ResumeSession implements managerv1.ManagerServer: a client that holds a
// session's secret id takes it up again after a reconnect, with its
// intercepts. The session keeps what it arrived with (ClientInfo, arrival).
func (m *Manager) ResumeSession(ctx context.Context, req *managerv1.ResumeSessionRequest) (*managerv1.SessionInfo, error) {
	c := req.GetClient()
	if c.GetProtocolVersion() != tunnel.ProtocolVersion {
		return nil, status.Errorf(codes.FailedPrecondition,
			"client speaks protocol %d, traffic-manager %s speaks %d: use a tp client of the manager's version or run `tp helm upgrade`",
			c.GetProtocolVersion(), m.cfg.Version, tunnel.ProtocolVersion)
	}
	// The record as it is now: the previous pod may have changed it after
	// this one started (a rolling update).
	public := sessionid.Public(req.GetSessionId())
	if rec, ok, err := m.records.reload(ctx, public); err != nil {
		m.log.Warn("resume: reading the session record failed; resuming from memory", "session", public, "err", err)
	} else if ok && sessionid.Verify(req.GetSessionId(), rec.verifier) {
		if _, known := m.sessions.byPublic(public); !known {
			m.sessions.restore(rec)
			m.log.Info("session restored from its record", "session", public, "connection", rec.client.GetName(), "host", rec.client.GetHost())
		}
		m.changes.notify()
	}
	s, err := m.clientSession(req.GetSessionId())
	if err != nil {
		return nil, err
	}
	if err := m.sessions.touch(req.GetSessionId()); err != nil {
		return nil, status.Error(codes.NotFound, err.Error())
	}
	m.changes.notify()
	m.log.Info("session resumed", "session", s.id, "connection", s.client.GetName(), "host", c.GetHost(), "lastSeen", s.lastSeen)
	return m.sessionInfo(req.GetSessionId()), nil
}

// Remain implements managerv1.ManagerServer.
func (m *Manager) Remain(_ context.Context, r *managerv1.SessionRef) (*managerv1.RemainResponse, error) {
	if _, err := m.clientSession(r.GetSessionId()); err != nil {
		return nil, err
	}
	if err := m.sessions.touch(r.GetSessionId()); err != nil {
		return nil, status.Error(codes.NotFound, err.Error())
	}
	return &managerv1.RemainResponse{}, nil
}

// Depart implements managerv1.ManagerServer.
func (m *Manager) Depart(ctx context.Context, r *managerv1.SessionRef) (*managerv1.DepartResponse, error) {
	if s, ok := m.sessions.get(r.GetSessionId()); ok && s.kind != clientSession {
		return nil, status.Errorf(codes.PermissionDenied, "session %q is a traffic-agent's; agents depart on port %d", r.GetSessionId(), AgentPort)
	}
	if s, ok := m.sessions.remove(r.GetSessionId()); ok {
		m.endSession(context.WithoutCancel(ctx), s, "departed")
	}
	return &managerv1.DepartResponse{}, nil
}

// ListSessions implements managerv1.ManagerServer. Sessions are named by
// their public ids: a session's secret id goes only to its own client.
func (m *Manager) ListSessions(context.Context, *managerv1.ListSessionsRequest) (*managerv1.ListSessionsResponse, error) {
	resp := &managerv1.ListSessionsResponse{}
	for _, s := range m.sessions.list(clientSession) {
		resp.Sessions = append(resp.Sessions, &managerv1.Session{
			SessionId: s.id, Client: s.client,
			Arrived: timestamppb.New(s.arrived), LastSeen: timestamppb.New(s.lastSeen),
		})
	}
	return resp, nil
}
