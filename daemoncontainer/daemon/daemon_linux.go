//go:build linux

package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/tp-run/tp/daemoncontainer/dns"
	"github.com/tp-run/tp/daemoncontainer/netstack"
	"github.com/tp-run/tp/daemoncontainer/tun"
	"github.com/tp-run/tp/daemoncontainer/wire"
	"github.com/tp-run/tp/internal/kube"
	daemonv1 "github.com/tp-run/tp/rpc/daemon/v1"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// Run runs the daemon until ctx ends or a client calls Quit.
func Run(ctx context.Context, cfg Config) error {
	cfg = withDefaults(cfg)
	log := cfg.Log.With("connection", cfg.Connection)
	rc, err := restConfig(cfg)
	if err != nil {
		return err
	}
	rc.QPS, rc.Burst = 50, 100
	kc, err := kube.NewClient(rc)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	ctx, quit := context.WithCancel(ctx)
	defer quit()
	d := &daemon{cfg: cfg, conn: newConnector(cfg, rc, kc, log), quit: quit, apiServer: rc.Host}
	d.mounts = newMounts(log.With("component", "mounts"), d.conn.dialMount)
	d.mounts.state = cfg.State
	if err := d.restore(log); err != nil {
		return err
	}
	// A session that had to arrive anew lost its intercepts, and so the
	// tokens of their mounts.
	d.conn.newSession = func(resumed bool) {
		if !resumed {
			d.mounts.sessionEnded()
		}
	}
	log.Info("daemon starting", "context", cfg.Context, "namespace", cfg.Namespace,
		"managerNamespace", cfg.ManagerNamespace, "apiServer", rc.Host, "version", cfg.Version)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return d.serveAPI(ctx) })
	g.Go(func() error { return d.conn.run(ctx) })
	if lis, err := net.Listen("tcp", cfg.MountAddr); err != nil {
		// Intercepts work without it; their volumes cannot be mounted.
		log.Error("cannot listen for volume mounts; intercepts get no mounts", "addr", cfg.MountAddr, "error", err)
	} else {
		log.Info("listening for volume mounts (token from OpenMount)", "addr", lis.Addr())
		g.Go(func() error { return d.mounts.serve(ctx, lis) })
	}
	g.Go(func() error {
		select {
		case <-ctx.Done():
			return nil
		case sess := <-d.conn.sessions:
			return d.runNetwork(ctx, sess.GetCluster())
		}
	})
	err = g.Wait()
	log.Info("daemon stopped", "error", err)
	return err
}

func withDefaults(cfg Config) Config {
	if cfg.Socket == "" {
		cfg.Socket = wire.DaemonSocket
	}
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = "/etc/resolv.conf"
	}
	if cfg.TUNName == "" {
		cfg.TUNName = "tp0"
	}
	if cfg.DNSAddr == "" {
		cfg.DNSAddr = "127.0.0.1:53"
	}
	if cfg.MountAddr == "" {
		cfg.MountAddr = fmt.Sprintf(":%d", wire.MountPort)
	}
	return cfg
}

type daemon struct {
	daemonv1.UnimplementedDaemonServer
	cfg       Config
	conn      *connector
	quit      context.CancelFunc
	apiServer string
	mounts    *mounts // volume mounts of the intercepts (mounts.go)

	mu        sync.Mutex
	routes    []netip.Prefix // requested: the cluster's ranges
	conflicts []tun.Conflict
	dev       *tun.Device // nil until the network is up
	stack     *netstack.Stack
	dns       *dns.Server
	dnsInfo   *daemonv1.DNSStatus
	dnsDomain string                       // the cluster domain of dns
	aliases   map[string]map[string]string // SetAliases: owner -> name -> cluster service
}

