package tunnel

import (
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
)

// Aborter is implemented by connections that can be closed abortively (a
// TCP RST). Splice aborts a connection when the other side was reset; it
// uses SetLinger(0) for *net.TCPConn, so only other connection types (such
// as a netstack endpoint) need to implement Aborter.
type Aborter interface {
	Abort() error
}

// Splice copies both ways between a flow and a net.Conn with half-close,
// and returns when both directions end; it then closes both.
//
// When one side ends its direction (EOF), Splice half-closes the other side
// (CloseWrite; a conn without CloseWrite, like a UDP socket, is closed
// instead). When one side fails, Splice aborts the other (a reset flow
// resets conn and vice versa) and returns that error. Cancelling ctx aborts
// both. Splice also relays between two flows, without copying payloads.
func Splice(ctx context.Context, flow Conn, conn net.Conn) error {
	var flowClosed, connClosed atomic.Bool // closed in place of CloseWrite
	stop := context.AfterFunc(ctx, func() {
		abortConn(conn, ctx.Err())
		abortConn(flow, ctx.Err())
	})
	defer stop()

	var g errgroup.Group
	g.Go(func() error { return spliceHalf(conn, flow, &connClosed, &flowClosed) })
	err := spliceHalf(flow, conn, &flowClosed, &connClosed)
	if gerr := g.Wait(); err == nil {
		err = gerr
	}
	flow.Close()
	conn.Close()
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	return err
}

// spliceHalf copies src to dst until src ends, then half-closes dst.
// srcClosed is set when the other half closed src in place of CloseWrite:
// that read error then is an EOF.
func spliceHalf(dst, src net.Conn, dstClosed, srcClosed *atomic.Bool) error {
	rerr, werr := copyHalf(dst, src)
	if rerr != nil && srcClosed.Load() {
		rerr = nil
	}
	switch {
	case rerr == nil && werr == nil:
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			if err := cw.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) {
				return err
			}
			return nil
		}
		dstClosed.Store(true)
		dst.Close()
		return nil
	case rerr != nil:
		abortConn(dst, rerr)
		src.Close()
		return rerr
	default:
		abortConn(src, werr)
		dst.Close()
		return werr
	}
}

// copyHalf copies src to dst until src ends, returning read and write
// errors apart (rerr is nil at EOF). Flows move their payload buffers.
func copyHalf(dst, src net.Conn) (rerr, werr error) {
	if f, ok := src.(*flow); ok {
		_, rerr, werr = f.writeTo(dst)
		return rerr, werr
	}
	if f, ok := dst.(*flow); ok {
		_, rerr, werr = f.readFrom(src)
		return rerr, werr
	}
	buf := payloadPool.Get(maxPayload)
	defer payloadPool.Put(buf)
	for {
		n, err := src.Read(*buf)
		if n > 0 {
			if _, err := dst.Write((*buf)[:n]); err != nil {
				return nil, err
			}
		}
		if err == io.EOF {
			return nil, nil
		}
		if err != nil {
			return err, nil
		}
	}
}

// abortConn closes c abortively because of cause.
func abortConn(c net.Conn, cause error) {
	switch c := c.(type) {
	case *flow:
		c.abort(cause)
		c.Close()
	case Aborter:
		c.Abort()
	case interface {
		SetLinger(int) error
		Close() error
	}:
		c.SetLinger(0)
		c.Close()
	default:
		c.Close()
	}
}
