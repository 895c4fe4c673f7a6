package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// probeResult is what `probe bench` prints (test/probe/bench.go).
type probeResult struct {
	Mode        string           `json:"mode"`
	Target      string           `json:"target"`
	OK          int64            `json:"ok"`
	Failed      int64            `json:"failed"`
	Seconds     float64          `json:"seconds"`
	TimedOut    bool             `json:"timedOut,omitempty"`
	Errors      []string         `json:"errors,omitempty"`
	Bytes       int64            `json:"bytes,omitempty"`
	Streams     int              `json:"streams,omitempty"`
	Latency     *percentiles     `json:"latencyMicros,omitempty"`
	Connections int64            `json:"connections,omitempty"`
	Copies      map[string]int64 `json:"copies,omitempty"`
	// CopiesByConn counts steady replies by copy and connection kind ("local/fresh", "cluster/keepalive").
	CopiesByConn map[string]int64 `json:"copiesByConn,omitempty"`
	Rcodes       map[string]int64 `json:"rcodes,omitempty"`
	LastByCopy   map[string]int64 `json:"lastByCopyUnixMs,omitempty"`
	FirstByCopy  map[string]int64 `json:"firstByCopyUnixMs,omitempty"`
	FailedAt     []int64          `json:"failedAtUnixMs,omitempty"`
	OpenSeconds  float64          `json:"openSeconds,omitempty"`
	Opened       int64            `json:"opened,omitempty"`
	// HeldFromUnixMs and HeldToUnixMs: hold -hold-for, every connection open and idle.
	HeldFromUnixMs int64 `json:"heldFromUnixMs,omitempty"`
	HeldToUnixMs   int64 `json:"heldToUnixMs,omitempty"`
}

type percentiles struct {
	N      int     `json:"n"`
	P50    float64 `json:"p50"`
	P90    float64 `json:"p90"`
	P99    float64 `json:"p99"`
	Max    float64 `json:"max"`
	Mean   float64 `json:"mean"`
	Over1s int     `json:"over1s,omitempty"` // samples of 1 s or more (a lost SYN's retransmission)
}

// decodeProbe decodes the last JSON line of a probe's output.
func decodeProbe(out string) (*probeResult, error) {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for _, l := range slices.Backward(lines) {
		if !strings.HasPrefix(strings.TrimSpace(l), "{") {
			continue
		}
		var r probeResult
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			return nil, fmt.Errorf("decode probe result %q: %w", l, err)
		}
		return &r, nil
	}
	return nil, fmt.Errorf("no result in probe output %q", tail(out, 400))
}

// mbps is the bulk rate in MB/s (10^6 bytes).
func (r *probeResult) mbps() float64 {
	if r.Seconds == 0 {
		return 0
	}
	return float64(r.Bytes) / r.Seconds / 1e6
}

func (r *probeResult) perSecond() float64 {
	if r.Seconds == 0 {
		return 0
	}
	return float64(r.OK) / r.Seconds
}

func (r *probeResult) summary() string {
	s := fmt.Sprintf("%s: ok %d failed %d in %.2fs", r.Mode, r.OK, r.Failed, r.Seconds)
	if r.Bytes > 0 {
		s += fmt.Sprintf(", %.1f MB/s", r.mbps())
	}
	if r.Latency != nil {
		s += fmt.Sprintf(", p50 %.0fµs p99 %.0fµs", r.Latency.P50, r.Latency.P99)
	}
	if r.Mode == "connrate" {
		s += fmt.Sprintf(", %.0f conn/s", r.perSecond())
	}
	if r.Latency != nil && r.Latency.Over1s > 0 {
		s += fmt.Sprintf(", %d took >= 1s", r.Latency.Over1s)
	}
	if r.TimedOut {
		s += " (timed out)"
	}
	if len(r.Errors) > 0 {
		s += fmt.Sprintf(", errors %q", r.Errors)
	}
	return s
}

