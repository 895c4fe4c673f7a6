package daemoncontainer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"google.golang.org/grpc"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"

	"github.com/tp-run/tp/charts"
	"github.com/tp-run/tp/daemoncontainer/kubeconfig"
	"github.com/tp-run/tp/internal/dockerengine"
	"github.com/tp-run/tp/internal/phasetrace"
	daemonv1 "github.com/tp-run/tp/rpc/daemon/v1"
)

// ConnectOptions configure Connect.
type ConnectOptions struct {
	// Name of the connection; the container is ContainerName(Name).
	Name string
	// Kube gives the kubeconfig, context and namespace (kubectl-style flags).
	Kube genericclioptions.RESTClientGetter
	// ManagerNamespace is where the traffic-manager runs (installed there when missing).
	ManagerNamespace string
	// Image of the daemon (tp:<version>), Version of this client.
	Image, Version string
	LogLevel       string
	// DNS overrides the resolvers for names outside the cluster (default:
	// those Docker gives containers, i.e. the host's).
	DNS []string
	// Publish are ports the daemon container publishes on the host, docker
	// -p specs ([HOST_IP:][HOST_PORT:]PORT[/PROTO]): a container joined to
	// its network namespace cannot publish ports itself.
	Publish []string
	// MemoryOnly keeps the kubeconfig in the daemon's memory only: nothing
	// of it is on disk, and the connection does not survive a restart of
	// the container (Docker's restart policy is off). By default the daemon
	// keeps it in its container's layer (StateDir).
	MemoryOnly bool
	// Timeout for the whole connect, including a first manager install.
	Timeout time.Duration
	// Progress receives one line per step; nil discards.
	Progress io.Writer
	// ManagerValues are chart values for installing the traffic-manager
	// when it is missing (e.g. charts.ImageValues of the image flags).
	ManagerValues map[string]any
	// Engine is the Docker engine of the daemon container.
	Engine *dockerengine.Engine
	// Kubeauth starts the host relay for exec credential plugins; see
	// StartKubeauth. Nil makes kubeconfigs with exec plugins an error.
	Kubeauth func(ctx context.Context, containerName, contextName, listenHost string) (*kubeconfig.KubeauthRelay, int, error)
	// LoopbackForward starts the host forwarder for an API server that
	// listens on the host's loopback only (see StartLoopbackForwardProcess)
	// and returns its port and pid. Nil: such a server is unreachable from
	// the daemon container.
	LoopbackForward func(ctx context.Context, containerName, listenHost, target string) (port, pid int, err error)
	// Environ is the user's environment: its HTTP(S)_PROXY and NO_PROXY
	// reach the daemon container (ProxyEnv).
	Environ []string
	// AlsoProxy and NeverProxy are subnets (CIDRs) the daemon routes to the
	// cluster besides its ranges, and never (daemon.Config).
	AlsoProxy, NeverProxy []string
	// CABundle is a PEM file of extra CA certificates the daemon trusts
	// (a TLS-inspecting corporate proxy's), "" for none.
	CABundle string
}

