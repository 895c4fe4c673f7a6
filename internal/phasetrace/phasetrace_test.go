package phasetrace

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestBeginPrintsOnlyWhenEnabled(t *testing.T) {
	saved, savedStart := out, start
	t.Cleanup(func() { out, start = saved, savedStart })

	out = nil
	Begin("quiet")()
	Mark("quiet")

	var buf bytes.Buffer
	out, start = &buf, time.Now()
	end := Begin("docker exec")
	Mark("main")
	end()
	got := buf.String()
	for _, want := range []string{"tp trace: main ", "tp trace: docker exec ", "took"} {
		if !strings.Contains(got, want) {
			t.Errorf("trace %q: want %q in it", got, want)
		}
	}
	if n := strings.Count(got, "\n"); n != 2 {
		t.Errorf("trace has %d lines, want 2: %q", n, got)
	}
}
