package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/tools/clientcmd"
)

// A realistic RTT: both the baseline's kubectl and tp's daemon reach the
// Kubernetes API server on this machine (kubectl on the host over lo, the
// daemon from its container through the docker bridge to the host gateway),
// so the leg the port-forward takes has no latency to speak of. The RTT
// phases add rttDelay to the packets the API server sends on that leg: a
// prio qdisc on each interface they leave through, a u32 filter on the API
// server's source port (and, on the bridge, the daemon container's address)
// into a netem band; every other packet takes the undelayed band. Both paths
// then see the same added RTT, measured as the jump of their keep-alive p50.
// The qdiscs are removed after the phases and by the bench's cleanup.

const rttDelay = 20 * time.Millisecond

// rttPath is one interface the API server's packets to a client leave through.
type rttPath struct {
	dev    string // lo, docker0
	client string // who is behind it: kubectl, daemon
	dst    string // the client's address to match, "" for any (lo)
}

// netemUnavailable says why this kernel cannot delay packets with netem, ""
// when it may: the qdiscs are built in or a module for them exists.
func netemUnavailable() string {
	if _, err := exec.LookPath("tc"); err != nil {
		return "tc not found: install iproute2 (hack/install-deps.sh)"
	}
	f, err := os.Open("/proc/config.gz")
	if err != nil {
		return "" // no kernel config to read: try
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return ""
	}
	config, err := io.ReadAll(zr)
	if err != nil {
		return ""
	}
	release, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return missingQdiscs(config, strings.TrimSpace(string(release)), func(p string) bool {
		_, err := os.Stat(p)
		return err == nil
	})
}

// missingQdiscs reports the qdiscs the RTT phases need (netem, prio) that
// the kernel config neither builds in nor as a module present under
// /lib/modules/RELEASE, "" when none is missing.
func missingQdiscs(config []byte, release string, exists func(string) bool) string {
	var missing []string
	for _, q := range []struct{ option, module string }{{"CONFIG_NET_SCH_NETEM", "sch_netem"}, {"CONFIG_NET_SCH_PRIO", "sch_prio"}} {
		switch {
		case bytes.Contains(config, []byte("\n"+q.option+"=y")):
		case bytes.Contains(config, []byte("\n"+q.option+"=m")):
			dir := "/lib/modules/" + release + "/kernel/net/sched/" + q.module + ".ko"
			if !exists(dir) && !exists(dir+".xz") && !exists(dir+".zst") && !exists(dir+".gz") {
				missing = append(missing, q.option+"=m but no "+q.module+" module in /lib/modules/"+release)
			}
		default:
			missing = append(missing, q.option+" is not set")
		}
	}
	if len(missing) == 0 {
		return ""
	}
	return fmt.Sprintf("kernel %s cannot delay packets with tc netem (/proc/config.gz: %s)", release, strings.Join(missing, ", "))
}

// apiServerPort returns the port of the API server in the kubeconfig.
func apiServerPort(kubeconfig string) (int, error) {
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return 0, err
	}
	u, err := url.Parse(config.Host)
	if err != nil || u.Host == "" {
		u, err = url.Parse("https://" + config.Host)
	}
	if err != nil {
		return 0, fmt.Errorf("API server %q: %w", config.Host, err)
	}
	if p := u.Port(); p != "" {
		return strconv.Atoi(p)
	}
	return 443, nil
}

