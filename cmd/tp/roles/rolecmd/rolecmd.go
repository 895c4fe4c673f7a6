// Package rolecmd holds what the roles' commands share (their logger, their
// environment defaults) and Main, the body of each role's binary in tp's
// image. It links nothing but cobra and the standard library, so that a role's
// binary pays only for its own role's dependencies.
package rolecmd

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/tp-run/tp/internal/version"
)

// DefaultManagerNamespace is where the traffic-manager runs unless told otherwise.
const DefaultManagerNamespace = "tp"

// NewLogger is a text logger at level (debug, info, warn or error) on w.
func NewLogger(level string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: use debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// EnvOr is the environment variable key, or def when it is unset or empty.
func EnvOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// SetSoftMemoryLimit makes limit bytes the Go runtime's soft memory limit
// (debug.SetMemoryLimit: above it the garbage collector runs more often, so
// the heap's slack, not the live memory, gives way), unless GOMEMLIMIT is set,
// which the runtime has applied already and which wins. It returns the limit
// in force (math.MaxInt64 for none). A limit <= 0 sets nothing.
func SetSoftMemoryLimit(limit int64) int64 {
	if os.Getenv("GOMEMLIMIT") == "" && limit > 0 {
		debug.SetMemoryLimit(limit)
	}
	return debug.SetMemoryLimit(-1)
}

// SoftLimitOfContainer is the soft memory limit for a container whose memory
// limit is containerLimit bytes (the downward API's limits.memory, as a
// decimal string; empty: none): 90 % of it, so that the collector works
// harder before the kernel's OOM killer would. The other 10 % are for what
// the runtime does not count: the binary's pages, thread stacks outside Go.
func SoftLimitOfContainer(containerLimit string) (int64, error) {
	if containerLimit == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(containerLimit, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("container memory limit %q: want a number of bytes (the downward API's resourceFieldRef limits.memory)", containerLimit)
	}
	return n / 10 * 9, nil
}

// Main runs one role's binary of tp's image: a root command "tp" (the image's
// /tp execs the binary with its own argv, so that `/tp daemon run ...` keeps
// its command line) with the role's commands and `version`, cancelled by
// SIGINT and SIGTERM. It does not return.
func Main(short string, cmds ...*cobra.Command) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	root := &cobra.Command{Use: "tp", Short: short, SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(cmds...)
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the version of the image's binary",
		Args:  cobra.NoArgs,
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), version.Version) },
	})
	err := root.ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "tp: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}
