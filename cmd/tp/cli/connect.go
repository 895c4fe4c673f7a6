package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/docker/docker/client"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/tp-run/tp/cmd/tp/roles"
	"github.com/tp-run/tp/compose"
	"github.com/tp-run/tp/daemoncontainer"
	"github.com/tp-run/tp/intercept"
	"github.com/tp-run/tp/internal/subnets"
	"github.com/tp-run/tp/internal/version"
	daemonv1 "github.com/tp-run/tp/rpc/daemon/v1"
	"github.com/tp-run/tp/volumes"
)

// defaultManagerNamespace is where the traffic-manager lives unless told otherwise.
const defaultManagerNamespace = roles.DefaultManagerNamespace

// kubeFlags are kubectl's --kubeconfig, --context, --namespace/-n, ...
func kubeFlags(cmd *cobra.Command) *genericclioptions.ConfigFlags {
	f := genericclioptions.NewConfigFlags(true)
	f.AddFlags(cmd.Flags())
	return f
}

// kubeArgs re-creates the kubectl-style flags the user set, for a child process.
func kubeArgs(fs *pflag.FlagSet) []string {
	var args []string
	for _, name := range []string{"kubeconfig", "context", "cluster", "user", "namespace"} {
		if f := fs.Lookup(name); f != nil && f.Changed {
			args = append(args, "--"+name+"="+f.Value.String())
		}
	}
	return args
}

