package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/mem"

	tunnelv1 "github.com/tp-run/tp/rpc/tunnel/v1"
)

const (
	// lingerTimeout bounds how long a closed client flow waits for the peer
	// to finish its direction (like tcp_fin_timeout for orphaned sockets).
	lingerTimeout = 60 * time.Second
	// abortGrace bounds how long an aborted flow waits for the peer to take
	// note before the gRPC stream is torn down.
	abortGrace = 10 * time.Second
)

// stream is one end of a flow on the wire: a grpc.ClientStream or a
// grpc.ServerStream carrying tunnelv1.Frame messages.
type stream interface {
	Context() context.Context
	SendMsg(m any) error
	RecvMsg(m any) error
}

// flowConfig says how a flow drives its stream.
type flowConfig struct {
	network       string   // "tcp" or "udp"
	local, remote net.Addr // what LocalAddr and RemoteAddr return
	// client streams half-close with closeSend after their last frame, keep
	// receiving until the server ends the stream, and tear it down with
	// cancel. A server's stream ends when its handler returns.
	client    bool
	closeSend func() error
	cancel    context.CancelFunc
	// plainProto is set when the peer uses the proto codec instead of the
	// tunnel codec: Data payloads are then copied into the message.
	plainProto bool
	log        *slog.Logger
}

// flow is a Conn driven by a gRPC stream: the frame pump shared by clients
// (Dialer), servers (Server) and, through Splice, stream-to-stream relays.
//
// It owns two goroutines. recvLoop receives frames and hands Data to Read;
// sendLoop sends what Write hands it, then a Fin or an Error frame. Both hand
// frames over through unbuffered channels, so a frame is always owned by
// exactly one side and deadlines and Close can interrupt a blocked Read or
// Write without losing or duplicating data.
type flow struct {
	flowConfig
	s stream

	readMu  sync.Mutex      // serializes readers
	recvCh  chan recvItem   // from recvLoop
	pending mem.BufferSlice // unread rest of a Data frame
	readErr error           // terminal read error; io.EOF after Fin
	readDL  *deadline

	writeMu     sync.Mutex  // serializes writers
	sendCh      chan *frame // to sendLoop
	writeDL     *deadline
	finOnce     sync.Once
	finReq      chan struct{} // closed by CloseWrite: send Fin after what Write handed over
	abortOnce   sync.Once
	abortReq    chan struct{} // closed by abort: send abortFrame instead of anything else
	abortFrame  *tunnelv1.Error
	sendDone    chan struct{} // closed when sendLoop returns
	sendErr     error         // why sendLoop returned; read after sendDone
	peerDone    chan struct{} // closed when the peer aborted or the stream failed
	peerErr     error         // why; read after peerDone
	closeOnce   sync.Once
	closed      chan struct{} // closed by Close
	timerMu     sync.Mutex
	cancelTimer *time.Timer // tears down a closed or aborted client stream
	cancelAt    time.Time   // when cancelTimer fires

	recvDone chan struct{} // closed when recvLoop returns
}

// recvItem is a Data payload or, with err set, the end of the read direction.
type recvItem struct {
	data mem.BufferSlice
	err  error
}

// errFinSent and errAbortSent end sendLoop after a Fin or an Error frame.
var (
	errFinSent   = errors.New("tunnel: flow closed for writing")
	errAbortSent = errors.New("tunnel: flow aborted")
)

func newFlow(s stream, cfg flowConfig) *flow {
	if cfg.log == nil {
		cfg.log = discardLogger
	}
	f := &flow{
		flowConfig: cfg,
		s:          s,
		recvCh:     make(chan recvItem),
		readDL:     newDeadline(),
		sendCh:     make(chan *frame),
		writeDL:    newDeadline(),
		finReq:     make(chan struct{}),
		abortReq:   make(chan struct{}),
		sendDone:   make(chan struct{}),
		peerDone:   make(chan struct{}),
		closed:     make(chan struct{}),
		recvDone:   make(chan struct{}),
	}
	go f.recvLoop()
	go f.sendLoop()
	return f
}

