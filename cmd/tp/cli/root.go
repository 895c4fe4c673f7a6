// Package cli wires tp's cobra commands. Each command turns its flags into an
// options struct and makes one call into a component package; output goes
// through injected streams so commands are testable.
package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/tp-run/tp/cmd/tp/roles"
	"github.com/tp-run/tp/internal/phasetrace"
)

// ExitError carries a process exit code through cobra (e.g. the exit code of
// an intercept's --docker-run container) without printing anything more.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// Main runs tp with the process's arguments and streams and returns the exit code.
func Main() int {
	phasetrace.Mark("main")
	defer phasetrace.Mark("exit")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	streams := genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr}
	cmd := NewRootCommand(streams)
	err := cmd.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var exit *ExitError
	if errors.As(err, &exit) {
		return exit.Code
	}
	fmt.Fprintf(streams.ErrOut, "tp: %v\n", err)
	return 1
}

// NewRootCommand builds the tp command tree.
func NewRootCommand(streams genericiooptions.IOStreams) *cobra.Command {
	root := &cobra.Command{
		Use:           "tp",
		Short:         "Run one service of a Kubernetes app in a local container, the rest in the cluster",
		SilenceUsage:  true,
		SilenceErrors: true,
		// Parse each command's flags before its subcommand: tp compose
		// -f FILE logs -f (compose's -f is the file, logs' is --follow).
		TraverseChildren: true,
	}
	root.SetIn(streams.In)
	root.SetOut(streams.Out)
	root.SetErr(streams.ErrOut)
	docker := &dockerFlags{warn: streams.ErrOut}
	docker.addFlags(root)
	root.AddCommand(
		newConnectCommand(streams, docker),
		newStatusCommand(streams, docker),
		newQuitCommand(streams, docker),
		newListCommand(streams, docker),
		newInterceptCommand(streams, docker),
		newLeaveCommand(streams, docker),
		newComposeCommand(streams, docker),
		newUninstallCommand(streams, docker),
		newHelmCommand(streams),
		newVersionCommand(streams, docker),
		newKubeauthCommand(streams, docker),
		newImageCommand(streams, docker),
	)
	root.AddCommand(roles.Commands(streams.In, streams.Out)...)
	return root
}
