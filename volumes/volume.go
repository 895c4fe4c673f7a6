package volumes

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"path"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"

	"github.com/tp-run/tp/volumes/driveropts"
)

// Spec is a tp volume to create.
type Spec struct {
	// Driver is the plugin, as Ensure returned it.
	Driver string
	// Connection and Intercept label the volume (LabelConnection,
	// LabelIntercept), so that RemoveVolumes finds it.
	Connection, Intercept string
	// Options say what to mount and how to reach it.
	driveropts.Options
	// Labels are more labels for the volume.
	Labels map[string]string
}

// CreateVolume creates a Docker volume of the plugin that mounts s.Path of
// the intercepted pod, and returns its name. The name is new every time (a
// volume of a crashed run never answers for a new one): tp-<connection>-<last
// path element>-<random>.
func CreateVolume(ctx context.Context, docker client.APIClient, s Spec) (string, error) {
	if s.Driver == "" {
		return "", errors.New("volume spec: no driver (call volumes.Ensure first)")
	}
	if err := s.Options.Validate(); err != nil {
		return "", err
	}
	name, err := volumeName(s.Connection, s.Path)
	if err != nil {
		return "", err
	}
	labels := maps.Clone(s.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[LabelManaged] = "true"
	labels[LabelConnection] = s.Connection
	labels[LabelIntercept] = s.Intercept
	labels[LabelPath] = s.Path
	v, err := docker.VolumeCreate(ctx, volume.CreateOptions{Name: name, Driver: s.Driver, DriverOpts: s.Options.Map(), Labels: labels})
	if err != nil {
		return "", fmt.Errorf("create the volume for %s: %w", s.Path, err)
	}
	return v.Name, nil
}

func volumeName(connection, p string) (string, error) {
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return "", err
	}
	parts := []string{"tp"}
	for _, s := range []string{connection, path.Base(p)} {
		if s = sanitize(s); s != "" {
			parts = append(parts, s)
		}
	}
	return strings.Join(append(parts, hex.EncodeToString(rnd[:])), "-"), nil
}

// sanitize keeps what a volume name may hold, at most 32 characters.
func sanitize(s string) string {
	b := []byte(s)
	out := b[:0]
	for _, c := range b {
		if (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == '.' || c == '-' {
			out = append(out, c)
		}
	}
	r := strings.Trim(string(out), "._-")
	if len(r) > 32 {
		r = r[:32]
	}
	return r
}

// ListVolumes returns the tp volumes whose labels match every label in
// selector (e.g. {LabelConnection: "default"}); an empty selector lists all.
func ListVolumes(ctx context.Context, docker client.APIClient, selector map[string]string) ([]*volume.Volume, error) {
	args := filters.NewArgs(filters.Arg("label", LabelManaged+"=true"))
	for k, v := range selector {
		args.Add("label", k+"="+v)
	}
	list, err := docker.VolumeList(ctx, volume.ListOptions{Filters: args})
	if err != nil {
		return nil, fmt.Errorf("list tp volumes: %w", err)
	}
	return list.Volumes, nil
}

// RemoveVolumes removes, forcing, the tp volumes whose labels match
// selector: the cleanup of an intercept, a connection, or a crashed run.
// The containers that use a volume must be gone first (Docker refuses to
// remove a volume in use); their errors are joined, the other volumes go.
func RemoveVolumes(ctx context.Context, docker client.APIClient, selector map[string]string) error {
	vols, err := ListVolumes(ctx, docker, selector)
	if err != nil {
		return err
	}
	var errs []error
	for _, v := range vols {
		if err := docker.VolumeRemove(ctx, v.Name, true); err != nil && !cerrdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("remove volume %s: %w", v.Name, err))
		}
	}
	return errors.Join(errs...)
}
