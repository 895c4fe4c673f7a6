package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

const (
	probeImage = "tp-probe:dev"
	echoImage  = "tp-echo:dev"
)

// bench holds one run: its handles, what it created (to undo) and its results.
type bench struct {
	o        options
	k        *kube
	res      *results
	start    time.Time
	cleanups []cleanup
	podIP    string
	daemon   string // the daemon container, tp-NAME
	runID    string // names this run's containers: tp-bench-RUNID-...
	seq      int
}

// containerName names a container of this run; cleanup removes them all.
func (b *bench) containerName(role string) string {
	b.seq++
	return fmt.Sprintf("tp-bench-%s-%s-%d", b.runID, role, b.seq)
}

type cleanup struct {
	what string
	fn   func(context.Context) error
}

// onCleanup registers fn to run when the bench ends, in reverse order.
func (b *bench) onCleanup(what string, fn func(context.Context) error) {
	b.cleanups = append(b.cleanups, cleanup{what, fn})
}

func (b *bench) runCleanups() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, c := range slices.Backward(b.cleanups) {
		b.logf("cleanup: %s", c.what)
		if err := c.fn(ctx); err != nil {
			b.logf("cleanup %s: %v", c.what, err)
			b.res.Errors = append(b.res.Errors, fmt.Sprintf("cleanup %s: %v", c.what, err))
		}
	}
	b.cleanups = nil
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(b.start).Seconds(), fmt.Sprintf(format, args...))
}

// phase runs one measurement; its failure is recorded and the run goes on.
func (b *bench) phase(ctx context.Context, name string, fn func(context.Context) error) {
	if ctx.Err() != nil {
		b.res.fail(name, fmt.Errorf("not run: %w", context.Cause(ctx)))
		return
	}
	b.logf("%s", name)
	if err := fn(ctx); err != nil {
		b.logf("%s failed: %v", name, err)
		b.res.fail(name, err)
	}
}

func run(ctx context.Context, o options) error {
	b := &bench{o: o, start: time.Now(), daemon: "tp-" + o.name, res: newResults(o), runID: randomSuffix()}
	defer func() {
		b.res.Seconds = time.Since(b.start).Seconds()
		b.report()
	}()
	defer b.runCleanups()

	if err := b.preflight(ctx); err != nil {
		return err
	}
	if o.profileDir != "" {
		if err := os.MkdirAll(o.profileDir, 0o755); err != nil {
			return fmt.Errorf("-profile: %w", err)
		}
	}
	if err := b.setup(ctx); err != nil {
		return err
	}
	if err := b.connect(ctx); err != nil {
		return err
	}
	switch o.only {
	case "":
	case "volumes":
		b.volumes(ctx)
		b.res.Machine.LoadAvgEnd = loadAvg()
		return nil
	default:
		return fmt.Errorf("-only %q: the only section is volumes", o.only)
	}
	b.sideBySide(ctx)
	if o.skipIntercept {
		b.res.Intercept.Skipped = "-skip-intercept"
	} else {
		b.intercepts(ctx)
		b.volumes(ctx)
	}
	b.res.Machine.LoadAvgEnd = loadAvg()
	return nil
}

