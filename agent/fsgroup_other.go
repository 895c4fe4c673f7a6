//go:build !linux

package agent

import "io/fs"

// fileGID is unknown off Linux (the agent runs in Linux pods only): no fsGroup.
func fileGID(fs.FileInfo) (int, bool) { return 0, false }
