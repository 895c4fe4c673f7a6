package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestHostBuildsDoNotLinkGVisor: gVisor belongs to the daemon, which runs
// only in its Linux container; the macOS and Windows CLIs must not carry it.
func TestHostBuildsDoNotLinkGVisor(t *testing.T) {
	for _, goos := range []string{"darwin", "windows"} {
		cmd := exec.Command("go", "list", "-deps", ".")
		cmd.Env = append(os.Environ(), "GOOS="+goos, "GOARCH=arm64", "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps for %s: %v\n%s", goos, err, out)
		}
		for _, pkg := range strings.Fields(string(out)) {
			if strings.HasPrefix(pkg, "gvisor.dev/") {
				t.Errorf("the %s CLI links %s: keep gVisor inside daemoncontainer/netstack's linux files", goos, pkg)
			}
		}
	}
}
