// Command tp runs one service of a Kubernetes application in a local container
// while the rest keeps running in the cluster.
package main

import (
	"os"

	"github.com/tp-run/tp/cmd/tp/cli"
)

func main() { os.Exit(cli.Main()) }
