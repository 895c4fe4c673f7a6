package compose

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"slices"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/docker/docker/api/types/network"
	dockerclient "github.com/docker/docker/client"

	"github.com/tp-run/tp/daemoncontainer"
	"github.com/tp-run/tp/internal/subnets"
	daemonv1 "github.com/tp-run/tp/rpc/daemon/v1"
)

// Subnets of the project's networks.
//
// The daemon container routes the cluster's pod and service ranges into
// its tunnel and joins the project's networks: a project network numbered
// inside a cluster range would make part of the cluster unreachable from the
// joined services (Telepresence's #4005). Docker numbers a new network from
// its default address pools (172.17.0.0/16 to 172.31.0.0/16, then
// 192.168.0.0/20 to 192.168.240.0/20) with the first pool that no network
// uses. Before compose creates the project's networks, tp predicts each
// one's pool the same way; when the prediction lies in a cluster range it
// gives the network the first pool outside both the cluster's ranges and the
// networks that exist, and says so. A subnet the compose file sets is kept,
// and is an error when it overlaps the cluster. After compose created the
// networks, tp checks their subnets anyway: Docker may be configured with
// other pools (default-address-pools), which tp cannot see.

// dockerPools are dockerd's default address pools, in its order.
func dockerPools() []netip.Prefix {
	var pools []netip.Prefix
	for i := 17; i <= 31; i++ {
		pools = append(pools, netip.PrefixFrom(netip.AddrFrom4([4]byte{172, byte(i), 0, 0}), 16))
	}
	for i := 0; i < 256; i += 16 {
		pools = append(pools, netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, byte(i), 0}), 20))
	}
	return pools
}

var overlapsAny = subnets.OverlapsAny

// pickSubnets sets a subnet on each network of p that compose will create
// (not external, not in existing) whose predicted subnet overlaps cluster.
// taken are the subnets of Docker's networks. It returns notes saying what
// it picked, and an error for a subnet set in the compose file that overlaps
// the cluster or when no pool is free.
func pickSubnets(p *types.Project, cluster, taken []netip.Prefix, existing map[string]bool) ([]string, error) {
	var notes []string
	taken = slices.Clone(taken)
	pools := dockerPools()
	for _, key := range slices.Sorted(maps.Keys(p.Networks)) {
		n := p.Networks[key]
		if bool(n.External) || existing[n.Name] || (n.Driver != "" && n.Driver != "bridge") {
			continue
		}
		if len(n.Ipam.Config) > 0 {
			for _, c := range n.Ipam.Config {
				s, err := netip.ParsePrefix(c.Subnet)
				if err != nil {
					continue // Docker reports it
				}
				if q, ok := overlapsAny(s, cluster); ok {
					return notes, fmt.Errorf("network %s: subnet %s overlaps the cluster's range %s, which tp routes to the cluster: set another subnet in networks.%s.ipam", key, s, q, key)
				}
				taken = append(taken, s)
			}
			continue
		}
		var predicted netip.Prefix
		for _, pool := range pools {
			if _, ok := overlapsAny(pool, taken); !ok {
				predicted = pool
				break
			}
		}
		q, overlaps := overlapsAny(predicted, cluster)
		if !predicted.IsValid() || !overlaps {
			if predicted.IsValid() {
				taken = append(taken, predicted)
			}
			continue
		}
		var picked netip.Prefix
		for _, pool := range pools {
			_, t := overlapsAny(pool, taken)
			_, c := overlapsAny(pool, cluster)
			if !t && !c {
				picked = pool
				break
			}
		}
		if !picked.IsValid() {
			return notes, fmt.Errorf("network %s: every Docker address pool is in use or overlaps the cluster's ranges %v: set a subnet in networks.%s.ipam", key, cluster, key)
		}
		n.Ipam.Config = []*types.IPAMPool{{Subnet: picked.String()}}
		p.Networks[key] = n
		taken = append(taken, picked)
		notes = append(notes, fmt.Sprintf("network %s: subnet %s (Docker's next pool %s overlaps the cluster's range %s)", key, picked, predicted, q))
	}
	return notes, nil
}

// dockerSubnets returns the subnets of Docker's networks and the names of
// the networks that exist.
func dockerSubnets(ctx context.Context, docker dockerclient.APIClient) ([]netip.Prefix, map[string]bool, error) {
	nets, err := subnets.DockerNetworks(ctx, docker)
	if err != nil {
		return nil, nil, err
	}
	var taken []netip.Prefix
	names := map[string]bool{}
	for _, n := range nets {
		names[n.Name] = true
		taken = append(taken, n.Subnets...)
	}
	return taken, names, nil
}

// checkSubnets reports a project network numbered inside a cluster range.
func (p *project) checkSubnets(ctx context.Context, docker dockerclient.APIClient, cluster []netip.Prefix) error {
	for _, key := range slices.Sorted(maps.Keys(p.Project.Networks)) {
		n := p.Project.Networks[key]
		if n.External || n.Name == "" {
			continue
		}
		info, err := docker.NetworkInspect(ctx, n.Name, network.InspectOptions{})
		if err != nil {
			continue // not created (a service subset): compose reports what matters
		}
		for _, c := range info.IPAM.Config {
			s, err := netip.ParsePrefix(c.Subnet)
			if err != nil {
				continue
			}
			if q, ok := overlapsAny(s, cluster); ok {
				return fmt.Errorf("network %s (%s) has subnet %s, inside the cluster's range %s that tp routes to the cluster: set another subnet in networks.%s.ipam (Docker's default-address-pools gave this one), then tp compose down and up", key, n.Name, s, q, key)
			}
		}
	}
	return nil
}

// clusterPrefixes parses the daemon's routed subnets.
func clusterPrefixes(routed []string) []netip.Prefix {
	var out []netip.Prefix
	for _, r := range routed {
		if p, err := netip.ParsePrefix(r); err == nil {
			out = append(out, p.Masked())
		}
	}
	return out
}

// avoidCluster gives the project's networks subnets outside the cluster's
// ranges (see above) and says what it picked on progress. joinNetworks
// checks the created networks against the same ranges.
func (p *project) avoidCluster(ctx context.Context, d *daemoncontainer.Client, docker dockerclient.APIClient, progress io.Writer) error {
	if d == nil {
		return nil // no connection: no cluster ranges to avoid
	}
	st, err := d.Status(ctx, &daemonv1.StatusRequest{})
	if err != nil {
		return fmt.Errorf("daemon in %s does not answer: %w", p.daemon, err)
	}
	p.cluster = clusterPrefixes(st.GetRoutedSubnets())
	taken, existing, err := dockerSubnets(ctx, docker)
	if err != nil {
		return err
	}
	notes, err := pickSubnets(p.Project, p.cluster, taken, existing)
	for _, n := range notes {
		fmt.Fprintf(progress, "tp: %s\n", n)
	}
	return err
}
