// Package apiproxy connects a process's stdin and stdout to the daemon API's
// unix socket inside the daemon container: the far end of the CLI's daemon
// channel (`docker exec CONTAINER /tp daemon proxy`). It links nothing but
// the standard library and errgroup, so that /tp runs it in its own process
// instead of exec'ing /tp-daemon, whose start costs the channel ~10 ms.
package apiproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"golang.org/x/sync/errgroup"
)

// Run connects stdin/stdout to the daemon's API socket. It returns when the
// daemon or the CLI closes its side; closing stdin unblocks the pending read
// from the CLI.
func Run(ctx context.Context, socket string, stdin io.ReadCloser, stdout io.Writer) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return fmt.Errorf("daemon API socket %s: %w (is the daemon running?)", socket, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g := new(errgroup.Group)
	g.Go(func() error { // CLI -> daemon
		_, err := io.Copy(conn, stdin)
		_ = conn.(*net.UnixConn).CloseWrite()
		return ignoreClosed(err)
	})
	g.Go(func() error { // daemon -> CLI; when the daemon is done, so are we
		defer cancel()
		_, err := io.Copy(stdout, conn)
		return ignoreClosed(err)
	})
	g.Go(func() error {
		<-ctx.Done()
		_ = stdin.Close()
		return conn.Close()
	})
	return g.Wait()
}

func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
		return nil
	}
	return err
}
