package cli

import (
	"cmp"
	"context"
	"io"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/tp-run/tp/compose"
	"github.com/tp-run/tp/daemoncontainer"
	"github.com/tp-run/tp/internal/version"
)

// composeFlags are docker compose's project flags.
type composeFlags struct {
	files, envFiles, profiles []string
	projectName, projectDir   string
}

func (f *composeFlags) loadOptions() compose.LoadOptions {
	return compose.LoadOptions{Files: f.files, ProjectDirectory: f.projectDir, ProjectName: f.projectName, EnvFiles: f.envFiles, Profiles: f.profiles}
}

func newComposeCommand(streams genericiooptions.IOStreams) *cobra.Command {
	var f composeFlags
	cmd := &cobra.Command{
		Use:   "compose [-f FILE]... COMMAND",
		Short: "Run a docker compose project with some services intercepting or reaching the cluster (x-tp)",
		Long: `Load a compose project as docker compose does (the same files, override files, .env,
profiles and interpolation) and run it with tp: services with an x-tp extension intercept a
workload, reach the cluster, or are replaced by the cluster's own service.`,
	}
	pf := cmd.PersistentFlags()
	pf.StringArrayVarP(&f.files, "file", "f", nil, "compose file (repeatable; default: COMPOSE_FILE, else compose.yaml, docker-compose.yml, ... and their overrides)")
	pf.StringVarP(&f.projectName, "project-name", "p", "", "project name (default: COMPOSE_PROJECT_NAME, the files' name, the directory's name)")
	pf.StringVar(&f.projectDir, "project-directory", "", "project directory (default: the first file's)")
	pf.StringArrayVar(&f.envFiles, "env-file", nil, "environment file for interpolation (repeatable; default: .env of the project directory)")
	pf.StringArrayVar(&f.profiles, "profile", nil, "profile to enable (repeatable; default: COMPOSE_PROFILES)")

	cmd.AddCommand(newComposeConfigCommand(streams, &f), newComposeUpCommand(streams, &f), newComposeDownCommand(streams, &f))
	return cmd
}

func newComposeConfigCommand(streams genericiooptions.IOStreams, f *composeFlags) *cobra.Command {
	var o compose.ConfigOptions
	cmd := &cobra.Command{
		Use:   "config [SERVICE...]",
		Short: "Print the project as tp runs it (without x-tp: what docker compose config prints)",
		RunE: func(cmd *cobra.Command, args []string) error {
			lo := f.loadOptions()
			lo.Services = args
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
	var detach bool
	cmd := &cobra.Command{
		Use:   "up [SERVICE...]",
		Short: "Connect, intercept, and run the project's services (foreground: Ctrl-C stops them and leaves the intercepts)",
		RunE: func(cmd *cobra.Command, args []string) error {
			return compose.Up(cmd.Context(), f.loadOptions(), compose.UpOptions{
				Detach: detach, Services: args, Connect: composeConnect(streams),
			}, composeStreams(streams))
		},
	}
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "run in the background; the intercepts stay until tp compose down")
	return cmd
}

func newComposeDownCommand(streams genericiooptions.IOStreams, f *composeFlags) *cobra.Command {
	var volumes bool
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Stop and remove the project's containers and networks, and leave its intercepts",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return compose.Down(cmd.Context(), f.loadOptions(), compose.DownOptions{Volumes: volumes}, composeStreams(streams))
		},
	}
	cmd.Flags().BoolVarP(&volumes, "volumes", "v", false, "also remove the project's named volumes")
	return cmd
}

// composeConnect connects as `tp connect` does, with the project's
// x-tp.connection (context, namespace, manager namespace) and the joined
// services' ports published on the daemon container.
func composeConnect(streams genericiooptions.IOStreams) compose.ConnectFunc {
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
			Kubeauth: daemoncontainer.StartKubeauthProcess(kubeArgs),
		})
		return err
	}
}
