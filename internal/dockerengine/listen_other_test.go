//go:build !windows

package dockerengine

import (
	"net"
	"path/filepath"
	"testing"
)

// listenEngine listens where a local engine does on this OS: a unix socket.
// It returns the listener and the DOCKER_HOST that reaches it.
func listenEngine(t *testing.T) (net.Listener, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "engine.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	return l, "unix://" + sock
}
