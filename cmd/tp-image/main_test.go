package main

import (
	"testing"

	"github.com/spf13/cobra"

	"github.com/tp-run/tp/cmd/tp/roles/agentrole"
	"github.com/tp-run/tp/cmd/tp/roles/daemonrole"
	"github.com/tp-run/tp/cmd/tp/roles/managerrole"
	"github.com/tp-run/tp/cmd/tp/roles/volumesrole"
)

// TestEveryRoleCommandHasItsBinary: /tp execs, for each command of a role,
// the binary that links that role (the binaries' mains in cmd/tp-ROLE), and
// knows no command that no role has.
func TestEveryRoleCommandHasItsBinary(t *testing.T) {
	want := map[string]string{}
	for bin, cmds := range map[string][]*cobra.Command{
		"tp-daemon":  daemonrole.Commands(nil, nil),
		"tp-manager": managerrole.Commands(),
		"tp-agent":   agentrole.Commands(),
		"tp-volumes": volumesrole.Commands(),
	} {
		for _, c := range cmds {
			want[c.Name()] = bin
		}
	}
	for name, bin := range want {
		if got := roleBinaries[name]; got != bin {
			t.Errorf("/tp %s execs %q, want %q", name, got, bin)
		}
	}
	for name := range roleBinaries {
		if _, ok := want[name]; !ok {
			t.Errorf("/tp %s: no role has that command", name)
		}
	}
}
