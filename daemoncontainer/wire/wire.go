// Package wire is what the host side (package daemoncontainer, the CLI) and
// what runs in containers (the daemon in package daemoncontainer/daemon, tp's
// volume plugin) agree on: the daemon API's socket, the daemon's command
// line defaults, and the mount port's handshake. It imports nothing but the
// standard library, so that the in-container roles do not link the host
// side's Docker, Helm and Kubernetes client code.
package wire

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// DaemonSocket is the daemon API's unix socket inside the daemon container.
// The CLI reaches it only through the Docker API (`docker exec` of
// `tp daemon proxy`); see daemoncontainer/exec.go.
const DaemonSocket = "/run/tp/daemon.sock"

// KubeconfigFromStdin is the daemon's --kubeconfig when `tp connect` writes
// the kubeconfig to the daemon's stdin (see daemoncontainer.StateDir).
const KubeconfigFromStdin = "-"

// DefaultConnection is the connection name used when --name is not given.
const DefaultConnection = "default"

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
