package dns

import (
	"net/netip"
	"strings"
)

// route says who answers a question.
type route int

const (
	routeUpstream route = iota // the original resolvers
	routeCluster               // the cluster DNS service
	routeNXDomain              // nobody: a search-list expansion of a cluster name
)

func (r route) String() string {
	switch r {
	case routeCluster:
		return "cluster"
	case routeNXDomain:
		return "nxdomain"
	default:
		return "upstream"
	}
}

// router decides routes. It is immutable after construction (the server
// replaces it when the cluster's prefixes change).
type router struct {
	clusterDomain string         // lower-case FQDN
	prefixes      []netip.Prefix // masked
	search        []string       // lower-case FQDNs outside clusterDomain
}

// route returns the route of name, a lower-case FQDN.
func (r *router) route(name string) route {
	if inZone(name, r.clusterDomain) {
		return routeCluster
	}
	if len(r.prefixes) > 0 {
		if p, ok := reversePrefix(name); ok && r.clusterReverse(p) {
			return routeCluster
		}
	}
	for _, s := range r.search {
		if len(name) > len(s) && strings.HasSuffix(name, s) && name[len(name)-len(s)-1] == '.' {
			// name is <rest>.<s>: with ndots:5 a resolver tries a cluster
			// FQDN with every search domain before trying it as is.
			if inZone(name[:len(name)-len(s)], r.clusterDomain) {
				return routeNXDomain
			}
		}
	}
	return routeUpstream
}

// clusterReverse reports whether the reverse zone p lies inside a cluster prefix.
func (r *router) clusterReverse(p netip.Prefix) bool {
	for _, c := range r.prefixes {
		if c.Addr().Is4() == p.Addr().Is4() && c.Bits() <= p.Bits() && c.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// inZone reports whether name is zone or below it. Both are lower-case FQDNs.
func inZone(name, zone string) bool {
	if !strings.HasSuffix(name, zone) {
		return false
	}
	if len(name) == len(zone) || zone == "." {
		return true
	}
	return name[len(name)-len(zone)-1] == '.'
}

const (
	reverse4 = ".in-addr.arpa."
	reverse6 = ".ip6.arpa."
)

// reversePrefix turns a reverse name into the prefix it names:
// "96.10.in-addr.arpa." is 10.96.0.0/16 and "1.0.96.10.in-addr.arpa." is
// 10.96.0.1/32; ip6.arpa names count nibbles. Names that are not canonical
// reverse names (RFC 2317 delegations, leading zeros, too many labels) report
// false.
func reversePrefix(name string) (netip.Prefix, bool) {
	switch {
	case strings.HasSuffix(name, reverse4):
		var a [4]byte
		labels := name[:len(name)-len(reverse4)]
		n := 0
		for labels != "" {
			if n == 4 {
				return netip.Prefix{}, false
			}
			var label string
			i := strings.LastIndexByte(labels, '.')
			label, labels = labels[i+1:], labels[:max(i, 0)]
			v, ok := octet(label)
			if !ok {
				return netip.Prefix{}, false
			}
			a[n] = v
			n++
		}
		if n == 0 {
			return netip.Prefix{}, false
		}
		return netip.PrefixFrom(netip.AddrFrom4(a), 8*n), true
	case strings.HasSuffix(name, reverse6):
		var a [16]byte
		labels := name[:len(name)-len(reverse6)]
		n := 0
		for labels != "" {
			if n == 32 {
				return netip.Prefix{}, false
			}
			var label string
			i := strings.LastIndexByte(labels, '.')
			label, labels = labels[i+1:], labels[:max(i, 0)]
			v, ok := nibble(label)
			if !ok {
				return netip.Prefix{}, false
			}
			a[n/2] |= v << (4 * (1 - n%2))
			n++
		}
		if n == 0 {
			return netip.Prefix{}, false
		}
		return netip.PrefixFrom(netip.AddrFrom16(a), 4*n), true
	}
	return netip.Prefix{}, false
}

func octet(s string) (byte, bool) {
	if s == "" || len(s) > 3 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	v := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		v = v*10 + int(s[i]-'0')
	}
	if v > 255 {
		return 0, false
	}
	return byte(v), true
}

func nibble(s string) (byte, bool) {
	if len(s) != 1 {
		return 0, false
	}
	switch c := s[0]; {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}
