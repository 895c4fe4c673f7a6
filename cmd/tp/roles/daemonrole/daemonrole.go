// Package daemonrole holds the commands of the daemon container: the daemon
// (`tp daemon run`), what the CLI execs in its container (`daemon proxy`,
// `daemon resolvconf`, `daemon dial`) and the kubeconfig exec credential
// plugin (`kubeauth-plugin`). The image's /tp-daemon links them alone.
package daemonrole

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/tp-run/tp/cmd/tp/roles/rolecmd"
	"github.com/tp-run/tp/daemoncontainer/daemon"
	"github.com/tp-run/tp/daemoncontainer/daemon/apiproxy"
	"github.com/tp-run/tp/daemoncontainer/kubeauth"
	"github.com/tp-run/tp/daemoncontainer/wire"
	"github.com/tp-run/tp/internal/version"
)

// daemonSoftMemoryLimit is the daemon's soft memory limit (GOMEMLIMIT in
// the daemon container's environment overrides it). Its idle heap is a few
// MiB and each open connection holds about 40 KB; without a limit the heap
// may grow to twice its live size before a collection (GOGC=100), which is
// most of the daemon's peak. Live memory above the limit is still served:
// the collector then runs more often, not the daemon slower by much, since
// the bulk paths recycle their buffers.
const daemonSoftMemoryLimit = 48 << 20

func newDaemonCommand(out io.Writer) *cobra.Command {
	cmd := &cobra.Command{Use: "daemon", Short: "Run the daemon (inside its container)", Hidden: true}
	var cfg daemon.Config
	var logLevel, stateDir string
	var alsoProxy, neverProxy []string
	run := &cobra.Command{
		Use:  "run",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := rolecmd.NewLogger(logLevel, os.Stderr)
			if err != nil {
				return err
			}
			cfg.Log, cfg.Version = log, version.Version
			log.Debug("soft memory limit", "bytes", rolecmd.SetSoftMemoryLimit(daemonSoftMemoryLimit))
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
	run.Flags().StringVar(&cfg.ManagerNamespace, "manager-namespace", rolecmd.DefaultManagerNamespace, "traffic-manager namespace")
	run.Flags().StringVar(&cfg.Kubeconfig, "kubeconfig", wire.KubeconfigFromStdin, "kubeconfig path, - for stdin (kept in memory)")
	run.Flags().StringVar(&logLevel, "log-level", "info", "log level")
	run.Flags().StringSliceVar(&alsoProxy, "also-proxy", nil, "subnets routed to the cluster besides its own (CIDR, repeatable)")
	run.Flags().StringSliceVar(&neverProxy, "never-proxy", nil, "subnets never routed to the cluster (CIDR, repeatable)")
	run.Flags().StringVar(&stateDir, "state-dir", "", "where to keep what a restart of the container needs (kubeconfig, session); empty: nothing is kept")
	proxy := &cobra.Command{
		Use:  "proxy",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return apiproxy.Run(cmd.Context(), wire.DaemonSocket, os.Stdin, out)
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

// Commands returns the daemon container's commands, hidden, reading from in
// and writing to out.
func Commands(in io.Reader, out io.Writer) []*cobra.Command {
	return []*cobra.Command{newDaemonCommand(out), newKubeauthPluginCommand(in, out)}
}
