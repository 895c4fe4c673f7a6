//go:build !linux

package daemon

import (
	"context"
	"fmt"
	"runtime"
)

// Run fails: the daemon runs only inside its (Linux) container.
func Run(context.Context, Config) error {
	return fmt.Errorf("the tp daemon runs only inside its Linux container, not on %s: use `tp connect`", runtime.GOOS)
}
