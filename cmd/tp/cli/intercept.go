package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/tp-run/tp/daemoncontainer"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

type interceptFlags struct {
	connection, namespace, service, container string
	port                                      string
	envFile, envSyntax                        string
	headers                                   []string
	pathPrefix                                string
	dockerRun                                 bool
	timeout                                   time.Duration
	output                                    string
}

// parsePort parses LOCAL[:SVCPORT].
func parsePort(s string) (local int32, svcPort string, err error) {
	l, svc, _ := strings.Cut(s, ":")
	n, err := strconv.ParseUint(l, 10, 16)
	if err != nil || n == 0 {
		return 0, "", fmt.Errorf("--port %q: want LOCAL[:SVCPORT], LOCAL a port number (SVCPORT a service port name or number)", s)
	}
	return int32(n), svc, nil
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

func newInterceptCommand(streams genericiooptions.IOStreams) *cobra.Command {
	var f interceptFlags
	cmd := &cobra.Command{
		Use:   "intercept WORKLOAD --port LOCAL[:SVCPORT] [--docker-run -- [docker run flags] IMAGE [ARGS...]]",
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
  tp intercept echo --port 8080 --http-header x-dev=alice --env-file echo.env`,
		Args: cobra.MinimumNArgs(1),
	}
	cmd.Flags().StringVar(&f.connection, "name", daemoncontainer.DefaultName, "connection name (see tp connect --name)")
	cmd.Flags().StringVarP(&f.namespace, "namespace", "n", "", "namespace of the workload (default: the connection's)")
	cmd.Flags().StringVar(&f.service, "service", "", "service to intercept, when several select the workload")
	cmd.Flags().StringVar(&f.container, "container", "", "container of the workload, when ambiguous")
	cmd.Flags().StringVar(&f.port, "port", "", "LOCAL[:SVCPORT]: local port that receives the traffic, and the service port (name or number) when the service has several")
	cmd.Flags().StringVar(&f.envFile, "env-file", "", "write the pod's environment to this file")
	cmd.Flags().StringVar(&f.envSyntax, "env-syntax", "docker", "syntax of --env-file: "+strings.Join(envSyntaxes, ", "))
	cmd.Flags().StringArrayVar(&f.headers, "http-header", nil, "personal intercept: only requests with this header KEY=VALUE (repeatable)")
	cmd.Flags().StringVar(&f.pathPrefix, "http-path-prefix", "", "personal intercept: only requests whose path starts with this")
	cmd.Flags().BoolVar(&f.dockerRun, "docker-run", false, "run a container with the pod's environment in the connection's network; args after -- are docker run's")
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
		if f.dockerRun != (len(dockerArgs) > 0) {
			return errors.New("--docker-run needs an image after --, and arguments after -- need --docker-run")
		}
		return runIntercept(cmd.Context(), streams, workload, f, dockerArgs)
	}
	return cmd
}

func runIntercept(ctx context.Context, streams genericiooptions.IOStreams, workload string, f interceptFlags, dockerArgs []string) error {
	local, svcPort, err := parsePort(f.port)
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
	if f.envFile != "" && !slices.Contains(envSyntaxes, f.envSyntax) {
		return fmt.Errorf("unknown --env-syntax %q: use one of %s", f.envSyntax, strings.Join(envSyntaxes, ", "))
	}
	d, err := daemoncontainer.DialConnection(ctx, f.connection)
	if err != nil {
		return err
	}
	defer d.Close()

	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, f.timeout)
	info, err := d.CreateIntercept(cctx, &managerv1.InterceptSpec{
		Name: workload, Workload: workload, Namespace: f.namespace, Service: f.service, Container: f.container,
		ServicePort: svcPort, LocalPort: local, Headers: headers, PathPrefix: f.pathPrefix,
	})
	cancel()
	if err != nil {
		return fmt.Errorf("intercept %s: %w", workload, grpcMessage(err))
	}
	ns := info.GetSpec().GetNamespace()
	leave := func() {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
		defer cancel()
		if _, err := d.RemoveIntercept(lctx, &managerv1.RemoveInterceptRequest{Name: info.GetSpec().GetName(), Namespace: ns}); err != nil {
			fmt.Fprintf(streams.ErrOut, "tp: leave %s: %v\n", info.GetSpec().GetName(), grpcMessage(err))
		}
	}
	env := interceptEnv(info, d.Connection)
	if f.envFile != "" {
		if err := writeEnvFile(f.envFile, f.envSyntax, env); err != nil {
			leave()
			return err
		}
	}
	if !f.dockerRun {
		return printStructured(streams.Out, f.output, interceptView(info), func(w io.Writer) error {
			fmt.Fprintf(w, "Intercepted %s/%s in %s: %s\n", ns, workload, time.Since(start).Round(time.Millisecond), describeIntercept(info))
			fmt.Fprintf(w, "Traffic goes to port %d of the containers joined to %s. End it with: tp leave %s -n %s\n",
				local, d.Connection.ContainerName, info.GetSpec().GetName(), ns)
			return nil
		})
	}
	fmt.Fprintf(streams.ErrOut, "Intercepted %s/%s in %s: %s\n", ns, workload, time.Since(start).Round(time.Millisecond), describeIntercept(info))
	// While the container runs, watch that the intercept still exists: `tp
	// leave` in another shell, the session TTL or an administrator may end
	// it, and then the container must not go on as if it were intercepted.
	wctx, stopWatch := context.WithCancel(ctx)
	ended := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		if errors.Is(watchIntercept(wctx, d, info, interceptPollInterval, streams.ErrOut), errInterceptEnded) {
			close(ended)
		}
	}()
	code, detached, err := dockerRun(ctx, ended, streams, d.Connection.ContainerName, info, env, dockerArgs)
	stopWatch()
	<-watched
	if detached && err == nil {
		fmt.Fprintf(streams.ErrOut, "Container detached; the intercept stays until: tp leave %s -n %s\n", info.GetSpec().GetName(), ns)
		return nil
	}
	select {
	case <-ended:
		// Nothing to leave: the intercept is gone already.
		return &interceptEndedError{name: info.GetSpec().GetName()}
	default:
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

// interceptPollInterval is how often a running `tp intercept --docker-run`
// checks that its intercept still exists.
const interceptPollInterval = 2 * time.Second

// errInterceptEnded says that the intercept was removed by someone else
// than this command: `tp leave` in another shell, the session TTL, an
// administrator, or a restarted traffic-manager.
var errInterceptEnded = errors.New("intercept ended elsewhere")

// interceptEndedError is what a running `tp intercept --docker-run` fails
// with when its intercept was ended elsewhere; it is errInterceptEnded.
type interceptEndedError struct{ name string }

func (e *interceptEndedError) Error() string {
	return fmt.Sprintf("intercept %s was ended elsewhere (tp leave, the session TTL or an administrator); the container was stopped", e.name)
}

func (e *interceptEndedError) Is(target error) bool { return target == errInterceptEnded }

// workloadLister is the part of the daemon API that watchIntercept needs.
type workloadLister interface {
	ListWorkloads(ctx context.Context, req *managerv1.ListWorkloadsRequest, opts ...grpc.CallOption) (*managerv1.ListWorkloadsResponse, error)
}

// watchIntercept polls the daemon every interval until the intercept info
// (by id) is no longer among its namespace's intercepts, and then returns
// errInterceptEnded; it returns nil when ctx ends. Failed polls (the daemon
// is reconnecting, the manager restarts) are not an answer: it polls on, and
// says on progress when the connection was lost and when it came back.
func watchIntercept(ctx context.Context, d workloadLister, info *managerv1.InterceptInfo, interval time.Duration, progress io.Writer) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	lost := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		lctx, cancel := context.WithTimeout(ctx, max(interval, 5*time.Second))
		resp, err := d.ListWorkloads(lctx, &managerv1.ListWorkloadsRequest{Namespace: info.GetSpec().GetNamespace()})
		cancel()
		if err != nil {
			if !lost && ctx.Err() == nil {
				lost = true
				fmt.Fprintf(progress, "Lost the connection to the traffic-manager (%s); intercept %s and the container stay while tp reconnects (see `tp status`)\n",
					status.Convert(err).Message(), info.GetSpec().GetName())
			}
			continue
		}
		if !hasIntercept(resp, info.GetId()) {
			return errInterceptEnded
		}
		if lost {
			lost = false
			fmt.Fprintf(progress, "Connection to the traffic-manager resumed; intercept %s is still in place\n", info.GetSpec().GetName())
		}
	}
}

// hasIntercept says whether resp lists the intercept with id.
func hasIntercept(resp *managerv1.ListWorkloadsResponse, id string) bool {
	for _, w := range resp.GetWorkloads() {
		for _, ic := range w.GetIntercepts() {
			if ic.GetId() == id {
				return true
			}
		}
	}
	return false
}

// interceptEnv is the pod's environment plus TP_* variables naming the intercept.
func interceptEnv(info *managerv1.InterceptInfo, conn daemoncontainer.Connection) map[string]string {
	env := map[string]string{}
	for k, v := range info.GetEnvironment() {
		env[k] = v
	}
	env["TP_INTERCEPT_ID"] = info.GetId()
	env["TP_INTERCEPT_NAME"] = info.GetSpec().GetName()
	env["TP_WORKLOAD"] = info.GetSpec().GetWorkload()
	env["TP_NAMESPACE"] = info.GetSpec().GetNamespace()
	env["TP_POD"] = info.GetPodName()
	env["TP_CONNECTION"] = conn.Name
	return env
}

func writeEnvFile(path, syntax string, env map[string]string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("--env-file: %w", err)
	}
	if err := writeEnv(f, syntax, env); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// dockerRun runs the intercept's container with the docker CLI (so every
// docker run flag works as the user knows it) in the connection's network
// namespace, with the pod's environment. Ctrl-C stops the container, and so
// does closing ended (the intercept was ended elsewhere).
func dockerRun(ctx context.Context, ended <-chan struct{}, streams genericiooptions.IOStreams, netContainer string, info *managerv1.InterceptInfo, env map[string]string, userArgs []string) (code int, detached bool, err error) {
	args := []string{"run", "--rm", "--network", "container:" + netContainer}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "-e", k) // value from our environment: any value, even multi-line
	}
	name := ""
	if !hasFlag(userArgs, "--name") {
		name = "tp-intercept-" + info.GetSpec().GetName() + "-" + rand.String(4)
		args = append(args, "--name", name)
	}
	detached = hasFlag(userArgs, "-d") || hasFlag(userArgs, "--detach")
	if !detached && !hasFlag(userArgs, "-i") && !hasFlag(userArgs, "-t") {
		args = append(args, "--sig-proxy=true")
	}
	args = append(args, userArgs...)

	cmd := exec.Command("docker", args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = streams.In, streams.Out, streams.ErrOut
	cmd.Env = os.Environ()
	for _, k := range keys {
		cmd.Env = append(cmd.Env, k+"="+env[k])
	}
	if err := cmd.Start(); err != nil {
		return 0, detached, fmt.Errorf("docker run: %w (is the docker CLI installed?)", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopCLI := func() error { // the container stops, then the CLI
		select {
		case waitErr := <-done:
			return waitErr
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			return <-done
		}
	}
	var waitErr error
	select {
	case waitErr = <-done:
	case <-ctx.Done(): // Ctrl-C: stop the container, then the CLI
		if runtime.GOOS != "windows" {
			_ = cmd.Process.Signal(os.Interrupt)
		}
		waitErr = stopCLI()
	case <-ended:
		if detached {
			waitErr = <-done // docker run -d returns by itself; the container stays
			break
		}
		// Stop the container by name (works with -t too, where the CLI
		// does not proxy signals); without one, as Ctrl-C does.
		if cname := firstNonEmpty(name, flagValue(userArgs, "--name")); cname != "" {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
			_ = exec.CommandContext(sctx, "docker", "stop", "--time", "5", cname).Run()
			cancel()
		} else if runtime.GOOS != "windows" {
			_ = cmd.Process.Signal(os.Interrupt)
		}
		waitErr = stopCLI()
	}
	if name != "" && !detached {
		_ = exec.Command("docker", "rm", "-f", name).Run() // nothing may outlive the intercept
	}
	var exitErr *exec.ExitError
	switch {
	case waitErr == nil:
		return 0, detached, nil
	case errors.As(waitErr, &exitErr):
		return exitErr.ExitCode(), detached, nil
	default:
		return 0, detached, fmt.Errorf("docker run: %w", waitErr)
	}
}

// dockerBoolFlags are docker run's flags that take no value.
var dockerBoolFlags = map[string]bool{
	"-d": true, "--detach": true, "-i": true, "--interactive": true, "-t": true, "--tty": true,
	"--rm": true, "--init": true, "--privileged": true, "-P": true, "--publish-all": true,
	"--read-only": true, "--no-healthcheck": true, "--oom-kill-disable": true, "-q": true, "--quiet": true,
	"--sig-proxy": true, "--help": true,
}

// hasFlag says whether docker run's flags (the arguments before the image)
// include flag, e.g. "-d" (also inside combined short flags like "-dit").
func hasFlag(args []string, flag string) bool {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") || a == "-" {
			return false // the image: docker run's flags end here
		}
		name, _, hasValue := strings.Cut(a, "=")
		if name == flag {
			return true
		}
		if len(flag) == 2 && !strings.HasPrefix(a, "--") && len(a) > 2 && !hasValue {
			combined := true // "-dit": every letter a boolean short flag
			for _, c := range a[1:] {
				combined = combined && dockerBoolFlags["-"+string(c)]
			}
			if combined && strings.ContainsRune(a[1:], rune(flag[1])) {
				return true
			}
			if combined {
				continue
			}
		}
		if !hasValue && !dockerBoolFlags[name] {
			i++ // the flag's value
		}
	}
	return false
}

// flagValue is the value of docker run's long flag (e.g. "--name") among
// args (the arguments before the image): "--name x" or "--name=x"; "" when
// it is not given.
func flagValue(args []string, flag string) string {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") || a == "-" {
			return "" // the image: docker run's flags end here
		}
		name, value, hasValue := strings.Cut(a, "=")
		if name == flag {
			if hasValue {
				return value
			}
			if i+1 < len(args) {
				return args[i+1]
			}
			return ""
		}
		if !strings.HasPrefix(a, "--") && len(a) > 2 {
			continue // "-dit" or "-eKEY=VALUE": no separate value
		}
		if !hasValue && !dockerBoolFlags[name] {
			i++ // the flag's value
		}
	}
	return ""
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
		firstNonEmpty(info.GetServicePortName(), strconv.Itoa(int(info.GetServicePort()))), info.GetServicePort(), info.GetContainerPort(), kind)
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
