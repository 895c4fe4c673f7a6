package daemoncontainer

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tp-run/tp/internal/phasetrace"
)

// The daemon serves its API on a unix socket inside its container. The CLI
// reaches it only through the Docker API: `docker exec` runs `tp daemon proxy`,
// which pipes stdin/stdout to that socket. So exactly the users who may use
// Docker may use the daemon, on Linux, macOS and Windows alike, and no joined
// container (they share the network, not the filesystem) can reach it.

// DialDaemon returns a gRPC client connection to the daemon in containerID.
func DialDaemon(docker client.APIClient, containerID string) (*grpc.ClientConn, error) {
	return grpc.NewClient("passthrough:///tp-daemon",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// Redial within a second or two once the daemon is back (a Docker
		// restart, a restarted container), not after gRPC's default backoff
		// of up to two minutes: the dial is a local docker exec.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{
			BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second,
		}, MinConnectTimeout: 5 * time.Second}),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return dialExec(ctx, docker, containerID, []string{"/tp", "daemon", "proxy"})
		}))
}

// dialExec runs cmd in the container and returns its stdin/stdout as a net.Conn.
func dialExec(ctx context.Context, docker client.APIClient, containerID string, cmd []string) (net.Conn, error) {
	end := phasetrace.Begin("daemon channel: exec create")
	exec, err := docker.ContainerExecCreate(ctx, containerID, container.ExecOptions{
		Cmd: cmd, AttachStdin: true, AttachStdout: true, AttachStderr: true,
	})
	end()
	if err != nil {
		return nil, fmt.Errorf("exec in daemon container: %w", dockerHint(err))
	}
	end = phasetrace.Begin("daemon channel: exec attach")
	resp, err := docker.ContainerExecAttach(ctx, exec.ID, container.ExecAttachOptions{})
	end()
	if err != nil {
		return nil, fmt.Errorf("attach to exec in daemon container: %w", dockerHint(err))
	}
	pr, pw := io.Pipe()
	c := &execConn{resp: resp, stdout: pr, firstByte: phasetrace.Begin("daemon channel: first byte")}
	c.demuxed.Add(1)
	go func() { // owned by c: ends when resp is closed
		defer c.demuxed.Done()
		_, err := stdcopy.StdCopy(pw, &c.stderr, resp.Reader)
		if err == nil && c.stderr.Len() > 0 {
			err = fmt.Errorf("daemon proxy: %s", bytes.TrimSpace(c.stderr.Bytes()))
		}
		pw.CloseWithError(err)
	}()
	return c, nil
}

// execConn is an exec's stdin (writes) and demultiplexed stdout (reads).
type execConn struct {
	resp    types.HijackedResponse
	stdout  *io.PipeReader
	stderr  bytes.Buffer
	demuxed sync.WaitGroup
	once    sync.Once
	// firstByte ends the trace of the exec's start (TP_TRACE).
	firstByte func()
	readOnce  sync.Once
}

func (c *execConn) Read(b []byte) (int, error) {
	n, err := c.stdout.Read(b)
	c.readOnce.Do(c.firstByte)
	return n, err
}
func (c *execConn) Write(b []byte) (int, error) { return c.resp.Conn.Write(b) }

func (c *execConn) Close() error {
	c.once.Do(func() {
		c.resp.Close()
		_ = c.stdout.Close()
		c.demuxed.Wait()
	})
	return nil
}

func (c *execConn) LocalAddr() net.Addr                { return c.resp.Conn.LocalAddr() }
func (c *execConn) RemoteAddr() net.Addr               { return c.resp.Conn.RemoteAddr() }
func (c *execConn) SetDeadline(t time.Time) error      { return c.resp.Conn.SetDeadline(t) }
func (c *execConn) SetReadDeadline(t time.Time) error  { return c.resp.Conn.SetReadDeadline(t) }
func (c *execConn) SetWriteDeadline(t time.Time) error { return c.resp.Conn.SetWriteDeadline(t) }
