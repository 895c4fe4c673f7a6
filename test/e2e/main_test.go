//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestMain installs (or upgrades to) the traffic-manager of the tp under
// test, so that every test talks to the same build.
func TestMain(m *testing.M) {
	bin := os.Getenv("TP_BIN")
	if bin == "" {
		bin, _ = filepath.Abs(filepath.Join("..", "..", "bin", "tp"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	out, err := exec.CommandContext(ctx, bin, "helm", "upgrade", "--namespace", "tp").CombinedOutput()
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: tp helm upgrade: %v\n%s", err, out)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "e2e: %s", out)
	os.Exit(m.Run())
}
