//go:build !linux

package netstack

import (
	"context"
	"errors"
	"fmt"
	"runtime"
)

// Stack is only implemented on linux.
type Stack struct{}

// New returns errors.ErrUnsupported: the stack runs in the linux daemon container only.
func New(Config) (*Stack, error) {
	return nil, fmt.Errorf("netstack on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}

// Run returns errors.ErrUnsupported.
func (*Stack) Run(context.Context) error { return errors.ErrUnsupported }

// Stats returns zero stats.
func (*Stack) Stats() Stats { return Stats{} }