// rttPaths finds the interfaces the API server's packets to kubectl and to
// the daemon container leave through.
func (b *bench) rttPaths(ctx context.Context) ([]rttPath, error) {
	config, err := clientcmd.BuildConfigFromFlags("", b.o.kubeconfig)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(config.Host)
	if err != nil {
		return nil, err
	}
	host := u.Hostname()
	ips, err := net.DefaultResolver.LookupHost(ctx, host)
	if err != nil || len(ips) == 0 {
		return nil, fmt.Errorf("resolve the API server host %s: %v", host, err)
	}
	kubectlDev, err := routeDev(ctx, ips[0])
	if err != nil {
		return nil, err
	}
	out, err := docker(ctx, time.Minute, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", b.daemon)
	if err != nil {
		return nil, fmt.Errorf("docker inspect %s: %w: %s", b.daemon, err, out)
	}
	addrs := strings.Fields(out)
	if len(addrs) == 0 {
		return nil, fmt.Errorf("daemon container %s has no IP address on a Docker network (host network?)", b.daemon)
	}
	daemonDev, err := routeDev(ctx, addrs[0])
	if err != nil {
		return nil, err
	}
	return []rttPath{{dev: kubectlDev, client: "kubectl"}, {dev: daemonDev, client: "daemon", dst: addrs[0]}}, nil
}

// routeDev returns the interface the host sends packets to ip through.
func routeDev(ctx context.Context, ip string) (string, error) {
	out, err := exec.CommandContext(ctx, "ip", "-o", "route", "get", ip).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ip route get %s: %w: %s", ip, err, out)
	}
	f := strings.Fields(string(out))
	for i := range f[:max(0, len(f)-1)] {
		if f[i] == "dev" {
			return f[i+1], nil
		}
	}
	return "", fmt.Errorf("ip route get %s: no dev in %q", ip, out)
}

