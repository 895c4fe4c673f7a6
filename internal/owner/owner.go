// Package owner names a tp process in Docker labels, so that another tp
// process can tell whether the one that made a container or volume still
// runs: the next tp command removes what a killed CLI left (its --docker-run
// container, its volumes). A process is its host name, its pid and its start
// time, so that a pid the kernel reused names another process.
package owner

import (
	"os"
	"strconv"
	"sync"
)

// The labels that Owner.Labels sets.
const (
	LabelHost  = "tp.run/owner-host"
	LabelPID   = "tp.run/owner-pid"
	LabelStart = "tp.run/owner-start"
)

// Owner is a process on a host.
type Owner struct {
	Host  string
	PID   int
	Start string // the process's start time as the OS tells it; "" when unknown
}

var self = sync.OnceValue(func() Owner {
	host, _ := os.Hostname()
	pid := os.Getpid()
	start, _ := startTime(pid)
	return Owner{Host: host, PID: pid, Start: start}
})

// Self is this process.
func Self() Owner { return self() }

// Labels are o as Docker labels.
func (o Owner) Labels() map[string]string {
	return map[string]string{LabelHost: o.Host, LabelPID: strconv.Itoa(o.PID), LabelStart: o.Start}
}

// FromLabels is the owner that labels name; false when they name none.
func FromLabels(labels map[string]string) (Owner, bool) {
	pid, err := strconv.Atoi(labels[LabelPID])
	if err != nil || pid <= 0 || labels[LabelHost] == "" {
		return Owner{}, false
	}
	return Owner{Host: labels[LabelHost], PID: pid, Start: labels[LabelStart]}, true
}

// Gone says whether o is known to have ended: it ran on this host and no
// process has its pid, or the process with its pid started at another
// time. An owner on another host (a CLI elsewhere using the same Docker
// engine), or one this OS cannot tell about, is not gone.
func (o Owner) Gone() bool {
	me := Self()
	if o.Host != me.Host || o.PID <= 0 {
		return false
	}
	if o.PID == me.PID {
		return o.Start != me.Start && o.Start != "" && me.Start != ""
	}
	start, exists := startTime(o.PID)
	switch {
	case !exists:
		return true
	case o.Start == "" || start == "":
		return false // the pid runs; without start times it may be o
	default:
		return start != o.Start
	}
}
