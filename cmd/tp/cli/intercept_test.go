package cli

import (
	"strings"
	"testing"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

func TestPrintRouting(t *testing.T) {
	for _, c := range []struct {
		routed, ready    int32
		wantOut, wantErr string
	}{
		{2, 2, "Intercepted: 2 of 2 ready endpoints of service echo route to you\n", ""},
		{1, 2, "", "tp: warning: only 1 of 2 ready endpoints of service echo route to you yet"},
		{0, 0, "", "tp: warning: service echo has no ready endpoints"},
	} {
		var out, errOut strings.Builder
		printRouting(&out, &errOut, &managerv1.InterceptInfo{ServiceName: "echo", RoutedEndpoints: c.routed, ReadyEndpoints: c.ready})
		if out.String() != c.wantOut || !strings.HasPrefix(errOut.String(), c.wantErr) || (c.wantErr == "") != (errOut.Len() == 0) {
			t.Errorf("%d of %d: got out %q, err %q; want out %q, err starting with %q", c.routed, c.ready, out.String(), errOut.String(), c.wantOut, c.wantErr)
		}
	}
}
