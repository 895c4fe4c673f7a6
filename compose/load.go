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
	"io"
	"strings"

	"github.com/compose-spec/compose-go/v2/types"
	composeapi "github.com/docker/compose/v5/pkg/api"

	"github.com/tp-run/tp/internal/dockerengine"
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
	// Services narrow the project to these and their dependencies (empty:
	// all), as docker compose's SERVICE arguments do.
	Services []string
	// Engine is the Docker engine the project runs on (tp's: the docker
	// CLI's choice, or --docker-context).
	Engine *dockerengine.Engine
}

// Load loads the project as docker compose does, with the compose
// library's own loader (LoadProject): the same file discovery, override
// files, .env and --env-file, COMPOSE_* variables, profiles, interpolation,
// merge rules (!reset, !override), includes and extends, and the same
// narrowing to Services and their dependencies.
func Load(ctx context.Context, o LoadOptions) (*types.Project, error) {
	svc, err := newComposeService(Streams{In: io.NopCloser(strings.NewReader("")), Out: io.Discard, ErrOut: io.Discard}, o.Engine)
	if err != nil {
		return nil, err
	}
	return loadWith(ctx, svc, o)
}

func loadWith(ctx context.Context, svc composeapi.Compose, o LoadOptions) (*types.Project, error) {
	p, err := svc.LoadProject(ctx, composeapi.ProjectLoadOptions{
		ProjectName: o.ProjectName, ConfigPaths: o.Files, WorkingDir: o.ProjectDirectory,
		EnvFiles: o.EnvFiles, Profiles: o.Profiles, Services: o.Services,
	})
	if err != nil {
		return nil, fmt.Errorf("compose project: %w", err)
	}
	return p, nil
}
