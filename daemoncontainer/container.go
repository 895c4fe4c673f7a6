// Package daemoncontainer owns the daemon container, the workstation half of a
// tp connection: it starts, finds and stops it through the Docker API, hands it
// the kubeconfig, and opens the CLI's channel to the daemon inside it. The
// daemon process itself lives in the sub-packages (daemon, netstack, tun, dns).
//
// A connection's state lives in the container's labels, not in files on the
// host: `tp status` from any shell finds the same truth.
package daemoncontainer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"slices"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/docker/go-connections/nat"

	"github.com/tp-run/tp/daemoncontainer/wire"
)

// Labels on the daemon container. They are the connection's record.
const (
	LabelConnection       = "run.tp.connection" // the connection name, e.g. "default" or "a"
	LabelContext          = "run.tp.context"
	LabelNamespace        = "run.tp.namespace"
	LabelManagerNamespace = "run.tp.manager-namespace"
	LabelVersion          = "run.tp.version"
	LabelKubeauthPID      = "run.tp.kubeauth-pid"
	// LabelForwardPID is the pid of the host forwarder to an API server on
	// the host's loopback (loopback.go).
	LabelForwardPID = "run.tp.forward-pid"
	// LabelKubeconfig is the kubeconfig file(s) on the host the connection
	// was made with (--kubeconfig, else $KUBECONFIG; absent for the
	// default): commands acting on the connection's cluster load it with
	// LabelContext, not the host's current context.
	LabelKubeconfig = "run.tp.kubeconfig"
	// LabelPublish is the ports the daemon container publishes on the host
	// (`tp connect --publish`), as docker's -p specs, comma-separated:
	// containers joined to its network cannot publish ports themselves.
	LabelPublish = "run.tp.publish"
)

// The daemon's --kubeconfig is wire.KubeconfigFromStdin: `tp connect` writes
// the kubeconfig to the daemon's stdin. The daemon keeps it in its state
// directory (StateDir) in the container's own writable layer, so that it
// connects again by itself when Docker restarts the container (an engine
// restart, a crash); it is never a volume or a host file, and it is gone
// with the container.

// StateDir is the daemon's state directory in its container (daemon.State):
// kubeconfig, session and mount tokens, root's, mode 0600.
const StateDir = "/var/lib/tp"

// RestartPolicy brings the daemon container back with the Docker engine
// (and after a crash), unless `tp quit` or the user stopped it.
const RestartPolicy = container.RestartPolicyUnlessStopped

// Capabilities is the daemon container's whole capability set: Docker's
// defaults are all dropped. NET_ADMIN creates the TUN device and sets its
// MTU, address, link state and routes (netlink). Nothing else is needed: the
// DNS server binds 127.0.0.1:53 thanks to the namespaced sysctl
// net.ipv4.ip_unprivileged_port_start=0 (Docker >= 20.10 sets it by default;
// the daemon container sets it explicitly) instead of NET_BIND_SERVICE; gVisor
// terminates every flow in the process, so no NET_RAW; the daemon runs as
// root and only touches what it owns (its socket on a tmpfs, /dev/net/tun is
// 0666), so no DAC_OVERRIDE, CHOWN or FOWNER.
var Capabilities = []string{"NET_ADMIN"}

// RunDir is the daemon container's only writable directory (a tmpfs, private
// to root): the daemon API's socket lives there.
const RunDir = "/run/tp"

// DefaultName is the connection name used when --name is not given.
const DefaultName = wire.DefaultConnection

// ContainerName maps a connection name to its container: "tp" for the default
// connection, "tp-NAME" otherwise.
func ContainerName(name string) string {
	if name == "" || name == DefaultName {
		return "tp"
	}
	return "tp-" + name
}

// Connection is what the container's labels and state say about a connection.
type Connection struct {
	Name             string
	ContainerName    string
	ContainerID      string
	Running          bool
	State            string // Docker's state: running, exited, ...
	Context          string
	Namespace        string
	ManagerNamespace string
	Version          string
	KubeauthPID      string
	ForwardPID       string
	// Kubeconfig is the host's kubeconfig path(s) of the connection, "" for
	// the default loading rules.
	Kubeconfig string
	// Publish are the ports the daemon container publishes (docker -p specs).
	Publish []string
}

