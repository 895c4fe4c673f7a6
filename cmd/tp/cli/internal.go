package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/tp-run/tp/cmd/tp/roles"
	"github.com/tp-run/tp/daemoncontainer"
)

// The roles' hidden commands (package roles) run tp's other roles from the
// CLI's binary too; the image has them alone (cmd/tp-image). kubeauth serve
// is the CLI's own: it runs on the host.

func newKubeauthCommand(streams genericiooptions.IOStreams, dockerFlags *dockerFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "kubeauth", Short: "Relay exec credential plugins to the daemon container", Hidden: true}
	var containerName, listen string
	serve := &cobra.Command{
		Use:  "serve",
		Args: cobra.NoArgs,
	}
	kube := kubeFlags(serve)
	serve.Flags().StringVar(&containerName, "container", "tp", "daemon container to serve")
	serve.Flags().StringVar(&listen, "listen", "127.0.0.1:0", "listen address")
	serve.RunE = func(cmd *cobra.Command, _ []string) error {
		raw, err := kube.ToRawKubeConfigLoader().RawConfig()
		if err != nil {
			return err
		}
		contextName := raw.CurrentContext
		if kube.Context != nil && *kube.Context != "" {
			contextName = *kube.Context
		}
		docker, err := dockerFlags.Client(cmd.Context())
		if err != nil {
			return err
		}
		defer docker.Close()
		log, _ := roles.NewLogger("info", os.Stderr)
		return daemoncontainer.ServeKubeauth(cmd.Context(), docker, daemoncontainer.KubeauthServeOptions{
			Raw: raw, ContextName: contextName, ContainerName: containerName, Listen: listen,
			Secret: os.Getenv(daemoncontainer.KubeauthEnvSecret), Log: log,
			Ready: func(port int) {
				fmt.Fprintf(streams.Out, "LISTENING %d\n", port)
				if f, ok := streams.Out.(*os.File); ok {
					_ = f.Close() // tells `tp connect` we are up; it stops reading
				}
			},
		})
	}
	var target string
	forward := &cobra.Command{
		Use:   "forward",
		Short: "Forward the daemon container's connections to an API server on the host's loopback",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			docker, err := dockerFlags.Client(cmd.Context())
			if err != nil {
				return err
			}
			defer docker.Close()
			log, _ := roles.NewLogger("info", os.Stderr)
			return daemoncontainer.ServeLoopbackForward(cmd.Context(), docker, daemoncontainer.LoopbackForwardOptions{
				ContainerName: containerName, Listen: listen, Target: target, Log: log,
				Ready: func(port int) {
					fmt.Fprintf(streams.Out, "LISTENING %d\n", port)
					if f, ok := streams.Out.(*os.File); ok {
						_ = f.Close() // tells `tp connect` we are up; it stops reading
					}
				},
			})
		},
	}
	forward.Flags().StringVar(&containerName, "container", "tp", "daemon container to serve")
	forward.Flags().StringVar(&listen, "listen", "127.0.0.1:0", "listen address")
	forward.Flags().StringVar(&target, "to", "", "the API server, host:port")
	cmd.AddCommand(serve, forward)
	return cmd
}
