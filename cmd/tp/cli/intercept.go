package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/tp-run/tp/daemoncontainer"
	"github.com/tp-run/tp/intercept"
	"github.com/tp-run/tp/internal/version"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

type interceptFlags struct {
	connection, namespace, service, container string
	port                                      string
	envFile, envSyntax                        string
	headers                                   []string
	pathPrefix                                string
	dockerRun                                 bool
	dockerBuild                               string
	mount, mountReadOnly, mountVolumes        bool
	mountPaths                                []string
	dockerBuildOpts                           []string
	timeout                                   time.Duration
	output                                    string
}

// parseHeaders parses KEY=VALUE entries of --http-header.
func parseHeaders(entries []string) (map[string]string, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	h := map[string]string{}
	for _, e := range entries {
		k, v, ok := strings.Cut(e, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, fmt.Errorf("--http-header %q: want KEY=VALUE", e)
		}
		h[strings.TrimSpace(k)] = v
	}
	return h, nil
}

func newInterceptCommand(streams genericiooptions.IOStreams, docker *dockerFlags) *cobra.Command {
	var f interceptFlags
	cmd := &cobra.Command{
		Use:   "intercept WORKLOAD --port LOCAL[:SVCPORT] [--docker-run -- [docker run flags] IMAGE [ARGS...] | --docker-build DIR -- [docker run flags] IMAGE [ARGS...]]",
		Short: "Send a workload's traffic (all of it, or matching requests) to a local container",
		Long: `Intercept a workload (Deployment, StatefulSet or ReplicaSet): the traffic-agent is
injected into its pods when missing, and the service port's traffic goes to LOCAL in the
daemon container's network namespace, i.e. to any container joined to it.

Without --http-header the intercept is global: all traffic goes to you. With
--http-header KEY=VALUE (repeatable) and/or --http-path-prefix it is personal: only
matching HTTP requests (HTTP/1.1 per request, HTTP/2 and gRPC per stream) reach you,
the others reach the app.

With --docker-run, tp runs "docker run --rm --network container:tp [flags] IMAGE [ARGS]"
with the pod's environment (plus TP_* variables naming the intercept), ends the
intercept when the container exits and exits with its code. Ctrl-C ends both.`,
		Example: `  tp intercept echo --port 8080:80 --docker-run -- -e ECHO_COPY=local tp-echo:dev
  tp intercept echo --port 8080 --http-header x-dev=alice --env-file echo.env
  tp intercept echo --port 8080 --docker-build ./echo --docker-build-opt target=dev -- -it IMAGE`,
		Args: cobra.MinimumNArgs(1),
	}
	cmd.Flags().StringVar(&f.connection, "name", daemoncontainer.DefaultName, "connection name (see tp connect --name)")
	cmd.Flags().StringVarP(&f.namespace, "namespace", "n", "", "namespace of the workload (default: the connection's)")
	cmd.Flags().StringVar(&f.service, "service", "", "service to intercept, when several select the workload")
	cmd.Flags().StringVar(&f.container, "container", "", "container of the workload, when ambiguous")
	cmd.Flags().StringVar(&f.port, "port", "", "LOCAL[:SVCPORT]: local port that receives the traffic, and the service port (name or number) when the service has several")
	cmd.Flags().StringVar(&f.envFile, "env-file", "", "write the pod's environment to this file")
	cmd.Flags().StringVar(&f.envSyntax, "env-syntax", "docker", "syntax of --env-file: "+strings.Join(intercept.EnvSyntaxes, ", "))
	cmd.Flags().StringArrayVar(&f.headers, "http-header", nil, "personal intercept: only requests with this header KEY=VALUE (repeatable)")
	cmd.Flags().StringVar(&f.pathPrefix, "http-path-prefix", "", "personal intercept: only requests whose path starts with this")
	cmd.Flags().BoolVar(&f.dockerRun, "docker-run", false, "run a container with the pod's environment in the connection's network; args after -- are docker run's")
	cmd.Flags().StringVar(&f.dockerBuild, "docker-build", "", "build DIR with docker build and run the image as --docker-run does; write IMAGE where it goes in the args after -- (implies --docker-run)")
	cmd.Flags().StringArrayVar(&f.dockerBuildOpts, "docker-build-opt", nil, "KEY=VALUE passed to docker build as --KEY VALUE, e.g. target=dev, build-arg=A=1 (repeatable)")
	cmd.Flags().BoolVar(&f.mount, "mount", true, "with --docker-run: mount each of the app container's volumes at its path (false: none)")
	cmd.Flags().BoolVar(&f.mountReadOnly, "mount-readonly", false, "mount the volumes read-only")
	cmd.Flags().StringArrayVar(&f.mountPaths, "mount-path", nil, "mount only the app container's volume at this path (repeatable)")
	cmd.Flags().BoolVar(&f.mountVolumes, "mount-volumes", false, "without --docker-run: create the Docker volumes for your own docker run -v or compose file, print their names and paths; tp leave removes them")
	cmd.Flags().DurationVar(&f.timeout, "timeout", 2*time.Minute, "how long to wait for the agent (first injection rolls the workload)")
	outputFlag(cmd, &f.output)
	_ = cmd.MarkFlagRequired("port")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		dash := cmd.ArgsLenAtDash()
		workload, dockerArgs := args[0], []string(nil)
		if dash >= 0 {
			if dash != 1 {
				return errors.New("give exactly one WORKLOAD before --")
			}
			dockerArgs = args[1:]
		} else if len(args) > 1 {
			return fmt.Errorf("unexpected arguments %q: put docker run's arguments after --docker-run --", args[1:])
		}
		if f.dockerBuild != "" {
			f.dockerRun = true
		} else if f.dockerRun != (len(dockerArgs) > 0) {
			return errors.New("--docker-run needs an image after --, and arguments after -- need --docker-run (or --docker-build)")
		}
		if f.mountVolumes && f.dockerRun {
			return errors.New("--mount-volumes is for your own containers; with --docker-run tp mounts the volumes itself (--mount, --mount-path)")
		}
		if len(f.dockerBuildOpts) > 0 && f.dockerBuild == "" {
			return errors.New("--docker-build-opt needs --docker-build DIR")
		}
		return runIntercept(cmd.Context(), streams, docker, workload, f, dockerArgs)
	}
	return cmd
}

