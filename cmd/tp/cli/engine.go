package cli

import (
	"context"
	"os"

	"github.com/docker/docker/client"
	"github.com/spf13/cobra"

	"github.com/tp-run/tp/daemoncontainer"
	"github.com/tp-run/tp/internal/dockerengine"
)

// dockerFlags is tp's global --docker-context and the Docker engine it
// picks with the docker CLI's rules (DOCKER_HOST, DOCKER_CONTEXT, the
// current context): every Docker call of a command goes to that engine.
type dockerFlags struct {
	context string
	engine  *dockerengine.Engine
}

func (f *dockerFlags) addFlags(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&f.context, "docker-context", "",
		"docker context of the Docker engine to use (default: as the docker CLI picks it: DOCKER_HOST, DOCKER_CONTEXT, `docker context use`)")
}

// Engine resolves the engine once.
func (f *dockerFlags) Engine() (*dockerengine.Engine, error) {
	if f.engine == nil {
		e, err := dockerengine.Resolve(dockerengine.Options{Context: f.context})
		if err != nil {
			return nil, err
		}
		f.engine = e
	}
	return f.engine, nil
}

// Client is an API client of the engine, checked to answer.
func (f *dockerFlags) Client(ctx context.Context) (*client.Client, error) {
	e, err := f.Engine()
	if err != nil {
		return nil, err
	}
	return e.Client(ctx)
}

// Environ is this process's environment for a docker CLI (or tp) child
// that must talk to the engine.
func (f *dockerFlags) Environ() ([]string, error) {
	e, err := f.Engine()
	if err != nil {
		return nil, err
	}
	return e.Environ(os.Environ()), nil
}

// Dial finds the connection named name on the engine and dials its daemon.
func (f *dockerFlags) Dial(ctx context.Context, name string) (*daemoncontainer.Client, error) {
	e, err := f.Engine()
	if err != nil {
		return nil, err
	}
	return daemoncontainer.DialConnection(ctx, e, name)
}
