package tunnel

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
)

// spliceFront accepts one local TCP connection and splices it with a flow
// to dst, the way the workstation daemon forwards a container's connection.
// It returns the local address and a channel with Splice's result.
func spliceFront(t *testing.T, ctx context.Context, flow Conn) (net.Addr, <-chan error) {
	t.Helper()
	lis := listenTCP(t)
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		c, err := lis.Accept()
		if err != nil {
			done <- err
			return
		}
		done <- Splice(ctx, flow, c)
	}()
	t.Cleanup(func() {
		lis.Close()
		<-finished
	})
	return lis.Addr(), done
}

func TestSpliceHalfClose(t *testing.T) {
	env := newEnv(t, envConfig{})
	dst := serveTCP(t, func(c *net.TCPConn) {
		req, err := io.ReadAll(c)
		if err != nil {
			return
		}
		c.Write(append([]byte("reply to "), req...))
	})
	flow := dial(t, env.dialer, "tcp", dst)
	addr, done := spliceFront(t, testContext(t), flow)

	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	c.Write([]byte("request"))
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	if want := "reply to request"; string(got) != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Splice: got %v, want nil", err)
		}
	case <-testContext(t).Done():
		t.Fatal("Splice did not return after both directions ended")
	}
}

func TestSpliceContextCancel(t *testing.T) {
	env := newEnv(t, envConfig{})
	dstErr := make(chan error, 1)
	dst := serveTCP(t, func(c *net.TCPConn) {
		_, err := io.Copy(io.Discard, c)
		dstErr <- err
	})
	flow := dial(t, env.dialer, "tcp", dst)
	ctx, cancel := context.WithCancel(testContext(t))
	addr, done := spliceFront(t, ctx, flow)

	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	c.Write([]byte("hello"))
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Splice: got %v, want context.Canceled", err)
		}
	case <-testContext(t).Done():
		t.Fatal("Splice did not return after cancel")
	}
	if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("local read: got %v, want ECONNRESET", err)
	}
	select {
	case err := <-dstErr:
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("destination read: got %v, want ECONNRESET", err)
		}
	case <-testContext(t).Done():
		t.Fatal("destination was not reset")
	}
}
