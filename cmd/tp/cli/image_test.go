package cli

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"k8s.io/cli-runtime/pkg/genericiooptions"
)

func TestImageLoadCommand(t *testing.T) {
	for _, tc := range []struct {
		c        localCluster
		wantTool string
		wantArgs string
		wantErr  string
	}{
		{c: localCluster{kind: "dev"}, wantTool: "kind", wantArgs: "load docker-image tp:v1 --name dev"},
		{c: localCluster{minikube: "minikube"}, wantTool: "minikube", wantArgs: "image load tp:v1 --daemon --profile minikube"},
		{c: localCluster{k3d: "k3s-default"}, wantTool: "k3d", wantArgs: "image import tp:v1 --cluster k3s-default"},
		{c: localCluster{}, wantErr: "name the cluster: --kind NAME"},
		{c: localCluster{kind: "a", k3d: "b"}, wantErr: "--kind and --k3d: give one of them"},
		{c: localCluster{minikube: "--profile"}, wantErr: `--minikube "--profile" is not a cluster name`},
		{c: localCluster{kind: " dev"}, wantErr: "is not a cluster name"},
	} {
		tool, args, err := tc.c.command("tp:v1")
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%+v: err %v, want %q", tc.c, err, tc.wantErr)
			}
			continue
		}
		if err != nil || tool != tc.wantTool || strings.Join(args, " ") != tc.wantArgs {
			t.Errorf("%+v: %s %q (%v), want %s %s", tc.c, tool, args, err, tc.wantTool, tc.wantArgs)
		}
	}
}

// TestRunLoadTool runs a stand-in kind from PATH: it gets the arguments and
// the engine's environment (DOCKER_HOST), its output reaches the streams and
// its failure is tp's; a tool not in PATH is named with where to get it.
func TestRunLoadTool(t *testing.T) {
	dir := t.TempDir()
	record := filepath.Join(dir, "record")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	exe := ""
	if runtime.GOOS == "windows" {
		exe = ".exe"
	}
	if err := os.WriteFile(filepath.Join(dir, "kind"+exe), bin, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	var out, errOut strings.Builder
	streams := genericiooptions.IOStreams{Out: &out, ErrOut: &errOut}
	_, args, _ := localCluster{kind: "dev"}.command("tp:v1")
	env := []string{"DOCKER_HOST=unix:///run/other.sock", envFakeTool + "=" + record}
	if err := runLoadTool(context.Background(), streams, "kind", args, env); err != nil {
		t.Fatalf("runLoadTool: %v\n%s", err, errOut.String())
	}
	got, _ := os.ReadFile(record)
	if want := "load docker-image tp:v1 --name dev\nDOCKER_HOST=unix:///run/other.sock\n"; string(got) != want {
		t.Errorf("the tool got %q, want %q", got, want)
	}
	if out.String() != "loaded\n" || !strings.Contains(errOut.String(), "Running kind load docker-image tp:v1 --name dev") {
		t.Errorf("out %q, err %q", out.String(), errOut.String())
	}

	out.Reset()
	errOut.Reset()
	_, args, _ = localCluster{kind: "fail"}.command("tp:v1")
	err = runLoadTool(context.Background(), streams, "kind", args, env)
	if err == nil || !strings.Contains(err.Error(), "kind load docker-image tp:v1 --name fail: exit status 3") || !strings.Contains(errOut.String(), "boom") {
		t.Errorf("failing tool: err %v, stderr %q", err, errOut.String())
	}

	tool, args, _ := localCluster{k3d: "dev"}.command("tp:v1")
	err = runLoadTool(context.Background(), streams, tool, args, env)
	for _, want := range []string{"k3d is not installed", "https://k3d.io", "k3d image import tp:v1 --cluster dev"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("missing k3d: err %v, want it to say %q", err, want)
		}
	}
}