func tc(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "tc", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("tc %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// addDelay delays the API server's packets (source port port) on each path
// by rttDelay. Every qdisc it adds is removed by the returned remove (and
// by the bench's cleanup, should the run end first).
func (b *bench) addDelay(ctx context.Context, paths []rttPath, port int) (remove func(context.Context) error, err error) {
	var devs []string
	remove = func(ctx context.Context) error {
		var errs []string
		for _, dev := range devs {
			if err := tc(ctx, "qdisc", "del", "dev", dev, "root", "handle", "1:"); err != nil && !strings.Contains(err.Error(), "Invalid handle") &&
				!strings.Contains(err.Error(), "handle of zero") && !strings.Contains(err.Error(), "No such file") {
				errs = append(errs, err.Error())
			}
		}
		devs = nil
		if len(errs) > 0 {
			return fmt.Errorf("remove the RTT qdiscs (run `tc qdisc del dev DEV root`): %s", strings.Join(errs, "; "))
		}
		return nil
	}
	b.onCleanup("remove the RTT qdiscs", remove)
	byDev := map[string][]rttPath{}
	var order []string
	for _, p := range paths {
		if _, ok := byDev[p.dev]; !ok {
			order = append(order, p.dev)
		}
		byDev[p.dev] = append(byDev[p.dev], p)
	}
	for _, dev := range order {
		out, _ := exec.CommandContext(ctx, "tc", "qdisc", "show", "dev", dev, "root").CombinedOutput()
		if s := string(out); s != "" && !strings.Contains(s, "noqueue") && !strings.Contains(s, "qdisc mq") &&
			!strings.Contains(s, "pfifo_fast") && !strings.Contains(s, "fq_codel 0: root") {
			return remove, fmt.Errorf("%s already has a root qdisc the bench did not add (%s): not replacing it", dev, strings.TrimSpace(s))
		}
		if err := tc(ctx, "qdisc", "add", "dev", dev, "root", "handle", "1:", "prio", "bands", "2",
			"priomap", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0"); err != nil {
			return remove, err
		}
		devs = append(devs, dev)
		ms := strconv.FormatInt(rttDelay.Milliseconds(), 10) + "ms"
		if err := tc(ctx, "qdisc", "add", "dev", dev, "parent", "1:2", "handle", "12:", "netem", "delay", ms, "limit", "100000"); err != nil {
			return remove, err
		}
		for _, p := range byDev[dev] {
			args := []string{"filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
				"match", "ip", "sport", strconv.Itoa(port), "0xffff"}
			if p.dst != "" {
				args = append(args, "match", "ip", "dst", p.dst+"/32")
			}
			if err := tc(ctx, append(args, "flowid", "1:2")...); err != nil {
				return remove, err
			}
		}
	}
	return remove, nil
}

// rttResults are the RTT phases' setup: why they were skipped, or where the
// delay was added.
type rttResults struct {
	Skipped string `json:"skipped,omitempty"`
	// Method is how the delay was added: "netem" (tc on the interfaces) or
	// "relay" (the bench's delaying TCP relay in front of the API server,
	// when the kernel has no netem: NetemUnavailable says why).
	Method           string   `json:"method,omitempty"`
	NetemUnavailable string   `json:"netemUnavailable,omitempty"`
	RelayPort        int      `json:"relayPort,omitempty"`
	DelayMs          float64  `json:"delayMs"`
	APIPort          int      `json:"apiServerPort,omitempty"`
	Interfaces       []string `json:"interfaces,omitempty"` // dev (client)
}

// rttPhases measures keep-alive latency and one bulk stream through the
// baseline and tp with rttDelay added on the API server's leg, or records
// why they cannot run.
func (b *bench) rttPhases(ctx context.Context, pf *portForward, pfRoles func() roles) {
	rt := &b.res.RTT
	rt.DelayMs = float64(rttDelay.Milliseconds())
	if ctx.Err() != nil {
		rt.Skipped = "not run: " + context.Cause(ctx).Error()
		return
	}
	if pf == nil {
		rt.Skipped = "no kubectl port-forward to compare with"
		return
	}
	if reason := netemUnavailable(); reason != "" {
		rt.NetemUnavailable = reason
		b.logf("RTT phases: no netem (%s): a delaying relay in front of the API server instead", reason)
		if err := b.rttRelayPhases(ctx); err != nil {
			rt.Skipped = fmt.Sprintf("%s; the delaying relay instead: %v", reason, err)
			b.logf("RTT phases skipped: %s", rt.Skipped)
		}
		return
	}
	rt.Method = "netem"
	port, err := apiServerPort(b.o.kubeconfig)
	if err != nil {
		rt.Skipped = fmt.Sprintf("the API server's port: %v", err)
		return
	}
	rt.APIPort = port
	paths, err := b.rttPaths(ctx)
	if err != nil {
		rt.Skipped = fmt.Sprintf("the API server's paths: %v", err)
		return
	}
	for _, p := range paths {
		rt.Interfaces = append(rt.Interfaces, fmt.Sprintf("%s (%s)", p.dev, p.client))
	}
	remove, err := b.addDelay(ctx, paths, port)
	defer func() {
		if err := remove(context.WithoutCancel(ctx)); err != nil {
			b.res.Errors = append(b.res.Errors, err.Error())
		}
	}()
	if err != nil {
		rt.Skipped = err.Error()
		b.logf("RTT phases skipped: %s", err)
		return
	}
	b.logf("RTT phases: +%s on the API server's port %d via %v", rttDelay, port, rt.Interfaces)
	runs := []sidePhase{
		{name: "latency-rtt", args: []string{"-n", strconv.Itoa(b.o.rttLatencyN), "-timeout", "60s"}, path: "/", mode: "latency", wait: 90 * time.Second},
		{name: "bulk1-rtt", args: []string{"-bytes", strconv.FormatInt(b.o.rttBulkBytes, 10), "-streams", "1", "-timeout", b.o.bulkTimeout.String()},
			path: "/bytes", mode: "bulk", wait: b.o.bulkTimeout + time.Minute},
	}
	b.runSide(ctx, pf, pfRoles, runs)
}

// rttRelayPhases runs the RTT phases through a delayRelay in front of the
// API server: a second kubectl port-forward and a second tp connection
// (NAME-rtt) whose kubeconfigs point at the relay, and the same probes
// through them. Everything it starts is stopped before it returns (and by
// the bench's cleanup).
func (b *bench) rttRelayPhases(ctx context.Context) error {
	rt := &b.res.RTT
	config, err := clientcmd.LoadFromFile(b.o.kubeconfig)
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	kctx := config.Contexts[config.CurrentContext]
	if kctx == nil || config.Clusters[kctx.Cluster] == nil {
		return fmt.Errorf("kubeconfig %s: no cluster for the current context %q", b.o.kubeconfig, config.CurrentContext)
	}
	cluster := config.Clusters[kctx.Cluster]
	u, err := url.Parse(cluster.Server)
	if err != nil || u.Host == "" {
		return fmt.Errorf("the API server %q: want https://HOST:PORT", cluster.Server)
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	rt.APIPort, _ = strconv.Atoi(port)
	// The daemon container reaches the host at its bridge's gateway
	// (host.docker.internal): the relay listens there and on loopback.
	out, err := docker(ctx, time.Minute, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.Gateway}} {{end}}", b.daemon)
	if err != nil || len(strings.Fields(out)) == 0 {
		return fmt.Errorf("the daemon container's gateway (docker inspect %s): %v %s", b.daemon, err, out)
	}
	gw := strings.Fields(out)[0]
	relay, err := startDelayRelay(u.Host, rttDelay, "127.0.0.1", gw)
	if err != nil {
		return err
	}
	rt.RelayPort = relay.port
	rt.Interfaces = []string{fmt.Sprintf("relay 127.0.0.1:%d (kubectl)", relay.port), fmt.Sprintf("relay %s:%d (daemon)", gw, relay.port)}
	b.onCleanup("stop the delay relay", func(context.Context) error { return relay.Close() })
	defer relay.Close()

	if cluster.TLSServerName == "" && u.Hostname() != "127.0.0.1" && u.Hostname() != "localhost" {
		cluster.TLSServerName = u.Hostname()
	}
	u.Host = net.JoinHostPort("127.0.0.1", strconv.Itoa(relay.port))
	cluster.Server = u.String()
	f, err := os.CreateTemp("", "tp-bench-rtt-kubeconfig-*")
	if err != nil {
		return err
	}
	f.Close()
	defer os.Remove(f.Name())
	if err := clientcmd.WriteToFile(*config, f.Name()); err != nil {
		return fmt.Errorf("write the relay's kubeconfig: %w", err)
	}

	ns := b.res.Namespace
	pf, err := startPortForward(ctx, b.o.kubectl, f.Name(), ns, strings.Fields(b.res.EchoPod)[0], b.o.pfPort+1)
	if err != nil {
		return fmt.Errorf("kubectl port-forward through the relay: %w", err)
	}
	b.onCleanup("stop kubectl port-forward through the relay", func(context.Context) error { return pf.stop() })
	defer pf.stop()

	name := b.o.name + "-rtt"
	quit := func(ctx context.Context) error {
		if _, err := docker(ctx, time.Minute, "container", "inspect", "tp-"+name); err != nil {
			return nil // gone already
		}
		if out, err := b.tp(ctx, time.Minute, "quit", "--name", name); err != nil {
			return fmt.Errorf("tp quit --name %s: %w: %s", name, err, out)
		}
		return nil
	}
	b.onCleanup("tp quit --name "+name, quit)
	defer func() { _ = quit(context.WithoutCancel(ctx)) }()
	if out, err := b.tpWith(ctx, f.Name(), 2*time.Minute, "connect", "--name", name, "-n", ns); err != nil {
		return fmt.Errorf("tp connect --name %s through the relay: %w\n%s", name, err, out)
	}
	tpNet := "container:tp-" + name
	if _, err := b.probeDocker(ctx, "", tpNet, 30*time.Second, "latency", "-url", b.podURL("/"), "-n", "1", "-timeout", "20s"); err != nil {
		return fmt.Errorf("first request through tp (through the relay) to the echo pod: %w", err)
	}
	rt.Method = "relay"
	pfURL := func(path string) string { return fmt.Sprintf("http://127.0.0.1:%d%s", pf.port, path) }
	runs := []sidePhase{
		{name: "latency-rtt", args: []string{"-n", strconv.Itoa(b.o.rttLatencyN), "-timeout", "60s"}, path: "/", mode: "latency", wait: 90 * time.Second},
		{name: "bulk1-rtt", args: []string{"-bytes", strconv.FormatInt(b.o.rttBulkBytes, 10), "-streams", "1", "-timeout", b.o.bulkTimeout.String()},
			path: "/bytes", mode: "bulk", wait: b.o.bulkTimeout + time.Minute},
	}
	for _, r := range runs {
		b.phase(ctx, "port-forward/"+r.name, func(ctx context.Context) error {
			if err := pf.alive(); err != nil {
				return err
			}
			_, err := b.probeDocker(ctx, "pf/"+r.name, "host", r.wait, append([]string{r.mode, "-url", pfURL(r.path)}, r.args...)...)
			return err
		})
		b.phase(ctx, "tp/"+r.name, func(ctx context.Context) error {
			_, err := b.probeDocker(ctx, "tp/"+r.name, tpNet, r.wait, append([]string{r.mode, "-url", b.podURL(r.path)}, r.args...)...)
			return err
		})
	}
	return nil
}
