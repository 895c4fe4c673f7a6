// Package daemoncontainer owns the daemon container, the workstation half of a
// tp connection: it starts, finds and stops it through the Docker API, hands it
// the kubeconfig, and opens the CLI's channel to the daemon inside it. The
// daemon process itself lives in the sub-packages (daemon, netstack, tun, dns).
//
// A connection's state lives in the container's labels, not in files on the
// host: `tp status` from any shell finds the same truth.
package daemoncontainer

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
)

// Labels on the daemon container. They are the connection's record.
const (
	LabelConnection       = "run.tp.connection" // the connection name, e.g. "default" or "a"
	LabelContext          = "run.tp.context"
	LabelNamespace        = "run.tp.namespace"
	LabelManagerNamespace = "run.tp.manager-namespace"
	LabelVersion          = "run.tp.version"
	LabelKubeauthPID      = "run.tp.kubeauth-pid"
)

// KubeconfigPath is where the daemon finds its kubeconfig inside the container.
const KubeconfigPath = "/etc/tp/kubeconfig"

// DefaultName is the connection name used when --name is not given.
const DefaultName = "default"

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
	}
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
	Image      string
	Kubeconfig []byte
	Networks   []string // extra Docker networks to join (e.g. a kind cluster's)
	LogLevel   string
	// DNS overrides the upstream resolvers Docker gives the container (names
	// outside the cluster are resolved there).
	DNS []string
}

// create creates and starts the daemon container. On any failure it removes
// what it created.
func create(ctx context.Context, docker client.APIClient, o createOptions) (id string, err error) {
	labels := map[string]string{
		LabelConnection: o.Name, LabelContext: o.Context, LabelNamespace: o.Namespace,
		LabelManagerNamespace: o.ManagerNamespace, LabelVersion: o.Version,
	}
	if o.KubeauthPID != "" {
		labels[LabelKubeauthPID] = o.KubeauthPID
	}
	cfg := &container.Config{
		Image: o.Image,
		Cmd: []string{"daemon", "run",
			"--connection", o.Name, "--context", o.Context, "--namespace", o.Namespace,
			"--manager-namespace", o.ManagerNamespace, "--kubeconfig", KubeconfigPath,
			"--log-level", o.LogLevel},
		Labels: labels,
		// Who owns this connection's intercepts, as others see it in tp list.
		Env: []string{"TP_USER=" + currentUser(), "TP_HOST=" + hostname()},
	}
	host := &container.HostConfig{
		CapAdd:     []string{"NET_ADMIN"},
		DNS:        o.DNS,
		ExtraHosts: []string{"host.docker.internal:host-gateway"},
		Resources: container.Resources{Devices: []container.DeviceMapping{{
			PathOnHost: "/dev/net/tun", PathInContainer: "/dev/net/tun", CgroupPermissions: "rwm",
		}}},
	}
	created, err := docker.ContainerCreate(ctx, cfg, host, &network.NetworkingConfig{}, nil, o.ContainerName)
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
	for _, n := range o.Networks {
		if err := docker.NetworkConnect(ctx, n, created.ID, nil); err != nil {
			return "", fmt.Errorf("join daemon container to network %s: %w", n, err)
		}
	}
	archive, err := tarFile(KubeconfigPath, o.Kubeconfig, 0o600)
	if err != nil {
		return "", err
	}
	if err := docker.CopyToContainer(ctx, created.ID, "/", archive, container.CopyToContainerOptions{}); err != nil {
		return "", fmt.Errorf("copy kubeconfig into the daemon container: %w", err)
	}
	if err := docker.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		return "", fmt.Errorf("start daemon container %s: %w", o.ContainerName, dockerHint(err))
	}
	return created.ID, nil
}

// remove stops the daemon container (the daemon departs from the manager on
// SIGTERM) and removes it.
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

func tarFile(path string, data []byte, mode int64) (io.Reader, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := path[:strings.LastIndex(path, "/")+1]
	if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(dir, "/"), Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
		return nil, err
	}
	if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(path, "/"), Mode: mode, Size: int64(len(data))}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return &buf, nil
}

// dockerHint adds what to do when the Docker engine cannot be reached.
func dockerHint(err error) error {
	if client.IsErrConnectionFailed(err) {
		return fmt.Errorf("%w: Docker is not running or not reachable; start Docker (Docker Desktop, or dockerd) or set DOCKER_HOST", err)
	}
	return err
}

// NewDockerClient returns a Docker API client from the environment
// (DOCKER_HOST etc.) that negotiates the API version with the engine.
func NewDockerClient(ctx context.Context) (*client.Client, error) {
	c, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	if _, err := c.Ping(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("docker: %w", dockerHint(err))
	}
	return c, nil
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