// Connect starts the daemon container for a connection and waits until it is
// connected to the traffic-manager, installing the manager when it is
// missing. Connecting an existing, identical connection is a no-op. On
// failure nothing is left behind.
func Connect(ctx context.Context, o ConnectOptions) (*daemonv1.StatusResponse, error) {
	if o.Timeout <= 0 {
		o.Timeout = 3 * time.Minute
	}
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	publish, exposed, bindings, err := ParsePublish(o.Publish)
	if err != nil {
		return nil, err
	}
	alsoProxy, err := checkCIDRs("--also-proxy", o.AlsoProxy)
	if err != nil {
		return nil, err
	}
	neverProxy, err := checkCIDRs("--never-proxy", o.NeverProxy)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()

	loader := o.Kube.ToRawKubeConfigLoader()
	raw, err := loader.RawConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	contextName := raw.CurrentContext
	if cf, ok := o.Kube.(*genericclioptions.ConfigFlags); ok && cf.Context != nil && *cf.Context != "" {
		contextName = *cf.Context
	}
	if contextName == "" {
		return nil, errors.New("kubeconfig has no current context: pass --context or run `kubectl config use-context`")
	}
	if _, ok := raw.Contexts[contextName]; !ok {
		return nil, fmt.Errorf("context %q not found in the kubeconfig: pick one of `kubectl config get-contexts`", contextName)
	}
	namespace, _, err := loader.Namespace()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig namespace: %w", err)
	}

	if o.Engine == nil {
		return nil, errors.New("connect: no Docker engine")
	}
	docker, err := o.Engine.Client(ctx)
	if err != nil {
		return nil, err
	}
	defer docker.Close()
	cname := ContainerName(o.Name)

	if existing, err := Find(ctx, docker, o.Name); err == nil {
		sameCluster := existing.Context == contextName && existing.Namespace == namespace && existing.ManagerNamespace == o.ManagerNamespace
		samePorts := slices.Equal(existing.Publish, publish)
		if existing.Running && sameCluster && samePorts {
			fmt.Fprintf(o.Progress, "Already connected as %s (context %s, namespace %s)\n", cname, contextName, namespace)
			st, err := waitConnected(ctx, docker, existing.ContainerID)
			if err != nil {
				return nil, err
			}
			if err := pointResolver(ctx, docker, existing.ContainerID, st); err != nil {
				return nil, err
			}
			return st, nil
		}
		if existing.Running && sameCluster {
			return nil, fmt.Errorf("connection %q already runs and publishes %s (Docker cannot add ports to a running container): run `tp quit --name %s` and connect again with --publish",
				o.Name, orNone(existing.Publish), o.Name)
		}
		if existing.Running {
			return nil, fmt.Errorf("connection %q already runs for context %s, namespace %s: run `tp quit --name %s` first, or connect with another --name",
				o.Name, existing.Context, existing.Namespace, o.Name)
		}
		fmt.Fprintf(o.Progress, "Removing the stopped daemon container %s\n", cname)
		if err := remove(ctx, docker, existing.ContainerID); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, ErrNotConnected) {
		return nil, err
	}

	if err := checkCluster(ctx, o.Kube, contextName, namespace); err != nil {
		return nil, err
	}
	if err := ensureManager(ctx, o); err != nil {
		return nil, err
	}

	kopts := kubeconfig.Options{}
	var kubeauthPID int
	if needsExecRelay(raw, contextName) {
		if o.Kubeauth == nil {
			return nil, fmt.Errorf("the kubeconfig user of context %s uses an exec credential plugin, which this build cannot relay", contextName)
		}
		host, err := relayListenHost(ctx, docker)
		if err != nil {
			return nil, err
		}
		relay, pid, err := o.Kubeauth(ctx, cname, contextName, host)
		if err != nil {
			return nil, fmt.Errorf("start the credential relay for the exec plugin: %w", err)
		}
		kopts.Kubeauth, kubeauthPID = relay, pid
	}
	kopts.PublishedBy = publishedBy(ctx, docker)
	var forwardPID int
	kopts.ForwardLoopback = forwardLoopback(ctx, docker, o.LoopbackForward, cname, &forwardPID)
	kopts.NetworkOf = networkOf(ctx, docker)
	kopts.LookupHost = lookupHost(ctx)
	if isDockerDesktop(ctx, docker) {
		kopts.EngineHosts = kubeconfig.DockerDesktopHosts
	}
	var caBundle []byte
	if o.CABundle != "" {
		if caBundle, err = readCABundle(o.CABundle); err != nil {
			killKubeauth(strconv.Itoa(kubeauthPID))
			return nil, err
		}
	}
	kc, err := kubeconfig.ForContainer(raw, contextName, kopts)
	if err != nil {
		killKubeauth(strconv.Itoa(kubeauthPID))
		killKubeauth(strconv.Itoa(forwardPID))
		return nil, err
	}
	for _, r := range kc.Rewrites {
		fmt.Fprintf(o.Progress, "Kubeconfig for the daemon container: %s\n", r)
	}

	fmt.Fprintf(o.Progress, "Starting daemon container %s (%s)\n", cname, o.Image)
	conn := Connection{Name: o.Name, ContainerName: cname, Context: contextName, Namespace: namespace,
		ManagerNamespace: o.ManagerNamespace, Version: o.Version, Kubeconfig: kubeconfigPaths(o.Kube), Publish: publish}
	if kubeauthPID != 0 {
		conn.KubeauthPID = strconv.Itoa(kubeauthPID)
	}
	if forwardPID != 0 {
		conn.ForwardPID = strconv.Itoa(forwardPID)
	}
	id, err := create(ctx, docker, createOptions{Connection: conn, Image: o.Image,
		KubeconfigData: kc.Config, Networks: kc.Networks, ExtraHosts: kc.ExtraHosts, CABundle: caBundle,
		Env:       ProxyEnv(o.Environ, kubeconfig.DefaultLoopbackHost, kc.Direct),
		AlsoProxy: alsoProxy, NeverProxy: neverProxy,
		LogLevel: o.LogLevel, DNS: o.DNS, MemoryOnly: o.MemoryOnly,
		exposed: exposed, bindings: bindings})
	if err != nil {
		killKubeauth(conn.KubeauthPID)
		killKubeauth(conn.ForwardPID)
		return nil, err
	}
	st, err := waitConnected(ctx, docker, id)
	if err == nil {
		err = pointResolver(ctx, docker, id, st)
	}
	if err != nil {
		logs := logsTail(context.WithoutCancel(ctx), docker, id, 15)
		rmCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
		defer cancel()
		_ = remove(rmCtx, docker, id)
		killKubeauth(conn.KubeauthPID)
		killKubeauth(conn.ForwardPID)
		if logs != "" {
			return nil, fmt.Errorf("%w\ndaemon log:\n%s", err, logs)
		}
		return nil, err
	}
	return st, nil
}

