// Package manager is the in-cluster traffic-manager. It keeps the sessions of
// workstation daemons (heartbeats, TTL), tells them what to route and resolve,
// and dials destinations in the cluster for their flows through the tunnel.
// Intercepts and agent injection build on these sessions.
package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/client-go/kubernetes"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/tunnel"
)

// Port is the traffic-manager's gRPC port (control API, tunnel, health).
const Port = 8081

// Config configures a Manager.
type Config struct {
	// Namespace the manager runs in.
	Namespace string
	// ListenAddr for gRPC; default ":8081".
	ListenAddr string
	// SessionTTL: a session not seen for this long ends.
	SessionTTL time.Duration
	// Version of this build.
	Version string
	// ResolvConf of the manager pod, to learn the cluster DNS; default /etc/resolv.conf.
	ResolvConf string
	Log        *slog.Logger
}

// Manager is the traffic-manager.
type Manager struct {
	managerv1.UnimplementedManagerServer

	cfg      Config
	kube     kubernetes.Interface
	log      *slog.Logger
	sessions *sessions
	cluster  *managerv1.ClusterInfo
	dialer   net.Dialer
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
	if cfg.ListenAddr == "" {
		cfg.ListenAddr = fmt.Sprintf(":%d", Port)
	}
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = "/etc/resolv.conf"
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Manager{
		cfg: cfg, kube: kube, log: cfg.Log,
		sessions: newSessions(cfg.SessionTTL, time.Now),
		dialer:   net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second},
	}, nil
}

// Run discovers the cluster's networks, then serves gRPC until ctx ends.
func (m *Manager) Run(ctx context.Context) error {
	info, err := discoverClusterInfo(ctx, m.kube, m.cfg.Namespace, m.cfg.ResolvConf)
	if err != nil {
		return err
	}
	m.cluster = info
	m.log.Info("cluster discovered", "podCIDRs", info.PodCidrs, "serviceCIDRs", info.ServiceCidrs,
		"dns", info.DnsIp, "domain", info.ClusterDomain)

	tunnels, err := tunnel.NewServer(m.dial, m.authorize, m.log.With("component", "tunnel"))
	if err != nil {
		return err
	}
	srv := grpc.NewServer(tunnel.ServerOptions()...)
	managerv1.RegisterManagerServer(srv, m)
	tunnels.Register(srv)
	healthSrv := health.NewServer()
	healthpb.RegisterHealthServer(srv, healthSrv)

	lis, err := net.Listen("tcp", m.cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("manager: listen %s: %w", m.cfg.ListenAddr, err)
	}
	m.log.Info("traffic-manager serving", "addr", lis.Addr(), "version", m.cfg.Version, "sessionTTL", m.cfg.SessionTTL)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Serve(lis) })
	g.Go(func() error {
		<-ctx.Done()
		healthSrv.Shutdown()
		srv.GracefulStop()
		return nil
	})
	g.Go(func() error { m.reapSessions(ctx); return nil })
	if err := g.Wait(); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// reapSessions ends sessions whose daemons stopped sending heartbeats.
func (m *Manager) reapSessions(ctx context.Context) {
	tick := time.NewTicker(max(m.cfg.SessionTTL/4, 250*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			for _, s := range m.sessions.expire() {
				m.log.Info("session expired", "session", s.id, "connection", s.client.GetName(),
					"host", s.client.GetHost(), "lastSeen", s.lastSeen)
			}
		}
	}
}

func (m *Manager) authorize(_ context.Context, sessionID string) error {
	if _, ok := m.sessions.get(sessionID); !ok {
		return status.Errorf(codes.Unauthenticated, "session %q is unknown to the traffic-manager (expired or the manager restarted)", sessionID)
	}
	return nil
}

func (m *Manager) dial(ctx context.Context, network, address string) (net.Conn, error) {
	return m.dialer.DialContext(ctx, network, address)
}

// Version implements managerv1.ManagerServer.
func (m *Manager) Version(context.Context, *managerv1.VersionRequest) (*managerv1.VersionResponse, error) {
	return &managerv1.VersionResponse{Version: m.cfg.Version, ProtocolVersion: tunnel.ProtocolVersion}, nil
}

// ArriveAsClient implements managerv1.ManagerServer.
func (m *Manager) ArriveAsClient(_ context.Context, c *managerv1.ClientInfo) (*managerv1.SessionInfo, error) {
	if c.GetProtocolVersion() != tunnel.ProtocolVersion {
		return nil, status.Errorf(codes.FailedPrecondition,
			"client speaks protocol %d, traffic-manager %s speaks %d: use a tp client of the manager's version or run `tp helm upgrade`",
			c.GetProtocolVersion(), m.cfg.Version, tunnel.ProtocolVersion)
	}
	s := m.sessions.add(c)
	m.log.Info("session arrived", "session", s.id, "connection", c.GetName(), "namespace", c.GetNamespace(),
		"host", c.GetHost(), "user", c.GetUser(), "version", c.GetVersion())
	return &managerv1.SessionInfo{
		SessionId: s.id, Cluster: m.cluster,
		Ttl: durationpb.New(m.cfg.SessionTTL), ManagerVersion: m.cfg.Version,
	}, nil
}

// Remain implements managerv1.ManagerServer.
func (m *Manager) Remain(_ context.Context, r *managerv1.SessionRef) (*managerv1.RemainResponse, error) {
	if err := m.sessions.touch(r.GetSessionId()); err != nil {
		return nil, status.Error(codes.NotFound, err.Error())
	}
	return &managerv1.RemainResponse{}, nil
}

// Depart implements managerv1.ManagerServer.
func (m *Manager) Depart(_ context.Context, r *managerv1.SessionRef) (*managerv1.DepartResponse, error) {
	if s, ok := m.sessions.remove(r.GetSessionId()); ok {
		m.log.Info("session departed", "session", s.id, "connection", s.client.GetName(), "host", s.client.GetHost())
	}
	return &managerv1.DepartResponse{}, nil
}

// ListSessions implements managerv1.ManagerServer.
func (m *Manager) ListSessions(context.Context, *managerv1.ListSessionsRequest) (*managerv1.ListSessionsResponse, error) {
	resp := &managerv1.ListSessionsResponse{}
	for _, s := range m.sessions.list() {
		resp.Sessions = append(resp.Sessions, &managerv1.Session{
			SessionId: s.id, Client: s.client,
			Arrived: timestamppb.New(s.arrived), LastSeen: timestamppb.New(s.lastSeen),
		})
	}
	return resp, nil
}
