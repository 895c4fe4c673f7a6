package owner

import (
	"os/exec"
	"runtime"
	"testing"
)

func TestLabelsRoundTrip(t *testing.T) {
	o := Owner{Host: "h", PID: 42, Start: "123"}
	got, ok := FromLabels(o.Labels())
	if !ok || got != o {
		t.Errorf("FromLabels(Labels()) = %+v, %v, want %+v, true", got, ok, o)
	}
	for _, labels := range []map[string]string{nil, {LabelHost: "h"}, {LabelHost: "h", LabelPID: "x"}, {LabelPID: "3"}} {
		if o, ok := FromLabels(labels); ok {
			t.Errorf("FromLabels(%v) = %+v, true, want false", labels, o)
		}
	}
}

func TestGone(t *testing.T) {
	if runtime.GOOS != "linux" && runtime.GOOS != "darwin" {
		t.Skip("start times are read on Linux and macOS only")
	}
	me := Self()
	if me.Start == "" {
		t.Fatal("Self has no start time")
	}
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	ended := cmd.Process.Pid
	for _, tc := range []struct {
		name string
		o    Owner
		want bool
	}{
		{"self", me, false},
		{"an ended process", Owner{Host: me.Host, PID: ended, Start: "1"}, true},
		{"our pid, another start (reused pid)", Owner{Host: me.Host, PID: me.PID, Start: me.Start + "0"}, true},
		{"another host", Owner{Host: me.Host + "-other", PID: ended, Start: "1"}, false},
		{"a live pid without start time", Owner{Host: me.Host, PID: 1}, false},
	} {
		if got := tc.o.Gone(); got != tc.want {
			t.Errorf("%s: Owner%+v.Gone() = %v, want %v", tc.name, tc.o, got, tc.want)
		}
	}
	if s, ok := startTime(me.PID); !ok || s != me.Start {
		t.Errorf("startTime(%d) = %q, %v, want %q, true", me.PID, s, ok, me.Start)
	}
}
