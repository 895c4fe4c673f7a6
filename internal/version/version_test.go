package version

import "testing"

func TestTag(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"v0.1.0", "v0.1.0"},
		{"v0.1.0+dirty", "v0.1.0-dirty"},
		{"", "dev"},
		{"abc/def", "abc-def"},
	} {
		Version = tc.in
		if got := Tag(); got != tc.want {
			t.Errorf("Tag(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	Version = "v1"
	if got, want := Image(), "tp:v1"; got != want {
		t.Errorf("Image() = %q, want %q", got, want)
	}
}
