package cli

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/tp-run/tp/internal/version"
)

type versionInfo struct {
	Client  string `json:"client"`
	Daemon  string `json:"daemon,omitempty"`
	Manager string `json:"manager,omitempty"`
}

func newVersionCommand(streams genericiooptions.IOStreams) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the versions of the client, and of the daemon and traffic-manager when connected",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			info := versionInfo{Client: version.Version}
			return printStructured(streams.Out, output, info, func(w io.Writer) error {
				fmt.Fprintf(w, "Client:  %s\n", info.Client)
				if info.Daemon != "" {
					fmt.Fprintf(w, "Daemon:  %s\n", info.Daemon)
				}
				if info.Manager != "" {
					fmt.Fprintf(w, "Manager: %s\n", info.Manager)
				}
				return nil
			})
		},
	}
	outputFlag(cmd, &output)
	return cmd
}
