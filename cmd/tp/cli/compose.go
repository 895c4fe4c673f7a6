package cli

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/tp-run/tp/compose"
	"github.com/tp-run/tp/daemoncontainer"
	"github.com/tp-run/tp/internal/dockerengine"
	"github.com/tp-run/tp/internal/version"
)

// composeFlags are docker compose's project flags.
type composeFlags struct {
	files, envFiles, profiles []string
	projectName, projectDir   string
	docker                    *dockerFlags
}

// loadOptions are the flags' project on tp's Docker engine, with the
// SERVICE arguments.
func (f *composeFlags) loadOptions(services []string) (compose.LoadOptions, error) {
	engine, err := f.docker.Engine()
	if err != nil {
		return compose.LoadOptions{}, err
	}
	return compose.LoadOptions{
		Files: f.files, ProjectDirectory: f.projectDir, ProjectName: f.projectName, EnvFiles: f.envFiles, Profiles: f.profiles,
		Services: services, Engine: engine,
	}, nil
}

func newComposeCommand(streams genericiooptions.IOStreams, docker *dockerFlags) *cobra.Command {
	f := composeFlags{docker: docker}
	cmd := &cobra.Command{
		Use:   "compose [-f FILE]... COMMAND",
		Short: "Run a docker compose project with some services intercepting or reaching the cluster (x-tp)",
		Long: `Load a compose project as docker compose does (the same files, override files, .env,
profiles and interpolation) and run it with tp: services with an x-tp extension intercept a
workload, reach the cluster, or are replaced by the cluster's own service.`,
	}
	// As docker compose's: flags of the compose command itself, before the
	// subcommand (tp compose -f FILE logs -f), which the root's
	// TraverseChildren parses.
	pf := cmd.Flags()
	pf.StringArrayVarP(&f.files, "file", "f", nil, "compose file (repeatable; default: COMPOSE_FILE, else compose.yaml, docker-compose.yml, ... and their overrides)")
	pf.StringVarP(&f.projectName, "project-name", "p", "", "project name (default: COMPOSE_PROJECT_NAME, the files' name, the directory's name)")
	pf.StringVar(&f.projectDir, "project-directory", "", "project directory (default: the first file's)")
	pf.StringArrayVar(&f.envFiles, "env-file", nil, "environment file for interpolation (repeatable; default: .env of the project directory)")
	pf.StringArrayVar(&f.profiles, "profile", nil, "profile to enable (repeatable; default: COMPOSE_PROFILES)")

	cmd.AddCommand(newComposeConfigCommand(streams, &f), newComposeUpCommand(streams, &f), newComposeDownCommand(streams, &f),
		newComposeStopCommand(streams, &f), newComposePsCommand(streams, &f), newComposeLogsCommand(streams, &f))
	return cmd
}

func newComposeConfigCommand(streams genericiooptions.IOStreams, f *composeFlags) *cobra.Command {
	var o compose.ConfigOptions
	cmd := &cobra.Command{
		Use:   "config [SERVICE...]",
		Short: "Print the project as tp runs it (without x-tp: what docker compose config prints)",
		RunE: func(cmd *cobra.Command, args []string) error {
			lo, err := f.loadOptions(args)
			if err != nil {
				return err
			}
			return compose.Config(cmd.Context(), lo, o, streams.Out)
		},
	}
	cmd.Flags().StringVar(&o.Format, "format", "yaml", "yaml or json")
	return cmd
}

func composeStreams(streams genericiooptions.IOStreams) compose.Streams {
	return compose.Streams{In: io.NopCloser(streams.In), Out: streams.Out, ErrOut: streams.ErrOut}
}