// runNetwork routes the cluster's subnets into the TUN device, runs the
// netstack and the DNS server, and points the namespace's resolver at it;
// the routes then follow the cluster's changes (routes.go).
func (d *daemon) runNetwork(ctx context.Context, cluster *managerv1.ClusterInfo) error {
	log := d.cfg.Log.With("connection", d.cfg.Connection)
	routes, err := clusterRoutes(cluster)
	if err != nil {
		return err
	}
	routes = routesFor(routes, d.cfg.AlsoProxy, d.cfg.NeverProxy)
	conflicts, err := tun.Conflicts(routes)
	if err != nil {
		return fmt.Errorf("check subnet conflicts: %w", err)
	}
	for _, c := range conflicts {
		log.Warn("cluster subnet overlaps a network of the daemon container; traffic to the overlap may not reach the cluster",
			"conflict", c.String())
	}
	dev, err := tun.Open(d.cfg.TUNName, netstack.DefaultMTU, routes)
	if err != nil {
		return fmt.Errorf("TUN device: %w", err)
	}
	defer dev.Close()
	st, err := netstack.New(netstack.Config{
		Device: dev, MTU: netstack.DefaultMTU,
		Dialer: netstack.DialerFunc(d.conn.dial), Logger: log.With("component", "netstack"),
	})
	if err != nil {
		return err
	}

	orig, err := readResolvConf(d.cfg.ResolvConf)
	if err != nil {
		return err
	}
	dnsIP, err := netip.ParseAddr(cluster.GetDnsIp())
	if err != nil {
		return fmt.Errorf("manager sent a bad DNS address %q: %w", cluster.GetDnsIp(), err)
	}
	domain := cluster.GetClusterDomain()
	viaTunnel := &clusterDNS{server: netip.AddrPortFrom(dnsIP, 53), dial: d.conn.dial}
	defer viaTunnel.close()
	srv, err := dns.NewServer(dns.Config{
		ListenAddr: d.cfg.DNSAddr, ClusterDomain: domain, ClusterPrefixes: routes,
		Cluster:   viaTunnel,
		Upstreams: orig.Upstreams(), SearchDomains: orig.Search, Logger: log.With("component", "dns"),
		DockerDNS: dns.DefaultDockerDNS, // the compose projects' names, once the container joins their networks
	})
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.routes, d.conflicts, d.stack, d.dns, d.dev, d.dnsDomain = routes, conflicts, st, srv, dev, domain
	d.restoreAliases(srv)
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.dev = nil // closed when we return
		d.mu.Unlock()
	}()

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return st.Run(ctx) })
	g.Go(func() error { return srv.Run(ctx) })
	g.Go(func() error { return d.followCluster(ctx, dev, srv, log) })
	g.Go(func() error {
		select {
		case <-ctx.Done():
			return nil
		case <-srv.Ready():
		}
		// The containers joined to this one share its resolv.conf: point it
		// at the DNS server. Docker writes the file anew at every start of
		// the container, so after a restart nobody else would. (`tp connect`
		// also points it, with a writer container, for a daemon container
		// whose root filesystem is read-only.)
		if ns, err := netip.ParseAddrPort(d.cfg.DNSAddr); err == nil {
			if err := PointResolvConf(d.cfg.ResolvConf, ns.Addr(), d.cfg.Namespace, domain); err != nil {
				log.Info("cannot point resolv.conf at the DNS server; tp connect does", "error", err)
			}
		}
		d.mu.Lock()
		d.dnsInfo = &daemonv1.DNSStatus{ListenAddress: d.cfg.DNSAddr, ClusterDomain: domain,
			Search: searchList(orig, d.cfg.Namespace, domain), Upstreams: orig.Upstreams()}
		d.mu.Unlock()
		log.Info("network ready", "routes", routes, "dns", d.cfg.DNSAddr, "clusterDNS", dnsIP, "domain", domain)
		return nil
	})
	return g.Wait()
}

