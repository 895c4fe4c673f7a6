// Command tp-image is the binary of tp's image (installed there as /tp): the
// roles that run in containers (package roles) and `version`, without the
// CLI. The daemon container, the traffic-manager, the traffic-agent and tp's
// volume plugin run it; `tp` on the workstation is cmd/tp.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/tp-run/tp/cmd/tp/roles"
	"github.com/tp-run/tp/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := &cobra.Command{
		Use:           "tp",
		Short:         "tp's image: the daemon, traffic-manager, traffic-agent and volume plugin (run tp on the workstation for the CLI)",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(roles.Commands(os.Stdin, os.Stdout)...)
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the version of the image's binary",
		Args:  cobra.NoArgs,
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), version.Version) },
	})
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "tp: %v\n", err)
		stop()
		os.Exit(1)
	}
}
