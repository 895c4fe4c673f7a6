//go:build !linux

package tun

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
)

// Device is only implemented on linux.
type Device struct{}

// Open returns errors.ErrUnsupported: TUN devices live in the linux daemon container only.
func Open(name string, mtu int, routes []netip.Prefix) (*Device, error) {
	return nil, fmt.Errorf("tun on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}

// Name returns "".
func (*Device) Name() string { return "" }

// MTU returns 0.
func (*Device) MTU() int { return 0 }

// File returns nil.
func (*Device) File() *os.File { return nil }

// Fd returns ^uintptr(0).
func (*Device) Fd() uintptr { return ^uintptr(0) }

// Routes returns nil.
func (*Device) Routes() []netip.Prefix { return nil }

// KernelRoutes returns errors.ErrUnsupported.
func (*Device) KernelRoutes() ([]netip.Prefix, error) { return nil, errors.ErrUnsupported }

// SetRoutes returns errors.ErrUnsupported.
func (*Device) SetRoutes([]netip.Prefix) error { return errors.ErrUnsupported }

// Close returns nil.
func (*Device) Close() error { return nil }

// Conflicts returns errors.ErrUnsupported.
func Conflicts([]netip.Prefix) ([]Conflict, error) {
	return nil, fmt.Errorf("tun on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}
