// Package volumesrole holds the command of tp's Docker volume plugin
// (`tp volumes plugin`). The image's /tp-volumes links it alone; the CLI
// copies that binary into the managed plugin's rootfs as /tp.
package volumesrole

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/tp-run/tp/cmd/tp/roles/rolecmd"
	"github.com/tp-run/tp/volumes/plugin"
)

func newVolumesCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "volumes", Short: "tp's Docker volume plugin", Hidden: true}
	var logLevel string
	run := &cobra.Command{
		Use:   "plugin",
		Short: "Serve the Docker volume driver API (the managed plugin's entry point)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := rolecmd.NewLogger(logLevel, os.Stderr)
			if err != nil {
				return err
			}
			return plugin.Run(cmd.Context(), plugin.Config{
				Socket: plugin.SocketPath, MountRoot: plugin.MountRoot, StatePath: plugin.StatePath, Log: log,
			})
		},
	}
	run.Flags().StringVar(&logLevel, "log-level", rolecmd.EnvOr("TP_LOG_LEVEL", "info"), "log level")
	cmd.AddCommand(run)
	return cmd
}

// Commands returns the volume plugin's command, hidden.
func Commands() []*cobra.Command {
	return []*cobra.Command{newVolumesCommand()}
}
