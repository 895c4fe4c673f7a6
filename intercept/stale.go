package intercept

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"

	"github.com/tp-run/tp/daemoncontainer"
	"github.com/tp-run/tp/internal/owner"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/volumes"
)

// Labels that tp puts on an intercept's volumes and its --docker-run
// container (next to volumes.LabelConnection, volumes.LabelIntercept and,
// for what a CLI owns, the owner.Label* ones), so that RemoveStale can tell
// what is left of whom.
const (
	// LabelNamespace is the intercept's namespace.
	LabelNamespace = "tp.run/namespace"
	// LabelInterceptName is the intercept's name (RemoveIntercept takes it).
	LabelInterceptName = "tp.run/intercept-name"
	// LabelDockerRun marks the container of `tp intercept --docker-run` ("true").
	LabelDockerRun = "tp.run/docker-run"
)

// labels are the intercept's labels for its volumes and container; owned
// adds this process as their owner.
func (ic *Intercept) labels(owned bool) map[string]string {
	l := map[string]string{
		volumes.LabelConnection: ic.connection, volumes.LabelIntercept: ic.Info.GetId(),
		LabelNamespace: ic.Namespace(), LabelInterceptName: ic.Name(),
	}
	if owned {
		maps.Copy(l, owner.Self().Labels())
	}
	return l
}

// RemoveStale removes what killed tp processes and removed daemon
// containers left on the Docker engine; every tp command that resolves a
// connection calls it first, so that nothing stale outlives the next one:
//   - a --docker-run container or tp volume (of any connection) whose
//     connection's daemon container is gone (docker rm -f, tp quit);
//   - with d (the daemon of connection; nil when it does not answer), of
//     that connection: a --docker-run container or volume whose CLI was
//     killed (it ran on this host and its pid ended), and that CLI's
//     intercept, which would otherwise refuse the same intercept again; a
//     volume whose intercept no longer exists (tp leave from another
//     shell, the session TTL).
//
// A container or volume that a live CLI on this host owns stays, and so do
// those of CLIs on other hosts that share the engine while their connection
// exists: nothing tells whether those still run. A volume still in use
// stays (Docker refuses) and is tried again next time.
func RemoveStale(ctx context.Context, docker client.APIClient, d Daemon, connection string) error {
	// Volumes and containers first, then the daemon containers: a volume
	// or container that exists was made after its daemon container was.
	vols, err := volumes.ListVolumes(ctx, docker, nil)
	if err != nil {
		return err
	}
	runs, err := docker.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", LabelDockerRun+"=true"))})
	if err != nil {
		return fmt.Errorf("list tp's --docker-run containers: %w", err)
	}
	if len(vols) == 0 && len(runs) == 0 {
		return nil
	}
	conns, err := daemoncontainer.List(ctx, docker)
	if err != nil {
		return err
	}
	daemons := map[string]bool{}
	for _, c := range conns {
		daemons[c.Name] = true
	}
	// What goes: the things of connections without daemon container; with
	// an answering daemon, of this connection, those of killed CLIs (with
	// their intercepts) and volumes of intercepts that ended.
	gone := func(labels map[string]string) bool { return !daemons[labels[volumes.LabelConnection]] }
	killed := func(labels map[string]string) bool {
		o, owned := owner.FromLabels(labels)
		return labels[volumes.LabelConnection] == connection && owned && o.Gone()
	}
	orphans := map[string]orphan{} // intercepts of killed CLIs, by id
	var ours []*volume.Volume      // this connection's other volumes
	for _, c := range runs {
		if !gone(c.Labels) && killed(c.Labels) {
			orphans[c.Labels[volumes.LabelIntercept]] = orphanOf(c.Labels)
		}
	}
	for _, v := range vols {
		switch {
		case gone(v.Labels):
		case killed(v.Labels):
			orphans[v.Labels[volumes.LabelIntercept]] = orphanOf(v.Labels)
		case v.Labels[volumes.LabelConnection] == connection:
			ours = append(ours, v)
		}
	}
	var live map[string]bool
	if d != nil && (len(orphans) > 0 || len(ours) > 0) {
		var err error
		if live, err = liveIntercepts(ctx, d, ours, orphans); err != nil {
			// No answer is no proof that an intercept is gone, and a
			// killed CLI's intercept could not be left: wait for one.
			d = nil
		}
	}
	if d == nil {
		clear(orphans)
		ours = nil
	}
	orphaned := func(labels map[string]string) bool {
		_, ok := orphans[labels[volumes.LabelIntercept]]
		return ok && killed(labels)
	}

	var errs []error
	var removed []string
	for _, c := range runs {
		if !gone(c.Labels) && !orphaned(c.Labels) {
			continue
		}
		removed = append(removed, c.ID)
		err := docker.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
		if err != nil && !cerrdefs.IsNotFound(err) && !cerrdefs.IsConflict(err) { // conflict: its removal (--rm) is in progress
			errs = append(errs, fmt.Errorf("remove the --docker-run container %s that a killed tp left: %w", containerName(c), err))
		}
	}
	waitRemoved(ctx, docker, removed)
	for _, v := range vols {
		if gone(v.Labels) || orphaned(v.Labels) {
			errs = append(errs, removeVolume(ctx, docker, v.Name))
		}
	}
	for _, v := range ours {
		if !live[v.Labels[volumes.LabelIntercept]] {
			errs = append(errs, removeVolume(ctx, docker, v.Name))
		}
	}
	for id, o := range orphans {
		if !live[id] || o.name == "" {
			continue
		}
		if _, err := d.RemoveIntercept(ctx, &managerv1.RemoveInterceptRequest{Name: o.name, Namespace: o.namespace}); err != nil {
			errs = append(errs, fmt.Errorf("leave intercept %s (namespace %s) of a killed tp on connection %s: %w", o.name, o.namespace, connection, statusError(err)))
		}
	}
	return errors.Join(errs...)
}

