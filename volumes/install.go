package volumes

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"

	"github.com/tp-run/tp/volumes/driveropts"
)

// PluginRepository is the name of tp's managed volume plugin, tagged with
// tp's version: tp-volumes:<version>.
const PluginRepository = "tp-volumes"

// The plugin's entry point and socket, in its rootfs.
var pluginEntrypoint = []string{"/tp", "volumes", "plugin"}

// pluginBinary is the volume plugin's binary in tp's image (cmd/tp-volumes),
// installed in the plugin's rootfs as /tp.
const pluginBinary = "/tp-volumes"

const (
	pluginSocket = "tp.sock"
	// envImageID names, in the plugin's environment, the ID of the image
	// its binary came from, so that a rebuilt image of the same tag (tp:dev)
	// replaces the plugin.
	envImageID = "TP_IMAGE_ID"
	// rootfsContainer labels (LabelManaged) the container that the
	// plugin's binary is copied out of.
	rootfsContainer = "plugin-rootfs"
)

// PluginName is the plugin reference (and volume driver name) for a tp
// version: tp-volumes:<version made safe for a tag>.
func PluginName(version string) string { return PluginRepository + ":" + tagOf(version) }

// tagOf is version made safe for an image or plugin tag.
func tagOf(version string) string {
	b := []byte(version)
	for i, c := range b {
		ok := c == '_' || c == '.' || c == '-' ||
			(c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
		if !ok {
			b[i] = '-'
		}
	}
	if len(b) == 0 {
		return "dev"
	}
	if len(b) > 128 {
		b = b[:128]
	}
	return string(b)
}

// Ensure makes the plugin of this tp version installed and enabled and
// returns its name, the driver of tp's volumes. It is idempotent: an enabled
// plugin is left alone, a disabled one enabled, a missing one (never
// installed, or removed by hand) installed from the image tp:<version>,
// whose /tp becomes the plugin's rootfs (copied out through the Docker API:
// no registry, nothing on the host). Plugins of other tp versions that no
// volume uses are removed.
func Ensure(ctx context.Context, docker client.APIClient, version string) (string, error) {
	name := PluginName(version)
	image := "tp:" + tagOf(version)
	plugins, err := tpPlugins(ctx, docker)
	if err != nil {
		return "", err
	}
	var mine *types.Plugin
	for _, p := range plugins {
		if p.Name == name {
			mine = p
		}
	}
	img, err := docker.ImageInspect(ctx, image)
	switch {
	case err != nil && mine == nil:
		return "", fmt.Errorf("image %s for the volume plugin: %w (tp connect loads it; in a checkout, run `make image`)", image, err)
	case err == nil && mine != nil && pluginImageID(mine) != img.ID:
		// The same tag from a rebuilt image (a dev build): replace it
		// unless volumes still use it.
		if used, err := inUse(ctx, docker, name); err == nil && !used {
			if err := docker.PluginRemove(ctx, name, types.PluginRemoveOptions{Force: true}); err != nil && !cerrdefs.IsNotFound(err) {
				return "", fmt.Errorf("remove the outdated volume plugin %s: %w", name, err)
			}
			mine = nil
		}
	}
	if mine == nil {
		if err := install(ctx, docker, name, image, img.ID); err != nil {
			return "", err
		}
	} else if !mine.Enabled {
		if err := enable(ctx, docker, name); err != nil {
			return "", err
		}
	}
	for _, p := range plugins {
		if p.Name != name {
			removeUnused(ctx, docker, p.Name)
		}
	}
	return name, nil
}

// tpPlugins lists the installed tp-volumes plugins, of any version.
func tpPlugins(ctx context.Context, docker client.APIClient) ([]*types.Plugin, error) {
	all, err := docker.PluginList(ctx, filters.NewArgs())
	if err != nil {
		return nil, fmt.Errorf("list Docker plugins: %w", err)
	}
	var out []*types.Plugin
	for _, p := range all {
		if strings.HasPrefix(p.Name, PluginRepository+":") {
			out = append(out, p)
		}
	}
	return out, nil
}

func pluginImageID(p *types.Plugin) string {
	for _, e := range p.Settings.Env {
		if v, ok := strings.CutPrefix(e, envImageID+"="); ok {
			return v
		}
	}
	return ""
}

// inUse tells whether any volume has the plugin as its driver.
func inUse(ctx context.Context, docker client.APIClient, name string) (bool, error) {
	list, err := docker.VolumeList(ctx, volume.ListOptions{Filters: filters.NewArgs(filters.Arg("driver", name))})
	if err != nil {
		return false, err
	}
	return len(list.Volumes) > 0, nil
}

// removeUnused removes another version's plugin when no volume uses it; on
// any doubt it stays, to be removed by a later Ensure.
func removeUnused(ctx context.Context, docker client.APIClient, name string) {
	if used, err := inUse(ctx, docker, name); err != nil || used {
		return
	}
	_ = docker.PluginDisable(ctx, name, types.PluginDisableOptions{})
	_ = docker.PluginRemove(ctx, name, types.PluginRemoveOptions{})
}

func enable(ctx context.Context, docker client.APIClient, name string) error {
	err := docker.PluginEnable(ctx, name, types.PluginEnableOptions{Timeout: 30})
	if err == nil {
		return nil
	}
	// Another tp may have enabled it meanwhile.
	if p, _, ierr := docker.PluginInspectWithRaw(ctx, name); ierr == nil && p.Enabled {
		return nil
	}
	return fmt.Errorf("enable the volume plugin %s: %w (its log is in the Docker engine's log)", name, err)
}

// install creates the plugin from the image's binary and enables it.
func install(ctx context.Context, docker client.APIClient, name, image, imageID string) error {
	// The never-started containers of an install that crashed go first.
	if left, err := docker.ContainerList(ctx, container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", LabelManaged+"="+rootfsContainer))}); err == nil {
		for _, c := range left {
			_ = docker.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
		}
	}
	created, err := docker.ContainerCreate(ctx, &container.Config{Image: image, Entrypoint: []string{"/tp"}, Cmd: []string{"version"},
		Labels: map[string]string{LabelManaged: rootfsContainer}}, &container.HostConfig{}, nil, nil, "")
	if err != nil {
		return fmt.Errorf("create a container of %s to copy the plugin's binary: %w", image, err)
	}
	defer func() {
		rmCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_ = docker.ContainerRemove(rmCtx, created.ID, container.RemoveOptions{Force: true})
	}()
	// The plugin's rootfs holds the image's volume plugin binary as /tp (an
	// image from before the roles' binaries has only /tp, which runs them all).
	bin := pluginBinary
	rc, _, err := docker.CopyFromContainer(ctx, created.ID, bin)
	if err != nil && cerrdefs.IsNotFound(err) {
		bin = "/tp"
		rc, _, err = docker.CopyFromContainer(ctx, created.ID, bin)
	}
	if err != nil {
		return fmt.Errorf("copy %s out of %s: %w", bin, image, err)
	}
	defer rc.Close()
	src := tar.NewReader(rc)
	hdr, err := src.Next()
	if err != nil {
		return fmt.Errorf("read %s of %s: %w", bin, image, err)
	}
	config, err := pluginConfig(imageID)
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := writePluginTar(pw, config, hdr.Size, src)
		pw.CloseWithError(err)
		done <- err
	}()
	err = docker.PluginCreate(ctx, pr, types.PluginCreateOptions{RepoName: name})
	pr.CloseWithError(errors.New("plugin create returned"))
	werr := <-done
	if err != nil {
		// Another tp may have created it meanwhile.
		if p, _, ierr := docker.PluginInspectWithRaw(ctx, name); ierr != nil || p == nil {
			return fmt.Errorf("create the volume plugin %s: %w", name, err)
		}
	} else if werr != nil {
		return fmt.Errorf("build the volume plugin %s: %w", name, werr)
	}
	return enable(ctx, docker, name)
}

