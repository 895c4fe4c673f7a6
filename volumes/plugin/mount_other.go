//go:build !linux

package plugin

import (
	"context"
	"errors"
	"time"

	"github.com/tp-run/tp/volumes/driveropts"
)

var errLinuxOnly = errors.New("the tp volume plugin runs inside Docker's Linux host or VM only")

// MountFUSE fails: FUSE mounts happen inside Docker's Linux host or VM.
func MountFUSE(context.Context, string, driveropts.Options, time.Duration) (Mounted, error) {
	return nil, errLinuxOnly
}

// Unmount fails: see MountFUSE.
func Unmount(string) error { return errLinuxOnly }
