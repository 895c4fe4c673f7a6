//go:build !linux

package subnets

import "errors"

// HostRoutes is Linux-only for now: elsewhere the host's routes are not
// read (errors.ErrUnsupported), and only Docker's networks are checked.
func HostRoutes() ([]Route, error) { return nil, errors.ErrUnsupported }
