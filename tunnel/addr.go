package tunnel

import (
	"fmt"
	"net"
	"net/netip"

	tunnelv1 "github.com/tp-run/tp/rpc/tunnel/v1"
)

// parseNetwork accepts "tcp" and "udp" (and their 4/6 variants).
func parseNetwork(network string) (string, tunnelv1.Network, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
		return "tcp", tunnelv1.Network_NETWORK_TCP, nil
	case "udp", "udp4", "udp6":
		return "udp", tunnelv1.Network_NETWORK_UDP, nil
	default:
		return "", 0, net.UnknownNetworkError(network)
	}
}

func networkName(n tunnelv1.Network) (string, error) {
	switch n {
	case tunnelv1.Network_NETWORK_TCP:
		return "tcp", nil
	case tunnelv1.Network_NETWORK_UDP:
		return "udp", nil
	default:
		return "", fmt.Errorf("unsupported network %v", n)
	}
}

func toEndpoint(ap netip.AddrPort) *tunnelv1.Endpoint {
	if !ap.IsValid() {
		return nil
	}
	return &tunnelv1.Endpoint{Ip: ap.Addr().AsSlice(), Port: uint32(ap.Port())}
}

// fromEndpoint converts e; a missing endpoint is the zero AddrPort.
func fromEndpoint(e *tunnelv1.Endpoint) (netip.AddrPort, error) {
	if e == nil {
		return netip.AddrPort{}, nil
	}
	ip, ok := netip.AddrFromSlice(e.GetIp())
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("bad IP address %x", e.GetIp())
	}
	if e.GetPort() > 0xffff {
		return netip.AddrPort{}, fmt.Errorf("bad port %d", e.GetPort())
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(e.GetPort())), nil
}

// netAddr returns ap as a *net.TCPAddr or *net.UDPAddr.
func netAddr(network string, ap netip.AddrPort) net.Addr {
	if network == "udp" {
		return net.UDPAddrFromAddrPort(ap)
	}
	return net.TCPAddrFromAddrPort(ap)
}

// addrPortOf returns the address of a *net.TCPAddr or *net.UDPAddr.
func addrPortOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort()
	case *net.UDPAddr:
		return a.AddrPort()
	default:
		return netip.AddrPort{}
	}
}
