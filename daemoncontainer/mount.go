package daemoncontainer

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/docker/docker/client"

	daemonv1 "github.com/tp-run/tp/rpc/daemon/v1"
)

// MountEndpoint is how a client (tp's Docker volume plugin) reaches the SFTP
// export of one intercept.
type MountEndpoint struct {
	// Addr is the daemon container's IP address and wire.MountPort, reachable
	// from the Docker host's (or Docker VM's) network namespace, where a
	// managed plugin with host networking runs.
	Addr netip.AddrPort
	// Token authenticates the handshake (wire.DialMount).
	Token string
}

// MountEndpoint asks the daemon for the token of an intercept it owns
// (OpenMount: the same token on every call, until the intercept is removed
// through the daemon or its session ends) and returns it with the daemon
// container's address.
func (c *Client) MountEndpoint(ctx context.Context, interceptID string) (MountEndpoint, error) {
	resp, err := c.OpenMount(ctx, &daemonv1.OpenMountRequest{InterceptId: interceptID})
	if err != nil {
		return MountEndpoint{}, err
	}
	ip, err := c.DaemonIP(ctx)
	if err != nil {
		return MountEndpoint{}, err
	}
	return MountEndpoint{Addr: netip.AddrPortFrom(ip, uint16(resp.GetPort())), Token: resp.GetToken()}, nil
}

// DaemonIP is the daemon container's IPv4 address (see DaemonIP).
func (c *Client) DaemonIP(ctx context.Context) (netip.Addr, error) {
	return DaemonIP(ctx, c.docker, c.Connection.ContainerID)
}

// DaemonIP is the IPv4 address of the daemon container id as Docker has it:
// on Docker's default bridge (where tp connect starts it), else on the
// first (by name) other network it joined (e.g. a kind cluster's).
func DaemonIP(ctx context.Context, docker client.APIClient, id string) (netip.Addr, error) {
	info, err := docker.ContainerInspect(ctx, id)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("inspect daemon container %s: %w", id, dockerHint(err))
	}
	if info.NetworkSettings == nil {
		return netip.Addr{}, fmt.Errorf("daemon container %s has no network settings (is it running?)", info.Name)
	}
	names := make([]string, 0, len(info.NetworkSettings.Networks))
	for name := range info.NetworkSettings.Networks {
		names = append(names, name)
	}
	slices.SortFunc(names, func(a, b string) int {
		switch {
		case a == "bridge":
			return -1
		case b == "bridge":
			return 1
		}
		return strings.Compare(a, b)
	})
	for _, name := range names {
		if ep := info.NetworkSettings.Networks[name]; ep != nil {
			if ip, err := netip.ParseAddr(ep.IPAddress); err == nil && ip.Is4() {
				return ip, nil
			}
		}
	}
	return netip.Addr{}, fmt.Errorf("daemon container %s has no IPv4 address on any Docker network (networks %v)",
		strings.TrimPrefix(info.Name, "/"), names)
}
