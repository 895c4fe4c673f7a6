package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// With -profile DIR, the phases that carry the performance issue's gaps (tp's
// bulk and latency, outbound and inbound) run under `perf record` of tp's
// processes on this machine: the bench daemon, the traffic-manager and the
// traffic-agents. perf samples on-CPU stacks of every thread, so a profile
// needs no pprof listener in any role (none of them opens one) and sees the
// kernel side of each copy too. DIR gets PHASE.data (for `perf report -i`)
// and PHASE.txt (the top symbols per process); the JSON results keep the top
// lines by phase.

// profiledPhases are the phases recorded with -profile.
var profiledPhases = map[string]bool{
	"tp/bulk1": true, "tp/bulk4": true, "tp/latency": true,
	"inbound/intercept-bulk": true, "inbound/intercept-latency": true,
}

// profileTop is how many symbols per process the results keep.
const profileTop = 8

// profile starts perf for phase when profiling is on and phase is one of
// profiledPhases; the returned stop ends the recording and writes the report.
// Profiling never fails a phase: what goes wrong is a note.
func (b *bench) profile(ctx context.Context, phase string) (stop func()) {
	if b.o.profileDir == "" || !profiledPhases[phase] {
		return func() {}
	}
	roles := b.tpProcesses()
	if len(roles) == 0 {
		b.res.note("profile %s: no tp process found in /proc", phase)
		return func() {}
	}
	pids := make([]string, 0, len(roles))
	for pid := range roles {
		pids = append(pids, strconv.Itoa(pid))
	}
	base := filepath.Join(b.o.profileDir, strings.ReplaceAll(phase, "/", "-"))
	var stderr bytes.Buffer
	// -F 499: about 2 ms between samples, cheap enough not to move the numbers much.
	rec := exec.Command("perf", "record", "-F", "499", "-g", "-p", strings.Join(pids, ","), "-o", base+".data")
	rec.Stderr = &stderr
	if err := rec.Start(); err != nil {
		b.res.note("profile %s: start perf (install linux-perf): %v", phase, err)
		return func() {}
	}
	return func() {
		_ = rec.Process.Signal(syscall.SIGINT)
		done := make(chan error, 1)
		go func() { done <- rec.Wait() }()
		select {
		case err := <-done:
			var exit *exec.ExitError
			if err != nil && !errors.As(err, &exit) { // perf exits non-zero after SIGINT on some versions
				b.res.note("profile %s: perf record: %v: %s", phase, err, tail(stderr.String(), 3))
				return
			}
		case <-time.After(30 * time.Second):
			_ = rec.Process.Kill()
			<-done
			b.res.note("profile %s: perf record did not stop within 30 s", phase)
			return
		}
		top, err := perfReport(ctx, base+".data", roles)
		if err != nil {
			b.res.note("profile %s: %v", phase, err)
			return
		}
		if err := os.WriteFile(base+".txt", []byte(strings.Join(top, "\n")+"\n"), 0o644); err != nil {
			b.res.note("profile %s: %v", phase, err)
		}
		if b.res.Profiles == nil {
			b.res.Profiles = map[string][]string{}
		}
		b.res.Profiles[phase] = top
	}
}

// tpProcesses returns tp's processes on this machine by pid: the bench
// connection's daemon, the managers and the agents.
func (b *bench) tpProcesses() map[int]string {
	roles := map[int]string{}
	for _, pid := range findProcs(b.daemonMatcher()) {
		roles[pid] = "daemon"
	}
	for _, pid := range findProcs(isManager) {
		roles[pid] = "manager"
	}
	for _, pid := range findProcs(isAgent) {
		roles[pid] = "agent"
	}
	return roles
}

// isAgent matches `/tp agent ...` (not agent-init, which has exited).
func isAgent(args []string) bool {
	return len(args) >= 2 && filepath.Base(args[0]) == "tp" && args[1] == "agent"
}

// perfReport returns, per process, the share of samples and the top symbols
// by self time, as lines "ROLE PID: NN.N% of samples; SYM NN.N%, ...".
func perfReport(ctx context.Context, data string, roles map[int]string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "perf", "report", "-i", data, "--stdio", "--no-children",
		"--sort", "pid,sym", "-g", "none", "--percent-limit", "0.5").Output()
	if err != nil {
		return nil, fmt.Errorf("perf report -i %s: %w", data, err)
	}
	type proc struct {
		total float64
		syms  []string
	}
	procs := map[int]*proc{}
	var order []int
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		// "    12.34%  4242:tp  [.] runtime.memmove"
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasSuffix(f[0], "%") || strings.HasPrefix(f[0], "#") {
			continue
		}
		pct, err := strconv.ParseFloat(strings.TrimSuffix(f[0], "%"), 64)
		if err != nil {
			continue
		}
		pidStr, _, _ := strings.Cut(f[1], ":")
		pid, err := strconv.Atoi(pidStr)
		if err != nil {
			continue
		}
		p := procs[pid]
		if p == nil {
			p = &proc{}
			procs[pid] = p
			order = append(order, pid)
		}
		p.total += pct
		if len(p.syms) < profileTop {
			sym := strings.Join(f[3:], " ")
			if f[2] == "[k]" {
				sym = "kernel " + sym
			}
			p.syms = append(p.syms, fmt.Sprintf("%s %.1f%%", sym, pct))
		}
	}
	var lines []string
	for _, pid := range order {
		role := roles[pid]
		if role == "" {
			role = "other"
		}
		p := procs[pid]
		lines = append(lines, fmt.Sprintf("%s %d: %.1f%% of samples (listed above 0.5%%); %s", role, pid, p.total, strings.Join(p.syms, "; ")))
	}
	if len(lines) == 0 {
		return nil, fmt.Errorf("perf report -i %s: no samples of tp's processes", data)
	}
	return lines, nil
}
