//go:build !windows

package kubeauth

import "syscall"

// errConnRefused is what dialing a closed port fails with.
const errConnRefused = syscall.ECONNREFUSED
