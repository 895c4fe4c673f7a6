// Package compose runs a team's existing docker-compose project with tp:
// it loads the project exactly as docker compose does (compose-go), reads
// tp's `x-tp` extension (which services intercept a workload, which only
// reach the cluster, which are replaced by the cluster's own), and turns
// the project into one whose joined services share the daemon container's
// network namespace. The intercepts themselves are the intercept package's,
// as for `tp intercept`.
package compose

import (
	"context"
	"fmt"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// LoadOptions are docker compose's project flags.
type LoadOptions struct {
	// Files are -f (repeatable); empty: COMPOSE_FILE, else compose.yaml,
	// docker-compose.yml, ... in the project directory or its parents,
	// with their override files.
	Files []string
	// ProjectDirectory is --project-directory (default: the first file's).
	ProjectDirectory string
	// ProjectName is -p (default: COMPOSE_PROJECT_NAME, the files' name:,
	// the directory's name).
	ProjectName string
	// EnvFiles are --env-file (default: .env of the project directory).
	EnvFiles []string
	// Profiles are --profile (default: COMPOSE_PROFILES).
	Profiles []string
}

// Load loads the project as docker compose does: the same file discovery,
// override files, .env and --env-file, COMPOSE_* variables, profiles,
// interpolation and merge rules (!reset, !override), since both use
// compose-go.
func Load(ctx context.Context, o LoadOptions) (*types.Project, error) {
	opts, err := cli.NewProjectOptions(o.Files,
		cli.WithWorkingDirectory(o.ProjectDirectory),
		cli.WithOsEnv,
		cli.WithEnvFiles(o.EnvFiles...),
		cli.WithDotEnv,
		cli.WithConfigFileEnv,
		cli.WithDefaultConfigPath,
		cli.WithDefaultProfiles(o.Profiles...),
		cli.WithName(o.ProjectName),
	)
	if err != nil {
		return nil, fmt.Errorf("compose project: %w", err)
	}
	p, err := opts.LoadProject(ctx)
	if err != nil {
		return nil, fmt.Errorf("compose project: %w", err)
	}
	return p, nil
}