// checkCluster fails early, with what to do, when the cluster is unreachable
// or the namespace does not exist.
func checkCluster(ctx context.Context, getter genericclioptions.RESTClientGetter, contextName, namespace string) error {
	rc, err := getter.ToRESTConfig()
	if err != nil {
		return fmt.Errorf("kubeconfig context %s: %w", contextName, err)
	}
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	_, err = kc.CoreV1().Namespaces().Get(cctx, namespace, metav1.GetOptions{})
	switch {
	case err == nil, apierrors.IsForbidden(err):
		return nil // a user may lack namespace get and still work in it
	case apierrors.IsNotFound(err):
		return fmt.Errorf("namespace %q not found in context %s: create it or pass --namespace", namespace, contextName)
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("the cluster of context %s rejected your credentials: log in again: %w", contextName, err)
	default:
		var urlErr *url.Error
		if errors.As(err, &urlErr) || errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("cannot reach the cluster of context %s at %s: check that it runs and that you can reach it (VPN?): %w", contextName, rc.Host, err)
		}
		return fmt.Errorf("cluster of context %s: %w", contextName, err)
	}
}

// ensureManager installs the traffic-manager when it is missing and waits
// until it is ready; a manager whose image the cluster cannot pull fails at
// once (charts.ImagePullError), not after the timeout.
func ensureManager(ctx context.Context, o ConnectOptions) error {
	rel, err := charts.Installed(ctx, o.Kube, o.ManagerNamespace, charts.DefaultReleaseName)
	if err == nil {
		if v := rel.Chart.Metadata.AppVersion; v != o.Version {
			fmt.Fprintf(o.Progress, "Traffic-manager in namespace %s is version %s, this client is %s (run `tp helm upgrade` to align)\n", o.ManagerNamespace, v, o.Version)
		}
		if len(o.ManagerValues) > 0 {
			fmt.Fprintf(o.Progress, "Traffic-manager installed already: the image flags apply to `tp helm upgrade --namespace %s`\n", o.ManagerNamespace)
		}
		return waitManager(ctx, o)
	}
	if apierrors.IsForbidden(err) {
		// A developer on a shared cluster need not read the Helm release (its
		// Secret holds the webhook's key): the daemon finds the manager's pod
		// and says what to do when there is none.
		return nil
	}
	if !errors.Is(err, charts.ErrNotInstalled) {
		return fmt.Errorf("check the traffic-manager in namespace %s: %w", o.ManagerNamespace, err)
	}
	fmt.Fprintf(o.Progress, "Installing the traffic-manager %s in namespace %s\n", o.Version, o.ManagerNamespace)
	// Not Helm's wait: it cannot tell an image the cluster cannot pull from
	// a slow start.
	_, err = charts.Install(ctx, o.Kube, charts.Options{Namespace: o.ManagerNamespace, Version: o.Version, Values: o.ManagerValues})
	if err != nil {
		return fmt.Errorf("install the traffic-manager in namespace %s: %w", o.ManagerNamespace, err)
	}
	return waitManager(ctx, o)
}

// waitManager waits for a ready traffic-manager pod, at most 2 minutes.
func waitManager(ctx context.Context, o ConnectOptions) error {
	if err := charts.WaitManager(ctx, o.Kube, o.ManagerNamespace, 2*time.Minute); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	return nil
}

