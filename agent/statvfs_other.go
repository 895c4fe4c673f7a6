//go:build !linux

package agent

import (
	"os"

	"github.com/pkg/sftp"
)

// statVFS is unsupported off Linux (the agent runs in Linux pods only).
func statVFS(*os.File) (*sftp.StatVFS, error) { return nil, sftp.ErrSSHFxOpUnsupported }