func connectionFrom(id, name string, labels map[string]string, state string) Connection {
	return Connection{
		Name:             labels[LabelConnection],
		ContainerName:    strings.TrimPrefix(name, "/"),
		ContainerID:      id,
		Running:          state == "running",
		State:            state,
		Context:          labels[LabelContext],
		Namespace:        labels[LabelNamespace],
		ManagerNamespace: labels[LabelManagerNamespace],
		Version:          labels[LabelVersion],
		KubeauthPID:      labels[LabelKubeauthPID],
		ForwardPID:       labels[LabelForwardPID],
		Kubeconfig:       labels[LabelKubeconfig],
		Publish:          splitList(labels[LabelPublish]),
	}
}

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// ErrNotConnected says there is no daemon container for a connection.
var ErrNotConnected = errors.New("not connected")

// Find returns the connection named name.
func Find(ctx context.Context, docker client.APIClient, name string) (Connection, error) {
	cname := ContainerName(name)
	info, err := docker.ContainerInspect(ctx, cname)
	if cerrdefs.IsNotFound(err) {
		return Connection{}, fmt.Errorf("connection %q (container %s): %w; run `tp connect`", name, cname, ErrNotConnected)
	}
	if err != nil {
		return Connection{}, fmt.Errorf("inspect container %s: %w", cname, dockerHint(err))
	}
	if _, ok := info.Config.Labels[LabelConnection]; !ok {
		return Connection{}, fmt.Errorf("container %s exists but is not a tp daemon: rename or remove it, or pick another --name", cname)
	}
	return connectionFrom(info.ID, info.Name, info.Config.Labels, info.State.Status), nil
}

// List returns every tp connection on this Docker engine.
func List(ctx context.Context, docker client.APIClient) ([]Connection, error) {
	list, err := docker.ContainerList(ctx, container.ListOptions{
		All: true, Filters: filters.NewArgs(filters.Arg("label", LabelConnection)),
	})
	if err != nil {
		return nil, fmt.Errorf("list daemon containers: %w", dockerHint(err))
	}
	out := make([]Connection, 0, len(list))
	for _, c := range list {
		name := ""
		if len(c.Names) > 0 {
			name = c.Names[0]
		}
		out = append(out, connectionFrom(c.ID, name, c.Labels, string(c.State)))
	}
	return out, nil
}

// createOptions describes a daemon container to create.
type createOptions struct {
	Connection
	Image string
	// KubeconfigData is the container's kubeconfig (handed over on stdin).
	KubeconfigData []byte
	Networks       []string // extra Docker networks to join (e.g. a kind cluster's)
	// ExtraHosts are --add-host entries beyond host.docker.internal (e.g.
	// kubernetes.docker.internal:host-gateway, kubeconfig.Result).
	ExtraHosts []string
	// Env is more of the daemon's environment (the user's proxy, ProxyEnv).
	Env []string
	// AlsoProxy and NeverProxy are the daemon's --also-proxy and
	// --never-proxy subnets.
	AlsoProxy, NeverProxy []string
	// CABundle is PEM of extra CA certificates, copied to CABundlePath.
	CABundle []byte
	LogLevel string
	// DNS overrides the upstream resolvers Docker gives the container (names
	// outside the cluster are resolved there).
	DNS []string
	// MemoryOnly: no state dir and no restart policy (ConnectOptions).
	MemoryOnly bool
	// exposed and bindings are Connection.Publish parsed (ParsePublish).
	exposed  nat.PortSet
	bindings nat.PortMap
}

