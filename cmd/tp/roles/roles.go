// Package roles holds the commands of what tp runs inside containers: the
// daemon (in its daemon container), the traffic-manager and the traffic-agent
// (in the cluster), the agent's init container and tp's Docker volume plugin.
//
// They are linked twice: hidden in the CLI (package cli), and alone into the
// binary of tp's image (cmd/tp-image), which has none of the CLI's Docker,
// Helm and compose code, so that no role pays for the CLI's dependencies in
// memory (each package's init and the pages it touches). This package must
// therefore never import the host side (cmd/tp/cli, daemoncontainer, intercept,
// compose, charts, volumes); TestRolesDoNotLinkTheHostSide checks it.
package roles

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/tp-run/tp/agent"
	"github.com/tp-run/tp/daemoncontainer/daemon"
	"github.com/tp-run/tp/daemoncontainer/kubeauth"
	"github.com/tp-run/tp/daemoncontainer/wire"
	"github.com/tp-run/tp/internal/version"
	"github.com/tp-run/tp/manager"
	"github.com/tp-run/tp/volumes/plugin"
)

// DefaultManagerNamespace is where the traffic-manager runs unless told otherwise.
const DefaultManagerNamespace = "tp"

// Commands returns the roles' commands, hidden, reading from in and writing to out.
func Commands(in io.Reader, out io.Writer) []*cobra.Command {
	return []*cobra.Command{
		newDaemonCommand(out),
		newManagerCommand(),
		newAgentCommand(),
		newAgentInitCommand(),
		newKubeauthPluginCommand(in, out),
		newVolumesCommand(),
	}
}

// NewLogger is a text logger at level (debug, info, warn or error) on w.
func NewLogger(level string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: use debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

func newDaemonCommand(out io.Writer) *cobra.Command {
	cmd := &cobra.Command{Use: "daemon", Short: "Run the daemon (inside its container)", Hidden: true}
	var cfg daemon.Config
	var logLevel, stateDir string
	var alsoProxy, neverProxy []string
	run := &cobra.Command{
		Use:  "run",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := NewLogger(logLevel, os.Stderr)
			if err != nil {
				return err
			}
			cfg.Log, cfg.Version = log, version.Version
			if cfg.AlsoProxy, err = parsePrefixes("--also-proxy", alsoProxy); err != nil {
				return err
			}
			if cfg.NeverProxy, err = parsePrefixes("--never-proxy", neverProxy); err != nil {
				return err
			}
			cfg.State = daemon.State{Dir: stateDir}
			if cfg.Kubeconfig == wire.KubeconfigFromStdin {
				if cfg.KubeconfigData, err = daemonKubeconfig(cfg.State, log); err != nil {
					return err
				}
			}
			return daemon.Run(cmd.Context(), cfg)
		},
	}
	run.Flags().StringVar(&cfg.Connection, "connection", wire.DefaultConnection, "connection name")
	run.Flags().StringVar(&cfg.Context, "context", "", "kubeconfig context")
	run.Flags().StringVar(&cfg.Namespace, "namespace", "default", "namespace for short names")
	run.Flags().StringVar(&cfg.ManagerNamespace, "manager-namespace", DefaultManagerNamespace, "traffic-manager namespace")
	run.Flags().StringVar(&cfg.Kubeconfig, "kubeconfig", wire.KubeconfigFromStdin, "kubeconfig path, - for stdin (kept in memory)")
	run.Flags().StringVar(&logLevel, "log-level", "info", "log level")
	run.Flags().StringSliceVar(&alsoProxy, "also-proxy", nil, "subnets routed to the cluster besides its own (CIDR, repeatable)")
	run.Flags().StringSliceVar(&neverProxy, "never-proxy", nil, "subnets never routed to the cluster (CIDR, repeatable)")
	run.Flags().StringVar(&stateDir, "state-dir", "", "where to keep what a restart of the container needs (kubeconfig, session); empty: nothing is kept")
	proxy := &cobra.Command{
		Use:  "proxy",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return daemon.Proxy(cmd.Context(), wire.DaemonSocket, os.Stdin, out)
		},
	}
	var nameserver, namespace, clusterDomain string
	resolvconf := &cobra.Command{
		Use:  "resolvconf",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ns, err := netip.ParseAddr(nameserver)
			if err != nil {
				return fmt.Errorf("--nameserver: %w", err)
			}
			return daemon.PointResolvConf("/etc/resolv.conf", ns, namespace, clusterDomain)
		},
	}
	resolvconf.Flags().StringVar(&nameserver, "nameserver", "127.0.0.1", "the daemon's DNS server")
	resolvconf.Flags().StringVar(&namespace, "namespace", "", "namespace for short names")
	resolvconf.Flags().StringVar(&clusterDomain, "cluster-domain", "", "cluster domain (default cluster.local)")
	var dialTimeout time.Duration
	dial := &cobra.Command{
		Use:   "dial HOST[:PORT]",
		Short: "Check that HOST:PORT accepts a TCP connection (HOST alone: that it resolves), as a joined container would",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), dialTimeout)
			defer cancel()
			return daemon.Dial(ctx, args[0])
		},
	}
	dial.Flags().DurationVar(&dialTimeout, "timeout", 5*time.Second, "give up after this long")
	cmd.AddCommand(run, proxy, resolvconf, dial)
	return cmd
}