// recvLoop receives frames until the read direction ends (server) or the
// stream ends (client).
func (f *flow) recvLoop() {
	defer close(f.recvDone)
	if f.client {
		defer func() {
			// The stream is over: release it and stop sendLoop.
			f.stopTimer()
			f.cancel()
		}()
	}
	ended := false // a terminal item was handed to Read
	for {
		fr := &frame{}
		if err := f.s.RecvMsg(fr); err != nil {
			if errors.Is(err, io.EOF) {
				// The peer ended the stream: a client half-closed (server
				// side) or the handler returned OK (client side), which it
				// does after Fin or Error.
				err = io.EOF
			} else {
				err = fromStatus(err)
				f.setPeerDone(err)
			}
			if !ended {
				f.deliver(recvItem{err: err})
			}
			if f.client {
				// The stream is over; a server can still send after a
				// client's half-close.
				f.setPeerDone(syscall.EPIPE) // no-op if already set above
			}
			return
		}
		fr.normalize() // a Data frame decoded by the plain proto codec
		switch {
		case fr.isData:
			if ended {
				fr.release() // nothing may follow Fin or Error
				continue
			}
			if !f.deliver(recvItem{data: fr.data}) {
				// Data after Close: reset, as TCP does.
				fr.release()
				f.log.Debug("tunnel: data after close, resetting the flow")
				f.abort(syscall.ECONNRESET)
			}
		case fr.GetFin() != nil:
			ended = true
			f.deliver(recvItem{err: io.EOF})
			if !f.client {
				return
			}
		case fr.GetError() != nil:
			ended = true
			re := &RemoteError{Code: fr.GetError().GetCode(), Message: fr.GetError().GetMessage()}
			f.setPeerDone(re)
			f.deliver(recvItem{err: re})
			if !f.client {
				return
			}
		default:
			err := fmt.Errorf("tunnel: unexpected %T frame on an open flow", fr.Kind)
			f.log.Warn("tunnel: protocol violation", "err", err)
			// Abort before Read sees the error: a reader that closes the
			// flow in response would otherwise race a Fin against the
			// Error frame.
			f.abort(err)
			if !ended {
				ended = true
				f.deliver(recvItem{err: err})
			}
			if !f.client {
				return
			}
		}
	}
}

// deliver hands it to Read. It reports false (and drops it) once the flow
// is closed.
func (f *flow) deliver(it recvItem) bool {
	select {
	case f.recvCh <- it:
		return true
	case <-f.closed:
		return false
	}
}

func (f *flow) setPeerDone(err error) {
	select {
	case <-f.peerDone:
	default:
		f.peerErr = err
		close(f.peerDone)
	}
}

// sendLoop sends what Write hands over, then Fin or Error.
func (f *flow) sendLoop() {
	err := f.sendFrames()
	f.sendErr = err
	close(f.sendDone)
	if f.client {
		switch {
		case err != errAbortSent && isClosed(f.abortReq):
			f.cancel() // aborted, but no Error frame went out: reset the stream
		case isClosed(f.peerDone):
			f.closeSend() // the server aborted: let its handler return
		}
	}
	if err != errFinSent && err != errAbortSent {
		f.log.Debug("tunnel: flow send side ended", "err", err)
	}
}

