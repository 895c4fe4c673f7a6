package intercept

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
	"k8s.io/apimachinery/pkg/util/rand"
)

// DockerRun says how to run an intercept's container with the docker CLI
// (so every docker run flag works as the user knows it).
type DockerRun struct {
	// NetworkContainer is the daemon container whose network namespace the
	// container joins (--network container:NAME).
	NetworkContainer string
	// Args are docker run's flags, the image and its arguments, as the
	// user gave them.
	Args []string
	// ExtraFlags go before Args (e.g. tp's own -v for the pod's volumes).
	ExtraFlags []string
	// Environ is the docker CLI's environment (default os.Environ()): the
	// engine's DOCKER_CONTEXT or DOCKER_HOST (dockerengine.Engine.Environ),
	// so that the container runs on the daemon container's engine.
	Environ []string
	// Stdin, Stdout and Stderr are the container's; Progress gets tp's
	// messages while it runs.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Progress       io.Writer
	PollInterval   time.Duration // default PollInterval
	// Engine, when set, lets the container outlive a restart of the Docker
	// engine: when docker run ends because the engine went away,
	// RunContainer waits for the engine and the daemon container to come
	// back (its restart policy) and runs the container again; the intercept
	// stays all along. Nil: RunContainer returns when docker run does.
	Engine client.APIClient
	// EngineWait bounds that wait; default EngineWait.
	EngineWait time.Duration
	// Remount, if set, is called before the container runs again after an
	// engine restart and returns ExtraFlags anew: tp's volumes are created
	// again, as the daemon container's address may have changed.
	Remount func(ctx context.Context) ([]string, error)
}

// EngineWait is how long RunContainer waits for a Docker engine that went
// away to come back.
const EngineWait = 5 * time.Minute

// RunContainer runs "docker run --rm --network container:NAME" with the
// pod's environment and waits for it. Ctrl-C (ctx) stops the container;
// so does the intercept ending elsewhere, and then it returns an
// EndedError. detached says the user asked for -d: docker run returned at
// once and the container stays. It does not leave the intercept.
func (ic *Intercept) RunContainer(ctx context.Context, r DockerRun) (code int, detached bool, err error) {
	interval := r.PollInterval
	if interval <= 0 {
		interval = PollInterval
	}
	// While the container runs, watch that the intercept still exists: `tp
	// leave` in another shell, the session TTL or an administrator may end
	// it, and then the container must not go on as if it were intercepted.
	// So must the daemon container: removed (docker rm -f, tp quit), its
	// network and the volumes' mounts are gone for good.
	wctx, stopWatch := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stopWatch()
	ended := make(chan struct{})
	watched := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := ic.Watch(wctx, interval, r.Progress)
		if errors.Is(err, ErrEnded) {
			close(ended)
		}
		watched <- err
	}()
	destroyed := make(chan struct{})
	if r.Engine != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if daemonDestroyed(wctx, r.Engine, r.NetworkContainer) {
				close(destroyed)
			}
		}()
	}
	stop := make(chan struct{}) // the container must stop: ended or destroyed
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-ended:
		case <-destroyed:
		case <-wctx.Done():
			return
		}
		close(stop)
	}()
	labels := ic.labels(!(HasFlag(r.Args, "-d") || HasFlag(r.Args, "--detach"))) // -d: the container outlives this process
	labels[LabelDockerRun] = "true"
	for {
		var away <-chan struct{}
		ectx, stopEvents := context.WithCancel(ctx)
		if r.Engine != nil {
			away = daemonGoesAway(ectx, r.Engine, r.NetworkContainer)
		}
		code, detached, err = dockerRun(ctx, stop, r, ic.Name(), ic.Env(), labels)
		wentAway := false
		if away != nil && !detached && ctx.Err() == nil && !isClosed(stop) {
			// The daemon container's kill comes with the engine's shutdown,
			// as ours does; give its event a moment to arrive.
			select {
			case <-away:
				// docker rm -f kills the daemon container before it
				// removes it: the engine went away only if no removal follows.
				select {
				case <-stop:
				case <-time.After(time.Second):
					wentAway = true
				}
			case <-stop:
			case <-time.After(500 * time.Millisecond):
			}
		}
		stopEvents()
		if !wentAway {
			break
		}
		fmt.Fprintf(r.Progress, "The Docker engine went away; intercept %s stays: waiting up to %s for Docker and %s to come back, then the container runs again\n",
			ic.Name(), cmp.Or(r.EngineWait, EngineWait), r.NetworkContainer)
		if werr := waitEngine(ctx, stop, r.Engine, r.NetworkContainer, cmp.Or(r.EngineWait, EngineWait)); werr != nil {
			if ctx.Err() == nil && !isClosed(stop) {
				err = werr
			}
			break
		}
		if r.Remount != nil {
			flags, rerr := remount(ctx, r, ic.Name())
			if rerr != nil {
				err = fmt.Errorf("after Docker restarted: %w", rerr)
				break
			}
			r.ExtraFlags = flags
		}
		fmt.Fprintf(r.Progress, "Docker and %s are back; running the container of intercept %s again\n", r.NetworkContainer, ic.Name())
	}
	stopWatch()
	werr := <-watched
	if detached && err == nil {
		return code, detached, nil
	}
	if isClosed(destroyed) {
		return code, detached, &DaemonGoneError{Container: r.NetworkContainer}
	}
	if errors.Is(werr, ErrEnded) {
		return code, detached, werr
	}
	return code, detached, err
}