func runIntercept(ctx context.Context, streams genericiooptions.IOStreams, docker *dockerFlags, workload string, f interceptFlags, dockerArgs []string) error {
	local, svcPort, err := intercept.ParsePort(f.port)
	if err != nil {
		return err
	}
	headers, err := parseHeaders(f.headers)
	if err != nil {
		return err
	}
	if f.pathPrefix != "" && !strings.HasPrefix(f.pathPrefix, "/") {
		return fmt.Errorf("--http-path-prefix %q must start with /", f.pathPrefix)
	}
	if f.envFile != "" && !slices.Contains(intercept.EnvSyntaxes, f.envSyntax) {
		return fmt.Errorf("unknown --env-syntax %q: use one of %s", f.envSyntax, strings.Join(intercept.EnvSyntaxes, ", "))
	}
	environ, err := docker.Environ() // the docker CLI's: the daemon container's engine
	if err != nil {
		return err
	}
	d, err := docker.Dial(ctx, f.connection)
	if err != nil {
		return err
	}
	defer d.Close()
	if f.dockerBuild != "" { // before the intercept: a failed build leaves nothing behind
		if _, err := intercept.WithImage(dockerArgs, "image"); err != nil {
			return err
		}
		fmt.Fprintf(streams.ErrOut, "Building %s\n", f.dockerBuild)
		image, err := intercept.DockerBuild{Dir: f.dockerBuild, Opts: f.dockerBuildOpts, Environ: environ}.Build(ctx)
		if err != nil {
			return err
		}
		if dockerArgs, err = intercept.WithImage(dockerArgs, image); err != nil {
			return err
		}
	}

	ic, err := intercept.Create(ctx, d, intercept.Options{
		Connection: d.Connection.Name, Workload: workload, Namespace: f.namespace, Service: f.service, Container: f.container,
		ServicePort: svcPort, LocalPort: local, Headers: headers, PathPrefix: f.pathPrefix, Timeout: f.timeout,
	})
	if err != nil {
		return err
	}
	info, ns := ic.Info, ic.Namespace()
	var vols []intercept.Volume
	// The volumes of a --docker-run live as long as this process (unless
	// its container is detached), those of --mount-volumes as the intercept.
	mountOpts := intercept.MountOptions{ReadOnly: f.mountReadOnly, Paths: f.mountPaths,
		Owned: f.dockerRun && !intercept.HasFlag(dockerArgs, "-d") && !intercept.HasFlag(dockerArgs, "--detach"), Notes: streams.ErrOut}
	if (f.dockerRun && f.mount) || f.mountVolumes {
		vols, err = ic.CreateVolumes(ctx, d.Docker(), d, version.Version, mountOpts)
		if err != nil {
			if lerr := ic.Leave(ctx); lerr != nil {
				fmt.Fprintf(streams.ErrOut, "tp: %v\n", lerr)
			}
			return err
		}
	}
	leave := func() {
		if err := ic.Leave(ctx); err != nil {
			fmt.Fprintf(streams.ErrOut, "tp: %v\n", err)
		}
	}
	if f.envFile != "" {
		if err := intercept.WriteEnvFile(f.envFile, f.envSyntax, ic.Env()); err != nil {
			leave()
			return err
		}
	}
	took := ic.Took.Round(time.Millisecond)
	if !f.dockerRun {
		view := interceptedJSON{interceptJSON: interceptView(info), RoutedEndpoints: info.GetRoutedEndpoints(), ReadyEndpoints: info.GetReadyEndpoints(), Volumes: vols, PodName: info.GetPodName()}
		return printStructured(streams.Out, f.output, view, func(w io.Writer) error {
			fmt.Fprintf(w, "Intercepted %s/%s in %s: %s\n", ns, workload, took, describeIntercept(info))
			printRouting(w, streams.ErrOut, info)
			fmt.Fprintf(w, "Traffic goes to port %d of the containers joined to %s. End it with: tp leave %s -n %s\n",
				local, d.Connection.ContainerName, ic.Name(), ns)
			if len(vols) > 0 {
				fmt.Fprintf(w, "Volumes of the pod (docker run %s ...):\n", strings.Join(intercept.VolumeFlags(vols), " "))
				for _, v := range vols {
					fmt.Fprintf(w, "  %s -> %s%s\n", v.Name, v.Path, map[bool]string{true: " (read-only)"}[v.ReadOnly])
				}
			}
			return nil
		})
	}
	fmt.Fprintf(streams.ErrOut, "Intercepted %s/%s in %s: %s\n", ns, workload, took, describeIntercept(info))
	printRouting(streams.ErrOut, streams.ErrOut, info)
	code, detached, err := ic.RunContainer(ctx, intercept.DockerRun{
		NetworkContainer: d.Connection.ContainerName, Args: dockerArgs, ExtraFlags: intercept.VolumeFlags(vols), Environ: environ,
		Stdin: streams.In, Stdout: streams.Out, Stderr: streams.ErrOut, Progress: streams.ErrOut,
		Engine: d.Docker(),
		Remount: func(ctx context.Context) ([]string, error) {
			if len(vols) == 0 {
				return nil, nil
			}
			if err := ic.RemoveVolumes(ctx); err != nil {
				return nil, err
			}
			o := mountOpts
			o.Notes = nil // said once already
			vols, err := ic.CreateVolumes(ctx, d.Docker(), d, version.Version, o)
			return intercept.VolumeFlags(vols), err
		},
	})
	switch {
	case detached && err == nil:
		fmt.Fprintf(streams.ErrOut, "Container detached; the intercept stays until: tp leave %s -n %s\n", ic.Name(), ns)
		return nil
	case errors.Is(err, intercept.ErrEnded), errors.Is(err, intercept.ErrDaemonGone):
		if rerr := ic.RemoveVolumes(context.WithoutCancel(ctx)); rerr != nil {
			fmt.Fprintf(streams.ErrOut, "tp: %v\n", rerr)
		}
		// Nothing to leave: the intercept is gone already, or its daemon
		// is (the traffic-manager ends its session's intercepts).
		return err
	}
	leave()
	if err != nil {
		return err
	}
	if code != 0 {
		return &ExitError{Code: code}
	}
	return nil
}

