//go:build linux

package tun

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// routeProtocol marks the routes tp installs (RTPROT_*, "tp" = 0x74 fits in the user range), so
// that Conflicts does not report them.
const routeProtocol netlink.RouteProtocol = 0x74

// Device is an open TUN device with its addresses and routes. Closing it removes all three.
type Device struct {
	name string
	mtu  int
	file *os.File
	link netlink.Link

	mu     sync.Mutex
	routes []netip.Prefix
}

// Open creates the TUN device name (e.g. "tp0") in the calling thread's network namespace,
// sets its MTU (0 means DefaultMTU), brings it up with the addresses Addr4 (and Addr6 if a route
// is IPv6) and routes the given prefixes through it. It needs CAP_NET_ADMIN and /dev/net/tun.
//
// Call Conflicts first to find and report clashes with the namespace's networks: a prefix the
// namespace already routes elsewhere is skipped (Routes lists the prefixes actually routed),
// a more specific one takes the overlapping addresses away from the existing network.
func Open(name string, mtu int, routes []netip.Prefix) (*Device, error) {
	if mtu == 0 {
		mtu = DefaultMTU
	}
	if mtu < 1280 || mtu > 65535 {
		return nil, fmt.Errorf("tun: MTU %d out of range [1280, 65535]", mtu)
	}
	if err := checkRoutes(routes); err != nil {
		return nil, err
	}
	file, name, err := create(name)
	if err != nil {
		return nil, err
	}
	d := &Device{name: name, mtu: mtu, file: file}
	if err := d.configure(routes); err != nil {
		file.Close()
		return nil, fmt.Errorf("tun: configure %s: %w", name, err)
	}
	return d, nil
}

// create opens /dev/net/tun and attaches a TUN (IP packets, no packet-info header) named name.
func create(name string) (*os.File, string, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, "", fmt.Errorf("tun: open /dev/net/tun (the container needs --device /dev/net/tun): %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, "", fmt.Errorf("tun: device name %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EPERM) {
			return nil, "", fmt.Errorf("tun: create %s (the container needs --cap-add NET_ADMIN): %w", name, err)
		}
		return nil, "", fmt.Errorf("tun: create %s: %w", name, err)
	}
	// The fd is blocking here, so os does not register it with the poller: netstack reads it
	// (and makes it non-blocking) itself.
	return os.NewFile(uintptr(fd), "/dev/net/tun"), ifr.Name(), nil
}

func (d *Device) configure(routes []netip.Prefix) error {
	link, err := netlink.LinkByName(d.name)
	if err != nil {
		return err
	}
	d.link = link
	if err := netlink.LinkSetMTU(link, d.mtu); err != nil {
		return fmt.Errorf("set MTU %d: %w", d.mtu, err)
	}
	if err := d.addAddress(Addr4); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set up: %w", err)
	}
	return d.SetRoutes(routes)
}

func (d *Device) addAddress(a netip.Addr) error {
	if a.Is6() {
		if err := enableIPv6(d.name); err != nil {
			return err
		}
	}
	addr := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(a, a.BitLen())), Flags: unix.IFA_F_NODAD}
	if err := netlink.AddrReplace(d.link, addr); err != nil {
		return fmt.Errorf("add address %v: %w", a, err)
	}
	return nil
}

// enableIPv6 turns IPv6 on for the device if the namespace disabled it (Docker does so on
// networks without IPv6).
func enableIPv6(name string) error {
	path := "/proc/sys/net/ipv6/conf/" + name + "/disable_ipv6"
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: the kernel has no IPv6", ErrIPv6Unavailable)
	}
	if err != nil || len(b) == 0 || b[0] == '0' {
		return err
	}
	if err := os.WriteFile(path, []byte("0"), 0); err != nil {
		return fmt.Errorf("%w on %s and %s is not writable "+
			"(run the daemon container with --sysctl net.ipv6.conf.all.disable_ipv6=0): %v",
			ErrIPv6Unavailable, name, path, err)
	}
	return nil
}

// Name returns the device's name.
func (d *Device) Name() string { return d.name }

// MTU returns the device's MTU.
func (d *Device) MTU() int { return d.mtu }

// File returns the device's file. Do not read or write it while a netstack.Stack serves it.
func (d *Device) File() *os.File { return d.file }

// Fd returns the device's file descriptor.
func (d *Device) Fd() uintptr { return d.file.Fd() }

// Routes returns the prefixes currently routed through the device.
func (d *Device) Routes() []netip.Prefix {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.routes)
}