// PluginConfigJSON is the plugin's config.json: a volume driver on tp.sock,
// in the host's network namespace (it dials the daemon container's IP), with
// CAP_SYS_ADMIN and /dev/fuse to mount FUSE under its propagated mount.
type pluginConfigJSON struct {
	Description     string       `json:"description"`
	Documentation   string       `json:"documentation"`
	Entrypoint      []string     `json:"entrypoint"`
	WorkDir         string       `json:"workdir"`
	Env             []pluginEnv  `json:"env"`
	Interface       pluginIface  `json:"interface"`
	Network         pluginNet    `json:"network"`
	PropagatedMount string       `json:"propagatedMount"`
	Linux           pluginLinux  `json:"linux"`
	Mounts          []pluginNone `json:"mounts"`
}

type pluginEnv struct {
	Name        string   `json:"name"`
	Description string   `json:"description"`
	Settable    []string `json:"settable"`
	Value       string   `json:"value"`
}

type pluginIface struct {
	Types  []string `json:"types"`
	Socket string   `json:"socket"`
}

type pluginNet struct {
	Type string `json:"type"`
}

type pluginLinux struct {
	Capabilities []string       `json:"capabilities"`
	Devices      []pluginDevice `json:"devices"`
}

type pluginDevice struct {
	Path string `json:"path"`
}