// results is everything the run measured, written as JSON.
type results struct {
	Started           time.Time               `json:"started"`
	Seconds           float64                 `json:"seconds"`
	Options           map[string]any          `json:"options"`
	Machine           machine                 `json:"machine"`
	TPVersion         string                  `json:"tpVersion"`
	ManagerVersion    string                  `json:"managerVersion"`
	Namespace         string                  `json:"namespace"`
	EchoPod           string                  `json:"echoPod"`
	PortForwardPort   int                     `json:"portForwardPort,omitempty"`
	PortForwardErrors []string                `json:"portForwardErrors,omitempty"`
	Table             []row                   `json:"table"`
	Connect           connectTimes            `json:"connect"`
	Memory            memoryUse               `json:"memory"`
	Intercept         interceptResults        `json:"intercept"`
	Volumes           volumeResults           `json:"volumes"`
	Cost              costResults             `json:"cost"`
	RTT               rttResults              `json:"rtt"`
	Probes            map[string]*probeResult `json:"probes"` // every probe run, by phase
	Failures          map[string]string       `json:"failures,omitempty"`
	// Retries are measurements through tp run again: the connection changed
	// under them (the shared traffic-manager replaced, the daemon
	// reconnected) or they failed.
	Retries []string `json:"retries,omitempty"`
	// Profiles are the top symbols per tp process by phase (-profile).
	Profiles map[string][]string `json:"profiles,omitempty"`
	Notes    []string            `json:"notes,omitempty"`
	Errors   []string            `json:"errors,omitempty"`
}

type machine struct {
	CPUs         int    `json:"cpus"`
	Kernel       string `json:"kernel"`
	LoadAvgStart string `json:"loadAvgStart"`
	LoadAvgEnd   string `json:"loadAvgEnd"`
	// OtherConnections are daemon containers of other connections running at the start.
	OtherConnections []string `json:"otherConnections,omitempty"`
}

type connectTimes struct {
	FirstSeconds  float64   `json:"firstSeconds"` // may include installing the manager
	RunsSeconds   []float64 `json:"runsSeconds"`  // quit, then connect: image and manager present
	MedianSeconds float64   `json:"medianSeconds"`
}

type memoryUse struct {
	DaemonPID         int     `json:"daemonPid"`
	DaemonIdleMB      float64 `json:"daemonIdleMB"`
	DaemonLoadPeakMB  float64 `json:"daemonLoadPeakMB"` // VmRSS sampled every 100 ms during the load phases
	DaemonHWMMB       float64 `json:"daemonHwmMB"`      // VmHWM at the end of the load phases
	DaemonAfterLoadMB float64 `json:"daemonAfterLoadMB"`
	ManagerPIDs       []int   `json:"managerPids"`
	ManagerIdleMB     float64 `json:"managerIdleMB"`
	ManagerLoadPeakMB float64 `json:"managerLoadPeakMB"`
	Samples           int     `json:"samples"`
}

type interceptResults struct {
	Skipped               string  `json:"skipped,omitempty"`
	FirstInjectionSeconds float64 `json:"firstInjectionSeconds,omitempty"`
	AgentPresentSeconds   float64 `json:"agentPresentSeconds,omitempty"`
	LeaveSeconds          float64 `json:"leaveSeconds,omitempty"`
	SecondLeaveSeconds    float64 `json:"secondLeaveSeconds,omitempty"`
	LeaveStartUnixMs      int64   `json:"leaveStartUnixMs,omitempty"`
	LeaveEndUnixMs        int64   `json:"leaveEndUnixMs,omitempty"`
	// AfterLeaveMs: for "local/fresh", "local/keepalive" (and all "local") the
	// last reply by the local copy relative to when `tp leave` returned; for
	// "cluster/..." the first reply by the app relative to when it started.
	AfterLeaveMs map[string]float64 `json:"afterLeaveMs,omitempty"`
	// AgentPods are the echo pods with the tp-agent container after the
	// first intercept, out of EchoPods.
	AgentPods int `json:"agentPods"`
	EchoPods  int `json:"echoPods"`
}

