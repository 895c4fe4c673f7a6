package intercept

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteEnv(t *testing.T) {
	env := map[string]string{"B": "two words", "A": `it's "q" $HOME \x`}
	for _, tc := range []struct{ syntax, want string }{
		{"docker", "A=it's \"q\" $HOME \\x\nB=two words\n"},
		{"compose", "A=\"it's \\\"q\\\" $$HOME \\\\x\"\nB=\"two words\"\n"},
		{"sh", "export A='it'\\''s \"q\" $HOME \\x'\nexport B='two words'\n"},
		{"json", "{\n  \"A\": \"it's \\\"q\\\" $HOME \\\\x\",\n  \"B\": \"two words\"\n}\n"},
	} {
		var buf bytes.Buffer
		if err := WriteEnv(&buf, tc.syntax, env); err != nil {
			t.Fatalf("%s: %v", tc.syntax, err)
		}
		if got := buf.String(); got != tc.want {
			t.Errorf("%s:\ngot  %q\nwant %q", tc.syntax, got, tc.want)
		}
	}
	if err := WriteEnv(new(bytes.Buffer), "docker", map[string]string{"X": "a\nb"}); err == nil {
		t.Error("docker syntax accepted a multi-line value, want an error")
	}
	if err := WriteEnv(new(bytes.Buffer), "toml", env); err == nil || !strings.Contains(err.Error(), "compose") {
		t.Errorf("unknown syntax: got %v, want an error listing the syntaxes", err)
	}
}

// TestWriteEnvShRoundTrip sources the sh output in a real shell.
func TestWriteEnvShRoundTrip(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh on PATH (Windows) to source the sh syntax in")
	}
	env := map[string]string{"V": "multi\nline 'quoted' $dollar `tick`"}
	var buf bytes.Buffer
	if err := WriteEnv(&buf, "sh", env); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "env.sh")
	if err := os.WriteFile(file, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sh, "-c", ". "+file+` && printf %s "$V"`).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := string(out); got != env["V"] {
		t.Errorf("sourced value = %q, want %q", got, env["V"])
	}
}

func TestHasFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		flag string
		want bool
	}{
		{[]string{"-e", "A=1", "-d", "img"}, "-d", true},
		{[]string{"-e", "A=1", "img", "-d"}, "-d", false},
		{[]string{"-dit", "img"}, "-d", true},
		{[]string{"--name=x", "img"}, "--name", true},
		{[]string{"--name", "x", "img"}, "--name", true},
		{[]string{"-v", "/a:/b", "img", "--name", "y"}, "--name", false},
		{[]string{"--rm", "-p", "80:80", "--detach", "img"}, "--detach", true},
	} {
		if got := HasFlag(tc.args, tc.flag); got != tc.want {
			t.Errorf("HasFlag(%q, %q) = %v, want %v", tc.args, tc.flag, got, tc.want)
		}
	}
}
