package tunnel

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tunnelv1 "github.com/tp-run/tp/rpc/tunnel/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestDataBothWays(t *testing.T) {
	env := newEnv(t, envConfig{})
	c := dial(t, env.dialer, "tcp", serveTCP(t, echo))

	for _, msg := range []string{"hello", "tunnel", string(pattern(200_000, 1))} {
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatalf("Write: %v", err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("ReadFull: %v", err)
		}
		if string(got) != msg {
			t.Fatalf("echo of %d bytes differs", len(msg))
		}
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("Read after both half-closed: got %d, %v, want 0, EOF", n, err)
	}
	if got, want := c.RemoteAddr().String(), c.RemoteAddr().String(); got != want || got == "" {
		t.Fatalf("RemoteAddr: got %q", got)
	}
}

// TestLargeTransfer sends a large stream both ways at once and compares
// checksums.
func TestLargeTransfer(t *testing.T) {
	size := 64 << 20
	if testing.Short() || raceEnabled {
		size = 16 << 20
	}
	env := newEnv(t, envConfig{})
	c := dial(t, env.dialer, "tcp", serveTCP(t, echo))

	data := pattern(size, 7)
	var g errgroup.Group
	g.Go(func() error {
		// Odd write sizes cross frame boundaries.
		for rest := data; len(rest) > 0; {
			n := min(len(rest), 100_003)
			if _, err := c.Write(rest[:n]); err != nil {
				return err
			}
			rest = rest[n:]
		}
		return c.CloseWrite()
	})
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("write: %v", err)
	}
	if n != int64(size) {
		t.Fatalf("read %d bytes, want %d", n, size)
	}
	if got, want := h.Sum(nil), sha256.Sum256(data); !bytes.Equal(got, want[:]) {
		t.Fatalf("checksum: got %x, want %x", got, want)
	}
}

// TestHalfCloseClient: the client half-closes and still reads the reply.
func TestHalfCloseClient(t *testing.T) {
	env := newEnv(t, envConfig{})
	dst := serveTCP(t, func(c *net.TCPConn) {
		req, err := io.ReadAll(c) // until the client's FIN
		if err != nil {
			return
		}
		fmt.Fprintf(c, "got %d bytes", len(req))
	})
	c := dial(t, env.dialer, "tcp", dst)
	if _, err := c.Write([]byte("request")); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("Write after CloseWrite: got %v, want EPIPE", err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	if want := "got 7 bytes"; string(got) != want {
		t.Fatalf("reply: got %q, want %q", got, want)
	}
}

// TestHalfCloseServer: the destination half-closes first and still reads
// what the client sends afterwards.
func TestHalfCloseServer(t *testing.T) {
	env := newEnv(t, envConfig{})
	received := make(chan string, 1)
	dst := serveTCP(t, func(c *net.TCPConn) {
		c.Write([]byte("bye"))
		c.CloseWrite()
		b, _ := io.ReadAll(c)
		received <- string(b)
	})
	c := dial(t, env.dialer, "tcp", dst)
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	if string(got) != "bye" {
		t.Fatalf("got %q, want %q", got, "bye")
	}
	if _, err := c.Write([]byte("more after your FIN")); err != nil {
		t.Fatalf("Write after the peer's FIN: %v", err)
	}
	c.CloseWrite()
	select {
	case got := <-received:
		if want := "more after your FIN"; got != want {
			t.Fatalf("destination got %q, want %q", got, want)
		}
	case <-testContext(t).Done():
		t.Fatal("destination did not see the client's data and FIN")
	}
}

func TestDialErrors(t *testing.T) {
	syscallErr := func(errno syscall.Errno) DialFunc {
		return func(context.Context, string, string) (net.Conn, error) {
			return nil, &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", errno)}
		}
	}
	tests := []struct {
		name string
		dial DialFunc
		dst  func(testing.TB) netip.AddrPort
		want error
	}{
		{name: "refused", dst: refusedAddr, want: syscall.ECONNREFUSED},
		{name: "host unreachable", dial: syscallErr(syscall.EHOSTUNREACH), want: syscall.EHOSTUNREACH},
		{name: "network unreachable", dial: syscallErr(syscall.ENETUNREACH), want: syscall.EHOSTUNREACH},
		{name: "timeout", dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, time.Millisecond)
			defer cancel()
			<-ctx.Done()
			return (&net.Dialer{}).DialContext(ctx, network, address)
		}, want: os.ErrDeadlineExceeded},
		{name: "connect timeout", dial: syscallErr(syscall.ETIMEDOUT), want: os.ErrDeadlineExceeded},
		{name: "denied by policy", dial: func(context.Context, string, string) (net.Conn, error) {
			return nil, fmt.Errorf("not in the allowed ranges: %w", syscall.EACCES)
		}, want: syscall.EACCES},
		{name: "firewall EPERM", dial: syscallErr(syscall.EPERM), want: syscall.EACCES},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newEnv(t, envConfig{dial: tt.dial})
			dst := netip.MustParseAddrPort("192.0.2.1:80")
			if tt.dst != nil {
				dst = tt.dst(t)
			}
			c, err := env.dialer.Dial(testContext(t), "tcp", dst)
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded, want an error")
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("Dial: got %v, want errors.Is %v", err, tt.want)
			}
			var opErr *net.OpError
			if !errors.As(err, &opErr) || opErr.Op != "dial" {
				t.Fatalf("Dial: got %T %v, want a dial *net.OpError", err, err)
			}
			var re *RemoteError
			if !errors.As(err, &re) {
				t.Fatalf("Dial: got %v, want a *RemoteError", err)
			}
		})
	}
}