// waitConnected polls the daemon until it is connected with its network up,
// or failed.
func waitConnected(ctx context.Context, docker client.APIClient, id string) (*daemonv1.StatusResponse, error) {
	cc, err := DialDaemon(docker, id)
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	d := daemonv1.NewDaemonClient(cc)
	var last *daemonv1.StatusResponse
	var lastErr error
	for {
		st, err := d.Status(ctx, &daemonv1.StatusRequest{}, grpc.WaitForReady(true))
		if err == nil {
			last = st
			switch {
			case st.GetState() == daemonv1.ConnectionState_CONNECTION_STATE_FAILED:
				return nil, fmt.Errorf("daemon cannot connect: %s", st.GetLastError())
			case st.GetState() == daemonv1.ConnectionState_CONNECTION_STATE_CONNECTED && st.GetDns() != nil:
				return st, nil
			}
		} else {
			lastErr = err
			if info, ierr := docker.ContainerInspect(ctx, id); ierr == nil && !info.State.Running {
				return nil, fmt.Errorf("daemon container exited (code %d)", info.State.ExitCode)
			}
		}
		select {
		case <-ctx.Done():
			if last != nil && last.GetLastError() != "" {
				return nil, fmt.Errorf("daemon not connected in time: %s", last.GetLastError())
			}
			if lastErr != nil {
				return nil, fmt.Errorf("daemon not connected in time: %w", lastErr)
			}
			return nil, fmt.Errorf("daemon not connected in time: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Quit ends a connection: the daemon departs from the manager, and the
// container and the credential relay are removed.
func Quit(ctx context.Context, docker client.APIClient, name string) error {
	conn, err := Find(ctx, docker, name)
	if err != nil {
		return err
	}
	if conn.Running {
		if cc, err := DialDaemon(docker, conn.ContainerID); err == nil {
			qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, _ = daemonv1.NewDaemonClient(cc).Quit(qctx, &daemonv1.QuitRequest{})
			cancel()
			cc.Close()
		}
	}
	killKubeauth(conn.KubeauthPID)
	killKubeauth(conn.ForwardPID)
	return remove(ctx, docker, conn.ContainerID)
}

// relayListenHost is where the credential relay listens so that the daemon
// container reaches it as host.docker.internal: the bridge gateway on Linux,
// loopback under Docker Desktop (which forwards host.docker.internal there).
func relayListenHost(ctx context.Context, docker client.APIClient) (string, error) {
	if runtime.GOOS != "linux" {
		return "127.0.0.1", nil
	}
	nw, err := docker.NetworkInspect(ctx, "bridge", network.InspectOptions{})
	if err != nil {
		return "", fmt.Errorf("inspect Docker's bridge network: %w", err)
	}
	for _, c := range nw.IPAM.Config {
		if ip := net.ParseIP(c.Gateway); ip != nil && ip.To4() != nil {
			return c.Gateway, nil
		}
	}
	// Docker's default bridge often names no gateway: it is the bridge
	// interface's own address.
	name := nw.Options["com.docker.network.bridge.name"]
	if name == "" {
		name = "docker0"
	}
	if ifc, err := net.InterfaceByName(name); err == nil {
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
				return ipn.IP.String(), nil
			}
		}
	}
	return "", errors.New("docker's bridge network has no IPv4 gateway for the credential relay to listen on")
}

// Client is the CLI's handle on a running connection's daemon.
type Client struct {
	daemonv1.DaemonClient
	Connection Connection
	docker     *client.Client
	cc         *grpc.ClientConn
}

// Docker is the Docker engine of the connection.
func (c *Client) Docker() client.APIClient { return c.docker }

// Preconnect opens the channel to the daemon now (the docker exec of `tp
// daemon proxy` and the HTTP/2 handshake: tens of milliseconds) rather than
// at the first call, so that it overlaps with what the caller does before
// that call. It does not wait.
func (c *Client) Preconnect() { c.cc.Connect() }

// Close releases the client.
func (c *Client) Close() error {
	c.cc.Close()
	return c.docker.Close()
}

// DialConnection finds the connection named name on the engine and dials
// its daemon.
func DialConnection(ctx context.Context, engine *dockerengine.Engine, name string) (*Client, error) {
	end := phasetrace.Begin("docker client + ping")
	docker, err := engine.Client(ctx)
	end()
	if err != nil {
		return nil, err
	}
	end = phasetrace.Begin("find daemon container")
	conn, err := Find(ctx, docker, name)
	end()
	if err != nil {
		docker.Close()
		return nil, err
	}
	if !conn.Running {
		docker.Close()
		return nil, fmt.Errorf("daemon container %s is %s: run `tp quit --name %s` and connect again", conn.ContainerName, conn.State, conn.Name)
	}
	cc, err := DialDaemon(docker, conn.ContainerID)
	if err != nil {
		docker.Close()
		return nil, err
	}
	return &Client{DaemonClient: daemonv1.NewDaemonClient(cc), Connection: conn, docker: docker, cc: cc}, nil
}

func orNone(ports []string) string {
	if len(ports) == 0 {
		return "no ports"
	}
	return strings.Join(ports, ", ")
}

// checkCIDRs checks the subnets of a flag and returns them masked.
func checkCIDRs(flag string, cidrs []string) ([]string, error) {
	var out []string
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("%s %q: want a CIDR such as 10.1.0.0/16", flag, c)
		}
		out = append(out, p.Masked().String())
	}
	return out, nil
}