func newConnectCommand(streams genericiooptions.IOStreams, docker *dockerFlags) *cobra.Command {
	var (
		name, managerNS, logLevel, output string
		timeout                           time.Duration
		dnsServers, publish               []string
		alsoProxy, neverProxy             []string
		image                             imageFlags
		keepKubeconfig                    bool
		caBundle                          string
	)
	cmd := &cobra.Command{
		Use:   "connect",
		Short: "Start the daemon container: containers joined to it reach the cluster by name and IP",
		Long: `Start the daemon container (named "tp", or "tp-NAME" with --name) and connect it
to the cluster's traffic-manager, installing the manager when it is missing.

Containers started with --network container:tp (compose: network_mode: container:tp)
then reach every service and pod of the cluster by DNS name and IP. The host is
not changed: no root, routes or resolver settings.`,
		Args: cobra.NoArgs,
	}
	kube := kubeFlags(cmd)
	cmd.Flags().StringVar(&name, "name", daemoncontainer.DefaultName, "connection name: the daemon container is tp (default) or tp-NAME")
	cmd.Flags().StringVar(&managerNS, "manager-namespace", defaultManagerNamespace, "namespace of the traffic-manager")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "daemon log level: debug, info, warn, error")
	cmd.Flags().DurationVar(&timeout, "timeout", 3*time.Minute, "give up connecting after this long")
	cmd.Flags().StringSliceVar(&dnsServers, "dns", nil, "resolvers for names outside the cluster (default: the host's, as Docker passes them)")
	cmd.Flags().BoolVar(&keepKubeconfig, "keep-kubeconfig", true, "keep the kubeconfig in the daemon container's own layer, so that the connection and its intercepts come back by themselves after a Docker restart; false keeps it in the daemon's memory only (a Docker restart then ends the connection)")
	cmd.Flags().StringArrayVarP(&publish, "publish", "p", nil, "publish a port of the daemon container's network namespace on the host, as docker run -p: [HOST_IP:][HOST_PORT:]PORT[/PROTO] (repeatable; joined containers cannot publish ports themselves)")
	cmd.Flags().StringVar(&caBundle, "ca-bundle", "", "PEM file of extra CA certificates the daemon container trusts, e.g. a TLS-inspecting proxy's (default: $SSL_CERT_FILE when set); HTTP_PROXY, HTTPS_PROXY and NO_PROXY are passed on")
	cmd.Flags().StringSliceVar(&alsoProxy, "also-proxy", nil, "route this subnet (CIDR, repeatable) to the cluster too, e.g. a VPN's or a database's that the cluster reaches (the traffic-manager dials it when its chart value tunnel.allowCIDRs allows it)")
	cmd.Flags().StringSliceVar(&neverProxy, "never-proxy", nil, "never route this subnet (CIDR, repeatable) to the cluster, even inside its ranges: joined containers reach it through Docker's network")
	image.addFlags(cmd, " when tp connect installs it")
	outputFlag(cmd, &output)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		progress := streams.ErrOut
		if output == "" {
			progress = streams.Out
		}
		start := time.Now()
		engine, err := docker.Engine()
		if err != nil {
			return err
		}
		if cli, err := engine.Client(cmd.Context()); err == nil { // what a removed daemon container left
			docker.removeStale(cmd.Context(), cli, nil, name)
			cli.Close()
		}
		st, err := daemoncontainer.Connect(cmd.Context(), daemoncontainer.ConnectOptions{
			Name: name, Kube: kube, ManagerNamespace: managerNS,
			Image: version.Image(), Version: version.Version, LogLevel: logLevel,
			Timeout: timeout, Progress: progress, DNS: dnsServers, Publish: publish, Engine: engine, ManagerValues: image.values(),
			MemoryOnly:      !keepKubeconfig,
			Kubeauth:        daemoncontainer.StartKubeauthProcess(kubeArgs(cmd.Flags()), engine.Environ(os.Environ())),
			LoopbackForward: daemoncontainer.StartLoopbackForwardProcess(engine.Environ(os.Environ())),
			Environ:         os.Environ(),
			AlsoProxy:       alsoProxy, NeverProxy: neverProxy,
			CABundle: cmp.Or(caBundle, os.Getenv("SSL_CERT_FILE")),
		})
		if err != nil {
			return err
		}
		if d, err := docker.dial(cmd.Context(), name, false); err == nil { // dial cleans up what killed CLIs left
			d.Close()
		}
		v := statusView(st)
		v.Published, _, _, _ = daemoncontainer.ParsePublish(publish) // checked by Connect
		if d, err := daemoncontainer.DialConnection(cmd.Context(), engine, name); err == nil {
			v.Conflicts = append(v.Conflicts, clashStrings(daemoncontainer.WorkstationClashes(cmd.Context(), d.Docker(), d.Connection.ContainerID, st.GetRoutedSubnets()))...)
			d.Close()
		}
		v.DockerContext, v.DockerHost = engine.Context, engine.Host
		return printStructured(streams.Out, output, v, func(w io.Writer) error {
			fmt.Fprintf(w, "Connected to context %s, namespace %s in %s (container %s, Docker %s)\n",
				st.GetContext(), st.GetNamespace(), time.Since(start).Round(time.Millisecond), daemoncontainer.ContainerName(name), engine)
			fmt.Fprintf(w, "Join it with: docker run --network container:%s ...\n", daemoncontainer.ContainerName(name))
			if len(v.Published) > 0 {
				fmt.Fprintf(w, "Published on the host: %s\n", strings.Join(v.Published, ", "))
			}
			for _, c := range v.Conflicts {
				fmt.Fprintf(w, "Warning: %s\n", c)
			}
			return nil
		})
	}
	return cmd
}

// clashStrings explains the clashes of the cluster's ranges with the
// workstation's (tp connect's warnings, tp status's conflicts).
func clashStrings(clashes []subnets.Clash) []string {
	var out []string
	for _, c := range clashes {
		out = append(out, c.String())
	}
	return out
}