type pluginNone struct{}

func pluginConfig(imageID string) ([]byte, error) {
	return json.MarshalIndent(pluginConfigJSON{
		Description:   "tp volumes: an intercepted pod's files in local containers, over SFTP through tp's daemon",
		Documentation: "https://github.com/tp-run/tp/blob/main/docs/volumes.md",
		Entrypoint:    pluginEntrypoint,
		WorkDir:       "/",
		Env: []pluginEnv{
			{Name: "TP_LOG_LEVEL", Description: "debug, info, warn or error", Settable: []string{"value"}, Value: "info"},
			{Name: envImageID, Description: "the image the plugin's binary came from", Value: imageID},
		},
		Interface:       pluginIface{Types: []string{"docker.volumedriver/1.0"}, Socket: pluginSocket},
		Network:         pluginNet{Type: "host"},
		PropagatedMount: driveropts.PropagatedMount,
		Linux: pluginLinux{
			Capabilities: []string{"CAP_SYS_ADMIN"},
			Devices:      []pluginDevice{{Path: "/dev/fuse"}},
		},
		Mounts: []pluginNone{},
	}, "", "  ")
}

// writePluginTar writes what PluginCreate takes: config.json and rootfs/,
// which holds the binary (size bytes from bin) and the directories it uses.
func writePluginTar(w io.Writer, config []byte, size int64, bin io.Reader) error {
	tw := tar.NewWriter(w)
	now := time.Now()
	if err := tw.WriteHeader(&tar.Header{Name: "config.json", Mode: 0o644, Size: int64(len(config)), ModTime: now}); err != nil {
		return err
	}
	if _, err := io.Copy(tw, bytes.NewReader(config)); err != nil {
		return err
	}
	for _, d := range []string{"rootfs/", "rootfs/dev/", "rootfs/proc/", "rootfs/sys/", "rootfs/tmp/", "rootfs/etc/",
		"rootfs/run/", "rootfs/run/docker/", "rootfs/run/docker/plugins/", "rootfs/mnt/", "rootfs" + driveropts.PropagatedMount + "/",
		"rootfs/var/", "rootfs/var/lib/", "rootfs/var/lib/tp-volumes/"} {
		if err := tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: now}); err != nil {
			return err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Name: "rootfs/tp", Mode: 0o755, Size: size, ModTime: now}); err != nil {
		return err
	}
	if _, err := io.CopyN(tw, bin, size); err != nil {
		return fmt.Errorf("copy the binary: %w", err)
	}
	return tw.Close()
}
