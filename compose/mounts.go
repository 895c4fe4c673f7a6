package compose

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/compose-spec/compose-go/v2/types"
	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/volume"
	dockerclient "github.com/docker/docker/client"

	"github.com/tp-run/tp/intercept"
	"github.com/tp-run/tp/volumes"
)

// LabelService is the compose service on tp's volumes of a project (with
// LabelProject), so that a later up reuses them and down removes them.
const LabelService = "tp.run/compose-service"

// mountVolumes gives an intercepted service the pod's volumes, as tp
// intercept --docker-run does: each of the app container's mounts that m
// picks at its pod path, where compose mounts nothing at that path
// (compose's own wins). An up of an intercept the project holds already
// reuses the volumes an earlier up made for it, so that the service's
// container is not recreated.
func (p *project) mountVolumes(ctx context.Context, docker dockerclient.APIClient, src intercept.MountSource, ic *intercept.Intercept,
	service string, m Mounts, version string, progress io.Writer) error {
	o := m.Options()
	if o.Disabled {
		return nil
	}
	o.Labels = map[string]string{LabelProject: p.Project.Name, LabelService: service}
	picked, skipped, err := intercept.PickMounts(ic.Info.GetMounts(), o)
	if err != nil {
		return fmt.Errorf("service %s: the pod's mounts (x-tp.intercept.mounts): %w", service, err)
	}
	for _, path := range skipped {
		fmt.Fprintf(progress, "Service %s: %s\n", service, intercept.SkippedNote(path))
	}
	vols, err := p.heldVolumes(ctx, docker, ic, service, picked)
	if err != nil {
		return err
	}
	if vols == nil {
		if vols, err = ic.CreateVolumes(ctx, docker, src, version, o); err != nil {
			return fmt.Errorf("service %s: the pod's mounts (x-tp.intercept.mounts): %w", service, err)
		}
	}
	if len(vols) == 0 {
		return nil
	}
	s := p.Project.Services[service]
	if p.Project.Volumes == nil {
		p.Project.Volumes = types.Volumes{}
	}
	var mounted []string
	for _, v := range vols {
		if slices.ContainsFunc(s.Volumes, func(sv types.ServiceVolumeConfig) bool { return sv.Target == v.Path }) {
			fmt.Fprintf(progress, "Service %s mounts its own volume at %s, not the pod's\n", service, v.Path)
			continue
		}
		s.Volumes = append(s.Volumes, types.ServiceVolumeConfig{Type: types.VolumeTypeVolume, Source: v.Name, Target: v.Path, ReadOnly: v.ReadOnly})
		// External: compose neither creates nor removes it; tp does.
		p.Project.Volumes[v.Name] = types.VolumeConfig{Name: v.Name, External: true}
		mounted = append(mounted, v.Path)
	}
	p.Project.Services[service] = s
	if len(mounted) > 0 {
		fmt.Fprintf(progress, "Service %s mounts the pod's volumes at %v\n", service, mounted)
	}
	return nil
}

// heldVolumes are the volumes an earlier up made for the same intercept
// (its id) and service, when they are those picked (intercept.PickMounts); nil when there are
// none, or not those (then they are stale, and removeStaleVolumes goes).
func (p *project) heldVolumes(ctx context.Context, docker dockerclient.APIClient, ic *intercept.Intercept, service string, picked []intercept.Volume) ([]intercept.Volume, error) {
	list, err := volumes.ListVolumes(ctx, docker, map[string]string{LabelProject: p.Project.Name, LabelService: service, volumes.LabelIntercept: ic.Info.GetId()})
	if err != nil || len(list) == 0 {
		return nil, err
	}
	have := map[string]*volume.Volume{}
	for _, v := range list {
		have[v.Labels[volumes.LabelPath]] = v
	}
	var out []intercept.Volume
	for _, pv := range picked {
		v, ok := have[pv.Path]
		if !ok {
			return nil, nil
		}
		delete(have, pv.Path)
		pv.Name = v.Name
		out = append(out, pv)
	}
	if len(have) > 0 || len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// removeVolumes removes tp's volumes of the project (of services; all when
// nil), and first the project's containers that mount them: a container
// whose volumes went with its intercept cannot start again (the next up
// makes it anew with the new intercept's volumes).
func (p *project) removeVolumes(ctx context.Context, docker dockerclient.APIClient, services []string, progress io.Writer) error {
	list, err := volumes.ListVolumes(ctx, docker, map[string]string{LabelProject: p.Project.Name})
	if err != nil {
		return fmt.Errorf("tp's volumes of project %s: %w", p.Project.Name, err)
	}
	var errs []error
	removed := map[string]bool{}
	for _, v := range list {
		if services != nil && !slices.Contains(services, v.Labels[LabelService]) {
			continue
		}
		cs, err := docker.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("volume", v.Name))})
		if err != nil {
			errs = append(errs, fmt.Errorf("the containers that mount volume %s: %w", v.Name, err))
			continue
		}
		for _, c := range cs {
			if removed[c.ID] {
				continue
			}
			if err := docker.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil && !cerrdefs.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("remove container %s, which mounts the pod's volume %s: %w", containerName(c), v.Name, err))
				continue
			}
			removed[c.ID] = true
			fmt.Fprintf(progress, "Removed container %s: it mounted the pod's volumes of a left intercept (up makes it anew)\n", containerName(c))
		}
		if err := docker.VolumeRemove(ctx, v.Name, true); err != nil && !cerrdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("remove tp's volume %s of project %s: %w", v.Name, p.Project.Name, err))
		}
	}
	return errors.Join(errs...)
}

// removeStaleVolumes removes tp's volumes of the project that no current
// intercept (ids) mounts and no container uses: those of an earlier up whose
// containers this up recreated.
func (p *project) removeStaleVolumes(ctx context.Context, docker dockerclient.APIClient, ids map[string]bool) error {
	list, err := volumes.ListVolumes(ctx, docker, map[string]string{LabelProject: p.Project.Name})
	if err != nil {
		return err
	}
	var errs []error
	for _, v := range list {
		if ids[v.Labels[volumes.LabelIntercept]] {
			continue
		}
		if err := docker.VolumeRemove(ctx, v.Name, false); err != nil && !cerrdefs.IsNotFound(err) && !cerrdefs.IsConflict(err) {
			errs = append(errs, fmt.Errorf("remove stale volume %s of project %s: %w", v.Name, p.Project.Name, err))
		}
	}
	return errors.Join(errs...)
}

func containerName(c container.Summary) string {
	if len(c.Names) > 0 {
		return c.Names[0][1:]
	}
	return c.ID[:12]
}