func TestDialDeniedKeepsMessage(t *testing.T) {
	const msg = "dial 169.254.169.254:80 refused: allow it with the chart value tunnel.allowCIDRs"
	env := newEnv(t, envConfig{dial: func(context.Context, string, string) (net.Conn, error) {
		return nil, &deniedErr{msg}
	}})
	_, err := env.dialer.Dial(testContext(t), "tcp", netip.MustParseAddrPort("169.254.169.254:80"))
	var re *RemoteError
	if !errors.As(err, &re) {
		t.Fatalf("Dial: got %v, want a *RemoteError", err)
	}
	if got, want := re.Code, tunnelv1.ErrorCode_ERROR_CODE_DENIED; got != want {
		t.Errorf("code: got %v, want %v", got, want)
	}
	if re.Message != msg {
		t.Errorf("message: got %q, want %q", re.Message, msg)
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("Dial: got %v, which matches ECONNREFUSED; want only EACCES", err)
	}
}

type deniedErr struct{ msg string }

func (e *deniedErr) Error() string { return e.msg }
func (e *deniedErr) Unwrap() error { return syscall.EACCES }

func TestDialTimeoutIsNetTimeout(t *testing.T) {
	env := newEnv(t, envConfig{dial: func(context.Context, string, string) (net.Conn, error) {
		return nil, os.ErrDeadlineExceeded
	}})
	_, err := env.dialer.Dial(testContext(t), "tcp", netip.MustParseAddrPort("192.0.2.1:80"))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Dial: got %v, want a net.Error with Timeout()", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial: got %v, want errors.Is context.DeadlineExceeded", err)
	}
}

func TestUnknownSession(t *testing.T) {
	env := newEnv(t, envConfig{authorize: func(_ context.Context, id string) error {
		return fmt.Errorf("session %q: %w", id, ErrUnknownSession)
	}})
	dst := serveTCP(t, echo)
	_, err := env.dialer.Dial(testContext(t), "tcp", dst)
	if !errors.Is(err, ErrUnknownSession) {
		t.Fatalf("Dial: got %v, want ErrUnknownSession", err)
	}
	if got, want := status.Code(err), codes.Unauthenticated; got != want {
		t.Fatalf("status code: got %v, want %v", got, want)
	}

	noSession := NewDialer(env.cc, "", nil)
	if _, err := noSession.Dial(testContext(t), "tcp", dst); !errors.Is(err, ErrUnknownSession) {
		t.Fatalf("Dial without session: got %v, want ErrUnknownSession", err)
	}
}

func TestAuthorizerErrors(t *testing.T) {
	env := newEnv(t, envConfig{authorize: func(context.Context, string) error {
		return errors.New("session expired")
	}})
	_, err := env.dialer.Dial(testContext(t), "tcp", serveTCP(t, echo))
	if got, want := status.Code(err), codes.PermissionDenied; got != want {
		t.Fatalf("status code: got %v (%v), want %v", got, err, want)
	}
}

