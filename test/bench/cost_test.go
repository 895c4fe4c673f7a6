package main

import (
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
)

func TestParseStatCPU(t *testing.T) {
	tail := " S 1 13388 13388 0 -1 4194560 9146 0 0 0 1234 567 0 0 20 0 12 0 1700 1326808 12845 18446744073709551615"
	for _, tc := range []struct {
		name, stat string
		want       uint64
		wantErr    bool
	}{
		{"plain", "13388 (tp)" + tail, 1801, false},
		{"comm with spaces and parens", "42 (a (b) c)" + tail, 1801, false},
		{"comm with a digit field look-alike", "42 (1 2 3 4 5 6 7 8 9 10 11 12 13)" + tail, 1801, false},
		{"no comm", "42 tp" + tail, 0, true},
		{"short", "42 (tp) S 1 2 3", 0, true},
		{"bad utime", "42 (tp) S 1 13388 13388 0 -1 4194560 9146 0 0 0 x 567", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStatCPU([]byte(tc.stat))
			if (err != nil) != tc.wantErr {
				t.Fatalf("parseStatCPU(%q) error %v, want error %v", tc.stat, err, tc.wantErr)
			}
			if got != tc.want {
				t.Errorf("parseStatCPU(%q) = %d, want %d", tc.stat, got, tc.want)
			}
		})
	}
}

func TestCPUSecondsOfThisProcess(t *testing.T) {
	s, err := cpuSeconds(1)
	if err != nil {
		t.Skipf("no /proc/1/stat here: %v", err)
	}
	if s < 0 {
		t.Errorf("cpuSeconds(1) = %v, want >= 0", s)
	}
}

func TestMissingQdiscs(t *testing.T) {
	none := func(string) bool { return false }
	for _, tc := range []struct {
		name, config string
		exists       func(string) bool
		want         []string // substrings; nil: nothing missing
	}{
		{"built in", "#\nCONFIG_NET_SCH_NETEM=y\nCONFIG_NET_SCH_PRIO=y\n", none, nil},
		{"modules present", "#\nCONFIG_NET_SCH_NETEM=m\nCONFIG_NET_SCH_PRIO=m\n",
			func(p string) bool { return strings.HasSuffix(p, ".ko.zst") }, nil},
		{"module missing", "#\nCONFIG_NET_SCH_NETEM=m\nCONFIG_NET_SCH_PRIO=y\n", none, []string{"CONFIG_NET_SCH_NETEM=m but no sch_netem"}},
		{"not set", "#\n# CONFIG_NET_SCH_NETEM is not set\n# CONFIG_NET_SCH_PRIO is not set\n", none,
			[]string{"CONFIG_NET_SCH_NETEM is not set", "CONFIG_NET_SCH_PRIO is not set", "kernel 6.18"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := missingQdiscs([]byte(tc.config), "6.18", tc.exists)
			if tc.want == nil && got != "" {
				t.Fatalf("missingQdiscs = %q, want none", got)
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("missingQdiscs = %q, want it to contain %q", got, w)
				}
			}
		})
	}
}

func TestCostArithmetic(t *testing.T) {
	m := &connMemory{Conns: 1000, Opened: 1000, BeforeMB: map[string]float64{"daemon": 50}, PeakMB: map[string]float64{"daemon": 60}}
	if got, ok := m.bytesPerConn("daemon"); !ok || math.Abs(got-10) > 1e-9 {
		t.Errorf("bytesPerConn(daemon) = %v, %v; want 10 KB, true", got, ok)
	}
	if _, ok := m.bytesPerConn("manager"); ok {
		t.Errorf("bytesPerConn(manager) ok without samples, want not ok")
	}
	// Only 500 of 1000 were open at once (stopped early): per open connection.
	half := &connMemory{Conns: 1000, Opened: 500, BeforeMB: map[string]float64{"daemon": 50}, PeakMB: map[string]float64{"daemon": 60}}
	if got, ok := half.bytesPerConn("daemon"); !ok || math.Abs(got-20) > 1e-9 {
		t.Errorf("bytesPerConn(daemon) with 500 open = %v, %v; want 20 KB, true", got, ok)
	}
	none := &connMemory{Conns: 1000, BeforeMB: map[string]float64{"daemon": 50}, PeakMB: map[string]float64{"daemon": 60}}
	if got, ok := none.bytesPerConn("daemon"); ok {
		t.Errorf("bytesPerConn(daemon) with none open = %v, ok; want not ok", got)
	}
	for _, tc := range []struct {
		mb    float64
		limit int64
		want  bool
	}{{200, 256 << 20, false}, {215, 256 << 20, true}, {500, 0, false}} {
		if got := overGuard(tc.mb, tc.limit); got != tc.want {
			t.Errorf("overGuard(%v MB, %d) = %v, want %v", tc.mb, tc.limit, got, tc.want)
		}
	}
	c := costResults{CPU: map[string]*phaseCPU{
		"tp/bulk1": {Bytes: 1e9, CPUSeconds: map[string]float64{"daemon": 3}},
		"tp/bulk4": {Bytes: 3e9, CPUSeconds: map[string]float64{"daemon": 5}},
	}}
	if got, s, gb, ok := c.cpuPerGB("daemon", "tp/bulk1", "tp/bulk4", "tp/missing"); !ok || got != 2 || s != 8 || gb != 4 {
		t.Errorf("cpuPerGB(daemon) = %v, %v s, %v GB, %v; want 2, 8, 4, true", got, s, gb, ok)
	}
	if _, _, _, ok := c.cpuPerGB("manager", "tp/bulk1"); ok {
		t.Errorf("cpuPerGB(manager) ok without samples, want not ok")
	}
}

func TestRSSPeakWindow(t *testing.T) {
	w := &rssPeaks{samples: []rssSample{
		{100, map[string]float64{"daemon": 50}},
		{200, map[string]float64{"daemon": 70}},
		{300, map[string]float64{"daemon": 65, "manager": 40}},
		{400, map[string]float64{"daemon": 90}}, // the second GET on each
	}}
	if got := w.peak(150, 350); got["daemon"] != 70 || got["manager"] != 40 {
		t.Errorf("peak(150, 350) = %v, want daemon 70, manager 40", got)
	}
	if got := w.peak(0, 0); got["daemon"] != 90 {
		t.Errorf("peak(0, 0) = %v, want daemon 90", got)
	}
	m := &connMemory{Conns: 10, Opened: 10, BeforeMB: map[string]float64{"daemon": 50}, PeakMB: w.peak(0, 0), HeldMB: w.peak(150, 350)}
	if got, _ := m.bytesPerConn("daemon"); math.Abs(got-2000) > 1e-6 {
		t.Errorf("bytesPerConn with a held window = %v KB, want 2000 (held 70 MB, not the peak 90)", got)
	}
}

// TestOpenFileLimit reads this process's soft open-file limit from /proc.
func TestOpenFileLimit(t *testing.T) {
	if _, err := os.Stat("/proc/self/limits"); err != nil {
		t.Skip("no /proc/self/limits")
	}
	if n := openFileLimit(strconv.Itoa(os.Getpid())); n <= 0 {
		t.Fatalf("openFileLimit(self) = %d, want > 0", n)
	}
	if n := openFileLimit("0"); n != 0 {
		t.Fatalf("openFileLimit of no process = %d, want 0", n)
	}
}