func newQuitCommand(streams genericiooptions.IOStreams, dockerFlags *dockerFlags) *cobra.Command {
	var name string
	var all, force bool
	cmd := &cobra.Command{
		Use:   "quit",
		Short: "End a connection: the daemon leaves the cluster and its container is removed",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			docker, err := dockerFlags.Client(cmd.Context())
			if err != nil {
				return err
			}
			defer docker.Close()
			names := []string{name}
			if all {
				conns, err := daemoncontainer.List(cmd.Context(), docker)
				if err != nil {
					return err
				}
				names = names[:0]
				for _, c := range conns {
					names = append(names, c.Name)
				}
			}
			// A compose project whose services run joined to a connection
			// would lose their network and intercepts: refuse (all of
			// them before quitting any), unless --force.
			var inUse []error
			for _, n := range names {
				uses, err := compose.ProjectsUsing(cmd.Context(), docker, n)
				if err != nil {
					return err
				}
				for _, u := range uses {
					switch {
					case len(u.Running) > 0 && !force:
						inUse = append(inUse, fmt.Errorf("connection %s is used by compose project %s (running: %s): take it down first with `%s` (it quits the connection when its up started it), or quit anyway with tp quit --force",
							daemoncontainer.ContainerName(n), u.Name, strings.Join(u.Running, ", "), u.DownCommand()))
					case len(u.Running) > 0:
						fmt.Fprintf(streams.ErrOut, "tp: warning: the running services %s of compose project %s lose the connection %s; remove them with `%s`\n",
							strings.Join(u.Running, ", "), u.Name, daemoncontainer.ContainerName(n), u.DownCommand())
					default:
						fmt.Fprintf(streams.ErrOut, "tp: compose project %s has stopped containers joined to %s: tp compose up connects again, `%s` removes them\n",
							u.Name, daemoncontainer.ContainerName(n), u.DownCommand())
					}
				}
			}
			if len(inUse) > 0 {
				return errors.Join(inUse...)
			}
			for _, n := range names {
				err := daemoncontainer.Quit(cmd.Context(), docker, n)
				if err != nil && !errors.Is(err, daemoncontainer.ErrNotConnected) {
					return err
				}
				// The daemon container is gone: its --docker-run containers
				// (of killed CLIs) and volumes go too.
				dockerFlags.removeStale(cmd.Context(), docker, nil, n)
				if err != nil {
					// Quitting what is not there leaves the wanted state: not an error.
					fmt.Fprintf(streams.Out, "Not connected: no container %s\n", daemoncontainer.ContainerName(n))
					continue
				}
				fmt.Fprintf(streams.Out, "Disconnected %s\n", daemoncontainer.ContainerName(n))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", daemoncontainer.DefaultName, "connection name")
	cmd.Flags().BoolVar(&all, "all", false, "end every connection")
	cmd.Flags().BoolVar(&force, "force", false, "quit even when running compose services use the connection (they lose their network and intercepts)")
	return cmd
}

// statusJSON is the machine-readable status of a connection.
type statusJSON struct {
	Name             string   `json:"name"`
	Container        string   `json:"container"`
	State            string   `json:"state"`
	LastError        string   `json:"lastError,omitempty"`
	Context          string   `json:"context"`
	Namespace        string   `json:"namespace"`
	ManagerNamespace string   `json:"managerNamespace"`
	APIServer        string   `json:"apiServer,omitempty"`
	DaemonVersion    string   `json:"daemonVersion,omitempty"`
	ManagerVersion   string   `json:"managerVersion,omitempty"`
	SessionID        string   `json:"sessionID,omitempty"`
	ConnectedSince   string   `json:"connectedSince,omitempty"`
	Reconnects       int32    `json:"reconnects"`
	Resumes          int32    `json:"resumes"`
	LastResumed      string   `json:"lastResumed,omitempty"`
	RoutedSubnets    []string `json:"routedSubnets,omitempty"`
	// TUNRoutes are the routes the kernel has on the TUN device: what
	// reaches the cluster, while RoutedSubnets are the ranges asked for.
	TUNRoutes      []string `json:"tunRoutes,omitempty"`
	TUNRoutesError string   `json:"tunRoutesError,omitempty"`
	Conflicts      []string `json:"subnetConflicts,omitempty"`
	DNS            *dnsJSON `json:"dns,omitempty"`
	OpenFlows      int64    `json:"openFlows"`
	// Published are the ports the daemon container publishes on the host
	// (docker -p specs, from tp connect --publish).
	Published []string `json:"published,omitempty"`
	// DockerContext and DockerHost name the Docker engine of the daemon
	// container (the docker CLI's context and its endpoint).
	DockerContext string `json:"dockerContext,omitempty"`
	DockerHost    string `json:"dockerHost,omitempty"`
	// Volumes are the connection's tp volumes: the intercepted pods' mounts.
	Volumes []volumeJSON `json:"volumes,omitempty"`
	// Flows are the netstack's counters (the protobuf message's JSON form).
	Flows *daemonv1.FlowStats `json:"flows,omitempty"`
}

type dnsJSON struct {
	Listen           string   `json:"listen"`
	Domain           string   `json:"clusterDomain"`
	Search           []string `json:"search"`
	Upstreams        []string `json:"upstreams"`
	Queries          uint64   `json:"queries"`
	CacheHits        uint64   `json:"cacheHits"`
	ClusterForwards  uint64   `json:"clusterForwards"`
	UpstreamForwards uint64   `json:"upstreamForwards"`
	DockerForwards   uint64   `json:"dockerForwards"`
	Failures         uint64   `json:"failures"`
}

func statusView(st *daemonv1.StatusResponse) statusJSON {
	v := statusJSON{
		Name: st.GetName(), Container: daemoncontainer.ContainerName(st.GetName()),
		State:     strings.ToLower(strings.TrimPrefix(st.GetState().String(), "CONNECTION_STATE_")),
		LastError: st.GetLastError(), Context: st.GetContext(), Namespace: st.GetNamespace(),
		ManagerNamespace: st.GetManagerNamespace(), APIServer: st.GetApiServer(),
		DaemonVersion: st.GetVersion(), ManagerVersion: st.GetManagerVersion(), SessionID: st.GetSessionId(),
		Reconnects: st.GetReconnects(), Resumes: st.GetResumes(), RoutedSubnets: st.GetRoutedSubnets(), OpenFlows: st.GetOpenFlows(),
		TUNRoutes: st.GetTunRoutes(), TUNRoutesError: st.GetTunRoutesError(), Flows: st.GetFlows(),
	}
	if st.GetConnectedSince() != nil {
		v.ConnectedSince = st.GetConnectedSince().AsTime().Format(time.RFC3339)
	}
	if st.GetLastResumed() != nil {
		v.LastResumed = st.GetLastResumed().AsTime().Format(time.RFC3339)
	}
	for _, c := range st.GetConflicts() {
		v.Conflicts = append(v.Conflicts, fmt.Sprintf("cluster subnet %s overlaps %s on %s in the daemon container; traffic there may not reach the cluster",
			c.GetSubnet(), c.GetConflictsWith(), c.GetInterface()))
	}
	if d := st.GetDns(); d != nil {
		v.DNS = &dnsJSON{d.GetListenAddress(), d.GetClusterDomain(), d.GetSearch(), d.GetUpstreams(),
			d.GetQueries(), d.GetCacheHits(), d.GetClusterForwards(), d.GetUpstreamForwards(), d.GetDockerForwards(), d.GetFailures()}
	}
	return v
}

func newStatusCommand(streams genericiooptions.IOStreams, docker *dockerFlags) *cobra.Command {
	var name, output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the state of a connection: daemon, context, manager, cluster subnets, TUN routes, DNS",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			engine, err := docker.Engine()
			if err != nil {
				return err
			}
			d, err := docker.Dial(cmd.Context(), name)
			if err != nil {
				return err
			}
			defer d.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			st, err := d.Status(ctx, &daemonv1.StatusRequest{})
			if err != nil {
				return fmt.Errorf("daemon in %s does not answer: %w", d.Connection.ContainerName, err)
			}
			v := statusView(st)
			v.Published = d.Connection.Publish
			v.Volumes = connectionVolumes(ctx, d.Docker(), d.Connection.Name)
			v.Conflicts = append(v.Conflicts, clashStrings(daemoncontainer.WorkstationClashes(ctx, d.Docker(), d.Connection.ContainerID, st.GetRoutedSubnets()))...)
			v.DockerContext, v.DockerHost = engine.Context, engine.Host
			return printStructured(streams.Out, output, v, func(w io.Writer) error {
				fmt.Fprintf(w, "Connection:        %s (container %s)\n", v.Name, v.Container)
				fmt.Fprintf(w, "Docker engine:     context %s (%s)\n", v.DockerContext, v.DockerHost)
				fmt.Fprintf(w, "State:             %s\n", v.State)
				if v.LastError != "" {
					fmt.Fprintf(w, "Last error:        %s\n", v.LastError)
				}
				fmt.Fprintf(w, "Context:           %s (%s)\n", v.Context, v.APIServer)
				fmt.Fprintf(w, "Namespace:         %s\n", v.Namespace)
				fmt.Fprintf(w, "Traffic-manager:   namespace %s, version %s\n", v.ManagerNamespace, v.ManagerVersion)
				fmt.Fprintf(w, "Daemon version:    %s\n", v.DaemonVersion)
				if v.ConnectedSince != "" {
					fmt.Fprintf(w, "Connected since:   %s (reconnects: %d)\n", v.ConnectedSince, v.Reconnects)
				}
				if v.LastResumed != "" {
					fmt.Fprintf(w, "Session resumed:   %s (%d of the reconnects kept the session and its intercepts)\n", v.LastResumed, v.Resumes)
				}
				fmt.Fprintf(w, "Cluster subnets:   %s\n", strings.Join(v.RoutedSubnets, ", "))
				if v.TUNRoutesError != "" {
					fmt.Fprintf(w, "TUN routes:        unknown: %s\n", v.TUNRoutesError)
				} else {
					fmt.Fprintf(w, "TUN routes:        %s\n", strings.Join(v.TUNRoutes, ", "))
				}
				for _, c := range v.Conflicts {
					fmt.Fprintf(w, "Subnet conflict:   %s\n", c)
				}
				if v.DNS != nil {
					fmt.Fprintf(w, "DNS:               %s, domain %s, search %s, upstreams %s (%d queries, %d cached)\n",
						v.DNS.Listen, v.DNS.Domain, strings.Join(v.DNS.Search, " "), strings.Join(v.DNS.Upstreams, " "), v.DNS.Queries, v.DNS.CacheHits)
				}
				if len(v.Published) > 0 {
					fmt.Fprintf(w, "Published:         %s\n", strings.Join(v.Published, ", "))
				}
				for _, vol := range v.Volumes {
					fmt.Fprintf(w, "Volume:            %s -> %s (intercept %s, %s)\n", vol.Name, vol.Path, vol.Intercept, cmp.Or(vol.Mountpoint, "not mounted"))
				}
				fmt.Fprintf(w, "Open flows:        %d\n", v.OpenFlows)
				if f := v.Flows; f != nil {
					fmt.Fprintf(w, "Flows since start: TCP %d (refused %d, unreachable %d, dial failed %d, SYNs dropped %d), UDP %d; %d bytes out, %d in\n",
						f.GetTcpTotal(), f.GetTcpRefused(), f.GetTcpUnreachable(), f.GetTcpDialFailed(), f.GetTcpDropped(),
						f.GetUdpTotal(), f.GetBytesToCluster(), f.GetBytesFromCluster())
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&name, "name", daemoncontainer.DefaultName, "connection name")
	outputFlag(cmd, &output)
	return cmd
}

// volumeJSON is one of the connection's tp volumes in tp status.
type volumeJSON struct {
	Name       string `json:"name"`
	Path       string `json:"path"`
	Intercept  string `json:"intercept"`
	Namespace  string `json:"namespace,omitempty"`
	Mountpoint string `json:"mountpoint,omitempty"`
}

// connectionVolumes lists the connection's tp volumes (nil when Docker
// cannot say).
func connectionVolumes(ctx context.Context, docker client.APIClient, connection string) []volumeJSON {
	vols, err := volumes.ListVolumes(ctx, docker, map[string]string{volumes.LabelConnection: connection})
	if err != nil {
		return nil
	}
	var out []volumeJSON
	for _, v := range vols {
		out = append(out, volumeJSON{Name: v.Name, Path: v.Labels[volumes.LabelPath], Intercept: v.Labels[volumes.LabelIntercept],
			Namespace: v.Labels[intercept.LabelNamespace], Mountpoint: v.Mountpoint})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}
