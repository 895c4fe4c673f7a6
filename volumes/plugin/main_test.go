package plugin

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no goroutine outlives the tests: every operation's
// goroutine ends with its connection, every FUSE server with its unmount.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