// preflight checks the tools and images the run needs and records versions.
func (b *bench) preflight(ctx context.Context) error {
	b.res.Machine.CPUs = runtime.NumCPU()
	b.res.Machine.LoadAvgStart = loadAvg()
	b.res.Machine.OtherConnections = otherConnections(ctx)
	if n := b.res.Machine.OtherConnections; len(n) > 0 {
		b.res.note("other tp connections share the machine and the traffic-manager: %v", n)
	}
	if out, err := exec.CommandContext(ctx, "uname", "-r").Output(); err == nil {
		b.res.Machine.Kernel = strings.TrimSpace(string(out))
	}
	out, err := b.tp(ctx, time.Minute, "version")
	if err != nil {
		return fmt.Errorf("%s version (build it with `make build`): %w\n%s", b.o.tp, err, out)
	}
	b.res.TPVersion = strings.Join(strings.Fields(out), " ")
	if _, err := exec.LookPath(b.o.kubectl); err != nil {
		return fmt.Errorf("kubectl %q for the baseline port-forward: %w", b.o.kubectl, err)
	}
	for _, img := range []string{probeImage, echoImage} {
		if out, err := docker(ctx, time.Minute, "image", "inspect", "-f", "{{.Id}}", img); err != nil {
			return fmt.Errorf("docker image %s missing (run `make image`): %w\n%s", img, err, out)
		}
	}
	if out, err := docker(ctx, time.Minute, "container", "inspect", b.daemon); err == nil {
		return fmt.Errorf("container %s exists: another bench runs, or `tp quit --name %s` first\n%.200s", b.daemon, b.o.name, out)
	}
	k, err := newKube(b.o.kubeconfig)
	if err != nil {
		return err
	}
	b.k = k
	return nil
}

// setup creates the namespace with the echo example.
func (b *bench) setup(ctx context.Context) error {
	ns, err := b.k.createNamespace(ctx, "bench")
	if err != nil {
		return err
	}
	b.res.Namespace = ns
	b.onCleanup("delete namespace "+ns, func(ctx context.Context) error { return b.k.deleteNamespace(ctx, ns) })
	b.logf("namespace %s: deploying the echo example", ns)
	if err := b.k.apply(ctx, ns, b.o.manifest); err != nil {
		return err
	}
	if err := b.k.waitDeployment(ctx, ns, "echo", 2*time.Minute); err != nil {
		return err
	}
	pod, err := b.k.runningPod(ctx, ns, "app=echo")
	if err != nil {
		return err
	}
	b.podIP = pod.Status.PodIP
	b.res.EchoPod = pod.Name + " " + pod.Status.PodIP
	return nil
}

// connect makes the bench connection, then times quit + connect with the
// image and the manager present, and reads the idle memory.
func (b *bench) connect(ctx context.Context) error {
	ns := b.res.Namespace
	b.onCleanup("tp quit --name "+b.o.name, func(ctx context.Context) error {
		if out, err := b.tp(ctx, time.Minute, "quit", "--name", b.o.name); err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	})
	// Before the quit: they may share the daemon container's network namespace.
	b.onCleanup("remove this run's containers", func(ctx context.Context) error {
		return dockerRemovePrefix(ctx, "tp-bench-"+b.runID+"-")
	})
	b.logf("tp connect --name %s -n %s (first: installs the traffic-manager when missing)", b.o.name, ns)
	t0 := time.Now()
	if out, err := b.tp(ctx, 4*time.Minute, "connect", "--name", b.o.name, "-n", ns); err != nil {
		return fmt.Errorf("tp connect: %w\n%s", err, out)
	}
	b.res.Connect.FirstSeconds = time.Since(t0).Seconds()
	// A first request proves the path before timing anything.
	if _, err := b.probeDocker(ctx, "", "container:"+b.daemon, 30*time.Second, "latency", "-url", b.podURL("/"), "-n", "1", "-timeout", "20s"); err != nil {
		return fmt.Errorf("first request through tp to the echo pod: %w", err)
	}
	podsBefore, _ := b.managerPods(ctx)
	defer func() {
		if after, _ := b.managerPods(ctx); !slices.Equal(podsBefore, after) {
			b.res.note("tp connect runs: the traffic-manager's pods changed from %v to %v: the connect times may include that", podsBefore, after)
		}
	}()
	for i := range b.o.connectRuns {
		if out, err := b.tp(ctx, time.Minute, "quit", "--name", b.o.name); err != nil {
			return fmt.Errorf("tp quit (connect run %d): %w\n%s", i+1, err, out)
		}
		t0 := time.Now()
		if out, err := b.tp(ctx, 2*time.Minute, "connect", "--name", b.o.name, "-n", ns); err != nil {
			return fmt.Errorf("tp connect (connect run %d): %w\n%s", i+1, err, out)
		}
		b.res.Connect.RunsSeconds = append(b.res.Connect.RunsSeconds, time.Since(t0).Seconds())
	}
	b.res.Connect.MedianSeconds = median(b.res.Connect.RunsSeconds)
	b.logf("tp connect: first %.2fs, runs %v", b.res.Connect.FirstSeconds, b.res.Connect.RunsSeconds)

	if fp, err := b.waitConnected(ctx, 30*time.Second); err == nil {
		b.res.ManagerVersion = fp.managerVersion
	}
	// Idle memory: connected, no traffic yet, a moment after connecting.
	sleep(ctx, 3*time.Second)
	b.res.Memory.DaemonIdleMB, b.res.Memory.DaemonPID = b.daemonRSS()
	b.res.Memory.ManagerIdleMB, b.res.Memory.ManagerPIDs = managerRSS()
	if b.res.Memory.DaemonPID == 0 {
		b.res.note("daemon process (cmdline `daemon run ... --connection %s`) not found in /proc: no daemon memory numbers", b.o.name)
	}
	if len(b.res.Memory.ManagerPIDs) == 0 {
		b.res.note("manager process (cmdline `/tp manager`) not found in /proc: no manager memory numbers")
	}
	return nil
}

