// Package roles holds the commands of what tp runs inside containers: the
// daemon (in its daemon container), the traffic-manager and the traffic-agent
// (in the cluster), the agent's init container and tp's Docker volume plugin.
//
// Each role's commands are in their own package (daemonrole, managerrole,
// agentrole, volumesrole), linked twice: all of them hidden in the CLI
// (package cli, through Commands), and each alone into its own binary of tp's
// image (cmd/tp-daemon, cmd/tp-manager, cmd/tp-agent, cmd/tp-volumes, beside
// the image's /tp, cmd/tp-image, which execs them). So no role pays for the
// CLI's Docker, Helm and compose code, nor for another role's dependencies, in
// memory: each package's init and the pages of the binary it touches
// (test/bench/README.md, "Memory per role"). These packages must therefore
// never import the host side (cmd/tp/cli, daemoncontainer, intercept, compose,
// charts, volumes), nor one another; TestRolesDoNotLinkTheHostSide and
// TestEachRoleLinksItsOwn check it.
package roles

import (
	"io"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/tp-run/tp/cmd/tp/roles/agentrole"
	"github.com/tp-run/tp/cmd/tp/roles/daemonrole"
	"github.com/tp-run/tp/cmd/tp/roles/managerrole"
	"github.com/tp-run/tp/cmd/tp/roles/rolecmd"
	"github.com/tp-run/tp/cmd/tp/roles/volumesrole"
)

// DefaultManagerNamespace is where the traffic-manager runs unless told otherwise.
const DefaultManagerNamespace = rolecmd.DefaultManagerNamespace

// Commands returns all roles' commands, hidden, reading from in and writing to out.
func Commands(in io.Reader, out io.Writer) []*cobra.Command {
	var cmds []*cobra.Command
	cmds = append(cmds, daemonrole.Commands(in, out)...)
	cmds = append(cmds, managerrole.Commands()...)
	cmds = append(cmds, agentrole.Commands()...)
	return append(cmds, volumesrole.Commands()...)
}

// NewLogger is a text logger at level (debug, info, warn or error) on w.
func NewLogger(level string, w io.Writer) (*slog.Logger, error) {
	return rolecmd.NewLogger(level, w)
}
