//go:build linux

package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tp-run/tp/daemoncontainer/dns"
	"github.com/tp-run/tp/daemoncontainer/tun"
	daemonv1 "github.com/tp-run/tp/rpc/daemon/v1"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// Routes that follow the cluster: while a session lasts, the connector
// watches the manager's ClusterInfo (WatchCluster: a node added or removed, a
// ServiceCIDR created or deleted) and keeps the latest in a clusterFeed; the
// network applies every change to the TUN's routes, the DNS server's reverse
// zones and the subnet-conflict report. Status reads the routes the kernel
// really has on the TUN.

// clusterFeed holds the latest ClusterInfo the manager sent and broadcasts
// its changes.
type clusterFeed struct {
	mu      sync.Mutex
	info    *managerv1.ClusterInfo
	changed chan struct{} // closed by the next change
}

func newClusterFeed() *clusterFeed { return &clusterFeed{changed: make(chan struct{})} }

func (f *clusterFeed) set(info *managerv1.ClusterInfo) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if info == nil || proto.Equal(f.info, info) {
		return
	}
	f.info = info
	close(f.changed)
	f.changed = make(chan struct{})
}

// get returns the latest info (nil before the first) and a channel closed
// when it changes.
func (f *clusterFeed) get() (*managerv1.ClusterInfo, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.info, f.changed
}

// watchCluster feeds the session's ClusterInfo and its changes to c.cluster
// until ctx ends or the stream breaks (the connection then reconnects as a
// whole). A manager without WatchCluster leaves the routes as the session
// started with.
func (c *connector) watchCluster(ctx context.Context, client managerv1.ManagerClient, sess *managerv1.SessionInfo, log *slog.Logger) error {
	c.cluster.set(sess.GetCluster())
	stream, err := client.WatchCluster(ctx, &managerv1.SessionRef{SessionId: sess.GetSessionId()})
	if err != nil {
		return fmt.Errorf("watch cluster: %w", err)
	}
	for {
		info, err := stream.Recv()
		switch {
		case err == nil:
			c.cluster.set(info)
			continue
		case status.Code(err) == codes.Unimplemented:
			log.Warn("the traffic-manager does not send cluster changes (older version): routes stay as they were at connect; run `tp helm upgrade`")
		case ctx.Err() == nil && !errors.Is(err, io.EOF):
			return fmt.Errorf("watch cluster: %w", err)
		}
		<-ctx.Done() // keep the session until the heartbeat fails
		return nil
	}
}

// clusterRoutes are the prefixes info asks to route.
func clusterRoutes(info *managerv1.ClusterInfo) ([]netip.Prefix, error) {
	var routes []netip.Prefix
	for _, s := range slices.Concat(info.GetPodCidrs(), info.GetServiceCidrs()) {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("manager sent a bad CIDR %q: %w", s, err)
		}
		if p = p.Masked(); !slices.Contains(routes, p) {
			routes = append(routes, p)
		}
	}
	return routes, nil
}

// routesFor is what the TUN routes: the cluster's ranges and also, minus
// never (a range of never inside a route splits it into the prefixes
// around it, so that longest-prefix matching needs no route elsewhere).
func routesFor(cluster, also, never []netip.Prefix) []netip.Prefix {
	var routes []netip.Prefix
	for _, p := range slices.Concat(cluster, also) {
		if p = p.Masked(); !slices.Contains(routes, p) {
			routes = append(routes, p)
		}
	}
	for _, n := range never {
		var next []netip.Prefix
		for _, r := range routes {
			next = append(next, subtractPrefix(r, n.Masked())...)
		}
		routes = next
	}
	return routes
}

// subtractPrefix returns the prefixes that cover r but not n.
func subtractPrefix(r, n netip.Prefix) []netip.Prefix {
	switch {
	case !r.Overlaps(n):
		return []netip.Prefix{r}
	case n.Bits() <= r.Bits(): // n covers r
		return nil
	}
	// r covers n: split r in halves until the half holding n is n.
	var out []netip.Prefix
	for r.Bits() < n.Bits() {
		lo := netip.PrefixFrom(r.Addr(), r.Bits()+1)
		hi := netip.PrefixFrom(lastAddr(lo).Next(), r.Bits()+1)
		if lo.Contains(n.Addr()) {
			out, r = append(out, hi), lo
		} else {
			out, r = append(out, lo), hi
		}
	}
	return out
}

// lastAddr is the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(a)*8; i++ {
		a[i/8] |= 0x80 >> (i % 8)
	}
	last, _ := netip.AddrFromSlice(a)
	return last
}

// followCluster applies every ClusterInfo of the feed to the TUN's routes,
// the DNS server and the conflict report until ctx ends. A change that
// cannot be applied is logged; Status shows the routes the kernel has.
func (d *daemon) followCluster(ctx context.Context, dev *tun.Device, srv *dns.Server, log *slog.Logger) error {
	for {
		info, changed := d.conn.cluster.get()
		if info != nil {
			d.applyCluster(dev, srv, info, log)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

func (d *daemon) applyCluster(dev *tun.Device, srv *dns.Server, info *managerv1.ClusterInfo, log *slog.Logger) {
	routes, err := clusterRoutes(info)
	if err != nil {
		log.Error("cluster change ignored", "error", err)
		return
	}
	routes = routesFor(routes, d.cfg.AlsoProxy, d.cfg.NeverProxy)
	d.mu.Lock()
	old := d.routes
	d.mu.Unlock()
	added, removed := diffPrefixes(routes, old), diffPrefixes(old, routes)
	if len(added) == 0 && len(removed) == 0 {
		return
	}
	conflicts, err := tun.Conflicts(routes)
	if err != nil {
		log.Warn("check subnet conflicts", "error", err)
	}
	for _, c := range conflicts {
		if slices.Contains(added, c.Route) {
			log.Warn("cluster subnet overlaps a network of the daemon container; traffic to the overlap may not reach the cluster",
				"conflict", c.String())
		}
	}
	if err := dev.SetRoutes(routes); err != nil {
		log.Error("updating the TUN's routes failed; `tp status` shows the routes it has", "error", err)
	}
	srv.SetClusterPrefixes(routes)
	d.mu.Lock()
	d.routes, d.conflicts = routes, conflicts
	d.mu.Unlock()
	log.Info("cluster routes changed", "added", added, "removed", removed, "routes", routes)
}

// diffPrefixes returns the prefixes of a that b lacks.
func diffPrefixes(a, b []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range a {
		if !slices.Contains(b, p) {
			out = append(out, p)
		}
	}
	return out
}

// tunStatus fills the routes the kernel has on the TUN (none before the
// network is up).
func tunStatus(dev *tun.Device, s *daemonv1.StatusResponse) {
	if dev == nil {
		return
	}
	routes, err := dev.KernelRoutes()
	if err != nil {
		s.TunRoutesError = err.Error()
		return
	}
	for _, r := range routes {
		s.TunRoutes = append(s.TunRoutes, r.String())
	}
}
