package subnets

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// procRoute is /proc/net/route of a host with a VPN (tun0: 10.0.0.0/8), a
// CNI bridge of a node on this host (tpcni0), Docker's bridge and a
// compose network.
const procRoute = `Iface	Destination	Gateway 	Flags	RefCnt	Use	Metric	Mask		MTU	Window	IRTT
eth0	00000000	010200C0	0003	0	0	0	00000000	0	0	0
tun0	0000000A	00000000	0001	0	0	0	000000FF	0	0	0
tpcni0	0000F40A	00000000	0001	0	0	0	00FFFFFF	0	0	0
docker0	000011AC	00000000	0001	0	0	0	0000FFFF	0	0	0
br-1a2b3c	000012AC	00000000	0001	0	0	0	0000FFFF	0	0	0
eth0	000200C0	00000000	0001	0	0	0	00FFFFFF	0	0	0
`

const procIPv6Route = `fd000000000000000000000000000000 08 00000000000000000000000000000000 00 00000000000000000000000000000000 00000400 00000001 00000000 00000001     wg0
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001    eth0
`

func TestParseProcRoutes(t *testing.T) {
	got, err := parseProcRoute(strings.NewReader(procRoute))
	if err != nil {
		t.Fatal(err)
	}
	want := []Route{
		{netip.MustParsePrefix("0.0.0.0/0"), "eth0"}, {netip.MustParsePrefix("10.0.0.0/8"), "tun0"},
		{netip.MustParsePrefix("10.244.0.0/24"), "tpcni0"}, {netip.MustParsePrefix("172.17.0.0/16"), "docker0"},
		{netip.MustParsePrefix("172.18.0.0/16"), "br-1a2b3c"}, {netip.MustParsePrefix("192.0.2.0/24"), "eth0"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("IPv4 routes: got %v, want %v", got, want)
	}
	got6, err := parseProcIPv6Route(strings.NewReader(procIPv6Route))
	if err != nil {
		t.Fatal(err)
	}
	want6 := []Route{{netip.MustParsePrefix("fd00::/8"), "wg0"}, {netip.MustParsePrefix("fe80::/64"), "eth0"}}
	if !slices.Equal(got6, want6) {
		t.Errorf("IPv6 routes: got %v, want %v", got6, want6)
	}
}

func TestClashes(t *testing.T) {
	routes, err := parseProcRoute(strings.NewReader(procRoute))
	if err != nil {
		t.Fatal(err)
	}
	routes6, _ := parseProcIPv6Route(strings.NewReader(procIPv6Route))
	routes = append(routes, routes6...)
	nets := []Network{
		{Name: "bridge", Subnets: []netip.Prefix{netip.MustParsePrefix("172.17.0.0/16")}},
		{Name: "shop_default", Subnets: []netip.Prefix{netip.MustParsePrefix("172.18.0.0/16")}},
		{Name: "kind", Subnets: []netip.Prefix{netip.MustParsePrefix("172.19.0.0/16"), netip.MustParsePrefix("fc00:f853:ccd:e793::/64")}},
	}
	p := netip.MustParsePrefix
	tests := []struct {
		name    string
		cluster []netip.Prefix
		skip    []string
		want    []Clash
	}{
		{name: "node's own pod range and the default route are not clashes", cluster: []netip.Prefix{p("10.244.0.0/16")},
			want: []Clash{{Cluster: p("10.244.0.0/16"), With: p("10.0.0.0/8"), Device: "tun0"}}},
		{name: "service range inside the VPN's", cluster: []netip.Prefix{p("192.168.0.0/16"), p("10.96.0.0/12")},
			want: []Clash{{Cluster: p("10.96.0.0/12"), With: p("10.0.0.0/8"), Device: "tun0"}}},
		{name: "Docker networks", cluster: []netip.Prefix{p("172.16.0.0/12")},
			want: []Clash{{Cluster: p("172.16.0.0/12"), With: p("172.17.0.0/16"), Network: "bridge"},
				{Cluster: p("172.16.0.0/12"), With: p("172.18.0.0/16"), Network: "shop_default"},
				{Cluster: p("172.16.0.0/12"), With: p("172.19.0.0/16"), Network: "kind"}}},
		{name: "the daemon's own networks are skipped", cluster: []netip.Prefix{p("172.16.0.0/12")}, skip: []string{"bridge", "kind"},
			want: []Clash{{Cluster: p("172.16.0.0/12"), With: p("172.18.0.0/16"), Network: "shop_default"}}},
		{name: "IPv6", cluster: []netip.Prefix{p("fd00:10:96::/112")},
			want: []Clash{{Cluster: p("fd00:10:96::/112"), With: p("fd00::/8"), Device: "wg0"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Clashes(tt.cluster, nets, tt.skip, routes)
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
	c := Clash{Cluster: p("10.96.0.0/12"), With: p("10.0.0.0/8"), Device: "tun0"}
	if s := c.String(); !strings.Contains(s, "10.96.0.0/12") || !strings.Contains(s, "tun0") || !strings.Contains(s, "unreachable") {
		t.Errorf("explanation %q: want the ranges, the device and the consequence", s)
	}
}
