package daemoncontainer

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/tp-run/tp/daemoncontainer/kubeauth"
	"github.com/tp-run/tp/daemoncontainer/kubeconfig"
)

// The credential relay (package kubeauth) must live as long as the daemon
// container needs tokens, longer than `tp connect`. So connect starts it as a
// detached `tp kubeauth serve` process that exits by itself when the daemon
// container is gone; its pid is recorded in the container's labels so that
// `tp quit` stops it at once.

// needsExecRelay says whether the context's user runs an exec plugin.
func needsExecRelay(raw clientcmdapi.Config, contextName string) bool {
	kctx := raw.Contexts[contextName]
	if kctx == nil {
		return false
	}
	u := raw.AuthInfos[kctx.AuthInfo]
	return u != nil && u.Exec != nil
}

// KubeauthEnvSecret carries the relay's secret to the relay process (the
// same variable carries it to the plugin in the container).
const KubeauthEnvSecret = kubeauth.EnvSecret

// StartKubeauthProcess returns a ConnectOptions.Kubeauth that runs the relay
// as `<this executable> kubeauth serve`, with kubeArgs (the kubectl-style
// flags of the connect command) so that it loads the same kubeconfig, and the
// connection's context; environ is its environment (the engine's
// DOCKER_CONTEXT or DOCKER_HOST, so that it watches the same engine).
func StartKubeauthProcess(kubeArgs, environ []string) func(ctx context.Context, containerName, contextName, listenHost string) (*kubeconfig.KubeauthRelay, int, error) {
	return func(ctx context.Context, containerName, contextName, listenHost string) (*kubeconfig.KubeauthRelay, int, error) {
		secret := rand.Text()
		args := append([]string{"kubeauth", "serve", "--container", containerName, "--listen", net.JoinHostPort(listenHost, "0")}, kubeArgs...)
		// The connection's context, even if the kubeconfig's current
		// context changes meanwhile (the last --context wins).
		args = append(args, "--context="+contextName)
		port, pid, err := startHostProcess(ctx, args, append(slices.Clone(environ), KubeauthEnvSecret+"="+secret))
		if err != nil {
			return nil, 0, err
		}
		return &kubeconfig.KubeauthRelay{URL: "http://host.docker.internal:" + strconv.Itoa(port), Secret: secret}, pid, nil
	}
}

// startHostProcess starts `<this executable> args...` detached, with env,
// and waits for its first line, "LISTENING <port>".
func startHostProcess(ctx context.Context, args, env []string) (port, pid int, err error) {
	self, err := os.Executable()
	if err != nil {
		return 0, 0, err
	}
	cmd := exec.Command(self, args...)
	cmd.Env = env
	detach(cmd)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	line := make(chan string, 1)
	go func() { // ends when the child closes its stdout after the first line
		l, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- strings.TrimSpace(l)
	}()
	select {
	case l := <-line:
		port, err := strconv.Atoi(strings.TrimPrefix(l, "LISTENING "))
		if err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return 0, 0, fmt.Errorf("%s %s did not start (said %q)", self, args[0]+" "+args[1], l)
		}
		pid := cmd.Process.Pid
		_ = cmd.Process.Release()
		return port, pid, nil
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return 0, 0, ctx.Err()
	}
}

// KubeauthServeOptions configure ServeKubeauth.
type KubeauthServeOptions struct {
	Raw           clientcmdapi.Config
	ContextName   string
	ContainerName string
	Listen        string
	Secret        string
	// Ready is called with the bound port once the relay listens.
	Ready func(port int)
	Log   *slog.Logger
}

// ServeKubeauth runs the credential relay until the daemon container is gone
// (or never appears within a minute) or ctx ends.
func ServeKubeauth(ctx context.Context, docker client.APIClient, o KubeauthServeOptions) error {
	if o.Secret == "" {
		return errors.New("credential relay: no secret in " + KubeauthEnvSecret)
	}
	users := map[string]*clientcmdapi.ExecConfig{}
	if kctx := o.Raw.Contexts[o.ContextName]; kctx != nil {
		if u := o.Raw.AuthInfos[kctx.AuthInfo]; u != nil && u.Exec != nil {
			users[kctx.AuthInfo] = u.Exec
		}
	}
	if len(users) == 0 {
		return fmt.Errorf("credential relay: context %q has no user with an exec plugin", o.ContextName)
	}
	l, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("credential relay: listen %s: %w", o.Listen, err)
	}
	o.Ready(l.Addr().(*net.TCPAddr).Port)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srv := kubeauth.NewServer(users, o.Secret, o.Log)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	watchContainer(ctx, docker, o.ContainerName)
	cancel()
	return <-done
}

// watchContainer returns when the container is gone (after having appeared,
// or after a minute of never appearing) or ctx ends.
func watchContainer(ctx context.Context, docker client.APIClient, name string) {
	seen := false
	deadline := time.Now().Add(time.Minute)
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		info, err := docker.ContainerInspect(ctx, name)
		running := err == nil && info.State.Running
		if running {
			seen = true
			continue
		}
		if seen || time.Now().After(deadline) {
			return
		}
	}
}

// killKubeauth stops the credential relay of a connection, if any.
func killKubeauth(pid string) {
	n, err := strconv.Atoi(pid)
	if err != nil || n <= 0 {
		return
	}
	if p, err := os.FindProcess(n); err == nil {
		_ = p.Kill()
	}
}

// publishedBy finds the container (a kind, k3d or minikube node) that
// publishes a host port, so that a loopback API server can be reached from the
// daemon container through that container's network.
func publishedBy(ctx context.Context, docker client.APIClient) func(hostPort int) (string, string, int, bool) {
	return func(hostPort int) (string, string, int, bool) {
		list, err := docker.ContainerList(ctx, container.ListOptions{})
		if err != nil {
			return "", "", 0, false
		}
		for _, c := range list {
			for _, p := range c.Ports {
				if int(p.PublicPort) != hostPort || c.NetworkSettings == nil {
					continue
				}
				for name, nw := range c.NetworkSettings.Networks {
					if nw != nil && nw.IPAddress != "" && name != "bridge" && name != "host" {
						return name, nw.IPAddress, int(p.PrivatePort), true
					}
				}
			}
		}
		return "", "", 0, false
	}
}

// networkOf finds the Docker network (other than bridge and host) of the
// container that has ip: minikube's docker driver on Linux writes its node
// container's address into the kubeconfig.
func networkOf(ctx context.Context, docker client.APIClient) func(ip string) (string, bool) {
	return func(ip string) (string, bool) {
		list, err := docker.ContainerList(ctx, container.ListOptions{})
		if err != nil {
			return "", false
		}
		for _, c := range list {
			if c.NetworkSettings == nil {
				continue
			}
			for name, nw := range c.NetworkSettings.Networks {
				if nw != nil && name != "bridge" && name != "host" && (nw.IPAddress == ip || nw.GlobalIPv6Address == ip) {
					return name, true
				}
			}
		}
		return "", false
	}
}

// lookupHost resolves a name on the host, briefly: a kubeconfig server
// named in /etc/hosts answers at once.
func lookupHost(ctx context.Context) func(host string) ([]string, error) {
	return func(host string) ([]string, error) {
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		return net.DefaultResolver.LookupHost(lctx, host)
	}
}

// isDockerDesktop says whether the engine is Docker Desktop's, which
// resolves kubernetes.docker.internal and host.docker.internal in every
// container itself.
func isDockerDesktop(ctx context.Context, docker client.APIClient) bool {
	info, err := docker.Info(ctx)
	return err == nil && strings.Contains(info.OperatingSystem, "Docker Desktop")
}