func newComposeUpCommand(streams genericiooptions.IOStreams, f *composeFlags) *cobra.Command {
	var detach, build bool
	cmd := &cobra.Command{
		Use:   "up [SERVICE...]",
		Short: "Connect, intercept, and run the project's services (foreground: Ctrl-C stops them and leaves the intercepts)",
		Long: `Connect (when the connection is not running), create the intercepts, build missing images,
and run the project's services, or SERVICEs and their dependencies.

Intercepted services get the pod's environment and volumes (x-tp mounts); services that
depend on a use-cluster service start once the cluster's service answers.

In the foreground the services' logs follow; Ctrl-C stops the services and leaves the
intercepts (the cluster's pods answer again); the containers and the connection stay for the
next up, except those that mount the pod's volumes, which go with the volumes. With -d the services and intercepts stay until tp compose down, which also quits the
connection when up started it (and no intercept made outside the project uses it). Running up again converges: unchanged containers and
intercepts stay.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			lo, err := f.loadOptions(args)
			if err != nil {
				return err
			}
			return compose.Up(cmd.Context(), lo, compose.UpOptions{
				Detach: detach, Build: build, Connect: composeConnect(streams, lo.Engine),
			}, composeStreams(streams))
		},
	}
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "run in the background; the intercepts stay until tp compose down")
	cmd.Flags().BoolVar(&build, "build", false, "build the images of services with a build section before starting them (default: only missing ones)")
	return cmd
}

func newComposeStopCommand(streams genericiooptions.IOStreams, f *composeFlags) *cobra.Command {
	var timeout int
	cmd := &cobra.Command{
		Use:   "stop [SERVICE...]",
		Short: "Stop the services and leave their intercepts (as Ctrl-C of a foreground up); up starts them again",
		RunE: func(cmd *cobra.Command, args []string) error {
			lo, err := f.loadOptions(nil)
			if err != nil {
				return err
			}
			o := compose.StopOptions{Services: args}
			if cmd.Flags().Changed("timeout") {
				d := time.Duration(timeout) * time.Second
				o.Timeout = &d
			}
			return compose.Stop(cmd.Context(), lo, o, composeStreams(streams))
		},
	}
	cmd.Flags().IntVarP(&timeout, "timeout", "t", 10, "seconds to wait for a container to stop before killing it")
	return cmd
}

func newComposeLogsCommand(streams genericiooptions.IOStreams, f *composeFlags) *cobra.Command {
	var o compose.LogsOptions
	cmd := &cobra.Command{
		Use:   "logs [SERVICE...]",
		Short: "Show the services' logs",
		RunE: func(cmd *cobra.Command, args []string) error {
			lo, err := f.loadOptions(nil)
			if err != nil {
				return err
			}
			o.Services = args
			return compose.Logs(cmd.Context(), lo, o, composeStreams(streams))
		},
	}
	cmd.Flags().BoolVarP(&o.Follow, "follow", "f", false, "follow the logs")
	cmd.Flags().StringVarP(&o.Tail, "tail", "n", "all", "lines from the end of each container's log")
	cmd.Flags().BoolVarP(&o.Timestamps, "timestamps", "t", false, "show timestamps")
	return cmd
}

func newComposePsCommand(streams genericiooptions.IOStreams, f *composeFlags) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "ps [SERVICE...]",
		Short: "List the project's services: their containers, tp role and intercepts' state",
		RunE: func(cmd *cobra.Command, args []string) error {
			lo, err := f.loadOptions(nil)
			if err != nil {
				return err
			}
			states, err := compose.Ps(cmd.Context(), lo, compose.PsOptions{Services: args}, composeStreams(streams))
			if err != nil {
				return err
			}
			if states == nil {
				states = []compose.ServiceState{}
			}
			return printStructured(streams.Out, output, states, func(w io.Writer) error {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "SERVICE\tROLE\tCONTAINER\tSTATUS\tPORTS\tINTERCEPT")
				for _, st := range states {
					role := st.Role
					if st.ClusterService != "" {
						role += " " + st.ClusterService
					}
					container, state := "-", "not created"
					if st.Role == string(compose.RoleUseCluster) {
						state = "not started: the cluster's service " + st.ClusterService
					}
					if len(st.Containers) > 0 {
						var names, states []string
						for _, c := range st.Containers {
							names = append(names, c.Name)
							states = append(states, c.Status)
						}
						container, state = strings.Join(names, ","), strings.Join(states, ",")
					}
					var ics []string
					for _, ic := range st.Intercepts {
						desc := fmt.Sprintf("%s (%s %s) %s", ic.Name, ic.Workload, ic.Port, ic.State)
						if len(ic.Headers) > 0 || ic.PathPrefix != "" {
							desc += " personal"
						}
						ics = append(ics, desc)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", st.Service, role, container, state, cmp.Or(strings.Join(st.Ports, ", "), "-"), cmp.Or(strings.Join(ics, "; "), "-"))
				}
				return tw.Flush()
			})
		},
	}
	outputFlag(cmd, &output)
	return cmd
}

func newComposeDownCommand(streams genericiooptions.IOStreams, f *composeFlags) *cobra.Command {
	var volumes bool
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Remove the project's containers and networks, leave its intercepts, and quit the connection when up started it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lo, err := f.loadOptions(nil)
			if err != nil {
				return err
			}
			return compose.Down(cmd.Context(), lo, compose.DownOptions{Volumes: volumes}, composeStreams(streams))
		},
	}
	cmd.Flags().BoolVarP(&volumes, "volumes", "v", false, "also remove the project's named volumes")
	return cmd
}

// composeConnect connects as `tp connect` does, with the project's
// x-tp.connection (context, namespace, manager namespace) and the joined
// services' ports published on the daemon container.
func composeConnect(streams genericiooptions.IOStreams, engine *dockerengine.Engine) compose.ConnectFunc {
	return func(ctx context.Context, conn compose.Connection, publish []string) error {
		kube := genericclioptions.NewConfigFlags(true)
		if conn.Context != "" {
			kube.Context = &conn.Context
		}
		if conn.Namespace != "" {
			kube.Namespace = &conn.Namespace
		}
		var kubeArgs []string
		if conn.Context != "" {
			kubeArgs = append(kubeArgs, "--context="+conn.Context)
		}
		_, err := daemoncontainer.Connect(ctx, daemoncontainer.ConnectOptions{
			Name: conn.Name, Kube: kube, ManagerNamespace: cmp.Or(conn.ManagerNamespace, defaultManagerNamespace),
			Image: version.Image(), Version: version.Version, LogLevel: "info", Publish: publish, Progress: streams.ErrOut,
			Engine: engine, Kubeauth: daemoncontainer.StartKubeauthProcess(kubeArgs, engine.Environ(os.Environ())),
		})
		return err
	}
}