func TestVersionMismatch(t *testing.T) {
	env := newEnv(t, envConfig{})
	d := NewDialer(env.cc, testSession, nil)
	d.version = ProtocolVersion + 1
	_, err := d.Dial(testContext(t), "tcp", serveTCP(t, echo))
	var ve *VersionError
	if !errors.As(err, &ve) {
		t.Fatalf("Dial: got %v, want a *VersionError", err)
	}
	if want := (VersionError{Client: ProtocolVersion + 1, Server: ProtocolVersion}); *ve != want {
		t.Fatalf("VersionError: got %+v, want %+v", *ve, want)
	}
	if !errors.Is(err, ErrIncompatibleVersion) {
		t.Fatalf("Dial: got %v, want errors.Is ErrIncompatibleVersion", err)
	}
	if got, want := status.Code(err), codes.FailedPrecondition; got != want {
		t.Fatalf("status code: got %v, want %v", got, want)
	}
}

func TestUDPDatagramBoundaries(t *testing.T) {
	env := newEnv(t, envConfig{})
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("ListenUDP: %v", err)
	}
	echoDone := make(chan struct{})
	t.Cleanup(func() {
		pc.Close()
		<-echoDone
	})
	go func() {
		defer close(echoDone)
		buf := make([]byte, 1<<16)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			pc.WriteToUDPAddrPort(buf[:n], from)
		}
	}()

	c := dial(t, env.dialer, "udp", pc.LocalAddr().(*net.UDPAddr).AddrPort())
	if _, ok := c.LocalAddr().(*net.UDPAddr); !ok {
		t.Fatalf("LocalAddr: got %T, want *net.UDPAddr", c.LocalAddr())
	}
	buf := make([]byte, 1<<16)
	for _, size := range []int{1, 100, 1500, 9000, 60_000, 0, 3} {
		want := pattern(size, byte(size))
		if n, err := c.Write(want); err != nil || n != size {
			t.Fatalf("Write(%d bytes): got %d, %v", size, n, err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		if n != size || !bytes.Equal(buf[:n], want) {
			t.Fatalf("datagram: got %d bytes, want %d", n, size)
		}
	}
	// A short buffer truncates the datagram, like a UDP socket.
	c.Write(pattern(100, 1))
	if n, err := c.Read(buf[:10]); n != 10 || err != nil {
		t.Fatalf("short Read: got %d, %v, want 10, nil", n, err)
	}
	if _, err := c.Write(make([]byte, maxDatagram+1)); !errors.Is(err, syscall.EMSGSIZE) {
		t.Fatalf("oversized Write: got %v, want EMSGSIZE", err)
	}
}

func TestManyConcurrentFlows(t *testing.T) {
	const flows = 64
	size := 1 << 20
	if raceEnabled {
		size = 256 << 10
	}
	env := newEnv(t, envConfig{})
	dst := serveTCP(t, echo)
	var g errgroup.Group
	for i := range flows {
		g.Go(func() error {
			c, err := env.dialer.Dial(testContext(t), "tcp", dst)
			if err != nil {
				return err
			}
			defer c.Close()
			data := pattern(size, byte(i))
			var wg errgroup.Group
			wg.Go(func() error {
				if _, err := c.Write(data); err != nil {
					return err
				}
				return c.CloseWrite()
			})
			got, err := io.ReadAll(c)
			if err := wg.Wait(); err != nil {
				return fmt.Errorf("flow %d: write: %w", i, err)
			}
			if err != nil {
				return fmt.Errorf("flow %d: read: %w", i, err)
			}
			if !bytes.Equal(got, data) {
				return fmt.Errorf("flow %d: got %d bytes back, want the %d sent", i, len(got), len(data))
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
}

// TestDialCancel: cancelling Dial's context ends the stream and the
// server's dial.
func TestDialCancel(t *testing.T) {
	serverDialDone := make(chan error, 1)
	dialing := make(chan struct{})
	env := newEnv(t, envConfig{dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		close(dialing)
		<-ctx.Done()
		serverDialDone <- ctx.Err()
		return nil, ctx.Err()
	}})
	ctx, cancel := context.WithCancel(testContext(t))
	go func() {
		<-dialing
		cancel()
	}()
	_, err := env.dialer.Dial(ctx, "tcp", netip.MustParseAddrPort("192.0.2.1:80"))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Dial: got %v, want context.Canceled", err)
	}
	select {
	case err := <-serverDialDone:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("server dial context: got %v, want context.Canceled", err)
		}
	case <-testContext(t).Done():
		t.Fatal("the server's dial was not cancelled")
	}
}

func TestDialDeadline(t *testing.T) {
	env := newEnv(t, envConfig{dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}})
	ctx, cancel := context.WithTimeout(testContext(t), 50*time.Millisecond)
	defer cancel()
	_, err := env.dialer.Dial(ctx, "tcp", netip.MustParseAddrPort("192.0.2.1:80"))
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial: got %v, want os.ErrDeadlineExceeded and context.DeadlineExceeded", err)
	}
}

