//go:build windows

package daemoncontainer

import (
	"os/exec"
	"syscall"
)

// detach makes cmd outlive the CLI's console.
func detach(cmd *exec.Cmd) {
	const detachedProcess = 0x00000008
	cmd.SysProcAttr = &syscall.SysProcAttr{CreationFlags: detachedProcess | syscall.CREATE_NEW_PROCESS_GROUP}
}