func readResolvConf(path string) (dns.ResolvConf, error) {
	f, err := os.Open(path)
	if err != nil {
		return dns.ResolvConf{}, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	return dns.ParseResolvConf(f)
}

// searchList is the search list RenderResolvConf writes: like a pod's, then
// the original domains.
func searchList(orig dns.ResolvConf, namespace, domain string) []string {
	domain = strings.TrimSuffix(domain, ".")
	return append([]string{namespace + ".svc." + domain, "svc." + domain, domain}, orig.Search...)
}

// serveAPI serves the CLI's API on the unix socket until ctx ends.
func (d *daemon) serveAPI(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Dir(d.cfg.Socket), 0o700); err != nil {
		return fmt.Errorf("daemon API: %w", err)
	}
	_ = os.Remove(d.cfg.Socket)
	lis, err := net.Listen("unix", d.cfg.Socket)
	if err != nil {
		return fmt.Errorf("daemon API: listen %s: %w", d.cfg.Socket, err)
	}
	if err := os.Chmod(d.cfg.Socket, 0o600); err != nil {
		return fmt.Errorf("daemon API: %w", err)
	}
	srv := grpc.NewServer()
	daemonv1.RegisterDaemonServer(srv, d)
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Serve(lis) })
	g.Go(func() error {
		<-ctx.Done()
		stopped := make(chan struct{})
		go func() { srv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(2 * time.Second):
			srv.Stop()
			<-stopped
		}
		return nil
	})
	if err := g.Wait(); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// Status implements daemonv1.DaemonServer.
func (d *daemon) Status(context.Context, *daemonv1.StatusRequest) (*daemonv1.StatusResponse, error) {
	s := &daemonv1.StatusResponse{
		Name: d.cfg.Connection, Version: d.cfg.Version, Context: d.cfg.Context,
		Namespace: d.cfg.Namespace, ManagerNamespace: d.cfg.ManagerNamespace, ApiServer: d.apiServer,
	}
	d.conn.status(s)
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range d.routes {
		s.RoutedSubnets = append(s.RoutedSubnets, r.String())
	}
	tunStatus(d.dev, s)
	for _, c := range d.conflicts {
		s.Conflicts = append(s.Conflicts, &daemonv1.SubnetConflict{Subnet: c.Route.String(), ConflictsWith: c.Network.String(), Interface: c.Interface})
	}
	if d.dnsInfo != nil {
		info := proto.CloneOf(d.dnsInfo)
		st := d.dns.Stats()
		info.Queries, info.CacheHits = st.Queries, st.CacheHits
		info.ClusterForwards, info.UpstreamForwards, info.DockerForwards, info.Failures = st.ClusterForwards, st.UpstreamForwards, st.DockerForwards, st.Failures
		s.Dns = info
	}
	if d.stack != nil {
		st := d.stack.Stats()
		s.OpenFlows = st.TCPOpen + st.UDPOpen
		s.Flows = &daemonv1.FlowStats{
			TcpOpen: st.TCPOpen, TcpPending: st.TCPPending, TcpTotal: st.TCPTotal, TcpRefused: st.TCPRefused,
			TcpUnreachable: st.TCPUnreachable, TcpDialFailed: st.TCPDialFailed, TcpDropped: st.TCPDropped,
			UdpOpen: st.UDPOpen, UdpTotal: st.UDPTotal, BytesToCluster: st.BytesToCluster, BytesFromCluster: st.BytesFromCluster,
		}
	}
	return s, nil
}

// Quit implements daemonv1.DaemonServer: depart and stop. The state goes
// first, so that nothing takes the connection up again.
func (d *daemon) Quit(context.Context, *daemonv1.QuitRequest) (*daemonv1.QuitResponse, error) {
	d.cfg.Log.Info("quit requested by the CLI", "connection", d.cfg.Connection)
	if err := d.cfg.State.Forget(); err != nil {
		d.cfg.Log.Warn("cannot remove the daemon's state", "error", err)
	}
	d.conn.depart.Store(true)
	d.quit()
	return &daemonv1.QuitResponse{}, nil
}