// KernelRoutes reads the routes the kernel has through the device now, in the main table of the
// calling thread's network namespace: those SetRoutes installed and any added by hand, but not
// the ones the kernel derives from the device's own addresses. Unlike Routes, it shows what
// really reaches the device.
func (d *Device) KernelRoutes() ([]netip.Prefix, error) {
	rts, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: d.link.Attrs().Index}, netlink.RT_FILTER_OIF)
	if err != nil {
		return nil, fmt.Errorf("tun: list the routes of %s: %w", d.name, err)
	}
	var out []netip.Prefix
	for _, r := range rts {
		p, ok := prefixOf(r.Dst)
		if !ok || r.Protocol == unix.RTPROT_KERNEL || r.Type != unix.RTN_UNICAST {
			continue
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return out, nil
}

// SetRoutes makes routes the set of prefixes routed through the device: it adds the missing
// ones (skipping those the namespace already routes elsewhere) and removes the others. It must
// be called in the device's network namespace.
func (d *Device) SetRoutes(routes []netip.Prefix) error {
	if err := checkRoutes(routes); err != nil {
		return err
	}
	want := make([]netip.Prefix, 0, len(routes))
	for _, p := range routes {
		if p = p.Masked(); !slices.Contains(want, p) {
			want = append(want, p)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range want {
		if slices.Contains(d.routes, p) {
			continue
		}
		if p.Addr().Is6() {
			if err := d.addAddress(Addr6); err != nil {
				return err
			}
		}
		if err := netlink.RouteAdd(d.route(p)); err != nil {
			if errors.Is(err, syscall.EEXIST) {
				// The namespace routes exactly this network elsewhere (Conflicts reports it);
				// replacing that route would cut the namespace off from it.
				continue
			}
			return fmt.Errorf("route %v: %w", p, err)
		}
		d.routes = append(d.routes, p)
	}
	for i := 0; i < len(d.routes); {
		p := d.routes[i]
		if slices.Contains(want, p) {
			i++
			continue
		}
		if err := netlink.RouteDel(d.route(p)); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("remove route %v: %w", p, err)
		}
		d.routes = slices.Delete(d.routes, i, i+1)
	}
	return nil
}

func (d *Device) route(p netip.Prefix) *netlink.Route {
	src := Addr4
	if p.Addr().Is6() {
		src = Addr6
	}
	return &netlink.Route{
		LinkIndex: d.link.Attrs().Index,
		Dst:       ipNet(p),
		Src:       net.IP(src.AsSlice()),
		Scope:     netlink.SCOPE_LINK,
		Protocol:  routeProtocol,
	}
}

// Close closes the device; the kernel removes it with its addresses and routes. Close it after
// the netstack.Stack serving it has stopped.
func (d *Device) Close() error {
	return d.file.Close()
}

// checkRoutes rejects prefixes that cannot be cluster networks: a default route would send the
// daemon's own connection to the cluster into the TUN.
func checkRoutes(routes []netip.Prefix) error {
	for _, p := range routes {
		if !p.IsValid() {
			return fmt.Errorf("tun: invalid route %v", p)
		}
		if p.Bits() == 0 {
			return fmt.Errorf("tun: refusing to route %v (everything) into the TUN", p)
		}
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Conflicts returns the routes that overlap networks already attached to the calling thread's
// network namespace: networks of other interfaces' addresses and routes of the main table
// (default routes excepted). Routing such a network into the TUN would cut the namespace off
// from the existing one, so the daemon should report it instead. Routes installed by Open are
// not reported.
func Conflicts(routes []netip.Prefix) ([]Conflict, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("tun: list interfaces: %w", err)
	}
	type network struct {
		prefix netip.Prefix
		iface  string
		source string
	}
	var networks []network
	names := make(map[int]string, len(links))
	for _, l := range links {
		attrs := l.Attrs()
		names[attrs.Index] = attrs.Name
		if attrs.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return nil, fmt.Errorf("tun: list addresses of %s: %w", attrs.Name, err)
		}
		for _, a := range addrs {
			p, ok := prefixOf(a.IPNet)
			if !ok || ignored(p) || p.Addr() == Addr4 || p.Addr() == Addr6 {
				continue
			}
			networks = append(networks, network{p.Masked(), attrs.Name, "address"})
		}
	}
	rts, err := netlink.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("tun: list routes: %w", err)
	}
	for _, r := range rts {
		p, ok := prefixOf(r.Dst)
		if !ok || p.Bits() == 0 || ignored(p) || r.Protocol == routeProtocol || r.Type != unix.RTN_UNICAST {
			continue
		}
		if name, ok := names[r.LinkIndex]; ok && name == "lo" {
			continue
		}
		networks = append(networks, network{p, names[r.LinkIndex], "route"})
	}

	var conflicts []Conflict
	for _, route := range routes {
		for _, n := range networks {
			if !route.Masked().Overlaps(n.prefix) {
				continue
			}
			c := Conflict{Route: route, Network: n.prefix, Interface: n.iface, Source: n.source}
			if !slices.ContainsFunc(conflicts, func(o Conflict) bool {
				return o.Route == c.Route && o.Network == c.Network && o.Interface == c.Interface
			}) {
				conflicts = append(conflicts, c)
			}
		}
	}
	return conflicts, nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits), true
}

// ignored reports networks that cannot clash with cluster networks in practice: loopback,
// link-local and multicast.
func ignored(p netip.Prefix) bool {
	a := p.Addr()
	return a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsMulticast() || a.IsLinkLocalMulticast()
}