// ErrDaemonGone says that the daemon container was removed while the
// intercept's container ran.
var ErrDaemonGone = errors.New("the daemon container was removed")

// DaemonGoneError is ErrDaemonGone for one daemon container.
type DaemonGoneError struct{ Container string }

func (e *DaemonGoneError) Error() string {
	return fmt.Sprintf("the daemon container %s was removed (docker rm, tp quit): the container lost its network and mounts and was stopped; run tp connect, then tp intercept again", e.Container)
}

func (e *DaemonGoneError) Is(target error) bool { return target == ErrDaemonGone }

// daemonDestroyed follows the engine's events until the daemon container
// networkContainer is removed (true) or ctx ends (false). When the event
// stream breaks (the engine restarts) it subscribes again, and asks whether
// the container still exists, since its removal may have gone unseen.
func daemonDestroyed(ctx context.Context, engine client.APIClient, networkContainer string) bool {
	for {
		sctx, cancel := context.WithCancel(ctx)
		msgs, errs := engine.Events(sctx, events.ListOptions{Filters: filters.NewArgs(
			filters.Arg("type", string(events.ContainerEventType)), filters.Arg("container", networkContainer),
			filters.Arg("event", string(events.ActionDestroy)))})
		// Subscribed first, then asked: a removal is either seen or found.
		ictx, icancel := context.WithTimeout(sctx, 5*time.Second)
		_, err := engine.ContainerInspect(ictx, networkContainer)
		icancel()
		if cerrdefs.IsNotFound(err) {
			cancel()
			return true
		}
		destroyed, broken := false, false
		for !destroyed && !broken && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case m := <-msgs:
				destroyed = m.Action == events.ActionDestroy
			case <-errs:
				broken = true
			}
		}
		cancel()
		if destroyed {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(time.Second): // then subscribe again
		}
	}
}

// RemountWait is how long RunContainer retries Remount after the engine
// came back: the daemon in the container that runs again answers its API
// some seconds after Docker reports the container running, and the CLI's
// connections to it redial with a backoff.
const RemountWait = time.Minute