// TestDestinationReset: a reset destination resets the client's flow.
func TestDestinationReset(t *testing.T) {
	env := newEnv(t, envConfig{})
	dst := serveTCP(t, func(c *net.TCPConn) {
		// Reset only once connected, or the dial itself may fail.
		if _, err := io.ReadFull(c, make([]byte, 2)); err != nil {
			return
		}
		c.Write([]byte("partial"))
		c.SetLinger(0)
		c.Close()
	})
	c := dial(t, env.dialer, "tcp", dst)
	if _, err := c.Write([]byte("go")); err != nil {
		t.Fatalf("Write: %v", err)
	}
	_, err := io.ReadAll(c)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("ReadAll: got %v, want ECONNRESET", err)
	}
	if _, err := c.Write([]byte("x")); err == nil {
		// The first write may race the reset; the next must fail.
		deadline := time.Now().Add(10 * time.Second)
		for err == nil && time.Now().Before(deadline) {
			_, err = c.Write([]byte("x"))
		}
		if err == nil {
			t.Fatal("Write on a reset flow kept succeeding")
		}
	}
}

// TestClientAbort: Abort resets the destination connection.
func TestClientAbort(t *testing.T) {
	env := newEnv(t, envConfig{})
	readErr := make(chan error, 1)
	dst := serveTCP(t, func(c *net.TCPConn) {
		_, err := io.Copy(io.Discard, c)
		readErr <- err
	})
	c := dial(t, env.dialer, "tcp", dst)
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatalf("Write: %v", err)
	}
	c.(interface{ Abort() error }).Abort()
	select {
	case err := <-readErr:
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("destination read: got %v, want ECONNRESET", err)
		}
	case <-testContext(t).Done():
		t.Fatal("destination was not reset")
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Abort: got %v, want net.ErrClosed", err)
	}
}

// TestCloseWithUnreadData: data arriving after Close resets the flow, like
// TCP, so the destination does not wait forever.
func TestCloseWithUnreadData(t *testing.T) {
	env := newEnv(t, envConfig{})
	writeErr := make(chan error, 1)
	dst := serveTCP(t, func(c *net.TCPConn) {
		chunk := make([]byte, 64<<10)
		for {
			if _, err := c.Write(chunk); err != nil {
				writeErr <- err
				return
			}
		}
	})
	c := dial(t, env.dialer, "tcp", dst)
	if _, err := io.ReadFull(c, make([]byte, 1000)); err != nil {
		t.Fatalf("ReadFull: %v", err)
	}
	c.Close()
	select {
	case err := <-writeErr:
		if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
			t.Fatalf("destination write: got %v, want ECONNRESET or EPIPE", err)
		}
	case <-testContext(t).Done():
		t.Fatal("destination kept writing to a closed flow")
	}
}

func TestDeadlines(t *testing.T) {
	env := newEnv(t, envConfig{})
	c := dial(t, env.dialer, "tcp", serveTCP(t, echo))

	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past the deadline: got %v, want a timeout", err)
	}
	c.SetReadDeadline(time.Time{})
	if _, err := c.Write([]byte("still works")); err != nil {
		t.Fatalf("Write: %v", err)
	}
	got := make([]byte, len("still works"))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("ReadFull after clearing the deadline: %v", err)
	}

	c.SetWriteDeadline(time.Now().Add(-time.Second))
	if _, err := c.Write([]byte("late")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write past the deadline: got %v, want os.ErrDeadlineExceeded", err)
	}
}

