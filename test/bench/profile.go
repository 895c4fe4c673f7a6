package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
// profiledPhases, one recording per role (daemon, manager, agent); the
// returned stop ends the recordings and writes the reports. Profiling never
// fails a phase: what goes wrong is a note.
func (b *bench) profile(ctx context.Context, phase string) (stop func()) {
	if b.o.profileDir == "" || !profiledPhases[phase] {
		return func() {}
	}
	byRole := map[string][]string{}
	for pid, role := range b.tpProcesses() {
		byRole[role] = append(byRole[role], strconv.Itoa(pid))
	}
	if len(byRole) == 0 {
		b.res.note("profile %s: no tp process found in /proc", phase)
		return func() {}
	}
	type recording struct {
		role, data string
		cmd        *exec.Cmd
		stderr     bytes.Buffer
	}
	var recs []*recording
	base := filepath.Join(b.o.profileDir, strings.ReplaceAll(phase, "/", "-"))
	for _, role := range slices.Sorted(maps.Keys(byRole)) {
		r := &recording{role: role, data: base + "-" + role + ".data"}
		// -F 499: about 2 ms between samples, cheap enough not to move the numbers much.
		r.cmd = exec.Command("perf", "record", "-F", "499", "-g", "-p", strings.Join(byRole[role], ","), "-o", r.data)
		r.cmd.Stderr = &r.stderr
		if err := r.cmd.Start(); err != nil {
			b.res.note("profile %s: start perf (install linux-perf): %v", phase, err)
			continue
		}
		recs = append(recs, r)
	}
	return func() {
		var lines []string
		for _, r := range recs {
			if err := stopPerf(r.cmd); err != nil {
				b.res.note("profile %s %s: perf record: %v: %s", phase, r.role, err, tail(r.stderr.String(), 3))
				continue
			}
			top, err := perfReport(ctx, r.data)
			if err != nil {
				b.res.note("profile %s %s: %v", phase, r.role, err)
				continue
			}
			lines = append(lines, r.role+": "+strings.Join(top, "; "))
		}
		if len(lines) == 0 {
			return
		}
		if err := os.WriteFile(base+".txt", []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			b.res.note("profile %s: %v", phase, err)
		}
		if b.res.Profiles == nil {
			b.res.Profiles = map[string][]string{}
		}
		b.res.Profiles[phase] = lines
	}
}

// stopPerf ends a perf record the way Ctrl-C does, so that it writes its file.
func stopPerf(cmd *exec.Cmd) error {
	_ = cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) { // perf exits non-zero after SIGINT on some versions
			return err
		}
		return nil
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		return errors.New("did not stop within 30 s of SIGINT")
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

// perfReport returns the top symbols by self time of one recording, as
// "SYM NN.N%" (kernel symbols prefixed "kernel"). The image's binary is
// stripped (-s -w) unless built with `make ... STRIP=`; perf then shows Go
// code as bare addresses.
func perfReport(ctx context.Context, data string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "perf", "report", "-i", data, "--stdio", "--no-children",
		"--sort", "sym", "-g", "none", "--percent-limit", "0.5").Output()
	if err != nil {
		return nil, fmt.Errorf("perf report -i %s: %w", data, err)
	}
	var top []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() && len(top) < profileTop {
		// "    12.34%  [.] runtime.memmove"
		f := strings.Fields(sc.Text())
		if len(f) < 3 || !strings.HasSuffix(f[0], "%") {
			continue
		}
		if _, err := strconv.ParseFloat(strings.TrimSuffix(f[0], "%"), 64); err != nil {
			continue
		}
		sym := strings.Join(f[2:], " ")
		if f[1] == "[k]" {
			sym = "kernel " + sym
		}
		top = append(top, fmt.Sprintf("%s %s", sym, f[0]))
	}
	if len(top) == 0 {
		return nil, fmt.Errorf("perf report -i %s: no samples", data)
	}
	return top, nil
}