// row is one line of the table; values are nil when not measured.
type row struct {
	Metric   string   `json:"metric"`
	Unit     string   `json:"unit"`
	Baseline *float64 `json:"baseline,omitempty"`
	TP       *float64 `json:"tp,omitempty"`
	Ratio    *float64 `json:"ratio,omitempty"` // tp / baseline
	Target   string   `json:"target"`
	Note     string   `json:"note,omitempty"`
	Section  bool     `json:"section,omitempty"`
	// BaselinePhase and TPPhase name the phases behind the values: a failed
	// phase shows as "failed" (details under failures).
	BaselinePhase string `json:"baselinePhase,omitempty"`
	TPPhase       string `json:"tpPhase,omitempty"`
}

func newResults(o options) *results {
	return &results{
		Started: time.Now(),
		Options: map[string]any{
			"tp": o.tp, "kubectl": o.kubectl, "name": o.name, "bulkBytes": o.bulkBytes, "bulkTimeout": o.bulkTimeout.String(),
			"latencyN": o.latencyN, "connN": o.connN, "connC": o.connC, "connTimeout": o.connTimeout.String(),
			"holdN": o.holdN, "holdTimeout": o.holdTimeout.String(), "scaleConns": o.scaleConns, "rttLatencyN": o.rttLatencyN, "rttBulkBytes": o.rttBulkBytes, "connectRuns": o.connectRuns, "inboundBytes": o.inboundBytes,
		},
		Probes:   map[string]*probeResult{},
		Failures: map[string]string{},
		Cost:     costResults{CPU: map[string]*phaseCPU{}, Conns: map[string]*connMemory{}},
	}
}

func (r *results) fail(phase string, err error) { r.Failures[phase] = err.Error() }

