package daemoncontainer

import (
	"context"
	"net/netip"
	"slices"

	"github.com/docker/docker/client"

	"github.com/tp-run/tp/internal/subnets"
)

// WorkstationClashes returns the cluster's routed subnets that overlap a
// Docker network the daemon container is not on or a route of the host (a
// VPN's): the daemon itself reports the networks of its own namespace
// (StatusResponse.Conflicts), but sees neither of these. What Docker or the
// host cannot tell is left out.
func WorkstationClashes(ctx context.Context, docker client.APIClient, containerID string, routed []string) []subnets.Clash {
	var cluster []netip.Prefix
	for _, r := range routed {
		if p, err := netip.ParsePrefix(r); err == nil {
			cluster = append(cluster, p.Masked())
		}
	}
	if len(cluster) == 0 {
		return nil
	}
	nets, _ := subnets.DockerNetworks(ctx, docker)
	var own []string
	if info, err := docker.ContainerInspect(ctx, containerID); err == nil && info.NetworkSettings != nil {
		for name := range info.NetworkSettings.Networks {
			own = append(own, name)
		}
	}
	slices.Sort(own)
	routes, _ := subnets.HostRoutes()
	return subnets.Clashes(cluster, nets, own, routes)
}