// sideBySide runs every client measurement through the port-forward baseline
// and through tp, one right after the other.
func (b *bench) sideBySide(ctx context.Context) {
	pf, err := startPortForward(ctx, b.o.kubectl, b.o.kubeconfig, b.res.Namespace, strings.Fields(b.res.EchoPod)[0], b.o.pfPort)
	if err != nil {
		b.res.fail("port-forward", err)
	} else {
		b.res.PortForwardPort = pf.port
		b.onCleanup("stop kubectl port-forward", func(context.Context) error { return pf.stop() })
	}
	tpNet := "container:" + b.daemon
	sampler := startSampler(b.daemonMatcher())
	samplerStopped := false
	stopSampler := func() {
		if samplerStopped {
			return
		}
		samplerStopped = true
		s := sampler.stop()
		m := &b.res.Memory
		m.DaemonLoadPeakMB, m.ManagerLoadPeakMB, m.Samples = s.daemonPeakMB, s.managerPeakMB, s.samples
		m.DaemonHWMMB = s.daemonHWMMB
		sleep(ctx, 2*time.Second)
		m.DaemonAfterLoadMB, _ = b.daemonRSS()
	}
	defer stopSampler()
	var pfRoles func() roles
	if pf != nil {
		pfRoles = func() roles { return roles{"kubectl": {pf.cmd.Process.Pid}} }
	}

	bulk := strconv.FormatInt(b.o.bulkBytes, 10)
	bt := b.o.bulkTimeout.String()
	hold := func(n int) []string {
		return []string{"-n", strconv.Itoa(n), "-c", "100", "-timeout", b.o.holdTimeout.String(), "-hold-for", "3s"}
	}
	holdWait := b.o.holdTimeout + 30*time.Second
	runs := []sidePhase{
		{name: "latency", args: []string{"-n", strconv.Itoa(b.o.latencyN), "-timeout", "60s"}, path: "/", mode: "latency", wait: 90 * time.Second},
		{name: "bulk1", args: []string{"-bytes", bulk, "-streams", "1", "-timeout", bt}, path: "/bytes", mode: "bulk", wait: b.o.bulkTimeout + time.Minute, cpu: true},
		{name: "bulk4", args: []string{"-bytes", bulk, "-streams", "4", "-timeout", bt}, path: "/bytes", mode: "bulk", wait: b.o.bulkTimeout + time.Minute, cpu: true},
		{name: "connrate", args: []string{"-n", strconv.Itoa(b.o.connN), "-c", strconv.Itoa(b.o.connC), "-timeout", b.o.connTimeout.String()}, path: "/", mode: "connrate", wait: b.o.connTimeout + time.Minute},
		{name: "hold", args: hold(b.o.holdN), path: "/", mode: "hold", wait: holdWait, conns: b.o.holdN},
	}
	b.runSide(ctx, pf, pfRoles, runs)
	if pf != nil {
		b.res.PortForwardErrors = pf.errorLines()
	}
	// The service by name: DNS through the daemon, then the service IP.
	b.tpPhase(ctx, "tp/latency-svc", []string{"tp/latency-svc"}, func(ctx context.Context) error {
		_, err := b.probeDocker(ctx, "tp/latency-svc", tpNet, 90*time.Second,
			"latency", "-url", "http://echo."+b.res.Namespace+"/", "-n", strconv.Itoa(b.o.latencyN), "-timeout", "60s")
		return err
	})
	ns := b.res.Namespace
	dns := []struct{ key, flag, value string }{
		{"tp/dns-cold-pod", "-cold", "10-244-0-{i}." + ns + ".pod.cluster.local"},
		{"tp/dns-cold-nxdomain", "-cold", "bench-{r}-{i}." + ns + ".svc.cluster.local"},
		{"tp/dns-cached", "-cached", "echo." + ns + ".svc.cluster.local"},
	}
	for _, d := range dns {
		b.tpPhase(ctx, d.key, []string{d.key}, func(ctx context.Context) error {
			_, err := b.probeDocker(ctx, d.key, tpNet, time.Minute, "dns", "-server", "127.0.0.1:53", d.flag, d.value,
				"-cold-n", "200", "-cached-n", "2000", "-timeout", "30s")
			return err
		})
	}
	// The load-peak rows keep their meaning (the phases above); the
	// connection-scaling phases have rows of their own.
	stopSampler()
	var scale []sidePhase
	for _, n := range b.o.scaleConns {
		scale = append(scale, sidePhase{name: "hold" + strconv.Itoa(n), args: hold(n), path: "/", mode: "hold", wait: holdWait, conns: n})
	}
	b.runSide(ctx, pf, pfRoles, scale)
	b.rttPhases(ctx, pf, pfRoles)
	if pf != nil {
		b.res.PortForwardErrors = pf.errorLines() // the scaling phases' too
		if err := pf.stop(); err != nil {
			b.res.note("kubectl port-forward: %v", err)
		}
	}
}

