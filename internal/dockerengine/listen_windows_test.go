package dockerengine

import (
	"net"
	"testing"
)

// listenEngine listens for a fake engine on Windows: on TCP, not on a named
// pipe like Docker Desktop's, because under Wine 8 (hack/wine-test.sh) a
// go-winio pipe server never sees its overlapped connect complete. It returns
// the listener and the DOCKER_HOST that reaches it.
func listenEngine(t *testing.T) (net.Listener, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l, "tcp://" + l.Addr().String()
}
