// Command tp-volumes is tp's Docker volume plugin's binary in tp's image
// (/tp-volumes, exec'd by /tp for `tp volumes plugin`; the CLI copies it
// into the managed plugin's rootfs as /tp).
package main

import (
	"github.com/tp-run/tp/cmd/tp/roles/rolecmd"
	"github.com/tp-run/tp/cmd/tp/roles/volumesrole"
)

func main() {
	rolecmd.Main("tp's Docker volume plugin", volumesrole.Commands()...)
}
