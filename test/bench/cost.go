package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Cost as the work grows: CPU seconds of the processes on the path per GB
// moved in the bulk phases, and their RSS with N connections held open. The
// baseline's process is kubectl port-forward on the host; tp's are the bench
// daemon and the traffic-manager (shared: other connections' traffic counts
// too, see the notes on other connections).

// userHZ is the unit of utime and stime in /proc/PID/stat: USER_HZ, 100 on
// every Linux architecture the bench runs on (sysconf(_SC_CLK_TCK)).
const userHZ = 100

// parseStatCPU returns utime+stime (in clock ticks) of a /proc/PID/stat line.
// The command name (field 2) is in parentheses and may hold spaces and
// parentheses itself, so the fields are counted after its last ')'.
func parseStatCPU(stat []byte) (uint64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("proc stat %.60q: no ')' after the command name", stat)
	}
	// After ")": state (field 3), ppid, pgrp, session, tty_nr, tpgid, flags,
	// minflt, cminflt, majflt, cmajflt, utime (14), stime (15).
	f := bytes.Fields(stat[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("proc stat %.60q: %d fields after the command name, want at least 13", stat, len(f))
	}
	utime, err := strconv.ParseUint(string(f[11]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("proc stat utime: %w", err)
	}
	stime, err := strconv.ParseUint(string(f[12]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("proc stat stime: %w", err)
	}
	return utime + stime, nil
}

// cpuSeconds returns the CPU time (user+system) pid has used so far.
func cpuSeconds(pid int) (float64, error) {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	ticks, err := parseStatCPU(raw)
	if err != nil {
		return 0, err
	}
	return float64(ticks) / userHZ, nil
}

// roles names the processes one side's costs are read from: role -> pids.
type roles map[string][]int

// tpRoles are tp's processes on the path: the bench daemon and the manager.
func (b *bench) tpRoles() roles {
	r := roles{}
	if p := findProcs(b.daemonMatcher()); len(p) > 0 {
		r["daemon"] = p[:1]
	}
	if p := findProcs(isManager); len(p) > 0 {
		r["manager"] = p
	}
	return r
}

// cpu sums the CPU seconds of each role's processes.
func (r roles) cpu() (map[string]float64, error) {
	out := map[string]float64{}
	var errs []error
	for role, pids := range r {
		for _, pid := range pids {
			s, err := cpuSeconds(pid)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s pid %d: %w", role, pid, err))
				continue
			}
			out[role] += s
		}
	}
	return out, errors.Join(errs...)
}

// rss is the largest VmRSS (MB) among each role's processes.
func (r roles) rss() map[string]float64 {
	out := map[string]float64{}
	for role, pids := range r {
		for _, pid := range pids {
			if v, _, ok := memStatus(pid); ok {
				out[role] = max(out[role], v)
			}
		}
	}
	return out
}

// rssPeaks samples r.rss every 100 ms until stop.
type rssPeaks struct {
	stopc   chan struct{}
	wg      sync.WaitGroup
	samples []rssSample
}

type rssSample struct {
	unixMs int64
	mb     map[string]float64 // by role
}

func watchRSS(r roles) *rssPeaks {
	w := &rssPeaks{stopc: make(chan struct{})}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			w.samples = append(w.samples, rssSample{time.Now().UnixMilli(), r.rss()})
			select {
			case <-w.stopc:
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

// stop ends the sampling.
func (w *rssPeaks) stop() {
	close(w.stopc)
	w.wg.Wait()
}

// peak is each role's largest sample taken from fromMs to toMs (Unix ms;
// toMs 0: to the end).
func (w *rssPeaks) peak(fromMs, toMs int64) map[string]float64 {
	out := map[string]float64{}
	for _, s := range w.samples {
		if s.unixMs < fromMs || toMs != 0 && s.unixMs > toMs {
			continue
		}
		for role, v := range s.mb {
			out[role] = max(out[role], v)
		}
	}
	return out
}

// costResults are the raw numbers of the cost rows.
type costResults struct {
	// CPU is the CPU time used by each role during a bulk phase, with the
	// bytes that phase moved, by phase key ("pf/bulk1", "tp/bulk4").
	CPU map[string]*phaseCPU `json:"cpu,omitempty"`
	// Conns is the memory of each role before and while N connections were
	// held open, by phase key ("pf/hold10", "tp/hold10000").
	Conns map[string]*connMemory `json:"conns,omitempty"`
}

type phaseCPU struct {
	Bytes      int64              `json:"bytes"`
	CPUSeconds map[string]float64 `json:"cpuSeconds"` // by role: kubectl, daemon, manager
}

type connMemory struct {
	Conns       int                `json:"conns"`
	OK          int64              `json:"ok"`
	Opened      int64              `json:"opened"`            // connections the probe had open at once (the hold's first GET answered)
	Stopped     string             `json:"stopped,omitempty"` // why the bench ended the probe early (the manager's memory limit)
	OpenSeconds float64            `json:"openSeconds"`
	BeforeMB    map[string]float64 `json:"beforeMB"` // VmRSS right before the connections opened, by role
	PeakMB      map[string]float64 `json:"peakMB"`   // VmRSS peak during the phase (sampled every 100 ms), the second GET on each included
	// HeldMB is the VmRSS peak while every connection was open and idle
	// (the probe's -hold-for), the RSS "at N".
	HeldMB map[string]float64 `json:"heldMB,omitempty"`
}

// atN is role's RSS with the N connections open: while they were held
// idle when the probe says when that was, else the phase's peak.
func (c *connMemory) atN(role string) (float64, bool) {
	if v, ok := c.HeldMB[role]; ok {
		return v, true
	}
	v, ok := c.PeakMB[role]
	return v, ok
}

// bytesPerConn is (RSS at N - RSS before) / N for role, in KB (10^3 bytes).
func (c *connMemory) bytesPerConn(role string) (float64, bool) {
	before, ok1 := c.BeforeMB[role]
	peak, ok2 := c.atN(role)
	n := c.open()
	if !ok1 || !ok2 || n == 0 {
		return 0, false
	}
	return (peak - before) * 1e6 / float64(n) / 1e3, true
}

// open is how many connections were open at once: what the probe says,
// else (a probe without the count) those that answered twice.
func (c *connMemory) open() int64 {
	if c.Opened > 0 {
		return c.Opened
	}
	return c.OK
}

// managerGuard is the share of the traffic-manager's memory limit at which
// a hold phase is ended (the kubelet OOM-kills the shared manager at the
// limit: 10 000 connections did at 256 MiB).
const managerGuard = 0.8

// guard ends a hold (kill) once over says why (a non-empty reason).
type guard struct {
	stopc  chan struct{}
	wg     sync.WaitGroup
	reason string
}

func startGuard(over func() string, kill func()) *guard {
	g := &guard{stopc: make(chan struct{})}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-g.stopc:
				return
			case <-tick.C:
			}
			if reason := over(); reason != "" {
				g.reason = reason
				kill()
				return
			}
		}
	}()
	return g
}

