//go:build !windows

package daemoncontainer

import (
	"os/exec"
	"syscall"
)

// detach makes cmd outlive the CLI and its terminal's signals.
func detach(cmd *exec.Cmd) { cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} }
