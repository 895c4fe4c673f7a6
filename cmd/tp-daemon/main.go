// Command tp-daemon is the daemon container's binary in tp's image
// (/tp-daemon, exec'd by /tp for `tp daemon ...` and `tp kubeauth-plugin`).
package main

import (
	"os"

	"github.com/tp-run/tp/cmd/tp/roles/daemonrole"
	"github.com/tp-run/tp/cmd/tp/roles/rolecmd"
)

func main() {
	rolecmd.Main("tp's daemon container: the daemon and what the CLI runs in its container", daemonrole.Commands(os.Stdin, os.Stdout)...)
}