// memoryOver: why role's RSS is at managerGuard of limit bytes, or "".
func memoryOver(rs roles, role string, limit int64) func() string {
	return func() string {
		if mb := rs.rss()[role]; overGuard(mb, limit) {
			return fmt.Sprintf("stopped: %s RSS %.0f MB reached %.0f%% of its memory limit %.0f MB", role, mb, managerGuard*100, float64(limit)/1e6)
		}
		return ""
	}
}

// containerdPIDFile is the test bed's containerd (hack/cluster), which
// serves every port-forwarded connection with a few descriptors.
const containerdPIDFile = "/var/lib/tp-cluster/run/containerd.pid"

// filesOver: why the cluster's containerd holds managerGuard of its
// open-file limit, or "". At the limit it fails every port-forward and pod
// sandbox for minutes ("too many open files"), and the phases after a
// 10 000-connection kubectl hold with it; nothing when containerd is not
// the test bed's.
func filesOver() func() string {
	b, err := os.ReadFile(containerdPIDFile)
	if err != nil {
		return func() string { return "" }
	}
	pid := strings.TrimSpace(string(b))
	limit := openFileLimit(pid)
	return func() string {
		if limit <= 0 {
			return ""
		}
		fds, err := os.ReadDir("/proc/" + pid + "/fd")
		if err != nil || float64(len(fds)) < managerGuard*float64(limit) {
			return ""
		}
		return fmt.Sprintf("stopped: the cluster's containerd held %d open files, %.0f%% of its limit %d", len(fds), managerGuard*100, limit)
	}
}

// openFileLimit is the soft "Max open files" of pid, or 0.
func openFileLimit(pid string) int {
	b, err := os.ReadFile("/proc/" + pid + "/limits")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max open files"); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				n, _ := strconv.Atoi(f[0])
				return n
			}
		}
	}
	return 0
}

// overGuard says whether rssMB (10^6 bytes) is at managerGuard of limit bytes.
func overGuard(rssMB float64, limit int64) bool {
	return limit > 0 && rssMB*1e6 >= managerGuard*float64(limit)
}

// stop ends the guard and returns why it ended the probe ("" if it did not).
func (g *guard) stop() string {
	close(g.stopc)
	g.wg.Wait()
	return g.reason
}

// cpuPerGB sums the CPU seconds of role over phases and divides by the
// gigabytes (10^9 bytes) they moved.
func (c costResults) cpuPerGB(role string, phases ...string) (perGB, seconds, gb float64, ok bool) {
	for _, p := range phases {
		x := c.CPU[p]
		if x == nil {
			continue
		}
		s, has := x.CPUSeconds[role]
		if !has {
			continue
		}
		seconds += s
		gb += float64(x.Bytes) / 1e9
		ok = true
	}
	if !ok || gb == 0 {
		return 0, seconds, gb, false
	}
	return seconds / gb, seconds, gb, true
}
