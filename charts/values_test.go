package charts

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestMergeValues(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	first := write("first.yaml", "image:\n  registry: a.example\n  name: tp\nlogLevel: debug\nrbac:\n  managedNamespaces: [shop, billing]\n")
	second := write("second.yaml", "image:\n  registry: b.example\nsession:\n  ttl: 30s\n")

	tests := []struct {
		name               string
		files, set, setStr []string
		want               map[string]any
	}{
		{name: "nothing", want: map[string]any{}},
		{
			name:  "files merge deeply, later wins",
			files: []string{first, second},
			want: map[string]any{
				"image":    map[string]any{"registry": "b.example", "name": "tp"},
				"logLevel": "debug",
				"rbac":     map[string]any{"managedNamespaces": []any{"shop", "billing"}},
				"session":  map[string]any{"ttl": "30s"},
			},
		},
		{
			name:   "set over files, set-string over set",
			files:  []string{first},
			set:    []string{"image.tag=123", "rbac.namespaced=true", "rbac.managedNamespaces={z}", "logLevel=warn"},
			setStr: []string{"logLevel=error", "session.ttl=10"},
			want: map[string]any{
				"image":    map[string]any{"registry": "a.example", "name": "tp", "tag": int64(123)},
				"logLevel": "error",
				"rbac":     map[string]any{"namespaced": true, "managedNamespaces": []any{"z"}},
				"session":  map[string]any{"ttl": "10"},
			},
		},
		{
			name:   "set-string keeps numbers as strings",
			setStr: []string{"image.tag=123"},
			want:   map[string]any{"image": map[string]any{"tag": "123"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := MergeValues(tt.files, tt.set, tt.setStr)
			if err != nil {
				t.Fatalf("MergeValues: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %#v, want %#v", got, tt.want)
			}
		})
	}
}

func TestMergeValuesErrors(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("image: [unclosed\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name               string
		files, set, setStr []string
	}{
		{name: "missing file", files: []string{filepath.Join(t.TempDir(), "missing.yaml")}},
		{name: "invalid yaml", files: []string{bad}},
		{name: "invalid set", set: []string{"image.tag"}},
		{name: "invalid set-string", setStr: []string{"a[x]=1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, err := MergeValues(tt.files, tt.set, tt.setStr); err == nil {
				t.Errorf("got %v, want an error", got)
			}
		})
	}
}