// sidePhase is one probe measurement run through the baseline, then tp.
type sidePhase struct {
	name  string   // result key: pf/NAME, tp/NAME
	args  []string // probe bench arguments after the mode and URL
	path  string
	mode  string
	wait  time.Duration
	cpu   bool // record each side's CPU seconds (bulk: per GB moved)
	conns int  // record each side's RSS before and while this many connections are open
}

// runSide runs each phase through the port-forward (when there is one) and
// through tp.
func (b *bench) runSide(ctx context.Context, pf *portForward, pfRoles func() roles, runs []sidePhase) {
	tpNet := "container:" + b.daemon
	for _, r := range runs {
		if pf != nil {
			b.phase(ctx, "port-forward/"+r.name, func(ctx context.Context) error {
				if err := pf.alive(); err != nil {
					return err
				}
				url := fmt.Sprintf("http://127.0.0.1:%d%s", pf.port, r.path)
				name := b.containerName("probe")
				return b.measured(ctx, "pf/"+r.name, name, pfRoles(), r, func() (*probeResult, error) {
					return b.probeDockerNamed(ctx, name, "pf/"+r.name, "host", r.wait, append([]string{r.mode, "-url", url}, r.args...)...)
				})
			})
		}
		attempts := 3
		if r.conns > b.o.holdN {
			attempts = 1
		}
		b.tpPhaseAttempts(ctx, "tp/"+r.name, []string{"tp/" + r.name}, attempts, func(ctx context.Context) error {
			name := b.containerName("probe")
			return b.measured(ctx, "tp/"+r.name, name, b.tpRoles(), r, func() (*probeResult, error) {
				return b.probeDockerNamed(ctx, name, "tp/"+r.name, tpNet, r.wait, append([]string{r.mode, "-url", b.podURL(r.path)}, r.args...)...)
			})
		})
	}
}

