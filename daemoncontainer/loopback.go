package daemoncontainer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/docker/docker/client"
)

// An API server that listens on the host's 127.0.0.1 only (Rancher
// Desktop's on Linux hosts, `kubectl proxy`, an SSH tunnel, a VPN client's
// local endpoint) is not reachable from a container: host.docker.internal
// is the docker bridge's gateway on Linux. For such a server `tp connect`
// starts a forwarder on the host, a detached `tp` process like the
// credential relay, that listens on the bridge's gateway and forwards to
// the server. It accepts connections from the daemon container's addresses
// only, exits when the daemon container is gone, and its pid is in the
// container's labels (LabelForwardPID) so that `tp quit` stops it at once.
// TLS is end to end: the forwarder sees only the encrypted stream.

// forwardLoopback returns a kubeconfig.Options.ForwardLoopback for the
// engine: the server's own port when the daemon container reaches it at
// host.docker.internal, else the port of a forwarder started with start
// (its pid is stored in *pid).
func forwardLoopback(ctx context.Context, docker client.APIClient, start func(ctx context.Context, containerName, listenHost, target string) (int, int, error),
	containerName string, pid *int) func(host string, port int) (int, error) {
	return func(host string, port int) (int, error) {
		if runtime.GOOS != "linux" || start == nil {
			// Docker Desktop forwards host.docker.internal to the host's
			// loopback.
			return port, nil
		}
		gw, err := relayListenHost(ctx, docker)
		if err != nil || !isLocalAddress(gw) {
			// The engine runs in a VM (Rancher Desktop, Colima, a remote
			// engine): its gateway is the VM, where the cluster's API
			// server listens when it is the engine's own.
			return port, nil
		}
		if reachable(ctx, net.JoinHostPort(gw, strconv.Itoa(port))) {
			return port, nil
		}
		if *pid != 0 {
			return 0, errors.New("a second loopback server in one kubeconfig context")
		}
		target := net.JoinHostPort(host, strconv.Itoa(port))
		fwd, p, err := start(ctx, containerName, gw, target)
		if err != nil {
			return 0, fmt.Errorf("start the host forwarder to %s: %w", target, err)
		}
		*pid = p
		return fwd, nil
	}
}

// isLocalAddress says whether ip is an address of one of this host's
// interfaces.
func isLocalAddress(ip string) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.String() == ip {
			return true
		}
	}
	return false
}

func reachable(ctx context.Context, addr string) bool {
	d := net.Dialer{Timeout: 2 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// StartLoopbackForwardProcess returns a ConnectOptions.LoopbackForward that
// runs the forwarder as `<this executable> kubeauth forward`; environ is
// its environment (the engine's DOCKER_CONTEXT or DOCKER_HOST, so that it
// watches the same engine).
func StartLoopbackForwardProcess(environ []string) func(ctx context.Context, containerName, listenHost, target string) (int, int, error) {
	return func(ctx context.Context, containerName, listenHost, target string) (int, int, error) {
		return startHostProcess(ctx, []string{"kubeauth", "forward", "--container", containerName,
			"--listen", net.JoinHostPort(listenHost, "0"), "--to", target}, environ)
	}
}

// LoopbackForwardOptions configure ServeLoopbackForward.
type LoopbackForwardOptions struct {
	ContainerName string
	// Listen is the address to listen on (the bridge's gateway, port 0).
	Listen string
	// Target is the API server on the host's loopback, host:port.
	Target string
	// Ready is called with the bound port once the forwarder listens.
	Ready func(port int)
	Log   *slog.Logger
}

// ServeLoopbackForward forwards connections from the daemon container to
// the target until the daemon container is gone (or never appears within a
// minute) or ctx ends, and waits for the open connections to end.
func ServeLoopbackForward(ctx context.Context, docker client.APIClient, o LoopbackForwardOptions) error {
	l, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("forwarder: listen %s: %w", o.Listen, err)
	}
	o.Ready(l.Addr().(*net.TCPAddr).Port)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	f := &loopbackForward{o: o, docker: docker}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // owned here: stops when the container is gone
		defer wg.Done()
		watchContainer(ctx, docker, o.ContainerName)
		cancel()
		l.Close()
	}()
	err = f.serve(ctx, l, &wg)
	cancel()
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

type loopbackForward struct {
	o       LoopbackForwardOptions
	docker  client.APIClient
	mu      sync.Mutex
	allowed map[string]bool // the daemon container's addresses
}

func (f *loopbackForward) serve(ctx context.Context, l net.Listener, wg *sync.WaitGroup) error {
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		from, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		if !f.fromDaemon(ctx, from) {
			f.o.Log.Warn("forwarder: refused a connection that is not from the daemon container", "container", f.o.ContainerName, "from", from)
			c.Close()
			continue
		}
		wg.Add(1)
		go func() { // owned by wg: ends with either side of the connection
			defer wg.Done()
			f.pipe(ctx, c)
		}()
	}
}

// fromDaemon says whether ip is one of the daemon container's addresses,
// inspecting the container again on a miss (it may have started since).
func (f *loopbackForward) fromDaemon(ctx context.Context, ip string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.allowed[ip] {
		return true
	}
	info, err := f.docker.ContainerInspect(ctx, f.o.ContainerName)
	if err != nil || info.NetworkSettings == nil {
		return false
	}
	f.allowed = map[string]bool{}
	for _, nw := range info.NetworkSettings.Networks {
		if nw != nil {
			f.allowed[nw.IPAddress] = nw.IPAddress != ""
			f.allowed[nw.GlobalIPv6Address] = nw.GlobalIPv6Address != ""
		}
	}
	return f.allowed[ip]
}

func (f *loopbackForward) pipe(ctx context.Context, c net.Conn) {
	defer c.Close()
	d := net.Dialer{Timeout: 10 * time.Second}
	up, err := d.DialContext(ctx, "tcp", f.o.Target)
	if err != nil {
		f.o.Log.Warn("forwarder: API server unreachable", "container", f.o.ContainerName, "target", f.o.Target, "err", err)
		return
	}
	defer up.Close()
	stop := context.AfterFunc(ctx, func() { c.Close(); up.Close() })
	defer stop()
	done := make(chan struct{})
	go func() { // owned by pipe: waited for below
		defer close(done)
		_, _ = io.Copy(up, c)
		if tc, ok := up.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	_, _ = io.Copy(c, up)
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	<-done
}
