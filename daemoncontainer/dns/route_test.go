package dns

import (
	"net/netip"
	"testing"
)

func TestReversePrefix(t *testing.T) {
	tests := []struct {
		name   string
		want   netip.Prefix
		wantOK bool
	}{
		{"10.0.96.10.in-addr.arpa.", mustPrefix("10.96.0.10/32"), true},
		{"96.10.in-addr.arpa.", mustPrefix("10.96.0.0/16"), true},
		{"10.in-addr.arpa.", mustPrefix("10.0.0.0/8"), true},
		{"0.0.0.0.in-addr.arpa.", mustPrefix("0.0.0.0/32"), true},
		{"255.255.255.255.in-addr.arpa.", mustPrefix("255.255.255.255/32"), true},
		{"in-addr.arpa.", netip.Prefix{}, false},
		{"1.2.3.4.5.in-addr.arpa.", netip.Prefix{}, false},
		{"256.in-addr.arpa.", netip.Prefix{}, false},
		{"010.in-addr.arpa.", netip.Prefix{}, false},
		{"0/25.2.0.192.in-addr.arpa.", netip.Prefix{}, false},
		{"a.10.in-addr.arpa.", netip.Prefix{}, false},
		{"1..10.in-addr.arpa.", netip.Prefix{}, false},
		{"a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa.", mustPrefix("fd00:10:96::a/128"), true},
		{"d.f.ip6.arpa.", mustPrefix("fd00::/8"), true},
		{"f.ip6.arpa.", mustPrefix("f000::/4"), true},
		{"ip6.arpa.", netip.Prefix{}, false},
		{"g.ip6.arpa.", netip.Prefix{}, false},
		{"fd.ip6.arpa.", netip.Prefix{}, false},
		{"0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.", netip.Prefix{}, false},
		{"example.com.", netip.Prefix{}, false},
	}
	for _, tt := range tests {
		got, ok := reversePrefix(tt.name)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("reversePrefix(%q): got %v, %v, want %v, %v", tt.name, got, ok, tt.want, tt.wantOK)
		}
	}
}

func TestRoute(t *testing.T) {
	r := router{
		clusterDomain: "cluster.local.",
		prefixes:      []netip.Prefix{mustPrefix("10.96.0.0/12"), mustPrefix("10.244.0.0/16"), mustPrefix("fd00:10:96::/112")},
		search:        []string{"corp.example.", "example."},
	}
	tests := []struct {
		name string
		want route
	}{
		{"cluster.local.", routeCluster},
		{"svc.cluster.local.", routeCluster},
		{"a.b.c.d.e.f.cluster.local.", routeCluster},
		{"xcluster.local.", routeUpstream},
		{"local.", routeUpstream},
		{".", routeUpstream},
		{"com.", routeUpstream},
		{"5.3.244.10.in-addr.arpa.", routeCluster},
		{"244.10.in-addr.arpa.", routeCluster},
		{"245.10.in-addr.arpa.", routeUpstream},
		{"10.in-addr.arpa.", routeUpstream},
		{"1.0.0.127.in-addr.arpa.", routeUpstream},
		// IPv4 names never match IPv6 prefixes and the other way round.
		{"0.0.0.0.ip6.arpa.", routeUpstream},
		{"web.ns.svc.cluster.local.corp.example.", routeNXDomain},
		{"web.ns.svc.cluster.local.example.", routeNXDomain},
		{"web.ns.svc.cluster.local.com.", routeUpstream},
		{"corp.example.", routeUpstream},
		{"web.corp.example.", routeUpstream},
		{"cluster.localcorp.example.", routeUpstream},
	}
	for _, tt := range tests {
		if got := r.route(tt.name); got != tt.want {
			t.Errorf("route(%q): got %v, want %v", tt.name, got, tt.want)
		}
	}
}