func (r *results) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// table turns the results into the rows of the report.
func (r *results) table() []row {
	var rows []row
	val := func(f float64) *float64 { return &f }
	probe := func(key string, f func(*probeResult) float64) *float64 {
		if p := r.Probes[key]; p != nil {
			return val(f(p))
		}
		return nil
	}
	side := func(metric, unit, key, target string, f func(*probeResult) float64) {
		x := row{Metric: metric, Unit: unit, Baseline: probe("pf/"+key, f), TP: probe("tp/"+key, f), Target: target,
			BaselinePhase: "port-forward/" + key, TPPhase: "tp/" + key}
		rows = append(rows, x)
	}
	mbps := (*probeResult).mbps
	p50 := func(p *probeResult) float64 { return latency(p).P50 / 1e3 }
	p99 := func(p *probeResult) float64 { return latency(p).P99 / 1e3 }
	ok := func(p *probeResult) float64 { return float64(p.OK) }

	rows = append(rows, row{Metric: "outbound: container -> echo pod", Section: true, Note: "baseline: kubectl port-forward on the host, client --network host"})
	side("bulk download, 1 stream", "MB/s", "bulk1", ">= 0.95x", mbps)
	side("bulk download, 4 streams", "MB/s", "bulk4", ">= 1.5x", mbps)
	side("HTTP latency p50, one keep-alive conn", "ms", "latency", "<= 1.25x", p50)
	rows[len(rows)-1].Note = fmt.Sprintf("workload: many small round trips on one connection (%v sequential GETs)", r.Options["latencyN"])
	side("HTTP latency p99, one keep-alive conn", "ms", "latency", "<= 1.5x", p99)
	rows = append(rows, row{Metric: "HTTP latency p50 by service name (tp)", Unit: "ms",
		Baseline: probe("pf/latency", p50), TP: probe("tp/latency-svc", p50), Target: "", Note: "tp: http://echo.NS/ (service port 80)",
		BaselinePhase: "port-forward/latency", TPPhase: "tp/latency-svc"})
	side("new connections (connect+GET+close)", "conn/s", "connrate", ">= 1000/s", (*probeResult).perSecond)
	rows[len(rows)-1].Note = fmt.Sprintf("workload: many short connections (%v at a time)", r.Options["connC"])
	side("  failed of "+fmt.Sprint(r.Options["connN"]), "count", "connrate", "0", func(p *probeResult) float64 {
		return float64(p.Failed) + float64(max(0, toInt64(r.Options["connN"])-p.OK-p.Failed))
	})
	side(fmt.Sprintf("connections held open at once, ok of %v", r.Options["holdN"]), "count", "hold", "all", ok)

	rttNote := "tc netem on the API server's port, for kubectl and the daemon alike"
	if r.RTT.Method == "relay" {
		rttNote = "no netem in this kernel: a relay in front of the API server delays its answers, for kubectl and the daemon alike"
	}
	rows = append(rows, row{Metric: fmt.Sprintf("outbound with %.0f ms added RTT on the API server's leg", r.RTT.DelayMs), Section: true, Note: rttNote})
	if r.RTT.Skipped != "" {
		rows = append(rows, row{Metric: "RTT measurements skipped", Note: firstLine(r.RTT.Skipped)})
	} else {
		// The delay is really there when both p50s jump by about it.
		added := func(side string) string {
			with, without := r.Probes[side+"/latency-rtt"], r.Probes[side+"/latency"]
			if with == nil || without == nil {
				return "-"
			}
			return fmt.Sprintf("%+.1f ms", (latency(with).P50-latency(without).P50)/1e3)
		}
		side("HTTP latency p50, one keep-alive conn, +RTT", "ms", "latency-rtt", "-", p50)
		rows[len(rows)-1].Note = fmt.Sprintf("added RTT measured (p50 jump): port-forward %s, tp %s; via %s", added("pf"), added("tp"), strings.Join(r.RTT.Interfaces, ", "))
		side("HTTP latency p99, one keep-alive conn, +RTT", "ms", "latency-rtt", "-", p99)
		side("bulk download, 1 stream, +RTT", "MB/s", "bulk1-rtt", "-", mbps)
	}

	rows = append(rows, row{Metric: "DNS: daemon at 127.0.0.1:53", Section: true, Note: "miekg/dns client in a joined container"})
	dnsRow := func(metric, key, target string) row {
		x := row{Metric: metric, Unit: "µs", TP: probe(key, func(p *probeResult) float64 { return latency(p).P50 }), Target: target, TPPhase: key}
		if p := r.Probes[key]; p != nil {
			x.Note = fmt.Sprintf("p99 %.0f µs, answers %v", latency(p).P99, p.Rcodes)
		}
		return x
	}
	rows = append(rows,
		dnsRow("DNS cold p50 (distinct pod names)", "tp/dns-cold-pod", "<= 1000 µs"),
		dnsRow("DNS cold p50 (distinct NXDOMAIN svc names)", "tp/dns-cold-nxdomain", "<= 1000 µs"),
		dnsRow("DNS cached p50 (one name repeated)", "tp/dns-cached", "<= 60 µs"),
	)

	rows = append(rows, row{Metric: "connection and memory", Section: true})
	c := r.Connect
	rows = append(rows, row{Metric: fmt.Sprintf("tp connect wall time, median of %d", len(c.RunsSeconds)), Unit: "s", TP: nonZero(c.MedianSeconds), Target: "<= 1.5 s",
		Note: fmt.Sprintf("runs %s; first connect %.2fs", fmtList(c.RunsSeconds), c.FirstSeconds)})
	m := r.Memory
	rows = append(rows,
		row{Metric: "daemon RSS idle", Unit: "MB", TP: nonZero(m.DaemonIdleMB), Target: "<= 35 MB"},
		row{Metric: "daemon RSS peak under load", Unit: "MB", TP: nonZero(m.DaemonLoadPeakMB), Target: "<= 80 MB",
			Note: fmt.Sprintf("VmHWM %.1f MB, %.1f MB after load", m.DaemonHWMMB, m.DaemonAfterLoadMB)},
		row{Metric: "manager RSS idle", Unit: "MB", TP: nonZero(m.ManagerIdleMB), Target: "<= 40 MB",
			Note: fmt.Sprintf("peak under load %.1f MB", m.ManagerLoadPeakMB)},
	)

	rows = append(rows, r.costRows(func(metric, unit, key, target string) row {
		return row{Metric: metric, Unit: unit, Target: target, BaselinePhase: "port-forward/" + key, TPPhase: "tp/" + key}
	})...)

	ic := r.Intercept
	rows = append(rows, row{Metric: "inbound: cluster pod -> http://echo.NS", Section: true, Note: "baseline column: the same client pod against the app, no intercept"})
	if ic.Skipped != "" {
		rows = append(rows, row{Metric: "intercept measurements skipped", Note: firstLine(ic.Skipped)})
	} else {
		inbound := func(metric, unit, base, tp string, f func(*probeResult) float64) {
			rows = append(rows, row{Metric: metric, Unit: unit, Baseline: probe(base, f), TP: probe(tp, f), BaselinePhase: base, TPPhase: tp})
		}
		rows = append(rows,
			row{Metric: "intercept setup, first injection", Unit: "s", TP: nonZero(ic.FirstInjectionSeconds),
				Note: fmt.Sprintf("echo pods with the agent after it: %d of %d", ic.AgentPods, ic.EchoPods)},
			row{Metric: "intercept setup, agent present", Unit: "s", TP: nonZero(ic.AgentPresentSeconds), Target: "<= 0.05 s", TPPhase: "intercept/agent-present"})
		inbound("inbound HTTP latency p50 via intercept", "ms", "inbound/app-latency", "inbound/intercept-latency", p50)
		inbound("inbound HTTP latency p99 via intercept", "ms", "inbound/app-latency", "inbound/intercept-latency", p99)
		inbound("inbound bulk via intercept, 1 stream", "MB/s", "inbound/app-bulk", "inbound/intercept-bulk", mbps)
		inbound("inbound HTTP p50 via agent, no intercept", "ms", "inbound/app-latency", "inbound/agent-latency", p50)
		// The inbound targets compare an intercepted request with
		// the outbound path's baseline: both cross one port-forward.
		rows = append(rows,
			row{Metric: "inbound HTTP p50 via intercept / outbound port-forward p50", Unit: "ms", Baseline: probe("pf/latency", p50), TP: probe("inbound/intercept-latency", p50),
				Target: "<= 1.3x", BaselinePhase: "port-forward/latency", TPPhase: "inbound/intercept-latency", Note: "baseline: the outbound port-forward row"},
			row{Metric: "inbound bulk via intercept / outbound port-forward bulk", Unit: "MB/s", Baseline: probe("pf/bulk1", mbps), TP: probe("inbound/intercept-bulk", mbps),
				Target: ">= 0.9x", BaselinePhase: "port-forward/bulk1", TPPhase: "inbound/intercept-bulk", Note: "baseline: the outbound port-forward row"})
		leaveRow := row{Metric: "failed requests, steady load across tp leave", Unit: "count", TPPhase: "inbound/leave-under-load"}
		if p := r.Probes["inbound/leave-under-load"]; p != nil {
			leaveRow.TP = val(float64(p.Failed))
			leaveRow.Note = fmt.Sprintf("of %d; leave took %.2fs", p.OK+p.Failed, ic.LeaveSeconds)
			for _, kind := range []string{"fresh", "keepalive"} {
				leaveRow.Note += fmt.Sprintf("; %s conns: ", map[string]string{"fresh": "new", "keepalive": "keep-alive"}[kind])
				if ms, ok := ic.AfterLeaveMs["local/"+kind]; ok {
					leaveRow.Note += fmt.Sprintf("local copy until %+.0f ms, ", ms)
				}
				if ms, ok := ic.AfterLeaveMs["cluster/"+kind]; ok {
					leaveRow.Note += fmt.Sprintf("app from %+.0f ms", ms)
				} else {
					leaveRow.Note += "app never (run ended)"
				}
			}
		}
		rows = append(rows, leaveRow)
	}
	if v := r.Volumes; v.Skipped == "" && v.BigMB > 0 {
		rows = append(rows, row{Metric: "volumes: the pod's emptyDir mounted in a local container", Section: true,
			Note: "baseline: kubectl exec into the app container (kubectl cp needs tar, which the scratch image lacks)"})
		rows = append(rows,
			row{Metric: fmt.Sprintf("sequential read, %d MB file", v.BigMB), Unit: "MB/s", Baseline: nonZero(v.ReadBaselineMBps), TP: nonZero(v.ReadMBps), Target: ">= 0.8x", TPPhase: "volumes/read", BaselinePhase: "volumes/read"},
			row{Metric: fmt.Sprintf("find + stat, %d files", v.Files), Unit: "s", TP: nonZero(v.WalkSeconds), Target: "<= 2 s", TPPhase: "volumes/walk", Note: "no find in the app container"},
			row{Metric: fmt.Sprintf("read %d small files", v.Files), Unit: "s", Baseline: nonZero(v.SmallBaseline), TP: nonZero(v.SmallSeconds), TPPhase: "volumes/small", BaselinePhase: "volumes/small"},
			row{Metric: fmt.Sprintf("sequential write, %d MB file", v.BigMB), Unit: "MB/s", TP: nonZero(v.WriteMBps), TPPhase: "volumes/write"},
			row{Metric: "first mount ready (docker run -v minus docker run)", Unit: "s", TP: val(v.MountReadySeconds), Target: "<= 1 s", TPPhase: "volumes/mount-ready"},
		)
	}
	for i := range rows {
		x := &rows[i]
		if x.Baseline != nil && x.TP != nil && *x.Baseline != 0 {
			x.Ratio = val(*x.TP / *x.Baseline)
		}
	}
	return rows
}

