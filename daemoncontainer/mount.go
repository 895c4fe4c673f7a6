package daemoncontainer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/docker/docker/client"

	daemonv1 "github.com/tp-run/tp/rpc/daemon/v1"
)

// MountPort is where the daemon serves the SFTP exports of its intercepts
// (all interfaces of the daemon container's network namespace; the cluster
// cannot reach it). A client connects, writes MountHello(token), reads
// "OK\n" and then speaks SFTP, which the daemon carries through the tunnel
// to the intercepted pod's agent; or it reads "ERR <reason>\n" and the
// daemon closes the connection. The token comes from the daemon API's
// OpenMount (Client.MountEndpoint); see docs/security.md.
const MountPort = 9022

// MountProtocol is the first word and version of the mount handshake.
const MountProtocol = "TP-MOUNT 1"

// maxMountLine bounds a handshake line (the token is 64 hex digits).
const maxMountLine = 256

// MountHello is the line a client writes first on MountPort.
func MountHello(token string) string { return MountProtocol + " " + token + "\n" }

// ErrMountRefused: the daemon refused a mount handshake (MountRefusedError
// says why).
var ErrMountRefused = errors.New("the tp daemon refused the mount")

// MountRefusedError is the daemon's "ERR <reason>" answer.
type MountRefusedError struct{ Reason string }

func (e *MountRefusedError) Error() string { return ErrMountRefused.Error() + ": " + e.Reason }
func (e *MountRefusedError) Unwrap() error { return ErrMountRefused }

// ReadMountLine reads one handshake line from r (without the newline), byte
// by byte so that nothing after it is consumed.
func ReadMountLine(r io.Reader) (string, error) {
	var line bytes.Buffer
	b := make([]byte, 1)
	for line.Len() < maxMountLine {
		if _, err := io.ReadFull(r, b); err != nil {
			return "", err
		}
		if b[0] == '\n' {
			return line.String(), nil
		}
		line.WriteByte(b[0])
	}
	return "", fmt.Errorf("mount handshake: line longer than %d bytes", maxMountLine)
}

// DialMount connects to a daemon's mount listener at addr (MountEndpoint's
// Addr) and does the handshake with token; the connection then carries SFTP
// (github.com/pkg/sftp's NewClientPipe(conn, conn)). ctx bounds the dial and
// the handshake. A refusal is a *MountRefusedError.
func DialMount(ctx context.Context, addr, token string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("mount: connect to the tp daemon at %s: %w", addr, err)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(15 * time.Second)
	}
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	fail := func(err error) (net.Conn, error) {
		conn.Close()
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		return nil, err
	}
	if _, err := io.WriteString(conn, MountHello(token)); err != nil {
		return fail(fmt.Errorf("mount: handshake with the tp daemon at %s: %w", addr, err))
	}
	line, err := ReadMountLine(conn)
	if err != nil {
		return fail(fmt.Errorf("mount: handshake with the tp daemon at %s: %w", addr, err))
	}
	switch {
	case line == "OK":
	case strings.HasPrefix(line, "ERR "):
		return fail(&MountRefusedError{Reason: strings.TrimPrefix(line, "ERR ")})
	default:
		return fail(fmt.Errorf("mount: the tp daemon at %s answered %q, not OK or ERR", addr, line))
	}
	if !stop() {
		return fail(ctx.Err())
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}

// MountEndpoint is how a client (tp's Docker volume plugin) reaches the SFTP
// export of one intercept.
type MountEndpoint struct {
	// Addr is the daemon container's IP address and MountPort, reachable
	// from the Docker host's (or Docker VM's) network namespace, where a
	// managed plugin with host networking runs.
	Addr netip.AddrPort
	// Token authenticates the handshake (DialMount).
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
