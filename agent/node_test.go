package agent

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseDefaultGateways(t *testing.T) {
	routes := `Iface	Destination	Gateway 	Flags	RefCnt	Use	Metric	Mask		MTU	Window	IRTT
eth0	00000000	0100F40A	0003	0	0	0	00000000	0	0	0
eth0	0000F40A	00000000	0001	0	0	0	00FFFFFF	0	0	0
`
	got := parseDefaultGateways(strings.NewReader(routes))
	want := netip.MustParseAddr("10.244.0.1")
	if len(got) != 1 || got[0] != want {
		t.Errorf("gateways = %v, want [%v]", got, want)
	}
}
