package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pkg/sftp"

	"github.com/tp-run/tp/daemoncontainer/wire"
)

// ErrRefused is wrapped by the error of a handshake that the daemon answered
// with ERR.
var ErrRefused = errors.New("the daemon refused the mount")

// ErrBroken is what every operation returns once the SFTP connection broke or
// stalled; the FUSE layer turns it into EIO.
var ErrBroken = errors.New("the mount's connection to the daemon is broken")

// Handshake presents token on c: it writes wire.MountHello
// ("TP-MOUNT 1 <token>\n", the daemon's side of it) and reads
// the daemon's answer line, "OK" (the connection then carries SFTP) or
// "ERR <reason>" (an error wrapping ErrRefused with the reason). It reads no
// byte past the answer's newline.
func Handshake(c net.Conn, token string, timeout time.Duration) error {
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	defer c.SetDeadline(time.Time{}) //nolint:errcheck // best effort; the caller sets its own
	if _, err := io.WriteString(c, wire.MountHello(token)); err != nil {
		return fmt.Errorf("mount handshake: %w", err)
	}
	line, err := wire.ReadMountLine(c)
	if err != nil {
		return fmt.Errorf("mount handshake: no answer from the daemon: %w", err)
	}
	line = strings.TrimSuffix(line, "\r")
	switch {
	case line == "OK":
		return nil
	case strings.HasPrefix(line, "ERR"):
		reason := strings.TrimSpace(strings.TrimPrefix(line, "ERR"))
		return fmt.Errorf("%w: %s", ErrRefused, reason)
	default:
		return fmt.Errorf("mount handshake: unexpected answer %q (is %s tp's mount port?)", line, c.RemoteAddr())
	}
}

// sftpPacket is the most a single SFTP read or write request carries (the
// agent's export answers up to 256 KiB, OpenSSH's sftp-server about as
// much); longer reads and writes are split into concurrent requests of it.
const sftpPacket = 128 << 10

// Conn is an SFTP session to the agent's export through the daemon, whose
// every operation has a deadline. When one operation stalls past it, the
// connection is closed, so that every other operation fails at once too.
type Conn struct {
	nc      net.Conn
	client  *sftp.Client
	timeout time.Duration

	mu     sync.Mutex
	broken error
}

// Dial connects to addr, presents token and starts an SFTP client on the
// connection. timeout bounds the dial, the handshake and the SFTP version
// exchange, and then each later operation.
func Dial(ctx context.Context, addr, token string, timeout time.Duration) (*Conn, error) {
	d := net.Dialer{Timeout: timeout, KeepAlive: 5 * time.Second}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial the daemon's mount port %s: %w (is the connection's daemon container running? `tp status`)", addr, err)
	}
	c, err := NewConn(nc, token, timeout)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// NewConn does the handshake on nc and starts an SFTP client on it.
func NewConn(nc net.Conn, token string, timeout time.Duration) (*Conn, error) {
	if err := Handshake(nc, token, timeout); err != nil {
		return nil, err
	}
	// The version exchange has no deadline of its own.
	if err := nc.SetDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	client, err := sftp.NewClientPipe(nc, nc,
		sftp.UseConcurrentWrites(true), sftp.MaxConcurrentRequestsPerFile(64), sftp.MaxPacketUnchecked(sftpPacket))
	if err != nil {
		return nil, fmt.Errorf("start SFTP on the mount connection: %w", err)
	}
	if err := nc.SetDeadline(time.Time{}); err != nil {
		client.Close()
		return nil, err
	}
	c := &Conn{nc: nc, client: client, timeout: timeout}
	return c, nil
}

// Do runs op with the SFTP client, bounded by the connection's timeout and
// ctx. A timeout breaks the connection (ErrBroken from then on); an op that
// returns after the connection broke returns ErrBroken too.
func (c *Conn) Do(ctx context.Context, op func(*sftp.Client) error) error {
	if err := c.Err(); err != nil {
		return err
	}
	done := make(chan error, 1)
	// The goroutine ends when op does: at the latest when the connection
	// is closed, which a timeout does.
	go func() { done <- op(c.client) }()
	t := time.NewTimer(c.timeout)
	defer t.Stop()
	select {
	case err := <-done:
		if err != nil {
			if berr := c.Err(); berr != nil {
				return berr
			}
			if isConnError(err) {
				c.fail(fmt.Errorf("%w: %v", ErrBroken, err))
				return c.Err()
			}
		}
		return err
	case <-t.C:
		c.fail(fmt.Errorf("%w: no answer within %s", ErrBroken, c.timeout))
		return c.Err()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// isConnError tells the errors of a lost connection from the server's
// answers. An op that can meet io.EOF as data (a read at the end of a file)
// handles it before returning.
func isConnError(err error) bool {
	var se *sftp.StatusError
	if errors.As(err, &se) {
		return false
	}
	var oe *net.OpError
	return errors.Is(err, sftp.ErrSSHFxConnectionLost) || errors.Is(err, sftp.ErrSSHFxNoConnection) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.As(err, &oe)
}

func (c *Conn) fail(err error) {
	c.mu.Lock()
	if c.broken == nil {
		c.broken = err
	}
	c.mu.Unlock()
	c.nc.Close()
}

// Err is nil while the connection works, else why it broke.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.broken
}

// HasExtension tells whether the server announced an SFTP extension.
func (c *Conn) HasExtension(name string) bool {
	_, ok := c.client.HasExtension(name)
	return ok
}

// Close closes the SFTP session and the connection.
func (c *Conn) Close() error {
	c.fail(fmt.Errorf("%w: closed", ErrBroken))
	return c.client.Close()
}
