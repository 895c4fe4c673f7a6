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
// (StatusResponse.Conflicts), but sees neither of these. The subnets of
// --also-proxy are routed to the cluster on purpose, over whatever the host
// routes there: they are no clash. What Docker or the host cannot tell is
// left out.
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
	if info, err := docker.ContainerInspect(ctx, containerID); err == nil {
		if info.NetworkSettings != nil {
			for name := range info.NetworkSettings.Networks {
				own = append(own, name)
			}
		}
		if info.Config != nil {
			also := alsoProxied(info.Config.Cmd)
			cluster = slices.DeleteFunc(cluster, func(p netip.Prefix) bool { return slices.Contains(also, p) })
		}
	}
	slices.Sort(own)
	routes, _ := subnets.HostRoutes()
	return subnets.Clashes(cluster, nets, own, routes)
}

// alsoProxied returns the --also-proxy subnets of the daemon's command line.
func alsoProxied(cmd []string) []netip.Prefix {
	var out []netip.Prefix
	for i, a := range cmd {
		if a == "--also-proxy" && i+1 < len(cmd) {
			if p, err := netip.ParsePrefix(cmd[i+1]); err == nil {
				out = append(out, p.Masked())
			}
		}
	}
	return out
}
