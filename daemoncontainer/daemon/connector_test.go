//go:build linux

package daemon

import (
	"errors"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

func TestClassifyKubeErr(t *testing.T) {
	forbidden := apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "x", errors.New("no"))
	for _, tc := range []struct {
		name      string
		err       error
		permanent bool
		says      string
	}{
		{"forbidden", forbidden, true, "pods/portforward (create)"},
		{"unauthorized", apierrors.NewUnauthorized("bad token"), true, "refresh them"},
		{"other", errors.New("connection reset"), false, "connection reset"},
	} {
		err := classifyKubeErr(tc.err, "tp")
		if got := isPermanent(err); got != tc.permanent {
			t.Errorf("%s: isPermanent = %v, want %v", tc.name, got, tc.permanent)
		}
		if !strings.Contains(err.Error(), tc.says) || strings.HasPrefix(err.Error(), "permanent") {
			t.Errorf("%s: message %q, want it to contain %q and no internal prefix", tc.name, err, tc.says)
		}
		if !errors.Is(err, tc.err) {
			t.Errorf("%s: the cause is not wrapped", tc.name)
		}
	}
}
