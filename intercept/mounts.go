package intercept

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/docker/docker/client"

	"github.com/tp-run/tp/daemoncontainer"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/volumes"
	"github.com/tp-run/tp/volumes/driveropts"
)

// MountOptions says which of the pod's mounts go into local containers.
type MountOptions struct {
	// Disabled mounts nothing (--mount=false).
	Disabled bool
	// ReadOnly mounts everything read-only (--mount-readonly); mounts
	// that are read-only in the pod are read-only anyway.
	ReadOnly bool
	// Paths, when set, picks these of the app container's mount paths
	// (--mount-path, repeatable).
	Paths []string
	// Owned says that the volumes live as long as this process (the
	// --docker-run CLI): they carry its owner labels, so that when it is
	// killed the next tp command removes them and leaves the intercept
	// (RemoveStale). Without it they live as long as the intercept
	// (--mount-volumes: tp leave removes them).
	Owned bool
	// Labels are more labels for the volumes, so that their owner finds
	// them again (tp compose: the project and service).
	Labels map[string]string
	// Notes, when set, gets one line per mount that is skipped: a single
	// file (a subPath mount of a ConfigMap or Secret key), which a Docker
	// volume cannot mount.
	Notes io.Writer
}

// Volume is a Docker volume of tp's plugin that mounts one of the app
// container's mounts (its files, served by the agent over SFTP).
type Volume struct {
	Name     string `json:"name"`
	Path     string `json:"path"` // the app container's mountPath, where it goes
	ReadOnly bool   `json:"readOnly"`
}

// MountSource is where volumes reach the intercept's files: the daemon
// container's mount endpoint (daemoncontainer.Client has it).
type MountSource interface {
	MountEndpoint(ctx context.Context, interceptID string) (daemoncontainer.MountEndpoint, error)
}

// CreateVolumes creates one Docker volume per mount of the app container
// that o picks, installing or upgrading tp's volume plugin first (version
// is this build's). Leave removes them. On failure nothing is left.
func (ic *Intercept) CreateVolumes(ctx context.Context, docker client.APIClient, src MountSource, version string, o MountOptions) ([]Volume, error) {
	if o.Disabled {
		return nil, nil
	}
	picked, skipped, err := PickMounts(ic.Info.GetMounts(), o)
	if err != nil {
		return nil, fmt.Errorf("the app container of %s: %w", ic.Info.GetSpec().GetWorkload(), err)
	}
	if o.Notes != nil {
		for _, p := range skipped {
			fmt.Fprintln(o.Notes, SkippedNote(p))
		}
	}
	if len(picked) == 0 {
		return nil, nil
	}
	driver, err := volumes.Ensure(ctx, docker, version)
	if err != nil {
		return nil, fmt.Errorf("tp's volume plugin: %w", err)
	}
	ep, err := src.MountEndpoint(ctx, ic.Info.GetId())
	if err != nil {
		return nil, fmt.Errorf("mounts of intercept %s: %w", ic.Name(), statusError(err))
	}
	ic.docker = docker
	labels := maps.Clone(o.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	maps.Copy(labels, ic.labels(o.Owned)) // tp's own labels win
	for i := range picked {
		name, err := volumes.CreateVolume(ctx, docker, volumes.Spec{
			Driver: driver, Connection: ic.connection, Intercept: ic.Info.GetId(), Labels: labels,
			Options: driveropts.Options{Addr: ep.Addr.String(), Token: ep.Token, Path: picked[i].Path, ReadOnly: picked[i].ReadOnly},
		})
		if err != nil {
			_ = ic.RemoveVolumes(context.WithoutCancel(ctx))
			return nil, err
		}
		picked[i].Name = name
	}
	ic.volumes = picked
	return picked, nil
}

// ErrFileMount is the error of a --mount-path that names a mount that is a
// single file: Docker volumes mount directories only.
var ErrFileMount = errors.New("a single file, and Docker volumes mount directories only")

// PickMounts are the volumes (without names) of the mounts that o picks, and
// the paths of the mounts it skips: with no o.Paths, all of them but those
// that are single files (Mount.file), which Docker volumes cannot mount. A
// path of o.Paths that is no mount, or a file, is an error (ErrFileMount).
func PickMounts(mounts []*managerv1.Mount, o MountOptions) (picked []Volume, skipped []string, err error) {
	if o.Disabled {
		return nil, nil, nil
	}
	var have []string
	for _, m := range mounts {
		have = append(have, m.GetPath())
	}
	for _, p := range o.Paths {
		i := slices.IndexFunc(mounts, func(m *managerv1.Mount) bool { return m.GetPath() == p })
		switch {
		case i < 0:
			return nil, nil, fmt.Errorf("--mount-path %s: there is no mount there (there are: %s)", p, orNone(have))
		case mounts[i].GetFile():
			return nil, nil, fmt.Errorf("--mount-path %s: the mount is %w; name a directory mount (there are: %s), or copy the file out with `kubectl cp`",
				p, ErrFileMount, orNone(dirs(mounts)))
		}
	}
	for _, m := range mounts {
		if len(o.Paths) > 0 && !slices.Contains(o.Paths, m.GetPath()) {
			continue
		}
		if m.GetFile() {
			skipped = append(skipped, m.GetPath())
			continue
		}
		picked = append(picked, Volume{Path: m.GetPath(), ReadOnly: m.GetReadOnly() || o.ReadOnly})
	}
	return picked, skipped, nil
}

// SkippedNote is the line that says why the file mount at path p is not
// mounted, and what to do.
func SkippedNote(p string) string {
	return fmt.Sprintf("Not mounting %s: it is a single file in the pod, and Docker volumes mount directories only; "+
		"copy it out with `kubectl cp` and mount the copy yourself (docker run -v COPY:%s:ro)", p, p)
}

// dirs are the paths of the mounts that are directories.
func dirs(mounts []*managerv1.Mount) []string {
	var out []string
	for _, m := range mounts {
		if !m.GetFile() {
			out = append(out, m.GetPath())
		}
	}
	return out
}

// Volumes are the volumes CreateVolumes made.
func (ic *Intercept) Volumes() []Volume { return ic.volumes }

// RemoveVolumes removes the intercept's volumes (all of them, by label: also
// those of an earlier, crashed run of the same intercept id).
func (ic *Intercept) RemoveVolumes(ctx context.Context) error {
	if ic.docker == nil {
		return nil
	}
	return volumes.RemoveVolumes(ctx, ic.docker, map[string]string{volumes.LabelIntercept: ic.Info.GetId()})
}

// VolumeFlags are docker run's -v flags for vols.
func VolumeFlags(vols []Volume) []string {
	var flags []string
	for _, v := range vols {
		spec := v.Name + ":" + v.Path
		if v.ReadOnly {
			spec += ":ro"
		}
		flags = append(flags, "-v", spec)
	}
	return flags
}

// RemoveConnectionVolumes removes every tp volume of a connection: `tp quit`.
func RemoveConnectionVolumes(ctx context.Context, docker client.APIClient, connection string) error {
	return volumes.RemoveVolumes(ctx, docker, map[string]string{volumes.LabelConnection: connection})
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
