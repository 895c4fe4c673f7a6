package sessionid

import "testing"

func TestPublic(t *testing.T) {
	a, b := Public("0123456789abcdef0123456789abcdef"), Public("0123456789abcdef0123456789abcdee")
	if len(a) != 16 {
		t.Errorf("got %q (%d chars), want 16 hex chars", a, len(a))
	}
	if a == b {
		t.Errorf("two secrets got the same public id %q", a)
	}
	if got := Public("0123456789abcdef0123456789abcdef"); got != a {
		t.Errorf("got %q, want %q: not stable", got, a)
	}
	if got := Public(""); got != "" {
		t.Errorf("Public(\"\") = %q, want empty", got)
	}
}
