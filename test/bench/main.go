// Command bench measures tp against the transport it rides on and prints the
// numbers side by side (`make bench`). It is a program, not a test:
// performance is reported, never asserted.
//
// In one run, on the real local cluster and Docker engine, it
//
//   - deploys the echo example in a fresh namespace;
//   - baseline: runs the real `kubectl port-forward pod/<echo> PORT:8080` on the
//     host and the probe's bench client in a container with --network host
//     against 127.0.0.1:PORT;
//   - tp: runs `tp connect --name bench` and the same client in a container
//     joined to tp-bench against the pod IP (and the service name);
//   - measures bulk download (1 and 4 streams), HTTP latency over one
//     keep-alive connection, new connections per second, 1000 connections held
//     open at once, the daemon's DNS (cold and cached), `tp connect` wall time,
//     the daemon's and the manager's memory (idle and peak under load);
//   - intercepts echo to a local copy joined to tp-bench and measures, from a
//     client pod in the cluster, setup time (first injection and agent
//     present), latency and bulk against the app itself (baseline) and through
//     the intercept, and failed requests across `tp leave`;
//   - prints a table (metric | port-forward (baseline) | tp | ratio | target)
//     and writes every raw number as JSON to -out;
//   - removes everything it created (namespace, connection, port-forward,
//     containers), also when a phase fails or the run is interrupted.
//
// Usage (from the repository root, with `make build image cluster-up` done and
// the images loaded into the cluster):
//
//	go run ./test/bench -tp bin/tp -out bench-results.json
//
// With -faults FILE it only prints the recovery table of the e2e fault suite
// (test/e2e/faults_test.go, which appends its results to $TP_FAULTS_OUT):
// `make bench-faults` runs the suite and then this.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options are the command line.
type options struct {
	tp               string
	kubectl          string
	kubeconfig       string
	out              string
	manifest         string
	name             string // tp connection name
	managerNamespace string
	pfPort           int
	timeout          time.Duration

	bulkBytes     int64
	bulkTimeout   time.Duration
	latencyN      int
	connN         int
	connC         int
	connTimeout   time.Duration
	holdN         int
	holdTimeout   time.Duration
	scaleConns    []int
	rttLatencyN   int
	rttBulkBytes  int64
	connectRuns   int
	inboundBytes  int64
	skipIntercept bool
	only          string
	faults        string
	profileDir    string
}

func main() {
	var o options
	flag.StringVar(&o.tp, "tp", "bin/tp", "the tp CLI under test")
	flag.StringVar(&o.kubectl, "kubectl", "", "kubectl for the baseline port-forward (default: kubectl in PATH, else .cache/cluster/bin/kubectl)")
	flag.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig (default: $KUBECONFIG, else /var/lib/tp-cluster/kubeconfig)")
	flag.StringVar(&o.out, "out", "bench-results.json", "where to write the raw results as JSON")
	flag.StringVar(&o.manifest, "manifest", "examples/echo/k8s/echo.yaml", "the echo example's manifest")
	flag.StringVar(&o.name, "name", "bench", "tp connection name (daemon container tp-NAME)")
	flag.StringVar(&o.managerNamespace, "manager-namespace", "tp", "namespace of the (shared) traffic-manager, watched for replacements during measurements")
	flag.IntVar(&o.pfPort, "pf-port", 18080, "local port of the baseline port-forward (another free port when taken)")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "give up the whole run after this long (cleanup still runs)")
	flag.Int64Var(&o.bulkBytes, "bulk-bytes", 1<<30, "bytes per bulk download run")
	flag.DurationVar(&o.bulkTimeout, "bulk-timeout", 30*time.Second, "bound of each bulk run (the rate is computed from what arrived)")
	flag.IntVar(&o.latencyN, "latency-n", 2000, "requests over one keep-alive connection")
	flag.IntVar(&o.connN, "conn-n", 10000, "new connections in the connection-rate run")
	flag.IntVar(&o.connC, "conn-c", 32, "concurrency of the connection-rate run")
	flag.DurationVar(&o.connTimeout, "conn-timeout", 40*time.Second, "bound of each connection-rate run")
	flag.IntVar(&o.holdN, "hold-n", 1000, "connections held open at once")
	flag.DurationVar(&o.holdTimeout, "hold-timeout", 2*time.Minute, "bound of each hold run (opening, holding -hold-for 3s, and using every connection)")
	scale := flag.String("scale-conns", "10,10000", "comma-separated connection counts held open for the memory-per-connection rows (besides -hold-n)")
	flag.IntVar(&o.rttLatencyN, "rtt-latency-n", 200, "requests over one keep-alive connection with the added RTT")
	flag.Int64Var(&o.rttBulkBytes, "rtt-bulk-bytes", 256<<20, "bytes of the bulk run with the added RTT")
	flag.IntVar(&o.connectRuns, "connect-runs", 3, "tp quit + tp connect runs for the connect time")
	flag.Int64Var(&o.inboundBytes, "inbound-bytes", 1<<30, "bytes of the inbound bulk run (in-cluster client)")
	flag.BoolVar(&o.skipIntercept, "skip-intercept", false, "skip the intercept measurements")
	flag.StringVar(&o.only, "only", "", `"volumes": connect and measure only the volumes section (quicker, for work on the plugin)`)
	flag.StringVar(&o.faults, "faults", "", "print the e2e fault suite's results in this file (TP_FAULTS_OUT) as a Markdown table and exit")
	flag.StringVar(&o.profileDir, "profile", "", "record perf CPU profiles of the daemon, manager and agents during tp's bulk and latency phases into this directory (needs perf: Debian's linux-perf)")
	flag.Parse()
	for _, f := range strings.Split(*scale, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "bench: -scale-conns %q: want positive counts\n", *scale)
			os.Exit(2)
		}
		o.scaleConns = append(o.scaleConns, n)
	}

	if o.faults != "" {
		if err := faultTable(o.faults, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}

	if o.kubeconfig == "" {
		o.kubeconfig = os.Getenv("KUBECONFIG")
	}
	if o.kubeconfig == "" {
		o.kubeconfig = "/var/lib/tp-cluster/kubeconfig"
	}
	if o.kubectl == "" {
		o.kubectl = defaultKubectl()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func defaultKubectl() string {
	if p, err := exec.LookPath("kubectl"); err == nil {
		return p
	}
	return ".cache/cluster/bin/kubectl"
}
