package roles

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// deps is `go list -deps` of pkgs (paths relative to this package).
func deps(t *testing.T, pkgs ...string) []string {
	t.Helper()
	out, err := exec.Command("go", append([]string{"list", "-deps"}, pkgs...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps %v: %v\n%s", pkgs, err, out)
	}
	return strings.Fields(string(out))
}

// linked returns the packages of have that are one of pkgs or under one of prefixes.
func linked(have, pkgs, prefixes []string) []string {
	var out []string
	for _, p := range have {
		for _, w := range pkgs {
			if p == w {
				out = append(out, p)
			}
		}
		for _, w := range prefixes {
			if strings.HasPrefix(p, w) {
				out = append(out, p)
			}
		}
	}
	return out
}

// TestRolesDoNotLinkTheHostSide: what runs in containers must not pay, in
// memory and start-up, for the CLI's Docker, Helm and compose code.
func TestRolesDoNotLinkTheHostSide(t *testing.T) {
	hostSide := []string{
		"github.com/tp-run/tp/cmd/tp/cli", "github.com/tp-run/tp/daemoncontainer", "github.com/tp-run/tp/intercept",
		"github.com/tp-run/tp/compose", "github.com/tp-run/tp/charts", "github.com/tp-run/tp/volumes",
		"github.com/tp-run/tp/internal/dockerengine",
	}
	heavy := []string{"helm.sh/", "github.com/docker/", "github.com/compose-spec/", "github.com/moby/buildkit", "go.opentelemetry.io/"}
	for _, pkg := range linked(deps(t, ".", "../../tp-image", "../../tp-daemon", "../../tp-manager", "../../tp-agent", "../../tp-volumes"), hostSide, heavy) {
		t.Errorf("the roles link %s", pkg)
	}
}

// TestEachRoleLinksItsOwn: each binary of the image links its own role's
// dependencies and none of another role's (the gVisor netstack only in the
// daemon, client-go only in the daemon and the manager, FUSE only in the
// volume plugin; the manager links package agent for the types of the
// sidecar it injects), and /tp, which execs them, links no role at all (only
// the daemon API's stdio proxy, which it runs itself).
func TestEachRoleLinksItsOwn(t *testing.T) {
	const tp = "github.com/tp-run/tp/"
	for _, c := range []struct {
		main            string
		notPkgs, notPre []string
		allow           []string // linked although a prefix in notPre matches
	}{
		{"../../tp-image", []string{"github.com/spf13/cobra", tp + "daemoncontainer", tp + "daemoncontainer/daemon"}, []string{tp + "cmd/tp/roles", tp + "daemoncontainer/daemon/", tp + "daemoncontainer/netstack", tp + "daemoncontainer/dns", tp + "daemoncontainer/kubeconfig", tp + "daemoncontainer/kubeauth", tp + "daemoncontainer/tun", tp + "manager", tp + "agent", tp + "volumes", "google.golang.org/grpc", "k8s.io/", "gvisor.dev/"}, []string{tp + "daemoncontainer/daemon/apiproxy"}},
		{"../../tp-daemon", []string{"k8s.io/client-go/kubernetes", tp + "manager", tp + "agent", tp + "volumes/plugin"}, []string{tp + "cmd/tp/roles/managerrole", tp + "cmd/tp/roles/agentrole", tp + "cmd/tp/roles/volumesrole", "github.com/hanwen/go-fuse", "github.com/pkg/sftp"}, nil},
		{"../../tp-manager", []string{"k8s.io/client-go/informers", tp + "volumes/plugin"}, []string{tp + "daemoncontainer", tp + "cmd/tp/roles/daemonrole", tp + "cmd/tp/roles/agentrole", tp + "cmd/tp/roles/volumesrole", "gvisor.dev/", "github.com/hanwen/go-fuse"}, nil},
		{"../../tp-agent", []string{tp + "manager", tp + "volumes/plugin"}, []string{tp + "daemoncontainer/daemon", tp + "daemoncontainer/netstack", tp + "cmd/tp/roles/daemonrole", tp + "cmd/tp/roles/managerrole", tp + "cmd/tp/roles/volumesrole", "k8s.io/", "gvisor.dev/", "github.com/hanwen/go-fuse"}, nil},
		{"../../tp-volumes", []string{tp + "manager", tp + "agent"}, []string{tp + "daemoncontainer/daemon", tp + "daemoncontainer/netstack", tp + "cmd/tp/roles/daemonrole", tp + "cmd/tp/roles/managerrole", tp + "cmd/tp/roles/agentrole", "k8s.io/", "gvisor.dev/", "google.golang.org/grpc"}, nil},
	} {
		for _, pkg := range linked(deps(t, c.main), c.notPkgs, c.notPre) {
			if !slices.Contains(c.allow, pkg) {
				t.Errorf("%s links %s", c.main, pkg)
			}
		}
	}
}
