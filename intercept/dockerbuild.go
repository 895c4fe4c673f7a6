package intercept

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// ImagePlaceholder stands for the image `tp intercept --docker-build`
// builds, in docker run's arguments: "-it IMAGE sh".
const ImagePlaceholder = "IMAGE"

// DockerBuild builds an image with the docker CLI: `docker build -q` of Dir
// with Opts, each "KEY=VALUE" passed as --KEY VALUE (e.g. "build-arg=A=1",
// "target=dev", "file=Dockerfile.dev").
type DockerBuild struct {
	Dir  string
	Opts []string
	// Environ is the docker CLI's environment (default os.Environ()); see
	// DockerRun.Environ.
	Environ []string
}

// Build runs the build and returns the image's ID; the build's output goes
// to the error when it fails.
func (b DockerBuild) Build(ctx context.Context) (string, error) {
	args := []string{"build", "-q"}
	for _, o := range b.Opts {
		k, v, ok := strings.Cut(o, "=")
		if !ok || k == "" || strings.HasPrefix(k, "-") {
			return "", fmt.Errorf("--docker-build-opt %q: want KEY=VALUE, e.g. target=dev or build-arg=VERSION=1 (passed as docker build --KEY VALUE)", o)
		}
		args = append(args, "--"+k, v)
	}
	args = append(args, b.Dir)
	var out, errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Env = b.Environ // nil: this process's
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("docker build %s: %w\n%s", b.Dir, err, strings.TrimSpace(errOut.String()))
	}
	id := strings.TrimSpace(out.String())
	if id == "" {
		return "", fmt.Errorf("docker build %s printed no image ID", b.Dir)
	}
	return id, nil
}

// WithImage puts image where docker run's arguments have ImagePlaceholder,
// or after the flags when they have no image at all. Arguments that name
// another image are an error: with --docker-build, the built image runs.
func WithImage(args []string, image string) ([]string, error) {
	i := imageIndex(args)
	switch {
	case i == len(args):
		return append(append([]string{}, args...), image), nil
	case args[i] == ImagePlaceholder:
		out := append([]string{}, args...)
		out[i] = image
		return out, nil
	default:
		return nil, fmt.Errorf("with --docker-build, write %s where the image goes in docker run's arguments (got %q): tp puts the built image there", ImagePlaceholder, args[i])
	}
}

// imageIndex is the index of the image among docker run's arguments (the
// first that is not a flag or a flag's value); len(args) when there is none.
func imageIndex(args []string) int {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") || a == "-" {
			return i
		}
		name, _, hasValue := strings.Cut(a, "=")
		if !strings.HasPrefix(a, "--") && len(a) > 2 {
			continue // "-dit" or "-eKEY=VALUE": no separate value
		}
		if !hasValue && !dockerBoolFlags[name] {
			i++ // the flag's value
		}
	}
	return len(args)
}