// measured runs one probe and, as r asks, records the CPU seconds the
// side's processes used during it or their memory before and while its
// connections were open, under key.
//
// While connections are held, a traffic-manager whose RSS reaches
// managerGuard of its memory limit ends the probe (SIGTERM: it reports how
// many connections it had open) before the kubelet OOM-kills the shared
// manager; the phase's memory row says so.
func (b *bench) measured(ctx context.Context, key, container string, rs roles, r sidePhase, run func() (*probeResult, error)) error {
	var cpuBefore map[string]float64
	if r.cpu {
		var err error
		if cpuBefore, err = rs.cpu(); err != nil {
			b.res.note("%s: CPU before: %v", key, err)
		}
	}
	var (
		rssBefore map[string]float64
		w         *rssPeaks
	)
	var g *guard
	if r.conns > 0 {
		rssBefore = rs.rss()
		w = watchRSS(rs)
		kill := func() { _, _ = docker(context.WithoutCancel(ctx), 30*time.Second, "kill", "-s", "TERM", container) }
		if _, ok := rs["manager"]; ok {
			if limit := b.managerMemoryLimit(ctx); limit > 0 {
				g = startGuard(memoryOver(rs, "manager", limit), kill)
			}
		} else if _, ok := rs["kubectl"]; ok {
			g = startGuard(filesOver(), kill)
		}
	}
	p, err := run()
	stopped := ""
	if g != nil {
		stopped = g.stop()
	}
	if w != nil {
		w.stop()
	}
	if err != nil {
		if stopped != "" {
			return fmt.Errorf("%s; %w", stopped, err)
		}
		return err
	}
	if r.cpu {
		after, cerr := rs.cpu()
		if cerr != nil {
			b.res.note("%s: CPU after: %v", key, cerr)
		}
		used := map[string]float64{}
		for role, a := range after {
			if before, ok := cpuBefore[role]; ok {
				used[role] = a - before
			}
		}
		b.res.Cost.CPU[key] = &phaseCPU{Bytes: p.Bytes, CPUSeconds: used}
	}
	if r.conns > 0 {
		m := &connMemory{Conns: r.conns, OK: p.OK, Opened: p.Opened, OpenSeconds: p.OpenSeconds, BeforeMB: rssBefore, PeakMB: w.peak(0, 0), Stopped: stopped}
		if p.HeldFromUnixMs != 0 && p.HeldToUnixMs > p.HeldFromUnixMs {
			// The probe's clock is this machine's: containers share it.
			m.HeldMB = w.peak(p.HeldFromUnixMs, p.HeldToUnixMs)
		}
		b.res.Cost.Conns[key] = m
	}
	return nil
}

func (b *bench) podURL(path string) string { return "http://" + b.podIP + ":8080" + path }