// remount calls r.Remount until it succeeds or RemountWait has passed.
func remount(ctx context.Context, r DockerRun, intercept string) ([]string, error) {
	deadline := time.Now().Add(RemountWait)
	for {
		flags, err := r.Remount(ctx)
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			return flags, err
		}
		fmt.Fprintf(r.Progress, "tp: intercept %s: the volumes cannot be mounted again yet (%v); retrying\n", intercept, err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// daemonGoesAway follows the engine's events about the daemon container
// networkContainer: the channel closes when it is killed, stopped or dies,
// or when the events stream breaks (the engine went away). Its containers
// then lost their network; it comes back by its restart policy.
func daemonGoesAway(ctx context.Context, engine client.APIClient, networkContainer string) <-chan struct{} {
	gone := make(chan struct{})
	msgs, errs := engine.Events(ctx, events.ListOptions{Filters: filters.NewArgs(
		filters.Arg("type", string(events.ContainerEventType)), filters.Arg("container", networkContainer))})
	go func() { // ends with ctx (RunContainer cancels it after each run) or the stream
		for {
			select {
			case <-ctx.Done():
				return
			case m := <-msgs:
				switch m.Action {
				case events.ActionKill, events.ActionDie, events.ActionStop:
					close(gone)
					return
				}
			case <-errs:
				if ctx.Err() == nil {
					close(gone)
				}
				return
			}
		}
	}()
	return gone
}

// engineUp says whether the Docker engine answers (within 2 s).
func engineUp(ctx context.Context, engine client.APIClient) bool {
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := engine.Ping(pctx)
	return err == nil
}

// stoppedByHand is how long waitEngine waits for a daemon container that
// stopped while the engine kept running (docker stop, docker kill: the
// restart policy does not bring it back).
const stoppedByHand = 30 * time.Second

// waitEngine waits until the engine answers and the daemon container
// networkContainer runs again, for at most wait; ctx (Ctrl-C) and ended
// stop it early.
func waitEngine(ctx context.Context, ended <-chan struct{}, engine client.APIClient, networkContainer string, wait time.Duration) error {
	start := time.Now()
	deadline := time.After(wait)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	engineWasDown := false
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ended:
			return ErrEnded
		case <-deadline:
			if !engineUp(ctx, engine) {
				return fmt.Errorf("the Docker engine did not come back within %s; start Docker, then run tp intercept again", wait)
			}
			return fmt.Errorf("the daemon container %s did not come back within %s after Docker restarted (see docker logs %s; tp connect starts it again)", networkContainer, wait, networkContainer)
		case <-tick.C:
		}
		if !engineUp(ctx, engine) {
			engineWasDown = true
			continue
		}
		ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
		info, err := engine.ContainerInspect(ictx, networkContainer)
		cancel()
		if err == nil && info.State != nil && info.State.Running {
			return nil
		}
		if !engineWasDown && time.Since(start) > stoppedByHand {
			return fmt.Errorf("the daemon container %s stopped (docker stop or kill?) and Docker did not start it again: run tp connect, then tp intercept again", networkContainer)
		}
	}
}

// dockerRun runs the container in r.NetworkContainer's network namespace
// with env and labels. Ctrl-C stops the container, and so does closing ended.
func dockerRun(ctx context.Context, ended <-chan struct{}, r DockerRun, interceptName string, env, labels map[string]string) (code int, detached bool, err error) {
	args := []string{"run", "--rm", "--network", "container:" + r.NetworkContainer}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		args = append(args, "--label", k+"="+labels[k])
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "-e", k) // value from our environment: any value, even multi-line
	}
	name := ""
	if !HasFlag(r.Args, "--name") {
		name = "tp-intercept-" + interceptName + "-" + rand.String(4)
		args = append(args, "--name", name)
	}
	detached = HasFlag(r.Args, "-d") || HasFlag(r.Args, "--detach")
	if !detached && !HasFlag(r.Args, "-i") && !HasFlag(r.Args, "-t") {
		args = append(args, "--sig-proxy=true")
	}
	args = append(args, r.ExtraFlags...)
	args = append(args, r.Args...)

	environ := r.Environ
	if environ == nil {
		environ = os.Environ()
	}
	docker := func(ctx context.Context, args ...string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, "docker", args...)
		cmd.Env = slices.Clone(environ)
		return cmd
	}
	cmd := docker(context.WithoutCancel(ctx), args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = r.Stdin, r.Stdout, r.Stderr
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
		if cname := cmp.Or(name, FlagValue(r.Args, "--name")); cname != "" {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
			_ = docker(sctx, "stop", "--time", "5", cname).Run()
			cancel()
		} else if runtime.GOOS != "windows" {
			_ = cmd.Process.Signal(os.Interrupt)
		}
		waitErr = stopCLI()
	}
	if name != "" && !detached {
		_ = docker(context.WithoutCancel(ctx), "rm", "-f", name).Run() // nothing may outlive the intercept
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

// HasFlag says whether docker run's flags (the arguments before the image)
// include flag, e.g. "-d" (also inside combined short flags like "-dit").
func HasFlag(args []string, flag string) bool {
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

// FlagValue is the value of docker run's long flag (e.g. "--name") among
// args (the arguments before the image): "--name x" or "--name=x"; "" when
// it is not given.
func FlagValue(args []string, flag string) string {
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
