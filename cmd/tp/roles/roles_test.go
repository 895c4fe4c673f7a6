package roles

import (
	"os/exec"
	"strings"
	"testing"
)

// TestRolesDoNotLinkTheHostSide: what runs in containers must not pay, in
// memory and start-up, for the CLI's Docker, Helm and compose code.
func TestRolesDoNotLinkTheHostSide(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".", "../../tp-image").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	hostSide := []string{
		"github.com/tp-run/tp/cmd/tp/cli", "github.com/tp-run/tp/daemoncontainer", "github.com/tp-run/tp/intercept",
		"github.com/tp-run/tp/compose", "github.com/tp-run/tp/charts", "github.com/tp-run/tp/volumes",
		"github.com/tp-run/tp/internal/dockerengine",
	}
	heavy := []string{"helm.sh/", "github.com/docker/", "github.com/compose-spec/", "github.com/moby/buildkit", "go.opentelemetry.io/"}
	for _, pkg := range strings.Fields(string(out)) {
		for _, h := range hostSide {
			if pkg == h {
				t.Errorf("the roles link the host-side package %s", pkg)
			}
		}
		for _, h := range heavy {
			if strings.HasPrefix(pkg, h) {
				t.Errorf("the roles link %s", pkg)
			}
		}
	}
}