func newManagerCommand() *cobra.Command {
	return &cobra.Command{
		Use:    "manager",
		Short:  "Run the traffic-manager (inside the cluster)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := NewLogger(envOr("TP_LOG_LEVEL", "info"), os.Stderr)
			if err != nil {
				return err
			}
			ttl, err := time.ParseDuration(envOr("TP_SESSION_TTL", "10m"))
			if err != nil {
				return fmt.Errorf("TP_SESSION_TTL: %w", err)
			}
			allow, err := manager.ParseCIDRs(os.Getenv("TP_TUNNEL_ALLOW_CIDRS"))
			if err != nil {
				return fmt.Errorf("TP_TUNNEL_ALLOW_CIDRS (chart value %s): %w", manager.AllowCIDRsValue, err)
			}
			readNodes, err := strconv.ParseBool(envOr("TP_READ_NODES", "true"))
			if err != nil {
				return fmt.Errorf("TP_READ_NODES: %w", err)
			}
			var hostIP netip.Addr
			if s := os.Getenv("TP_HOST_IP"); s != "" {
				if hostIP, err = netip.ParseAddr(s); err != nil {
					return fmt.Errorf("TP_HOST_IP: %w", err)
				}
			}
			rc, err := rest.InClusterConfig()
			if err != nil {
				return fmt.Errorf("the traffic-manager runs in a pod: %w", err)
			}
			kc, err := kubernetes.NewForConfig(rc)
			if err != nil {
				return err
			}
			m, err := manager.New(manager.Config{
				Namespace: os.Getenv("TP_NAMESPACE"), SessionTTL: ttl, Version: version.Version, Log: log,
				AgentImage:           os.Getenv("TP_AGENT_IMAGE"),
				AgentImagePullPolicy: os.Getenv("TP_AGENT_IMAGE_PULL_POLICY"),
				WebhookCertDir:       os.Getenv("TP_WEBHOOK_CERT_DIR"),
				ManagedNamespaces:    splitList(os.Getenv("TP_MANAGED_NAMESPACES")),
				AllowCIDRs:           allow, NoNodes: !readNodes, HostIP: hostIP,
			}, kc)
			if err != nil {
				return err
			}
			return m.Run(cmd.Context())
		},
	}
}

// splitList splits a comma-separated list, dropping empty entries.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func newKubeauthPluginCommand(in io.Reader, out io.Writer) *cobra.Command {
	var url, user string
	cmd := &cobra.Command{
		Use:    "kubeauth-plugin",
		Short:  "Exec credential plugin inside the daemon container: asks the host's relay",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Minute)
			defer cancel()
			return kubeauth.RunPlugin(ctx, url, user, os.Getenv(kubeauth.EnvSecret), in, out, os.Getenv)
		},
	}
	cmd.Flags().StringVar(&url, "url", "", "relay URL")
	cmd.Flags().StringVar(&user, "user", "", "kubeconfig user")
	return cmd
}

func newAgentCommand() *cobra.Command {
	var logLevel string
	cmd := &cobra.Command{
		Use:    "agent",
		Short:  "Run the traffic-agent (sidecar of an intercepted workload's pods)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := NewLogger(logLevel, os.Stderr)
			if err != nil {
				return err
			}
			cfg, err := agent.ConfigFromEnv(os.Environ())
			if err != nil {
				return err
			}
			cfg.Log = log
			return agent.Run(cmd.Context(), cfg)
		},
	}
	cmd.Flags().StringVar(&logLevel, "log-level", envOr("TP_LOG_LEVEL", "info"), "log level")
	return cmd
}

func newAgentInitCommand() *cobra.Command {
	return &cobra.Command{
		Use:    "agent-init",
		Short:  "Redirect the intercepted ports to the traffic-agent (init container)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, _ := NewLogger("info", os.Stderr)
			ports, err := agent.PortsFromEnv(os.Environ())
			if err != nil {
				return err
			}
			return agent.Init(cmd.Context(), ports, log)
		},
	}
}

func newVolumesCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "volumes", Short: "tp's Docker volume plugin", Hidden: true}
	var logLevel string
	run := &cobra.Command{
		Use:   "plugin",
		Short: "Serve the Docker volume driver API (the managed plugin's entry point)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := NewLogger(logLevel, os.Stderr)
			if err != nil {
				return err
			}
			return plugin.Run(cmd.Context(), plugin.Config{
				Socket: plugin.SocketPath, MountRoot: plugin.MountRoot, StatePath: plugin.StatePath, Log: log,
			})
		},
	}
	run.Flags().StringVar(&logLevel, "log-level", envOr("TP_LOG_LEVEL", "info"), "log level")
	cmd.AddCommand(run)
	return cmd
}

// daemonKubeconfig is the kubeconfig of the daemon container: the one a
// previous start saved when Docker restarted the container, else the one
// `tp connect` writes to stdin, which is then saved for the next start.
func daemonKubeconfig(state daemon.State, log *slog.Logger) ([]byte, error) {
	data, err := state.Kubeconfig()
	switch {
	case err == nil:
		log.Info("restarted by Docker: taking up the connection with the kubeconfig tp connect handed the first start", "stateDir", state.Dir)
		return data, nil
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("daemon state: %w", err)
	}
	if data, err = daemon.ReadKubeconfig(os.Stdin, time.Minute); err != nil {
		return nil, err
	}
	if err := state.SaveKubeconfig(data); err != nil {
		log.Warn("cannot save the kubeconfig: the connection will not survive a restart of the daemon container", "error", err)
	}
	return data, nil
}

// parsePrefixes parses the CIDRs of flag.
func parsePrefixes(flag string, cidrs []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("%s %q: want a CIDR such as 10.1.0.0/16: %w", flag, c, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
