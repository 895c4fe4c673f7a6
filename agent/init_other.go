//go:build !linux

package agent

import (
	"context"
	"errors"
	"log/slog"
)

// Init is agent-init; it runs in Linux pods only.
func Init(ctx context.Context, ports []Port, log *slog.Logger) error {
	return errors.New("agent-init: nftables redirects need Linux; agent-init runs in the pod's init container")
}
