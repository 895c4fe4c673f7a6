package rolecmd

import (
	"math"
	"runtime/debug"
	"testing"
)

func TestSoftLimitOfContainer(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  bool
	}{
		{"", 0, false},
		{"268435456", 241591905, false}, // 256 MiB -> 90 %
		{"256Mi", 0, true},
		{"0", 0, true},
		{"-5", 0, true},
	} {
		got, err := SoftLimitOfContainer(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("SoftLimitOfContainer(%q) = %d, %v; want %d, error %t", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestSetSoftMemoryLimit(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(before) })

	t.Setenv("GOMEMLIMIT", "")
	debug.SetMemoryLimit(math.MaxInt64)
	if got := SetSoftMemoryLimit(64 << 20); got != 64<<20 {
		t.Errorf("without GOMEMLIMIT: limit %d, want %d", got, 64<<20)
	}
	if got := SetSoftMemoryLimit(0); got != 64<<20 {
		t.Errorf("limit 0 changed the limit to %d", got)
	}

	// The runtime applied GOMEMLIMIT at start; the call must not override it.
	t.Setenv("GOMEMLIMIT", "100MiB")
	debug.SetMemoryLimit(100 << 20)
	if got := SetSoftMemoryLimit(64 << 20); got != 100<<20 {
		t.Errorf("with GOMEMLIMIT=100MiB: limit %d, want %d", got, 100<<20)
	}
}
