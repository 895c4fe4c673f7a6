//go:build e2e

package e2e

import (
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/rand"
)

// TestConnectManagerImageNotPullable: when the cluster cannot pull the
// traffic-manager's image, tp connect fails within 20 s, naming the image and
// the flag to set, and leaves no daemon container; a second connect to the
// installed but broken manager fails as fast.
func TestConnectManagerImageNotPullable(t *testing.T) {
	c := newCluster(t)
	mns := c.namespace(t, "pull")
	t.Cleanup(func() {
		if out, err := tp(t, "helm", "uninstall", "--namespace", mns); err != nil {
			t.Logf("tp helm uninstall --namespace %s: %v\n%s", mns, err, out)
		}
	})
	const registry = "registry.invalid/nowhere"
	name := "pull-" + rand.String(4)
	for _, attempt := range []string{"installing", "installed"} {
		start := time.Now()
		out, err := tp(t, "connect", "--name", name, "-n", mns, "--manager-namespace", mns, "--image-registry", registry)
		took := time.Since(start)
		t.Logf("tp connect (%s, %v): %v\n%s", attempt, took.Round(time.Millisecond), err, out)
		if err == nil {
			_, _ = tp(t, "quit", "--name", name)
			t.Fatalf("tp connect (%s) with an image the cluster cannot pull succeeded", attempt)
		}
		if took > 20*time.Second {
			t.Errorf("tp connect (%s) failed after %v, want within 20 s", attempt, took.Round(time.Second))
		}
		for _, want := range []string{"cannot pull the traffic-manager image " + registry + "/tp:", "--image-registry", "tp helm upgrade --namespace " + mns} {
			if !strings.Contains(out, want) {
				t.Errorf("tp connect (%s) error does not say %q:\n%s", attempt, want, out)
			}
		}
		if !strings.Contains(out, "ErrImagePull") && !strings.Contains(out, "ImagePullBackOff") {
			t.Errorf("tp connect (%s) error names no pull failure (ErrImagePull, ImagePullBackOff):\n%s", attempt, out)
		}
		if _, err := docker("inspect", "tp-"+name); err == nil {
			t.Errorf("daemon container tp-%s left after the failed connect (%s)", name, attempt)
		}
	}
}