func (f *flow) sendFrames() error {
	ctx := f.s.Context()
	for {
		select {
		case <-f.abortReq:
			return f.sendLast(&tunnelv1.Frame{Kind: &tunnelv1.Frame_Error{Error: f.abortFrame}}, errAbortSent)
		default:
		}
		select {
		case fr := <-f.sendCh:
			err := f.send(fr)
			if err != nil {
				return err
			}
		case <-f.finReq:
			if isClosed(f.abortReq) {
				// Aborts close the flow too; when both came before this
				// select, the select may pick either: the reset wins.
				return f.sendLast(&tunnelv1.Frame{Kind: &tunnelv1.Frame_Error{Error: f.abortFrame}}, errAbortSent)
			}
			return f.sendLast(&tunnelv1.Frame{Kind: &tunnelv1.Frame_Fin{Fin: &tunnelv1.Fin{}}}, errFinSent)
		case <-f.abortReq:
			return f.sendLast(&tunnelv1.Frame{Kind: &tunnelv1.Frame_Error{Error: f.abortFrame}}, errAbortSent)
		case <-f.peerDone:
			return f.peerErr
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// send sends fr and releases it.
func (f *flow) send(fr *frame) error {
	if f.plainProto {
		fr.materialize()
	}
	err := f.s.SendMsg(fr)
	fr.release()
	return err
}

// sendLast sends the flow's last frame, half-closes a client stream and
// returns done.
func (f *flow) sendLast(m *tunnelv1.Frame, done error) error {
	select {
	case <-f.peerDone:
		return f.peerErr // the peer is gone: nobody to tell
	default:
	}
	if err := f.send(newControlFrame(m)); err != nil {
		return err
	}
	if f.client {
		if err := f.closeSend(); err != nil {
			return err
		}
	}
	return done
}

// enqueue hands fr to sendLoop. The caller keeps fr on error.
func (f *flow) enqueue(fr *frame) error {
	switch {
	case isClosed(f.closed):
		return net.ErrClosed
	case isClosed(f.finReq):
		return syscall.EPIPE
	case isClosed(f.sendDone):
		return f.writeError()
	case isClosed(f.writeDL.wait()):
		return timeoutError{}
	}
	select {
	case f.sendCh <- fr:
		return nil
	case <-f.closed:
		return net.ErrClosed
	case <-f.sendDone:
		return f.writeError()
	case <-f.writeDL.wait():
		return timeoutError{}
	}
}

// writeError says why Write fails once sendLoop has returned.
func (f *flow) writeError() error {
	select {
	case <-f.peerDone:
		if f.peerErr != nil {
			return f.peerErr
		}
	default:
	}
	switch {
	case f.sendErr == errFinSent:
		return syscall.EPIPE
	case f.sendErr == errAbortSent:
		return net.ErrClosed
	case errors.Is(f.sendErr, io.EOF):
		// A client stream that ended; recvLoop knows why.
		return syscall.ECONNRESET
	default:
		return fromStatus(f.sendErr)
	}
}

func (f *flow) opError(op string, err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	return &net.OpError{Op: op, Net: f.network, Source: f.local, Addr: f.remote, Err: err}
}

// Read implements net.Conn. For "udp" it returns one datagram, truncated to
// len(b) like a UDP socket does.
func (f *flow) Read(b []byte) (int, error) {
	f.readMu.Lock()
	defer f.readMu.Unlock()
	for {
		if f.pending != nil && isClosed(f.closed) {
			f.pending.Free()
			f.pending = nil
		}
		if f.pending != nil {
			if f.network == "udp" {
				n := f.pending.CopyTo(b)
				f.pending.Free()
				f.pending = nil
				return n, nil
			}
			if len(b) == 0 {
				return 0, nil
			}
			n, rest := readBuffers(b, f.pending)
			f.pending = rest
			return n, nil
		}
		if err := f.next(); err != nil {
			return 0, f.opError("read", err)
		}
	}
}

// next waits for the next Data payload and stores it in f.pending, or
// returns the terminal error.
func (f *flow) next() error {
	switch {
	case isClosed(f.closed):
		return net.ErrClosed
	case f.readErr != nil:
		return f.readErr
	case isClosed(f.readDL.wait()):
		return timeoutError{}
	}
	select {
	case it := <-f.recvCh:
		if it.err != nil {
			f.readErr = it.err
			return it.err
		}
		switch {
		case len(it.data) > 0:
			f.pending = it.data
		case f.network == "udp":
			f.pending = mem.BufferSlice{} // an empty datagram
		}
		// An empty TCP payload carries nothing.
		return nil
	case <-f.closed:
		return net.ErrClosed
	case <-f.readDL.wait():
		return timeoutError{}
	}
}

// readBuffers copies from s into b, freeing what it consumed, and returns
// the rest (nil once empty).
func readBuffers(b []byte, s mem.BufferSlice) (int, mem.BufferSlice) {
	n := 0
	for len(s) > 0 && n < len(b) {
		c, rest := mem.ReadUnsafe(b[n:], s[0])
		n += c
		if rest == nil {
			s = s[1:]
		} else {
			s[0] = rest
		}
	}
	if len(s) == 0 {
		return n, nil
	}
	return n, s
}

// Write implements net.Conn. For "udp" each Write sends one datagram.
func (f *flow) Write(b []byte) (int, error) {
	f.writeMu.Lock()
	defer f.writeMu.Unlock()
	if f.network == "udp" {
		if len(b) > maxDatagram {
			return 0, f.opError("write", syscall.EMSGSIZE)
		}
		fr := newDataFrame(copyPayload(b))
		if err := f.enqueue(fr); err != nil {
			fr.release()
			return 0, f.opError("write", err)
		}
		return len(b), nil
	}
	n := 0
	for n < len(b) {
		chunk := b[n:min(len(b), n+maxPayload)]
		fr := newDataFrame(copyPayload(chunk))
		if err := f.enqueue(fr); err != nil {
			fr.release()
			return n, f.opError("write", err)
		}
		n += len(chunk)
	}
	return n, nil
}

// copyPayload copies b into a pooled buffer.
func copyPayload(b []byte) mem.BufferSlice {
	if len(b) == 0 {
		return mem.BufferSlice{}
	}
	buf := payloadPool.Get(len(b))
	copy(*buf, b)
	return mem.BufferSlice{mem.NewBuffer(buf, payloadPool)}
}

// ReadFrom implements io.ReaderFrom: it reads from r straight into pooled
// payload buffers (one Data frame per Read, so one datagram per frame for
// UDP sources) until r ends. It does not half-close the flow.
//
// Reads start with a smallRead buffer, use maxPayload after a read of at
// least smallRead and go back to smallRead after a shorter one, so an idle
// connection pins little.
func (f *flow) ReadFrom(r io.Reader) (int64, error) {
	n, rerr, werr := f.readFrom(r)
	if werr != nil {
		return n, f.opError("write", werr)
	}
	return n, rerr
}

// readFrom is ReadFrom with read and write errors apart (nil rerr at EOF).
func (f *flow) readFrom(r io.Reader) (total int64, rerr, werr error) {
	f.writeMu.Lock()
	defer f.writeMu.Unlock()
	small, big := smallRead, maxPayload
	if f.network == "udp" {
		small, big = maxDatagram, maxDatagram // a datagram must fit whole
	}
	size := small
	for {
		buf := payloadPool.Get(size)
		n, err := r.Read(*buf)
		if n >= smallRead {
			size = big // a busy connection: read as much as it has
		} else {
			size = small
		}
		if n > 0 || (err == nil && f.network == "udp") {
			*buf = (*buf)[:n]
			fr := newDataFrame(mem.BufferSlice{mem.NewBuffer(buf, payloadPool)})
			if werr := f.enqueue(fr); werr != nil {
				fr.release()
				return total, nil, werr
			}
			total += int64(n)
		} else {
			payloadPool.Put(buf)
		}
		if err == io.EOF {
			return total, nil, nil
		}
		if err != nil {
			return total, err, nil
		}
	}
}

// WriteTo implements io.WriterTo: it writes each Data payload to w straight
// from the transport's buffers until the peer half-closes. Writing to
// another flow moves the buffers without copying. For UDP, each datagram is
// one w.Write.
func (f *flow) WriteTo(w io.Writer) (int64, error) {
	n, rerr, werr := f.writeTo(w)
	if werr != nil {
		return n, werr
	}
	return n, f.opError("read", rerr)
}

// writeTo is WriteTo with read and write errors apart (nil rerr at EOF).
func (f *flow) writeTo(w io.Writer) (total int64, rerr, werr error) {
	f.readMu.Lock()
	defer f.readMu.Unlock()
	dst, _ := w.(*flow)
	var vec net.Buffers
	for {
		if f.pending == nil {
			if err := f.next(); err != nil {
				if err == io.EOF {
					err = nil
				}
				return total, err, nil
			}
			continue
		}
		data := f.pending
		f.pending = nil
		n := data.Len()
		switch {
		case dst != nil:
			fr := newDataFrame(data)
			dst.writeMu.Lock()
			err := dst.enqueue(fr)
			dst.writeMu.Unlock()
			if err != nil {
				fr.release()
				return total, nil, dst.opError("write", err)
			}
		case len(data) == 1 || f.network == "udp":
			b := data.MaterializeToBuffer(payloadPool)
			_, err := w.Write(b.ReadOnlyData())
			b.Free()
			data.Free()
			if err != nil {
				return total, nil, err
			}
		default:
			vec = vec[:0]
			for _, b := range data {
				vec = append(vec, b.ReadOnlyData())
			}
			v := vec
			_, err := v.WriteTo(w)
			data.Free()
			if err != nil {
				return total, nil, err
			}
		}
		total += int64(n)
	}
}

// CloseWrite half-closes the flow: the peer reads EOF once it has read
// everything written before.
func (f *flow) CloseWrite() error {
	f.finOnce.Do(func() { close(f.finReq) })
	return nil
}

// Close implements net.Conn. Written data is still delivered, followed by a
// half-close; the read direction is closed, and data that arrives for it
// afterwards resets the flow, as with TCP. A client's stream is torn down
// at the latest lingerTimeout later.
func (f *flow) Close() error {
	f.closeOnce.Do(func() {
		close(f.closed)
		f.CloseWrite()
		// A reader that holds readMu frees pending itself when it sees closed.
		if f.readMu.TryLock() {
			if f.pending != nil {
				f.pending.Free()
				f.pending = nil
			}
			f.readMu.Unlock()
		}
		f.cancelAfter(lingerTimeout)
	})
	return nil
}

// Abort resets the flow (TCP RST): queued data is dropped and the peer's
// reads fail with syscall.ECONNRESET.
func (f *flow) Abort() error {
	f.abort(syscall.ECONNRESET)
	f.Close()
	return nil
}

// abort tells the peer that the flow failed because of cause.
func (f *flow) abort(cause error) {
	f.abortOnce.Do(func() {
		f.abortFrame = &tunnelv1.Error{Code: errorCode(cause), Message: cause.Error()}
		close(f.abortReq)
		if !f.client {
			return
		}
		// The server returns once it reads the Error frame; if sendLoop
		// is gone, no Error frame will go out: reset the stream now.
		if isClosed(f.sendDone) {
			f.cancel()
		} else {
			f.cancelAfter(abortGrace)
		}
	})
}

// cancelAfter tears a client stream down after d unless it ends before.
func (f *flow) cancelAfter(d time.Duration) {
	if !f.client {
		return
	}
	f.timerMu.Lock()
	defer f.timerMu.Unlock()
	if isClosed(f.recvDone) {
		return
	}
	at := time.Now().Add(d)
	if f.cancelTimer != nil {
		if !at.Before(f.cancelAt) || !f.cancelTimer.Stop() {
			return // an earlier teardown is scheduled, or done
		}
	}
	f.cancelAt = at
	f.cancelTimer = time.AfterFunc(d, f.cancel)
}

func (f *flow) stopTimer() {
	f.timerMu.Lock()
	defer f.timerMu.Unlock()
	if f.cancelTimer != nil {
		f.cancelTimer.Stop()
	}
}

// wait waits for both goroutines to return: as long as it takes after a
// graceful end (the stream's context bounds it), at most abortGrace after an
// abort. A server's handler then returns, which ends the stream and so the
// goroutines.
func (f *flow) wait() {
	abort := f.abortReq
	var grace <-chan time.Time
	for _, done := range [...]chan struct{}{f.sendDone, f.recvDone} {
		for waiting := true; waiting; {
			select {
			case <-done:
				waiting = false
			case <-abort:
				t := time.NewTimer(abortGrace)
				defer t.Stop()
				grace, abort = t.C, nil
			case <-grace:
				return
			}
		}
	}
}

func (f *flow) LocalAddr() net.Addr  { return f.local }
func (f *flow) RemoteAddr() net.Addr { return f.remote }

func (f *flow) SetDeadline(t time.Time) error {
	f.readDL.set(t)
	f.writeDL.set(t)
	return nil
}

func (f *flow) SetReadDeadline(t time.Time) error  { f.readDL.set(t); return nil }
func (f *flow) SetWriteDeadline(t time.Time) error { f.writeDL.set(t); return nil }
