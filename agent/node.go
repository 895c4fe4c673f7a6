package agent

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"io"
	"net/netip"
	"os"
	"strings"
)

// defaultGateways reads the pod's IPv4 default gateways from
// /proc/net/route: with bridge CNIs, the kubelet's probes come from there.
func defaultGateways() []netip.Addr {
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return nil
	}
	defer f.Close()
	return parseDefaultGateways(f)
}

func parseDefaultGateways(f io.Reader) []netip.Addr {
	var out []netip.Addr
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		// Iface Destination Gateway Flags ...; hex, little-endian.
		if len(fields) < 3 || fields[1] != "00000000" || fields[2] == "00000000" {
			continue
		}
		b, err := hex.DecodeString(fields[2])
		if err != nil || len(b) != 4 {
			continue
		}
		var ip [4]byte
		binary.LittleEndian.PutUint32(ip[:], binary.BigEndian.Uint32(b))
		out = append(out, netip.AddrFrom4(ip))
	}
	return out
}

// fromNode says whether a connection comes from the pod's node.
func (a *agent) fromNode(remote string) bool {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return false
	}
	for _, n := range a.cfg.NodeAddrs {
		if n == ap.Addr().Unmap() {
			return true
		}
	}
	return false
}
