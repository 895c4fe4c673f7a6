package cli

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/tp-run/tp/internal/version"
)

func newImageCommand(streams genericiooptions.IOStreams, docker *dockerFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Get tp's image (the traffic-manager's and agents') into a cluster",
	}
	cmd.AddCommand(newImageLoadCommand(streams, docker))
	return cmd
}

// localCluster names a local cluster whose nodes are fed images from the
// Docker engine by its own tool (kind, minikube, k3d).
type localCluster struct {
	kind, minikube, k3d string
}

// loadTool describes how one tool loads an image into its cluster.
type loadTool struct {
	tool, install string
	args          func(image, name string) []string
}

var loadTools = map[string]loadTool{
	"kind": {"kind", "https://kind.sigs.k8s.io/docs/user/quick-start/#installation",
		func(image, name string) []string { return []string{"load", "docker-image", image, "--name", name} }},
	// --daemon: from the Docker engine (tp's image is on no public registry).
	"minikube": {"minikube", "https://minikube.sigs.k8s.io/docs/start/",
		func(image, name string) []string {
			return []string{"image", "load", image, "--daemon", "--profile", name}
		}},
	"k3d": {"k3d", "https://k3d.io/#installation",
		func(image, name string) []string { return []string{"image", "import", image, "--cluster", name} }},
}

// command is the tool and arguments that load image into the cluster: one
// of --kind, --minikube, --k3d.
func (c localCluster) command(image string) (tool string, args []string, err error) {
	var set []string
	var which, name string
	for _, f := range []struct{ flag, value string }{{"kind", c.kind}, {"minikube", c.minikube}, {"k3d", c.k3d}} {
		if f.value != "" {
			set = append(set, "--"+f.flag)
			which, name = f.flag, f.value
		}
	}
	switch {
	case len(set) == 0:
		return "", nil, errors.New("name the cluster: --kind NAME (kind get clusters), --minikube PROFILE (minikube profile list) or --k3d NAME (k3d cluster list); for any other cluster push the image to a registry (make image-push REGISTRY=...) and use tp connect --image-registry")
	case len(set) > 1:
		return "", nil, fmt.Errorf("%s: give one of them", strings.Join(set, " and "))
	}
	if strings.TrimSpace(name) != name || strings.HasPrefix(name, "-") {
		return "", nil, fmt.Errorf("--%s %q is not a cluster name", which, name)
	}
	t := loadTools[which]
	return t.tool, t.args(image, name), nil
}

func newImageLoadCommand(streams genericiooptions.IOStreams, docker *dockerFlags) *cobra.Command {
	var c localCluster
	var image string
	cmd := &cobra.Command{
		Use:   "load (--kind NAME | --minikube PROFILE | --k3d NAME)",
		Short: "Load tp's image from the Docker engine into a kind, minikube or k3d cluster",
		Long: `Load tp's image (tp:<version>, which the traffic-manager and the agents run)
from the Docker engine into the nodes of a local cluster, with the cluster's own tool:
kind load docker-image, minikube image load --daemon or k3d image import. The tool
must be installed; it talks to the same Docker engine as tp (DOCKER_HOST,
--docker-context). Then tp connect (or tp helm install) runs the manager from it.
For a cluster that pulls from a registry, push the image there instead
(make image-push REGISTRY=...) and use tp connect --image-registry REGISTRY.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tool, args, err := c.command(image)
			if err != nil {
				return err
			}
			if _, err := lookTool(tool, args); err != nil {
				return err
			}
			cli, err := docker.Client(cmd.Context())
			if err != nil {
				return err
			}
			if _, err := cli.ImageInspect(cmd.Context(), image); err != nil {
				return fmt.Errorf("the Docker engine has no image %s (%v): build it (make image) or pull it first", image, err)
			}
			env, err := docker.Environ()
			if err != nil {
				return err
			}
			return runLoadTool(cmd.Context(), streams, tool, args, env)
		},
	}
	cmd.Flags().StringVar(&c.kind, "kind", "", "name of the kind cluster (kind get clusters)")
	cmd.Flags().StringVar(&c.minikube, "minikube", "", "minikube profile (minikube profile list)")
	cmd.Flags().StringVar(&c.k3d, "k3d", "", "name of the k3d cluster (k3d cluster list)")
	cmd.Flags().StringVar(&image, "image", version.Image(), "image to load")
	return cmd
}

// runLoadTool runs tool with args and env, its output on the streams; a
// tool that is not installed is named with where to get it.
func runLoadTool(ctx context.Context, streams genericiooptions.IOStreams, tool string, args, env []string) error {
	path, err := lookTool(tool, args)
	if err != nil {
		return err
	}
	fmt.Fprintf(streams.ErrOut, "Running %s %s\n", tool, strings.Join(args, " "))
	run := exec.CommandContext(ctx, path, args...)
	run.Env = env
	run.Stdout, run.Stderr = streams.Out, streams.ErrOut
	if err := run.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", tool, strings.Join(args, " "), err)
	}
	return nil
}

// lookTool finds tool in PATH, or says where to get it.
func lookTool(tool string, args []string) (string, error) {
	path, err := exec.LookPath(tool)
	if err != nil {
		return "", fmt.Errorf("%s is not installed (not found in PATH): install it (%s), or load the image yourself: %s %s",
			tool, toolInstall(tool), tool, strings.Join(args, " "))
	}
	return path, nil
}

func toolInstall(tool string) string {
	for _, t := range loadTools {
		if t.tool == tool {
			return t.install
		}
	}
	return tool
}
