package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/docker/docker/client"
	"github.com/spf13/cobra"

	"github.com/tp-run/tp/daemoncontainer"
	"github.com/tp-run/tp/intercept"
	"github.com/tp-run/tp/internal/dockerengine"
	"github.com/tp-run/tp/internal/phasetrace"
)

// dockerFlags is tp's global --docker-context and the Docker engine it
// picks with the docker CLI's rules (DOCKER_HOST, DOCKER_CONTEXT, the
// current context): every Docker call of a command goes to that engine.
type dockerFlags struct {
	context string
	engine  *dockerengine.Engine
	// warn gets the warnings of the cleanup that resolving a connection does.
	warn io.Writer
}

func (f *dockerFlags) addFlags(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&f.context, "docker-context", "",
		"docker context of the Docker engine to use (default: as the docker CLI picks it: DOCKER_HOST, DOCKER_CONTEXT, `docker context use`)")
}

// Engine resolves the engine once.
func (f *dockerFlags) Engine() (*dockerengine.Engine, error) {
	if f.engine == nil {
		defer phasetrace.Begin("docker engine resolve")()
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
// First it removes what killed tp processes and removed daemon containers
// left (intercept.RemoveStale), whether or not the connection answers.
func (f *dockerFlags) Dial(ctx context.Context, name string) (*daemoncontainer.Client, error) {
	return f.dial(ctx, name, true)
}

// dial is Dial; preconnect opens the daemon channel while the cleanup runs
// (false for a caller that makes no daemon call).
func (f *dockerFlags) dial(ctx context.Context, name string, preconnect bool) (*daemoncontainer.Client, error) {
	e, err := f.Engine()
	if err != nil {
		return nil, err
	}
	d, err := daemoncontainer.DialConnection(ctx, e, name)
	if err != nil {
		if docker, cerr := e.Client(ctx); cerr == nil {
			f.removeStale(ctx, docker, nil, name)
			docker.Close()
		}
		return nil, err
	}
	if preconnect {
		// The exec and handshake take longer than the cleanup's Docker
		// lookups, which then cost nothing; the cleanup still ends before
		// the command's first call (it may leave a killed CLI's intercept).
		d.Preconnect()
	}
	f.removeStale(ctx, d.Docker(), d, name)
	return d, nil
}

// removeStale runs intercept.RemoveStale for connection name (d is its
// daemon, nil when it does not answer) within 20 s; a failure is a warning.
func (f *dockerFlags) removeStale(ctx context.Context, docker client.APIClient, d intercept.Daemon, name string) {
	defer phasetrace.Begin("intercept.RemoveStale")()
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := intercept.RemoveStale(sctx, docker, d, name); err != nil && f.warn != nil {
		fmt.Fprintf(f.warn, "tp: warning: connection %s: cleaning up after a killed tp or a removed daemon container: %v\n", name, err)
	}
}
