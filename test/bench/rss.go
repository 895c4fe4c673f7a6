package main

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The daemon and the manager run on this machine (in a Docker container and
// in a pod of the local cluster), so their memory is read from /proc.

// findProcs returns the pids whose command line (arguments joined by spaces)
// satisfies match.
func findProcs(match func(args []string) bool) []int {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var pids []int
	for _, d := range dirs {
		raw, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil || len(raw) == 0 {
			continue
		}
		args := strings.Split(string(bytes.TrimRight(raw, "\x00")), "\x00")
		if match(args) {
			if pid, err := strconv.Atoi(filepath.Base(d)); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	slices.Sort(pids)
	return pids
}

// daemonMatcher matches `/tp daemon run ... --connection NAME ...`.
func (b *bench) daemonMatcher() func([]string) bool {
	return func(args []string) bool {
		if len(args) < 3 || args[1] != "daemon" || args[2] != "run" {
			return false
		}
		for i, a := range args {
			if a == "--connection="+b.o.name || a == "--connection" && i+1 < len(args) && args[i+1] == b.o.name {
				return true
			}
		}
		return false
	}
}

// isManager matches `/tp manager ...`.
func isManager(args []string) bool {
	return len(args) >= 2 && filepath.Base(args[0]) == "tp" && args[1] == "manager"
}

// memStatus returns VmRSS and VmHWM of pid in MB (10^6 bytes).
func memStatus(pid int) (rss, hwm float64, ok bool) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, _ := strings.Cut(sc.Text(), ":")
		fields := strings.Fields(val)
		if len(fields) == 0 || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			continue
		}
		if key == "VmRSS" {
			rss, ok = kb*1024/1e6, true
		} else {
			hwm = kb * 1024 / 1e6
		}
	}
	return rss, hwm, ok
}

// daemonRSS returns the bench daemon's VmRSS (MB) and pid (0 when not found).
func (b *bench) daemonRSS() (float64, int) {
	for _, pid := range findProcs(b.daemonMatcher()) {
		if rss, _, ok := memStatus(pid); ok {
			return rss, pid
		}
	}
	return 0, 0
}

// managerRSS returns the largest VmRSS of the traffic-manager processes.
func managerRSS() (float64, []int) {
	pids := findProcs(isManager)
	var peak float64
	for _, pid := range pids {
		if rss, _, ok := memStatus(pid); ok {
			peak = max(peak, rss)
		}
	}
	return peak, pids
}

// sampler polls the daemon's and the manager's RSS and keeps the peaks.
type sampler struct {
	stopc chan struct{}
	wg    sync.WaitGroup
	peaks samples
}

type samples struct {
	daemonPeakMB, daemonHWMMB, managerPeakMB float64
	samples                                  int
}

func startSampler(daemon func([]string) bool) *sampler {
	s := &sampler{stopc: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		var dpid int
		var mpids []int
		for n := 0; ; n++ {
			if dpid == 0 || n%50 == 0 { // re-find now and then: cheap enough, and pods restart
				if p := findProcs(daemon); len(p) > 0 {
					dpid = p[0]
				}
				mpids = findProcs(isManager)
			}
			if rss, hwm, ok := memStatus(dpid); ok {
				s.peaks.daemonPeakMB = max(s.peaks.daemonPeakMB, rss)
				s.peaks.daemonHWMMB = max(s.peaks.daemonHWMMB, hwm)
			} else {
				dpid = 0
			}
			for _, pid := range mpids {
				if rss, _, ok := memStatus(pid); ok {
					s.peaks.managerPeakMB = max(s.peaks.managerPeakMB, rss)
				}
			}
			s.peaks.samples++
			select {
			case <-s.stopc:
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// stop ends the sampling and returns the peaks.
func (s *sampler) stop() samples {
	close(s.stopc)
	s.wg.Wait()
	return s.peaks
}
