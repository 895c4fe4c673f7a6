// Command tp-image is the entry point of tp's image, installed there as /tp
// (the image's ENTRYPOINT, the chart's manager, the injected agent and init
// container, and what the CLI execs in a daemon container all run /tp).
//
// It links no role: each role is its own static binary beside it (/tp-daemon,
// /tp-manager, /tp-agent, /tp-volumes; cmd/tp-daemon and so on), and /tp
// execs the one its first argument names with the same argv, so that a role
// pays at start only for its own dependencies (test/bench/README.md, "Memory
// per role") while every command line of an older image (`/tp daemon run`,
// `/tp manager`, `/tp agent`, `docker exec ... /tp daemon proxy`) keeps
// working against a newer one and the other way round. One command runs in
// /tp itself: `daemon proxy`, the far end of the CLI's daemon channel, which
// every CLI command starts through `docker exec` (apiproxy links only the
// standard library; exec'ing /tp-daemon for it cost ~10 ms). `tp` on the
// workstation is cmd/tp.
package main

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/tp-run/tp/daemoncontainer/daemon/apiproxy"
	"github.com/tp-run/tp/daemoncontainer/wire"
	"github.com/tp-run/tp/internal/version"
)

// roleBinaries maps the image's commands to the binary that runs them.
var roleBinaries = map[string]string{
	"daemon":          "tp-daemon",
	"kubeauth-plugin": "tp-daemon",
	"manager":         "tp-manager",
	"agent":           "tp-agent",
	"agent-init":      "tp-agent",
	"volumes":         "tp-volumes",
}

const usage = `tp's image: the daemon, traffic-manager, traffic-agent and volume plugin
(run tp on the workstation for the CLI)

Usage: /tp COMMAND ...
  daemon, kubeauth-plugin   the daemon container (/tp-daemon)
  manager                   the traffic-manager (/tp-manager)
  agent, agent-init         the traffic-agent and its init container (/tp-agent)
  volumes                   the Docker volume plugin (/tp-volumes)
  version                   print the image's version
`

func main() {
	if len(os.Args) < 2 {
		os.Stderr.WriteString(usage)
		os.Exit(2)
	}
	switch cmd := os.Args[1]; cmd {
	case "version":
		os.Stdout.WriteString(version.Version + "\n")
		return
	case "help", "-h", "--help":
		os.Stdout.WriteString(usage)
		return
	case "daemon":
		if slices.Equal(os.Args[2:], []string{"proxy"}) {
			os.Exit(proxy())
		}
		os.Exit(run(roleBinaries[cmd]))
	default:
		bin, ok := roleBinaries[cmd]
		if !ok {
			os.Stderr.WriteString("tp: unknown command \"" + cmd + "\" for tp's image\n\n" + usage)
			os.Exit(2)
		}
		os.Exit(run(bin))
	}
}

// proxy runs `daemon proxy` as /tp-daemon would (daemonrole): stdin and
// stdout to the daemon API's socket until either side is done.
func proxy() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := apiproxy.Run(ctx, wire.DaemonSocket, os.Stdin, os.Stdout); err != nil {
		os.Stderr.WriteString("tp: " + err.Error() + "\n")
		return 1
	}
	return 0
}

// run execs the role's binary, next to this one, with this process's argv
// and environment; it returns only when the exec failed.
func run(bin string) int {
	self, err := os.Executable()
	if err != nil {
		self = os.Args[0]
	}
	path := filepath.Join(filepath.Dir(self), bin)
	err = syscall.Exec(path, os.Args, os.Environ())
	os.Stderr.WriteString("tp: run " + path + ": " + err.Error() + " (the image lacks its role binaries: rebuild it with make image)\n")
	return 1
}
