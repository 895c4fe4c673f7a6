// Command tp-agent is the traffic-agent's binary in tp's image (/tp-agent,
// exec'd by /tp for `tp agent` and `tp agent-init`).
package main

import (
	"github.com/tp-run/tp/cmd/tp/roles/agentrole"
	"github.com/tp-run/tp/cmd/tp/roles/rolecmd"
)

func main() {
	rolecmd.Main("tp's traffic-agent and its init container", agentrole.Commands()...)
}
