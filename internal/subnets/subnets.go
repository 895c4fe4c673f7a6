// Package subnets finds the address ranges of the workstation that the
// cluster's ranges can clash with: Docker's networks and the host's routes
// (a VPN's, a corporate LAN's). The compose transform numbers project
// networks around the cluster with it, and `tp connect` and `tp status`
// explain the clashes they find.
package subnets

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/bits"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	dockerclient "github.com/docker/docker/client"
)

// OverlapsAny returns the first prefix of set that p overlaps.
func OverlapsAny(p netip.Prefix, set []netip.Prefix) (netip.Prefix, bool) {
	for _, q := range set {
		if p.Overlaps(q) {
			return q, true
		}
	}
	return netip.Prefix{}, false
}

// Network is a Docker network and its subnets.
type Network struct {
	Name    string
	Subnets []netip.Prefix
}

// DockerNetworks lists Docker's networks with their subnets.
func DockerNetworks(ctx context.Context, docker dockerclient.APIClient) ([]Network, error) {
	nets, err := docker.NetworkList(ctx, network.ListOptions{Filters: filters.NewArgs()})
	if err != nil {
		return nil, fmt.Errorf("list Docker's networks: %w", err)
	}
	var out []Network
	for _, n := range nets {
		nw := Network{Name: n.Name}
		for _, c := range n.IPAM.Config {
			if s, err := netip.ParsePrefix(c.Subnet); err == nil {
				nw.Subnets = append(nw.Subnets, s.Masked())
			}
		}
		out = append(out, nw)
	}
	return out, nil
}

// Route is a route of the host's main table.
type Route struct {
	Prefix netip.Prefix
	Device string
}

// parseProcRoute reads /proc/net/route (IPv4: hex destination and mask in
// host byte order, little-endian on the machines tp runs on).
func parseProcRoute(r io.Reader) ([]Route, error) {
	var out []Route
	sc := bufio.NewScanner(r)
	first := true
	for sc.Scan() {
		if first { // header
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 8 {
			continue
		}
		dst, err1 := hex.DecodeString(f[1])
		mask, err2 := hex.DecodeString(f[7])
		if err1 != nil || err2 != nil || len(dst) != 4 || len(mask) != 4 {
			continue
		}
		var d, m [4]byte
		binary.BigEndian.PutUint32(d[:], binary.LittleEndian.Uint32(dst))
		binary.BigEndian.PutUint32(m[:], binary.LittleEndian.Uint32(mask))
		ones := 0
		for _, b := range m {
			ones += bits.OnesCount8(b)
		}
		out = append(out, Route{Prefix: netip.PrefixFrom(netip.AddrFrom4(d), ones).Masked(), Device: f[0]})
	}
	return out, sc.Err()
}

// parseProcIPv6Route reads /proc/net/ipv6_route.
func parseProcIPv6Route(r io.Reader) ([]Route, error) {
	var out []Route
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 10 {
			continue
		}
		dst, err := hex.DecodeString(f[0])
		ones, err2 := strconv.ParseUint(f[1], 16, 8)
		if err != nil || err2 != nil || len(dst) != 16 {
			continue
		}
		out = append(out, Route{Prefix: netip.PrefixFrom(netip.AddrFrom16([16]byte(dst)), int(ones)).Masked(), Device: f[9]})
	}
	return out, sc.Err()
}

// nodeDevices are the interface name prefixes of Docker's bridges and of
// CNI plugins: routes on them are Docker's networks (reported as such) or
// the pod ranges of a cluster node on this very host, not clashes.
var nodeDevices = []string{"docker", "br-", "veth", "lo", "cni", "tpcni", "flannel", "cali", "cilium", "weave", "kube-", "vxlan", "tunl"}

// Clash is a cluster range that overlaps a range of the workstation.
type Clash struct {
	Cluster, With netip.Prefix
	// Network is the Docker network of With, Device the host interface
	// of a host route.
	Network, Device string
}

func (c Clash) String() string {
	if c.Network != "" {
		return fmt.Sprintf("cluster subnet %s overlaps Docker network %s (%s): a container on both (a compose service) reaches %s's containers there, not the cluster; give the network another subnet", c.Cluster, c.Network, c.With, c.Network)
	}
	return fmt.Sprintf("cluster subnet %s overlaps the host's route %s (dev %s, a VPN or LAN?): containers joined to tp send %s to the cluster, so the host's machines in it are unreachable from them", c.Cluster, c.With, c.Device, c.Cluster.String())
}

// Clashes returns the cluster ranges that overlap a Docker network (other
// than skip, those the daemon container is on: the daemon reports those
// itself) or a host route (other than the default route and the routes of
// Docker's and CNI's devices).
func Clashes(cluster []netip.Prefix, nets []Network, skip []string, routes []Route) []Clash {
	var out []Clash
	for _, c := range cluster {
		for _, n := range nets {
			if slices.Contains(skip, n.Name) {
				continue
			}
			if q, ok := OverlapsAny(c, n.Subnets); ok {
				out = append(out, Clash{Cluster: c, With: q, Network: n.Name})
			}
		}
		for _, r := range routes {
			if r.Prefix.Bits() == 0 || r.Prefix.Addr().IsLinkLocalUnicast() || r.Prefix.Addr().IsMulticast() ||
				slices.ContainsFunc(nodeDevices, func(p string) bool { return strings.HasPrefix(r.Device, p) }) {
				continue
			}
			if c.Overlaps(r.Prefix) {
				out = append(out, Clash{Cluster: c, With: r.Prefix, Device: r.Device})
			}
		}
	}
	return out
}