// TestWriteDeadlineUnderBackpressure: a Write blocked by flow control fails
// at its deadline and reports what it handed over.
func TestWriteDeadlineUnderBackpressure(t *testing.T) {
	env := newEnv(t, envConfig{})
	release := make(chan struct{})
	dst := serveTCP(t, func(c *net.TCPConn) {
		<-release // read nothing: windows fill up
	})
	t.Cleanup(func() { close(release) })
	c := dial(t, env.dialer, "tcp", dst)
	big := make([]byte, 64<<20) // more than the windows and buffers hold
	c.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
	n, err := c.Write(big)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write: got %d, %v, want os.ErrDeadlineExceeded", n, err)
	}
	if n <= 0 || n >= len(big) || n%maxPayload != 0 {
		t.Fatalf("Write: got n=%d, want a positive multiple of %d below the total", n, maxPayload)
	}
}

func TestCloseUnblocksReadAndWrite(t *testing.T) {
	env := newEnv(t, envConfig{})
	release := make(chan struct{})
	dst := serveTCP(t, func(c *net.TCPConn) { <-release })
	t.Cleanup(func() { close(release) })
	c := dial(t, env.dialer, "tcp", dst)

	var g errgroup.Group
	g.Go(func() error {
		_, err := c.Read(make([]byte, 1))
		return err
	})
	g.Go(func() error {
		_, err := c.Write(make([]byte, 64<<20))
		return err
	})
	time.Sleep(50 * time.Millisecond) // let both block; Close must work either way
	c.Close()
	if err := g.Wait(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("blocked Read/Write after Close: got %v, want net.ErrClosed", err)
	}
}

// TestPlainProtoClient speaks the protocol with the generated client and
// the standard proto codec: the wire format is tunnel.proto.
func TestPlainProtoClient(t *testing.T) {
	env := newEnv(t, envConfig{})
	dst := serveTCP(t, echo)
	ctx := metadata.AppendToOutgoingContext(testContext(t), SessionMetadataKey, testSession)
	st, err := tunnelv1.NewTunnelClient(env.cc).Stream(ctx)
	if err != nil {
		t.Fatalf("Stream: %v", err)
	}
	send := func(f *tunnelv1.Frame) {
		t.Helper()
		if err := st.Send(f); err != nil {
			t.Fatalf("Send: %v", err)
		}
	}
	recv := func() *tunnelv1.Frame {
		t.Helper()
		f, err := st.Recv()
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		return f
	}
	send(&tunnelv1.Frame{Kind: &tunnelv1.Frame_Open{Open: &tunnelv1.Open{
		ProtocolVersion: ProtocolVersion,
		Network:         tunnelv1.Network_NETWORK_TCP,
		Destination:     toEndpoint(dst),
	}}})
	if f := recv(); f.GetOpened().GetProtocolVersion() != ProtocolVersion {
		t.Fatalf("first frame: got %v, want Opened v%d", f, ProtocolVersion)
	}
	want := pattern(100_000, 3)
	send(&tunnelv1.Frame{Kind: &tunnelv1.Frame_Data{Data: want}})
	send(&tunnelv1.Frame{Kind: &tunnelv1.Frame_Fin{Fin: &tunnelv1.Fin{}}})
	if err := st.CloseSend(); err != nil {
		t.Fatalf("CloseSend: %v", err)
	}
	var got []byte
	for {
		f := recv()
		if f.GetFin() != nil {
			break
		}
		got = append(got, f.GetData()...)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("echo: got %d bytes, want %d", len(got), len(want))
	}
	if _, err := st.Recv(); err != io.EOF {
		t.Fatalf("Recv after Fin: got %v, want EOF (status OK)", err)
	}
}

