// Package phasetrace prints how long the phases of a tp command take, to
// stderr, when the environment has TP_TRACE=1: a hidden switch to see
// where a command's wall time goes (test/bench/README.md, "Where tp
// intercept's time goes"). Without it every call is a no-op.
package phasetrace

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Env is the variable that turns tracing on.
const Env = "TP_TRACE"

var (
	mu    sync.Mutex
	out   io.Writer
	start time.Time
)

func init() {
	if os.Getenv(Env) != "" {
		out, start = os.Stderr, time.Now()
	}
}

// Enabled says whether TP_TRACE is set.
func Enabled() bool { return out != nil }

// Begin starts phase and returns the function that ends it; the end prints
// the phase's start (from the first package init that reads TP_TRACE,
// about main's start), its duration, and the wall clock, so that the
// lines of concurrent phases can be told apart.
func Begin(phase string) (end func()) {
	if out == nil {
		return func() {}
	}
	t0 := time.Now()
	return func() {
		t1 := time.Now()
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(out, "tp trace: %-28s start +%6.1f ms  took %6.1f ms  (%s)\n", phase,
			ms(t0.Sub(start)), ms(t1.Sub(t0)), t1.Format("15:04:05.000000"))
	}
}

// Mark prints an instant: phase happened now.
func Mark(phase string) {
	if out == nil {
		return
	}
	now := time.Now()
	mu.Lock()
	defer mu.Unlock()
	fmt.Fprintf(out, "tp trace: %-28s at    +%6.1f ms                   (%s)\n", phase, ms(now.Sub(start)), now.Format("15:04:05.000000"))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
