package daemoncontainer

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"
)

// DialCluster checks that addr (HOST:PORT; HOST alone: that it resolves)
// answers through the connection, as it would for a joined container: it
// runs `tp daemon dial` in the daemon container, which resolves with the
// connection's DNS and dials through its routes. A nil error means the
// cluster's end accepted the connection.
func (c *Client) DialCluster(ctx context.Context, addr string, timeout time.Duration) error {
	exec, err := c.docker.ContainerExecCreate(ctx, c.Connection.ContainerID, container.ExecOptions{
		Cmd:          []string{"/tp", "daemon", "dial", "--timeout", timeout.String(), addr},
		AttachStdout: true, AttachStderr: true,
	})
	if err != nil {
		return fmt.Errorf("exec in daemon container %s: %w", c.Connection.ContainerName, dockerHint(err))
	}
	resp, err := c.docker.ContainerExecAttach(ctx, exec.ID, container.ExecAttachOptions{})
	if err != nil {
		return fmt.Errorf("attach to exec in daemon container %s: %w", c.Connection.ContainerName, dockerHint(err))
	}
	defer resp.Close()
	var out bytes.Buffer
	if _, err := stdcopy.StdCopy(&out, &out, resp.Reader); err != nil {
		return fmt.Errorf("tp daemon dial %s in %s: %w", addr, c.Connection.ContainerName, err)
	}
	res, err := c.docker.ContainerExecInspect(ctx, exec.ID)
	if err != nil {
		return fmt.Errorf("tp daemon dial %s in %s: %w", addr, c.Connection.ContainerName, dockerHint(err))
	}
	if res.ExitCode != 0 {
		msg := strings.TrimSpace(out.String())
		msg = strings.TrimPrefix(msg, "Error: ")
		if i := strings.IndexByte(msg, '\n'); i >= 0 {
			msg = msg[:i]
		}
		return fmt.Errorf("%s does not answer through connection %s: %s", addr, c.Connection.Name, msg)
	}
	return nil
}
