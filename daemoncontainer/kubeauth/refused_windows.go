package kubeauth

import "syscall"

// errConnRefused is what dialing a closed port fails with: on Windows
// WSAECONNREFUSED, which syscall.ECONNREFUSED (an invented errno there) does
// not match.
const errConnRefused = syscall.Errno(10061)
