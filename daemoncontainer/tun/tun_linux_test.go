//go:build linux

package tun_test

import (
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/tp-run/tp/daemoncontainer/tun"
	"github.com/tp-run/tp/daemoncontainer/tun/tuntest"
)

func mustPrefixes(ss ...string) []netip.Prefix {
	ps := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		ps[i] = netip.MustParsePrefix(s)
	}
	return ps
}

func TestOpenConfiguresDevice(t *testing.T) {
	ns := tuntest.NewNetns(t)
	routes := mustPrefixes("10.96.0.0/12", "10.244.0.0/16", "fd00:96::/108")
	err := ns.Do(func() error {
		d, err := tun.Open("tp0", 0, routes)
		if err != nil {
			return err
		}
		defer d.Close()

		link, err := netlink.LinkByName("tp0")
		if err != nil {
			t.Fatalf("device tp0: %v", err)
		}
		attrs := link.Attrs()
		if attrs.MTU != tun.DefaultMTU || d.MTU() != tun.DefaultMTU {
			t.Errorf("MTU: got %d (device reports %d), want %d", attrs.MTU, d.MTU(), tun.DefaultMTU)
		}
		if attrs.Flags&net.FlagUp == 0 {
			t.Errorf("flags: got %v, want up", attrs.Flags)
		}
		addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
		if err != nil {
			t.Fatalf("AddrList: %v", err)
		}
		var got []netip.Addr
		for _, a := range addrs {
			ip, _ := netip.AddrFromSlice(a.IP)
			got = append(got, ip.Unmap())
		}
		for _, want := range []netip.Addr{tun.Addr4, tun.Addr6} {
			if !slices.Contains(got, want) {
				t.Errorf("addresses: got %v, want %v among them", got, want)
			}
		}
		for _, p := range routes {
			dst := p.Addr().Next()
			rs, err := netlink.RouteGet(net.IP(dst.AsSlice()))
			if err != nil {
				t.Fatalf("RouteGet %v: %v", dst, err)
			}
			if len(rs) != 1 || rs[0].LinkIndex != attrs.Index {
				t.Errorf("route to %v: got %+v, want via tp0", dst, rs)
			}
		}
		if got := d.Routes(); !slices.Equal(got, routes) {
			t.Errorf("Routes: got %v, want %v", got, routes)
		}
		// The kernel's view, sorted; the address routes the kernel derives are left out.
		if got, err := d.KernelRoutes(); err != nil || !slices.Equal(got, routes) {
			t.Errorf("KernelRoutes: got %v, %v, want %v", got, err, routes)
		}

		// SetRoutes adds and removes.
		next := mustPrefixes("10.96.0.0/12", "10.100.0.0/16")
		if err := d.SetRoutes(next); err != nil {
			t.Fatalf("SetRoutes: %v", err)
		}
		if got := d.Routes(); !slices.Equal(got, next) {
			t.Errorf("Routes after SetRoutes: got %v, want %v", got, next)
		}
		if rs, err := netlink.RouteGet(net.ParseIP("10.244.0.1")); err == nil && len(rs) > 0 && rs[0].LinkIndex == attrs.Index {
			t.Errorf("route to 10.244.0.1 after SetRoutes: got via tp0, want removed")
		}
		if got, err := d.KernelRoutes(); err != nil || !slices.Equal(got, next) {
			t.Errorf("KernelRoutes after SetRoutes: got %v, %v, want %v", got, err, next)
		}
		// A route removed behind the device's back is gone from KernelRoutes, not from Routes.
		gone := &netlink.Route{LinkIndex: attrs.Index, Scope: netlink.SCOPE_LINK, Dst: &net.IPNet{IP: net.ParseIP("10.100.0.0").To4(), Mask: net.CIDRMask(16, 32)}}
		if err := netlink.RouteDel(gone); err != nil {
			t.Fatalf("RouteDel 10.100.0.0/16: %v", err)
		}
		if got, err := d.KernelRoutes(); err != nil || !slices.Equal(got, next[:1]) {
			t.Errorf("KernelRoutes after a RouteDel: got %v, %v, want %v", got, err, next[:1])
		}

		if err := d.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if _, err := netlink.LinkByName("tp0"); err == nil {
			t.Errorf("tp0 after Close: exists, want removed")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestOpenRejectsBadRoutes(t *testing.T) {
	ns := tuntest.NewNetns(t)
	for _, routes := range [][]netip.Prefix{
		mustPrefixes("0.0.0.0/0"),
		mustPrefixes("::/0"),
		{netip.Prefix{}},
	} {
		err := ns.Do(func() error {
			d, err := tun.Open("tp0", 0, routes)
			if err == nil {
				d.Close()
			}
			return err
		})
		if err == nil {
			t.Errorf("Open with routes %v: got nil error, want one", routes)
		}
	}
}

func TestConflicts(t *testing.T) {
	ns := tuntest.NewNetns(t)
	err := ns.Do(func() error {
		// A Docker-like network on another interface (a persistent TUN: dummy and veth may be
		// missing from the kernel).
		dummy := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, Mode: netlink.TUNTAP_MODE_TUN}
		if err := netlink.LinkAdd(dummy); err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr("172.18.0.2/16")
		if err := netlink.AddrAdd(dummy, addr); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(dummy); err != nil {
			return err
		}
		_, extra, _ := net.ParseCIDR("192.168.50.0/24")
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: dummy.Attrs().Index, Dst: extra}); err != nil {
			return err
		}

		routes := mustPrefixes("10.96.0.0/12", "172.18.5.0/24", "192.168.0.0/16")
		got, err := tun.Conflicts(routes)
		if err != nil {
			t.Fatalf("Conflicts: %v", err)
		}
		want := []tun.Conflict{
			{Route: routes[1], Network: netip.MustParsePrefix("172.18.0.0/16"), Interface: "eth0", Source: "address"},
			{Route: routes[2], Network: netip.MustParsePrefix("192.168.50.0/24"), Interface: "eth0", Source: "route"},
		}
		if !slices.Equal(got, want) {
			t.Errorf("Conflicts: got %v, want %v", got, want)
		}

		// The device's own routes are not conflicts.
		d, err := tun.Open("tp0", 0, routes[:1])
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer d.Close()
		got, err = tun.Conflicts(routes[:1])
		if err != nil {
			t.Fatalf("Conflicts: %v", err)
		}
		if len(got) != 0 {
			t.Errorf("Conflicts with tp0 open: got %v, want none", got)
		}

		// A network the namespace already routes is skipped instead of hijacked.
		if err := d.SetRoutes(mustPrefixes("10.96.0.0/12", "172.18.0.0/16")); err != nil {
			t.Errorf("SetRoutes over eth0's network: %v", err)
		}
		if got, want := d.Routes(), routes[:1]; !slices.Equal(got, want) {
			t.Errorf("Routes: got %v, want %v", got, want)
		}
		rs, err := netlink.RouteGet(net.ParseIP("172.18.0.9"))
		if err != nil || len(rs) != 1 || rs[0].LinkIndex != dummy.Attrs().Index {
			t.Errorf("route to 172.18.0.9: got %+v (%v), want via eth0", rs, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestOpenEnablesIPv6OnTheDevice(t *testing.T) {
	ns := tuntest.NewNetns(t)
	err := ns.Do(func() error {
		// Like a Docker container on a network without IPv6. (With a read-only /proc/sys, as in
		// an unprivileged container, Open fails with ErrIPv6Unavailable instead.)
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/default/disable_ipv6", []byte("1"), 0); err != nil {
			t.Skipf("cannot disable IPv6 in the test namespace: %v", err)
		}
		d, err := tun.Open("tp0", 0, mustPrefixes("10.96.0.0/12"))
		if err != nil {
			return err
		}
		defer d.Close()
		// /proc/sys is writable here: Open enables IPv6 on the device itself.
		if err := d.SetRoutes(mustPrefixes("10.96.0.0/12", "fd00:96::/108")); err != nil {
			t.Errorf("SetRoutes with IPv6 disabled by default: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
