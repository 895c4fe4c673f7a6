package daemoncontainer

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"

	daemonv1 "github.com/tp-run/tp/rpc/daemon/v1"
)

// The containers joined to the daemon container resolve through the daemon's
// DNS server because they share its /etc/resolv.conf: Docker bind-mounts the
// daemon container's file into every container of --network container:tp.
// The daemon container's root filesystem is read-only, and Docker mounts that
// file read-only with it, so the daemon cannot rewrite it. A short-lived
// writer container does, joined to the daemon's network namespace (so it gets
// the same file, writable): same image, `tp daemon resolvconf`, no
// capabilities, no new privileges, no credentials.

// pointResolver points the connection's resolv.conf at the daemon's DNS
// server, once the daemon reports it listening (st.Dns). It is idempotent.
func pointResolver(ctx context.Context, docker client.APIClient, id string, st *daemonv1.StatusResponse) error {
	info, err := docker.ContainerInspect(ctx, id)
	if err != nil {
		return fmt.Errorf("inspect the daemon container: %w", dockerHint(err))
	}
	ns, err := netip.ParseAddrPort(st.GetDns().GetListenAddress())
	if err != nil {
		return fmt.Errorf("daemon reports a bad DNS address %q: %w", st.GetDns().GetListenAddress(), err)
	}
	cfg, host := resolverWriter(info.Config.Image, id, ns.Addr(), st.GetNamespace(), st.GetDns().GetClusterDomain())
	created, err := docker.ContainerCreate(ctx, cfg, host, nil, nil, "")
	if err != nil {
		return fmt.Errorf("create the resolv.conf writer: %w", dockerHint(err))
	}
	defer func() {
		rmCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = docker.ContainerRemove(rmCtx, created.ID, container.RemoveOptions{Force: true})
	}()
	waitC, errC := docker.ContainerWait(ctx, created.ID, container.WaitConditionNextExit)
	if err := docker.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		return fmt.Errorf("start the resolv.conf writer: %w", dockerHint(err))
	}
	select {
	case res := <-waitC:
		if res.StatusCode != 0 {
			return fmt.Errorf("point the daemon container's resolv.conf at its DNS server: exit code %d: %s",
				res.StatusCode, logsTail(context.WithoutCancel(ctx), docker, created.ID, 5))
		}
		return nil
	case err := <-errC:
		return fmt.Errorf("wait for the resolv.conf writer: %w", err)
	}
}

// resolverWriter is the writer container: in the daemon's network namespace,
// without any capability.
func resolverWriter(image, daemonID string, nameserver netip.Addr, namespace, clusterDomain string) (*container.Config, *container.HostConfig) {
	cfg := &container.Config{
		Image: image,
		Cmd: []string{"daemon", "resolvconf", "--nameserver", nameserver.String(),
			"--namespace", namespace, "--cluster-domain", clusterDomain},
	}
	host := &container.HostConfig{
		NetworkMode: container.NetworkMode("container:" + daemonID),
		CapDrop:     []string{"ALL"},
		SecurityOpt: []string{"no-new-privileges"},
	}
	return cfg, host
}

// PointResolver points the daemon container's resolv.conf at its DNS server
// again: Docker rewrites the file when the container joins another network
// (e.g. a compose project's), pointing it at Docker's embedded DNS, and
// containers joined to it would then no longer resolve cluster names.
func (c *Client) PointResolver(ctx context.Context) error {
	st, err := c.Status(ctx, &daemonv1.StatusRequest{})
	if err != nil {
		return fmt.Errorf("daemon in %s does not answer: %w", c.Connection.ContainerName, err)
	}
	return pointResolver(ctx, c.docker, c.Connection.ContainerID, st)
}