// intercepts measures the inbound path: an in-cluster client against the app
// (baseline) and through a global intercept to a local copy.
func (b *bench) intercepts(ctx context.Context) {
	ic := &b.res.Intercept
	if out, err := b.tp(ctx, time.Minute, "intercept", "--help"); err != nil {
		ic.Skipped = fmt.Sprintf("`tp intercept --help` failed: %v: %.300s", err, out)
		return
	}
	ns := b.res.Namespace
	svcURL := "http://echo." + ns
	latency := []string{"latency", "-url", svcURL + "/", "-n", strconv.Itoa(b.o.latencyN), "-timeout", "90s"}
	bulk := []string{"bulk", "-url", svcURL + "/bytes", "-bytes", strconv.FormatInt(b.o.inboundBytes, 10), "-streams", "1", "-timeout", b.o.bulkTimeout.String()}

	b.phase(ctx, "inbound/app-latency", func(ctx context.Context) error {
		_, err := b.probePod(ctx, "inbound/app-latency", 2*time.Minute, append(latency, "-wait-copy", "cluster")...)
		return err
	})
	b.phase(ctx, "inbound/app-bulk", func(ctx context.Context) error {
		_, err := b.probePod(ctx, "inbound/app-bulk", b.o.bulkTimeout+time.Minute, bulk...)
		return err
	})

	local := b.containerName("echo")
	if out, err := docker(ctx, time.Minute, "run", "-d", "--name", local, "--network", "container:"+b.daemon, "-e", "ECHO_COPY=local", echoImage, "serve"); err != nil {
		ic.Skipped = fmt.Sprintf("start the local echo: %v: %s", err, out)
		return
	}

	intercept := func(ctx context.Context) (float64, error) {
		t0 := time.Now()
		out, err := b.tp(ctx, 4*time.Minute, "intercept", "echo", "--name", b.o.name, "-n", ns, "--service", "echo", "--port", "8080:http")
		if err != nil {
			return 0, fmt.Errorf("tp intercept: %w\n%s", err, out)
		}
		return time.Since(t0).Seconds(), nil
	}
	leave := func(ctx context.Context) (float64, error) {
		t0 := time.Now()
		out, err := b.tp(ctx, time.Minute, "leave", "echo", "--name", b.o.name, "-n", ns)
		if err != nil {
			return 0, fmt.Errorf("tp leave: %w\n%s", err, out)
		}
		return time.Since(t0).Seconds(), nil
	}
	b.onCleanup("tp leave echo", func(ctx context.Context) error {
		_, _ = leave(ctx) // nothing to leave is fine
		return nil
	})

	// A retry after a failed attempt may find the agent injected already.
	b.tpPhase(ctx, "intercept/first-injection", nil, func(ctx context.Context) error {
		s, err := intercept(ctx)
		ic.FirstInjectionSeconds = s
		return err
	})
	if ic.FirstInjectionSeconds == 0 {
		ic.Skipped = "the intercept path does not work: " + b.res.Failures["intercept/first-injection"]
		return
	}
	ic.AgentPods, ic.EchoPods = b.k.podsWithContainer(ctx, ns, "app=echo", "tp-agent")
	b.tpPhase(ctx, "inbound/intercept-latency", []string{"inbound/intercept-latency"}, func(ctx context.Context) error {
		if _, err := intercept(ctx); err != nil { // already there: returns it (again after a disturbance)
			return err
		}
		r, err := b.probePod(ctx, "inbound/intercept-latency", 2*time.Minute, append(latency, "-wait-copy", "local")...)
		if err == nil && r.Copies["local"] != r.OK {
			b.res.note("inbound latency through the intercept: replies by copy %v, want all local", r.Copies)
		}
		return err
	})
	b.tpPhase(ctx, "inbound/intercept-bulk", []string{"inbound/intercept-bulk"}, func(ctx context.Context) error {
		if _, err := intercept(ctx); err != nil {
			return err
		}
		_, err := b.probePod(ctx, "inbound/intercept-bulk", b.o.bulkTimeout+time.Minute, bulk...)
		return err
	})
	b.tpPhase(ctx, "inbound/leave-under-load", []string{"inbound/leave-under-load"}, func(ctx context.Context) error {
		if _, err := intercept(ctx); err != nil {
			return err
		}
		return b.leaveUnderLoad(ctx, svcURL+"/", leave)
	})
	b.tpPhase(ctx, "inbound/agent-latency", []string{"inbound/agent-latency"}, func(ctx context.Context) error {
		_, err := b.probePod(ctx, "inbound/agent-latency", 2*time.Minute, append(latency, "-wait-copy", "cluster")...)
		return err
	})
	b.tpPhase(ctx, "intercept/agent-present", nil, func(ctx context.Context) error {
		s, err := intercept(ctx)
		ic.AgentPresentSeconds = s
		if err != nil {
			return err
		}
		ic.SecondLeaveSeconds, err = leave(ctx)
		return err
	})
}