func latency(p *probeResult) percentiles {
	if p.Latency == nil {
		return percentiles{}
	}
	return *p.Latency
}

func nonZero(f float64) *float64 {
	if f == 0 {
		return nil
	}
	return &f
}

func toInt64(v any) int64 {
	switch x := v.(type) {
	case int:
		return int64(x)
	case int64:
		return x
	}
	return 0
}

func fmtList(xs []float64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprintf("%.2fs", x)
	}
	return "[" + strings.Join(s, " ") + "]"
}

func fmtValue(v *float64, unit string) string {
	if v == nil {
		return "-"
	}
	switch unit {
	case "ms":
		return fmt.Sprintf("%.3f ms", *v)
	case "count":
		return fmt.Sprintf("%.0f", *v)
	case "conn/s", "µs":
		return fmt.Sprintf("%.0f %s", *v, unit)
	case "s":
		return fmt.Sprintf("%.2f s", *v)
	case "s/GB":
		return fmt.Sprintf("%.2f s/GB", *v)
	}
	return fmt.Sprintf("%.1f %s", *v, unit)
}

// report prints the table and failures to stdout and writes the JSON.
func (b *bench) report() {
	r := b.res
	r.Table = r.table()
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "\ntp bench: %s, manager %s, %d CPUs, load %s -> %s, %.0fs\n", r.TPVersion, r.ManagerVersion, r.Machine.CPUs, r.Machine.LoadAvgStart, r.Machine.LoadAvgEnd, r.Seconds)
	fmt.Fprintln(w, "metric\tport-forward (baseline)\ttp\tratio\ttarget\tnote")
	fmt.Fprintln(w, "\t\t\t(tp/baseline)\t(the issue's)\t")
	for _, x := range r.Table {
		if x.Section {
			fmt.Fprintf(w, "-- %s\t\t\t\t\t%s\n", x.Metric, x.Note)
			continue
		}
		ratio := "-"
		if x.Ratio != nil {
			ratio = fmt.Sprintf("%.2fx", *x.Ratio)
		}
		target := x.Target
		if target == "" {
			target = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", x.Metric, r.cell(x.Baseline, x.Unit, x.BaselinePhase),
			r.cell(x.TP, x.Unit, x.TPPhase), ratio, target, x.Note)
	}
	_ = w.Flush()
	for _, k := range slices.Sorted(maps.Keys(r.Failures)) {
		fmt.Printf("FAILED %s: %s\n", k, firstLine(r.Failures[k]))
	}
	for _, k := range slices.Sorted(maps.Keys(r.Probes)) {
		if p := r.Probes[k]; p.TimedOut || len(p.Errors) > 0 {
			fmt.Printf("note %s: %s\n", k, p.summary())
		}
	}
	for _, phase := range slices.Sorted(maps.Keys(r.Profiles)) {
		fmt.Printf("profile %s (perf, self time):\n", phase)
		for _, l := range r.Profiles[phase] {
			fmt.Println("  " + l)
		}
	}
	for _, d := range r.Retries {
		fmt.Println("retried:", d)
	}
	for _, n := range r.Notes {
		fmt.Println("note:", n)
	}
	for _, e := range r.Errors {
		fmt.Println("error:", e)
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err == nil {
		err = os.WriteFile(b.o.out, append(data, '\n'), 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: write results:", err)
		return
	}
	fmt.Printf("raw results: %s\n", b.o.out)
}

// cell shows a value, or "failed" when its phase failed.
func (r *results) cell(v *float64, unit, phase string) string {
	if _, failed := r.Failures[phase]; failed && phase != "" {
		return "failed"
	}
	return fmtValue(v, unit)
}

func firstLine(s string) string {
	l, rest, _ := strings.Cut(s, "\n")
	if rest != "" {
		l += " ..."
	}
	return l
}

// costRows are the rows of the cost as the work grows: CPU per GB moved and
// memory per open connection.
func (r *results) costRows(newRow func(metric, unit, key, target string) row) []row {
	rows := []row{{Metric: "cost as the work grows", Section: true, Note: "baseline: the kubectl port-forward process"}}
	c := r.Cost
	bulk := []string{"bulk1", "bulk4"}
	pfKeys, tpKeys := []string{"pf/bulk1", "pf/bulk4"}, []string{"tp/bulk1", "tp/bulk4"}
	for _, role := range []string{"daemon", "manager"} {
		x := newRow(role+" CPU per GB moved (bulk 1+4 streams)", "s/GB", bulk[0], "-")
		var notes []string
		if role == "daemon" {
			if v, s, gb, ok := c.cpuPerGB("kubectl", pfKeys...); ok {
				x.Baseline = &v
				notes = append(notes, fmt.Sprintf("kubectl %.2f CPU-s for %.2f GB", s, gb))
			}
		} else {
			x.BaselinePhase = ""
		}
		if v, s, gb, ok := c.cpuPerGB(role, tpKeys...); ok {
			x.TP = &v
			notes = append(notes, fmt.Sprintf("%s %.2f CPU-s for %.2f GB", role, s, gb))
		}
		x.Note = strings.Join(notes, "; ")
		rows = append(rows, x)
	}
	var ns []int
	for k, m := range c.Conns {
		if strings.HasPrefix(k, "tp/") || strings.HasPrefix(k, "pf/") {
			if !slices.Contains(ns, m.Conns) {
				ns = append(ns, m.Conns)
			}
		}
	}
	slices.Sort(ns)
	key := func(n int) string {
		if fmt.Sprint(n) == fmt.Sprint(r.Options["holdN"]) {
			return "hold"
		}
		return "hold" + strconv.Itoa(n)
	}
	for _, n := range ns {
		k := key(n)
		pm, tm := c.Conns["pf/"+k], c.Conns["tp/"+k]
		for _, role := range []string{"daemon", "manager"} {
			x := newRow(fmt.Sprintf("%s memory per open conn, %d held", role, n), "KB/conn", k, "-")
			var notes []string
			if tm != nil {
				if v, ok := tm.bytesPerConn(role); ok {
					x.TP = &v
					at, _ := tm.atN(role)
					notes = append(notes, fmt.Sprintf("%s RSS %.1f -> %.1f MB (peak %.1f)", role, tm.BeforeMB[role], at, tm.PeakMB[role]))
				}
				notes = append(notes, fmt.Sprintf("tp open at once %d of %d (after %.1fs)", tm.open(), n, tm.OpenSeconds))
				if tm.Stopped != "" {
					notes = append(notes, tm.Stopped)
				}
			}
			if role == "daemon" && pm != nil {
				if v, ok := pm.bytesPerConn("kubectl"); ok {
					x.Baseline = &v
					at, _ := pm.atN("kubectl")
					notes = append(notes, fmt.Sprintf("kubectl RSS %.1f -> %.1f MB", pm.BeforeMB["kubectl"], at))
				}
				notes = append(notes, fmt.Sprintf("kubectl open at once %d of %d (after %.1fs)", pm.open(), n, pm.OpenSeconds))
				if pm.Stopped != "" {
					notes = append(notes, "kubectl "+pm.Stopped)
				}
			}
			if role == "manager" {
				x.BaselinePhase = ""
			}
			x.Note = strings.Join(notes, "; ")
			rows = append(rows, x)
		}
	}
	return rows
}
