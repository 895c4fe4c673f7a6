// Package agentrole holds the commands of an intercepted workload's pods: the
// traffic-agent (`tp agent`, a sidecar) and its init container
// (`tp agent-init`). The image's /tp-agent links them alone.
package agentrole

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/tp-run/tp/agent"
	"github.com/tp-run/tp/cmd/tp/roles/rolecmd"
)

func newAgentCommand() *cobra.Command {
	var logLevel string
	cmd := &cobra.Command{
		Use:    "agent",
		Short:  "Run the traffic-agent (sidecar of an intercepted workload's pods)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := rolecmd.NewLogger(logLevel, os.Stderr)
			if err != nil {
				return err
			}
			cfg, err := agent.ConfigFromEnv(os.Environ())
			if err != nil {
				return err
			}
			cfg.Log = log
			return agent.Run(cmd.Context(), cfg)
		},
	}
	cmd.Flags().StringVar(&logLevel, "log-level", rolecmd.EnvOr("TP_LOG_LEVEL", "info"), "log level")
	return cmd
}

func newAgentInitCommand() *cobra.Command {
	return &cobra.Command{
		Use:    "agent-init",
		Short:  "Redirect the intercepted ports to the traffic-agent (init container)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, _ := rolecmd.NewLogger("info", os.Stderr)
			ports, err := agent.PortsFromEnv(os.Environ())
			if err != nil {
				return err
			}
			return agent.Init(cmd.Context(), ports, log)
		},
	}
}

// Commands returns the traffic-agent's and its init container's commands, hidden.
func Commands() []*cobra.Command {
	return []*cobra.Command{newAgentCommand(), newAgentInitCommand()}
}