// TestServerMustAnswerOpen: a stream that does not start with Open is
// refused.
func TestServerMustAnswerOpen(t *testing.T) {
	env := newEnv(t, envConfig{})
	ctx := metadata.AppendToOutgoingContext(testContext(t), SessionMetadataKey, testSession)
	st, err := tunnelv1.NewTunnelClient(env.cc).Stream(ctx)
	if err != nil {
		t.Fatalf("Stream: %v", err)
	}
	st.Send(&tunnelv1.Frame{Kind: &tunnelv1.Frame_Data{Data: []byte("no open")}})
	_, err = st.Recv()
	if got, want := status.Code(err), codes.InvalidArgument; got != want {
		t.Fatalf("Recv: got %v (%v), want %v", got, err, want)
	}
}

// TestRelay chains two servers: the first dials through a Dialer to the
// second, so Splice relays between two tunnel streams.
func TestRelay(t *testing.T) {
	back := newEnv(t, envConfig{})
	front := newEnv(t, envConfig{dial: func(ctx context.Context, network, address string) (net.Conn, error) {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return nil, err
		}
		return back.dialer.Dial(ctx, network, ap)
	}})

	c := dial(t, front.dialer, "tcp", serveTCP(t, echo))
	data := pattern(8<<20, 9)
	var g errgroup.Group
	g.Go(func() error {
		if _, err := c.Write(data); err != nil {
			return err
		}
		return c.CloseWrite()
	})
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("relayed echo: got %d bytes, want %d", len(got), len(data))
	}

	_, err = front.dialer.Dial(testContext(t), "tcp", refusedAddr(t))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("relayed refused dial: got %v, want ECONNREFUSED", err)
	}
}

func TestNewServerChecksDependencies(t *testing.T) {
	dial := (&net.Dialer{}).DialContext
	if _, err := NewServer(nil, allowSession, nil); err == nil {
		t.Error("NewServer(nil dial): got nil error")
	}
	if _, err := NewServer(dial, nil, nil); err == nil {
		t.Error("NewServer(nil authorize): got nil error")
	}
}

func TestDialValidatesArguments(t *testing.T) {
	env := newEnv(t, envConfig{})
	if _, err := env.dialer.Dial(testContext(t), "ip", netip.MustParseAddrPort("127.0.0.1:1")); err == nil {
		t.Error(`Dial("ip"): got nil error`)
	}
	if _, err := env.dialer.Dial(testContext(t), "tcp", netip.AddrPort{}); err == nil {
		t.Error("Dial(invalid address): got nil error")
	}
}

// TestPlainProtoHalfClose: a client that half-closes with CloseSend alone
// (no Fin frame) still gets the server's reply.
func TestPlainProtoHalfClose(t *testing.T) {
	env := newEnv(t, envConfig{})
	dst := serveTCP(t, func(c *net.TCPConn) {
		req, _ := io.ReadAll(c)
		c.Write(bytes.ToUpper(req))
	})
	ctx := metadata.AppendToOutgoingContext(testContext(t), SessionMetadataKey, testSession)
	st, err := tunnelv1.NewTunnelClient(env.cc).Stream(ctx)
	if err != nil {
		t.Fatalf("Stream: %v", err)
	}
	st.Send(&tunnelv1.Frame{Kind: &tunnelv1.Frame_Open{Open: &tunnelv1.Open{
		ProtocolVersion: ProtocolVersion, Network: tunnelv1.Network_NETWORK_TCP, Destination: toEndpoint(dst),
	}}})
	st.Send(&tunnelv1.Frame{Kind: &tunnelv1.Frame_Data{Data: []byte("shout")}})
	st.CloseSend()
	var got []byte
	for {
		f, err := st.Recv()
		if err != nil {
			t.Fatalf("Recv: got %v before Fin", err)
		}
		if f.GetFin() != nil {
			break
		}
		got = append(got, f.GetData()...)
	}
	if string(got) != "SHOUT" {
		t.Fatalf("got %q, want %q", got, "SHOUT")
	}
}

func TestUnimplementedIsIncompatible(t *testing.T) {
	gs := grpc.NewServer() // no Tunnel service
	lis := listenTCP(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		gs.Serve(lis)
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-done
	})
	d := NewDialer(newClientConn(t, lis.Addr().String()), testSession, nil)
	_, err := d.Dial(testContext(t), "tcp", netip.MustParseAddrPort("127.0.0.1:1"))
	if !errors.Is(err, ErrIncompatibleVersion) {
		t.Fatalf("Dial: got %v, want ErrIncompatibleVersion", err)
	}
}
