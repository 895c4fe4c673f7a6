// Command tp-manager is the traffic-manager's binary in tp's image
// (/tp-manager, exec'd by /tp for `tp manager`).
package main

import (
	"github.com/tp-run/tp/cmd/tp/roles/managerrole"
	"github.com/tp-run/tp/cmd/tp/roles/rolecmd"
)

func main() {
	rolecmd.Main("tp's traffic-manager", managerrole.Commands()...)
}