// orphan is an intercept whose CLI was killed.
type orphan struct{ name, namespace string }

func orphanOf(labels map[string]string) orphan {
	return orphan{name: labels[LabelInterceptName], namespace: labels[LabelNamespace]}
}

// liveIntercepts are the ids of the intercepts that exist in the namespaces
// of vols and orphans.
func liveIntercepts(ctx context.Context, d Daemon, vols []*volume.Volume, orphans map[string]orphan) (map[string]bool, error) {
	namespaces := map[string]bool{}
	for _, v := range vols {
		namespaces[v.Labels[LabelNamespace]] = true
	}
	for _, o := range orphans {
		namespaces[o.namespace] = true
	}
	live := map[string]bool{}
	for ns := range namespaces {
		resp, err := d.ListWorkloads(ctx, &managerv1.ListWorkloadsRequest{Namespace: ns})
		if err != nil {
			return nil, err
		}
		for _, w := range resp.GetWorkloads() {
			for _, ic := range w.GetIntercepts() {
				live[ic.GetId()] = true
			}
		}
	}
	return live, nil
}

// removedWait bounds how long RemoveStale waits for the containers it
// removed to be gone (the engine's own --rm removal may still be running),
// so that their volumes are no longer in use.
const removedWait = 10 * time.Second

// waitRemoved waits until none of the containers ids exists, for at most
// removedWait.
func waitRemoved(ctx context.Context, docker client.APIClient, ids []string) {
	deadline := time.Now().Add(removedWait)
	for _, id := range ids {
		for time.Now().Before(deadline) && ctx.Err() == nil {
			if _, err := docker.ContainerInspect(ctx, id); cerrdefs.IsNotFound(err) {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

func removeVolume(ctx context.Context, docker client.APIClient, name string) error {
	err := docker.VolumeRemove(ctx, name, true)
	if err == nil || cerrdefs.IsNotFound(err) || cerrdefs.IsConflict(err) { // conflict: in use, next time
		return nil
	}
	return fmt.Errorf("remove stale volume %s: %w", name, err)
}

func containerName(c container.Summary) string {
	if len(c.Names) > 0 {
		return c.Names[0][min(1, len(c.Names[0])):]
	}
	return c.ID
}
