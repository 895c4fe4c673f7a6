package compose

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	dockerclient "github.com/docker/docker/client"

	composeapi "github.com/docker/compose/v5/pkg/api"

	"github.com/tp-run/tp/daemoncontainer"
	"github.com/tp-run/tp/intercept"
)

// Labels on the project's containers: the state that lets a later `down`
// (another process) and `tp quit` know what `up` did.
const (
	// LabelConnection is the connection (daemon container) the project uses.
	LabelConnection = "tp.run/compose-connection"
	// LabelStartedConnection is "true" when the project's up started the
	// connection: its down quits it.
	LabelStartedConnection = "tp.run/started-connection"
)

// setLabel puts a label on every service's containers.
func (p *project) setLabel(key, value string) {
	for name, s := range p.Project.Services {
		s.CustomLabels = maps.Clone(s.CustomLabels)
		if s.CustomLabels == nil {
			s.CustomLabels = map[string]string{}
		}
		s.CustomLabels[key] = value
		p.Project.Services[name] = s
	}
}

// containers are the project's containers (any state).
func (p *project) containers(ctx context.Context, docker dockerclient.APIClient) ([]container.Summary, error) {
	cs, err := docker.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", composeapi.ProjectLabel+"="+p.Project.Name))})
	if err != nil {
		return nil, fmt.Errorf("list the containers of project %s: %w", p.Project.Name, err)
	}
	return cs, nil
}

func (p *project) hasContainers(ctx context.Context, docker dockerclient.APIClient) bool {
	cs, err := p.containers(context.WithoutCancel(ctx), docker)
	return err != nil || len(cs) > 0
}

// startedConnection says whether an up of this project started the
// connection (its containers say so).
func (p *project) startedConnection(ctx context.Context, docker dockerclient.APIClient) (bool, error) {
	cs, err := p.containers(ctx, docker)
	if err != nil {
		return false, err
	}
	for _, c := range cs {
		if c.Labels[LabelConnection] == p.connection && c.Labels[LabelStartedConnection] == "true" {
			return true, nil
		}
	}
	return false, nil
}

// startsConnection says whether up starts the connection now (it is not
// running) or an earlier up of the project did: then down quits it.
func (p *project) startsConnection(ctx context.Context, docker dockerclient.APIClient) (bool, error) {
	conn, err := daemoncontainer.Find(ctx, docker, p.connection)
	switch {
	case errors.Is(err, daemoncontainer.ErrNotConnected):
		return true, nil
	case err != nil:
		return false, err
	case !conn.Running:
		return true, nil
	}
	return p.startedConnection(ctx, docker)
}

// quitConnection quits the connection that the project's up started,
// unless another compose project uses it too.
func (p *project) quitConnection(ctx context.Context, docker dockerclient.APIClient, progress io.Writer) error {
	uses, err := ProjectsUsing(ctx, docker, p.connection)
	if err != nil {
		return err
	}
	var others []string
	for _, u := range uses {
		if u.Name != p.Project.Name {
			others = append(others, u.Name)
		}
	}
	if len(others) > 0 {
		fmt.Fprintf(progress, "Kept connection %s (tp compose up had started it): project %s uses it too\n", p.daemon, strings.Join(others, ", "))
		return nil
	}
	err = daemoncontainer.Quit(ctx, docker, p.connection)
	if errors.Is(err, daemoncontainer.ErrNotConnected) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("quit connection %s: %w", p.connection, err)
	}
	if err := intercept.RemoveConnectionVolumes(ctx, docker, p.connection); err != nil {
		fmt.Fprintf(progress, "tp: warning: %v\n", err)
	}
	fmt.Fprintf(progress, "Disconnected %s (tp compose up had started it)\n", p.daemon)
	return nil
}

// ProjectUse is a compose project whose containers use a connection.
type ProjectUse struct {
	Name        string
	WorkingDir  string
	ConfigFiles []string
	// Running are its services with running containers (sorted).
	Running []string
	// Containers counts its containers (any state).
	Containers int
	// StartedConnection: the project's up started the connection.
	StartedConnection bool
}

// DownCommand is the command that takes the project down.
func (u ProjectUse) DownCommand() string {
	cmd := "tp compose -p " + u.Name
	for _, f := range u.ConfigFiles {
		cmd += " -f " + f
	}
	return cmd + " down"
}

// ProjectsUsing lists the compose projects whose containers (running or
// not) use the connection, by name.
func ProjectsUsing(ctx context.Context, docker dockerclient.APIClient, connection string) ([]ProjectUse, error) {
	cs, err := docker.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", LabelConnection+"="+connection))})
	if err != nil {
		return nil, fmt.Errorf("list the compose projects of connection %s: %w", connection, err)
	}
	byName := map[string]*ProjectUse{}
	for _, c := range cs {
		name := c.Labels[composeapi.ProjectLabel]
		u := byName[name]
		if u == nil {
			u = &ProjectUse{Name: name, WorkingDir: c.Labels[composeapi.WorkingDirLabel]}
			if f := c.Labels[composeapi.ConfigFilesLabel]; f != "" {
				u.ConfigFiles = strings.Split(f, ",")
			}
			byName[name] = u
		}
		u.Containers++
		if c.State == container.StateRunning && !slices.Contains(u.Running, c.Labels[composeapi.ServiceLabel]) {
			u.Running = append(u.Running, c.Labels[composeapi.ServiceLabel])
		}
		u.StartedConnection = u.StartedConnection || c.Labels[LabelStartedConnection] == "true"
	}
	var out []ProjectUse
	for _, name := range slices.Sorted(maps.Keys(byName)) {
		slices.Sort(byName[name].Running)
		out = append(out, *byName[name])
	}
	return out, nil
}