// ParsePublish checks `tp connect --publish` specs, docker's -p syntax
// [HOST_IP:][HOST_PORT:]PORT[/PROTO], and returns them sorted (the form the
// label keeps, so two connects with the same ports compare equal).
func ParsePublish(specs []string) ([]string, nat.PortSet, nat.PortMap, error) {
	for _, s := range specs {
		if _, err := nat.ParsePortSpec(s); err != nil || strings.Contains(s, ",") {
			return nil, nil, nil, fmt.Errorf("--publish %q: want [HOST_IP:][HOST_PORT:]PORT[/tcp|udp], e.g. 8080:8080 or 127.0.0.1:8080:80", s)
		}
	}
	exposed, bindings, err := nat.ParsePortSpecs(specs)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("--publish: %w", err)
	}
	sorted := slices.Sorted(slices.Values(specs))
	return slices.Compact(sorted), exposed, bindings, nil
}

// containerConfig is the daemon container's configuration. Its stdin is
// open for exactly one writer, the kubeconfig hand-off, and closed after it.
func containerConfig(o createOptions) *container.Config {
	labels := map[string]string{
		LabelConnection: o.Name, LabelContext: o.Context, LabelNamespace: o.Namespace,
		LabelManagerNamespace: o.ManagerNamespace, LabelVersion: o.Version,
	}
	if o.KubeauthPID != "" {
		labels[LabelKubeauthPID] = o.KubeauthPID
	}
	if o.ForwardPID != "" {
		labels[LabelForwardPID] = o.ForwardPID
	}
	if o.Kubeconfig != "" {
		labels[LabelKubeconfig] = o.Kubeconfig
	}
	if len(o.Publish) > 0 {
		labels[LabelPublish] = strings.Join(o.Publish, ",")
	}
	stateDir := StateDir
	if o.MemoryOnly {
		stateDir = ""
	}
	cmd := []string{"daemon", "run",
		"--connection", o.Name, "--context", o.Context, "--namespace", o.Namespace,
		"--manager-namespace", o.ManagerNamespace, "--kubeconfig", wire.KubeconfigFromStdin,
		"--state-dir", stateDir, "--log-level", o.LogLevel}
	for _, c := range o.AlsoProxy {
		cmd = append(cmd, "--also-proxy", c)
	}
	for _, c := range o.NeverProxy {
		cmd = append(cmd, "--never-proxy", c)
	}
	return &container.Config{
		ExposedPorts: o.exposed,
		Image:        o.Image,
		Cmd:          cmd,
		Labels:       labels,
		// Who owns this connection's intercepts, as others see it in tp list.
		Env:       append([]string{"TP_USER=" + currentUser(), "TP_HOST=" + hostname()}, o.Env...),
		OpenStdin: true, StdinOnce: true, AttachStdin: true,
	}
}

// hostConfig is what the daemon container may do: NET_ADMIN and the TUN
// device, nothing more (see Capabilities), no new privileges (no setuid or
// file capabilities), one small tmpfs for its socket (RunDir), and no
// mounts or volumes. Its root filesystem (the tp binary, FROM scratch) is
// writable: the daemon keeps its state there (StateDir) and points the
// resolv.conf it shares with the joined containers at its DNS server, which
// Docker writes anew at every start of the container (RestartPolicy).
func hostConfig(o createOptions) *container.HostConfig {
	restart := container.RestartPolicy{Name: RestartPolicy}
	if o.MemoryOnly {
		restart = container.RestartPolicy{Name: container.RestartPolicyDisabled}
	}
	return &container.HostConfig{
		CapDrop:       []string{"ALL"},
		CapAdd:        Capabilities,
		SecurityOpt:   []string{"no-new-privileges"},
		RestartPolicy: restart,
		Tmpfs:         map[string]string{RunDir: "rw,noexec,nosuid,nodev,size=1m,mode=0700"},
		Sysctls:       map[string]string{"net.ipv4.ip_unprivileged_port_start": "0"},
		DNS:           o.DNS,
		ExtraHosts:    append([]string{"host.docker.internal:host-gateway"}, o.ExtraHosts...),
		PortBindings:  o.bindings,
		Resources: container.Resources{Devices: []container.DeviceMapping{{
			PathOnHost: "/dev/net/tun", PathInContainer: "/dev/net/tun", CgroupPermissions: "rwm",
		}}},
	}
}