// leaveUnderLoad runs a steady load from a pod through the intercept and
// calls `tp leave` in the middle of it.
func (b *bench) leaveUnderLoad(ctx context.Context, url string, leave func(context.Context) (float64, error)) error {
	const duration = 20 * time.Second
	ic := &b.res.Intercept
	pod, err := b.k.startProbePod(ctx, b.res.Namespace, probeImage,
		"bench", "steady", "-url", url, "-duration", duration.String(), "-c", "4", "-fresh", "2", "-pause", "10ms", "-wait-copy", "local", "-timeout", "90s")
	if err != nil {
		return err
	}
	if err := b.k.waitPodRunning(ctx, b.res.Namespace, pod, time.Minute); err != nil {
		return err
	}
	sleep(ctx, 7*time.Second) // the load reaches the local copy (wait-copy), then runs a while
	ic.LeaveStartUnixMs = time.Now().UnixMilli()
	s, leaveErr := leave(ctx)
	ic.LeaveSeconds = s
	ic.LeaveEndUnixMs = time.Now().UnixMilli()
	r, err := b.k.probePodResult(ctx, b.res.Namespace, pod, duration+time.Minute)
	if err != nil {
		return errors.Join(leaveErr, err)
	}
	b.res.Probes["inbound/leave-under-load"] = r
	ic.AfterLeaveMs = map[string]float64{}
	for _, kind := range []string{"", "/fresh", "/keepalive"} {
		if last, ok := r.LastByCopy["local"+kind]; ok {
			ic.AfterLeaveMs["local"+kind] = float64(last - ic.LeaveEndUnixMs)
		}
		if first, ok := r.FirstByCopy["cluster"+kind]; ok {
			ic.AfterLeaveMs["cluster"+kind] = float64(first - ic.LeaveStartUnixMs)
		}
	}
	return leaveErr
}

// probeDocker runs `probe bench ARGS` in a container on network and records
// its result under key (unless key is empty).
func (b *bench) probeDocker(ctx context.Context, key, network string, timeout time.Duration, args ...string) (*probeResult, error) {
	return b.probeDockerNamed(ctx, b.containerName("probe"), key, network, timeout, args...)
}

// probeDockerNamed is probeDocker in the container called name.
func (b *bench) probeDockerNamed(ctx context.Context, name, key, network string, timeout time.Duration, args ...string) (*probeResult, error) {
	all := append([]string{"run", "--rm", "--name", name, "--network", network, probeImage, "bench"}, args...)
	out, err := docker(ctx, timeout, all...)
	if err != nil {
		_ = dockerRemove(context.WithoutCancel(ctx), name)
		return nil, fmt.Errorf("probe bench %s: %w\n%s", strings.Join(args, " "), err, tail(out, 800))
	}
	r, err := decodeProbe(out)
	if err != nil {
		return nil, err
	}
	if key != "" {
		b.res.Probes[key] = r
		b.logf("  %s", r.summary())
	}
	return r, nil
}

// probePod runs `probe bench ARGS` in a pod of the bench namespace and records
// its result under key.
func (b *bench) probePod(ctx context.Context, key string, timeout time.Duration, args ...string) (*probeResult, error) {
	pod, err := b.k.startProbePod(ctx, b.res.Namespace, probeImage, append([]string{"bench"}, args...)...)
	if err != nil {
		return nil, err
	}
	r, err := b.k.probePodResult(ctx, b.res.Namespace, pod, timeout)
	if err != nil {
		return nil, err
	}
	b.res.Probes[key] = r
	b.logf("  %s", r.summary())
	return r, nil
}

// tp runs the CLI under test with the bench's kubeconfig.
func (b *bench) tp(ctx context.Context, timeout time.Duration, args ...string) (string, error) {
	return b.tpWith(ctx, b.o.kubeconfig, timeout, args...)
}

// tpWith runs the CLI under test with kubeconfig.
func (b *bench) tpWith(ctx context.Context, kubeconfig string, timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.o.tp, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// otherConnections lists the daemon containers of other tp connections
// (other users of the machine and of the traffic-manager).
func otherConnections(ctx context.Context) []string {
	out, err := docker(ctx, time.Minute, "ps", "--filter", "label=run.tp.connection", "--format", "{{.Names}}")
	if err != nil {
		return nil
	}
	return strings.Fields(out)
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
