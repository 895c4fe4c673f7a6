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

func TestVerifier(t *testing.T) {
	secret := "0123456789abcdef0123456789abcdef"
	v := Verifier(secret)
	if len(v) != 64 {
		t.Errorf("got %q (%d chars), want 64 hex chars", v, len(v))
	}
	if pub := Public(secret); len(pub) > 0 && v[:len(pub)] == pub {
		t.Errorf("verifier %q starts with the public id %q", v, pub)
	}
	tests := []struct {
		secret, verifier string
		want             bool
	}{
		{secret, v, true},
		{"0123456789abcdef0123456789abcdee", v, false},
		{"", v, false},
		{secret, "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		if got := Verify(tt.secret, tt.verifier); got != tt.want {
			t.Errorf("Verify(%q, %q) = %v, want %v", tt.secret, tt.verifier, got, tt.want)
		}
	}
}