// create creates and starts the daemon container and hands it the
// kubeconfig through its stdin. On any failure it removes what it created.
func create(ctx context.Context, docker client.APIClient, o createOptions) (id string, err error) {
	created, err := docker.ContainerCreate(ctx, containerConfig(o), hostConfig(o), &network.NetworkingConfig{}, nil, o.ContainerName)
	if err != nil {
		if cerrdefs.IsConflict(err) {
			return "", fmt.Errorf("container name %s is already in use: run `tp quit --name %s` or pick another --name", o.ContainerName, o.Name)
		}
		if cerrdefs.IsNotFound(err) {
			return "", fmt.Errorf("image %s is not in Docker: build it with `make image` (tp uses no registry)", o.Image)
		}
		return "", fmt.Errorf("create daemon container %s: %w", o.ContainerName, dockerHint(err))
	}
	defer func() {
		if err != nil {
			rmCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			_ = docker.ContainerRemove(rmCtx, created.ID, container.RemoveOptions{Force: true})
		}
	}()
	if len(o.CABundle) > 0 {
		if err := copyCABundle(ctx, docker, created.ID, o.CABundle); err != nil {
			return "", err
		}
	}
	for _, n := range o.Networks {
		if err := docker.NetworkConnect(ctx, n, created.ID, nil); err != nil {
			return "", fmt.Errorf("join daemon container to network %s: %w", n, err)
		}
	}
	// Attach before the start, as `docker start -ai` does: the daemon reads
	// its stdin first thing.
	stdin, err := docker.ContainerAttach(ctx, created.ID, container.AttachOptions{Stream: true, Stdin: true})
	if err != nil {
		return "", fmt.Errorf("attach to the daemon container's stdin: %w", dockerHint(err))
	}
	defer stdin.Close()
	if err := docker.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		return "", fmt.Errorf("start daemon container %s: %w", o.ContainerName, dockerHint(err))
	}
	if err := handKubeconfig(stdin, o.KubeconfigData); err != nil {
		return "", err
	}
	return created.ID, nil
}

// handKubeconfig writes the kubeconfig to the daemon's stdin and closes it
// (StdinOnce: Docker then closes the daemon's stdin, which reads to EOF).
func handKubeconfig(stdin types.HijackedResponse, data []byte) error {
	if _, err := stdin.Conn.Write(data); err != nil {
		return fmt.Errorf("hand the kubeconfig to the daemon: %w", err)
	}
	if err := stdin.CloseWrite(); err != nil {
		return fmt.Errorf("hand the kubeconfig to the daemon: %w", err)
	}
	return nil
}

// remove stops the daemon container and removes it. The daemon does not
// depart on SIGTERM (a restart would resume the session): Quit asks it to
// first.
func remove(ctx context.Context, docker client.APIClient, id string) error {
	timeout := 5
	if err := docker.ContainerStop(ctx, id, container.StopOptions{Timeout: &timeout}); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("stop daemon container: %w", err)
	}
	if err := docker.ContainerRemove(ctx, id, container.RemoveOptions{Force: true}); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("remove daemon container: %w", err)
	}
	return nil
}

// logsTail returns the last lines of the container's log, for error messages.
func logsTail(ctx context.Context, docker client.APIClient, id string, lines int) string {
	rc, err := docker.ContainerLogs(ctx, id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Tail: fmt.Sprint(lines)})
	if err != nil {
		return ""
	}
	defer rc.Close()
	var buf bytes.Buffer
	_, _ = stdcopy.StdCopy(&buf, &buf, io.LimitReader(rc, 64<<10))
	return strings.TrimSpace(buf.String())
}

// dockerHint adds what to do when the Docker engine stops answering
// (dockerengine.Engine.Client checked that it answered at first).
func dockerHint(err error) error {
	if client.IsErrConnectionFailed(err) {
		return fmt.Errorf("%w: Docker is not running or not reachable; start Docker (Docker Desktop, or dockerd), or pick the engine with --docker-context, DOCKER_CONTEXT or DOCKER_HOST", err)
	}
	return err
}

func currentUser() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return ""
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}
