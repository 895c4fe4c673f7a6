package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/tp-run/tp/daemoncontainer"
	"github.com/tp-run/tp/internal/version"
	daemonv1 "github.com/tp-run/tp/rpc/daemon/v1"
)

type versionInfo struct {
	Client  string `json:"client"`
	Daemon  string `json:"daemon,omitempty"`
	Manager string `json:"manager,omitempty"`
}

func newVersionCommand(streams genericiooptions.IOStreams, docker *dockerFlags) *cobra.Command {
	var output, name string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the versions of the client, and of the daemon and traffic-manager when connected",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			info := versionInfo{Client: version.Version}
			// The daemon and manager versions, when connected; version never fails for them.
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
			defer cancel()
			if d, err := docker.Dial(ctx, name); err == nil {
				if st, err := d.Status(ctx, &daemonv1.StatusRequest{}); err == nil {
					info.Daemon, info.Manager = st.GetVersion(), st.GetManagerVersion()
				}
				d.Close()
			}
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
	cmd.Flags().StringVar(&name, "name", daemoncontainer.DefaultName, "connection whose daemon and manager to ask")
	return cmd
}
