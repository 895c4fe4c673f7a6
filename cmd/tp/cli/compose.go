package cli

import (
	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/tp-run/tp/compose"
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

	cmd.AddCommand(&cobra.Command{
		Use:   "config",
		Short: "Print the project as tp runs it (without x-tp: what docker compose config prints)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return compose.Config(cmd.Context(), f.loadOptions(), streams.Out)
		},
	})
	return cmd
}