// interceptedJSON is `tp intercept -o json`: the intercept and how many
// ready endpoints of its service route to it.
type interceptedJSON struct {
	interceptJSON
	RoutedEndpoints int32              `json:"routedEndpoints"`
	ReadyEndpoints  int32              `json:"readyEndpoints"`
	Volumes         []intercept.Volume `json:"volumes,omitempty"`
	// PodName is the pod whose environment and volumes the intercept has.
	PodName string `json:"podName,omitempty"`
}

// printRouting says how many ready endpoints of the service route to the
// intercept: to out when all do, as a warning to warn when not.
func printRouting(out, warn io.Writer, info *managerv1.InterceptInfo) {
	routed, ready, svc := info.GetRoutedEndpoints(), info.GetReadyEndpoints(), info.GetServiceName()
	switch {
	case ready == 0:
		fmt.Fprintf(warn, "tp: warning: service %s has no ready endpoints: nothing in the cluster reaches you (or the app) until its pods are ready\n", svc)
	case routed < ready:
		fmt.Fprintf(warn, "tp: warning: only %d of %d ready endpoints of service %s route to you yet (a rollout still in progress, or pods "+
			"of another workload behind the service); requests to the others reach the cluster's copy\n", routed, ready, svc)
	default:
		fmt.Fprintf(out, "Intercepted: %d of %d ready endpoints of service %s route to you\n", routed, ready, svc)
	}
}

func describeIntercept(info *managerv1.InterceptInfo) string {
	kind := "global (all traffic)"
	if len(info.GetSpec().GetHeaders()) > 0 || info.GetSpec().GetPathPrefix() != "" {
		var hs []string
		for k, v := range info.GetSpec().GetHeaders() {
			hs = append(hs, k+"="+v)
		}
		sort.Strings(hs)
		kind = "personal (requests with " + strings.Join(hs, ", ")
		if p := info.GetSpec().GetPathPrefix(); p != "" {
			kind += " under " + p
		}
		kind += ")"
	}
	return fmt.Sprintf("service %s port %s (%d) -> container port %d, %s", info.GetServiceName(),
		cmp.Or(info.GetServicePortName(), strconv.Itoa(int(info.GetServicePort()))), info.GetServicePort(), info.GetContainerPort(), kind)
}
