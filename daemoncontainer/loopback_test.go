package daemoncontainer

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
)

// inspectOnly is a Docker client that knows one running container with ip.
type inspectOnly struct {
	client.APIClient
	ip string
}

func (d inspectOnly) ContainerInspect(context.Context, string) (container.InspectResponse, error) {
	return container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{State: &container.State{Running: true}},
		NetworkSettings:   &container.NetworkSettings{Networks: map[string]*network.EndpointSettings{"bridge": {IPAddress: d.ip}}},
	}, nil
}

// startForward runs ServeLoopbackForward to an echo server, as if the
// daemon container had address daemonIP, and returns the forwarder's
// address.
func startForward(t *testing.T, daemonIP string) string {
	t.Helper()
	upstream, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { upstream.Close() })
	go func() { // ends when the listener is closed
		for {
			c, err := upstream.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan int, 1)
	done := make(chan error, 1)
	go func() {
		done <- ServeLoopbackForward(ctx, inspectOnly{ip: daemonIP}, LoopbackForwardOptions{
			ContainerName: "tp-test", Listen: "127.0.0.1:0", Target: upstream.Addr().String(),
			Ready: func(port int) { ready <- port }, Log: slog.New(slog.DiscardHandler),
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("ServeLoopbackForward: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("ServeLoopbackForward did not return after its context ended")
		}
	})
	select {
	case port := <-ready:
		return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	case err := <-done:
		t.Fatalf("ServeLoopbackForward: %v", err)
	}
	return ""
}

func TestLoopbackForwardFromDaemon(t *testing.T) {
	addr := startForward(t, "127.0.0.1")
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("through the forwarder: got %q, %v, want the echo of hello", buf, err)
	}
}

func TestLoopbackForwardRefusesOthers(t *testing.T) {
	addr := startForward(t, "172.17.0.9") // the daemon container is elsewhere
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = c.Write([]byte("hello"))
	n, err := c.Read(make([]byte, 5))
	if n != 0 || !errors.Is(err, io.EOF) && !isReset(err) {
		t.Fatalf("a connection from 127.0.0.1 read %d bytes, %v: want it closed (only the daemon container may use the forwarder)", n, err)
	}
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}
