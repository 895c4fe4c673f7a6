// Package tun creates the TUN device of the daemon container's network namespace and routes the
// cluster's pod and service networks through it, so that every process sharing the namespace
// (the developer containers joined with --network container:tp) reaches the cluster. The
// device's file descriptor is served by package netstack.
//
// It also reports subnet clashes: cluster networks that overlap networks already attached to
// the namespace (the Docker network of the container, for instance) would shadow them.
//
// Opening a device needs CAP_NET_ADMIN and /dev/net/tun; it is implemented on linux only.
package tun

import (
	"errors"
	"fmt"
	"net/netip"
)

// DefaultMTU is the MTU of the device if Open is given 0: large packets make the user-space
// stack fast (the kernel hands it up to 64 KiB at a time).
const DefaultMTU = 65520

// The device's own addresses: the source address of connections from the namespace into the
// cluster. They never leave the namespace.
var (
	Addr4 = netip.MustParseAddr("169.254.116.112") // 169.254.'t'.'p'
	Addr6 = netip.MustParseAddr("fd74:7000::1")
)

// ErrIPv6Unavailable is returned (wrapped) by Open and SetRoutes when an IPv6 route cannot be
// installed because IPv6 is disabled in the namespace; route only the IPv4 prefixes then.
var ErrIPv6Unavailable = errors.New("IPv6 is disabled")

// Conflict is a route that overlaps a network already attached to the namespace.
type Conflict struct {
	Route     netip.Prefix // the cluster network to be routed into the TUN
	Network   netip.Prefix // the existing network it overlaps
	Interface string       // the interface the existing network is on
	Source    string       // "address" (assigned to Interface) or "route" (routed via it)
}

func (c Conflict) String() string {
	return fmt.Sprintf("cluster network %v overlaps %v on %s (%s)", c.Route, c.Network, c.Interface, c.Source)
}
