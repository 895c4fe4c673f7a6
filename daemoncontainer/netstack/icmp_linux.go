//go:build linux

package netstack

import (
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// synTable tracks the SYNs whose dial is in progress. It bounds their number and keeps the
// start of each SYN, which an ICMP destination-unreachable must quote: the client's kernel
// matches the quoted sequence number against its connecting socket.
//
// An entry lives from admit until handleTCP has completed the forwarder request, so a SYN for
// an id in the table is a retransmission the forwarder would ignore anyway.
type synTable struct {
	mu      sync.Mutex
	max     int
	pending map[stack.TransportEndpointID]*synEntry
}

type synEntry struct {
	quote []byte
	added time.Duration
}

type admission int

const (
	synAdmitted admission = iota
	synDuplicate
	synFull
)

func (t *synTable) init(max int) {
	t.max = max
	t.pending = make(map[stack.TransportEndpointID]*synEntry)
}

// admit registers a new SYN. Entries older than staleAfter plus a margin belong to SYNs the
// forwarder did not take (malformed ones); they are replaced or purged.
func (t *synTable) admit(id stack.TransportEndpointID, pkt *stack.PacketBuffer, dialTimeout time.Duration) admission {
	staleBefore := now() - dialTimeout - 5*time.Minute
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.pending[id]; ok && e.added > staleBefore {
		return synDuplicate
	}
	if len(t.pending) >= t.max {
		for k, e := range t.pending {
			if e.added <= staleBefore {
				delete(t.pending, k)
			}
		}
		if len(t.pending) >= t.max {
			return synFull
		}
	}
	t.pending[id] = &synEntry{quote: icmpQuote(pkt), added: now()}
	return synAdmitted
}

func (t *synTable) quote(id stack.TransportEndpointID) []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.pending[id]; ok {
		return e.quote
	}
	return nil
}

func (t *synTable) remove(id stack.TransportEndpointID) {
	t.mu.Lock()
	delete(t.pending, id)
	t.mu.Unlock()
}

// icmpQuote copies what an ICMP error about pkt quotes: its IP header and the first 8 bytes
// of its transport header (ports and, for TCP, the sequence number).
func icmpQuote(pkt *stack.PacketBuffer) []byte {
	nh := pkt.NetworkHeader().Slice()
	th := pkt.TransportHeader().Slice()
	if len(th) > 8 {
		th = th[:8]
	}
	q := make([]byte, 0, len(nh)+len(th))
	return append(append(q, nh...), th...)
}

// sendUnreachable answers the packet that quote starts with an ICMP destination-unreachable:
// port unreachable if port, else host (IPv6: address) unreachable. The error comes from the
// packet's destination, which is what the client kernel matches it to.
func (s *Stack) sendUnreachable(quote []byte, port bool) {
	if len(quote) == 0 {
		return
	}
	var (
		pkt   []byte
		proto tcpip.NetworkProtocolNumber
	)
	switch quote[0] >> 4 {
	case 4:
		if len(quote) < header.IPv4MinimumSize {
			return
		}
		orig := header.IPv4(quote)
		proto = header.IPv4ProtocolNumber
		pkt = make([]byte, header.IPv4MinimumSize+header.ICMPv4MinimumSize+len(quote))
		ip := header.IPv4(pkt)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(len(pkt)),
			TTL:         64,
			Protocol:    uint8(header.ICMPv4ProtocolNumber),
			SrcAddr:     orig.DestinationAddress(),
			DstAddr:     orig.SourceAddress(),
		})
		ip.SetChecksum(^ip.CalculateChecksum())
		icmp := header.ICMPv4(pkt[header.IPv4MinimumSize:])
		icmp.SetType(header.ICMPv4DstUnreachable)
		icmp.SetCode(header.ICMPv4HostUnreachable)
		if port {
			icmp.SetCode(header.ICMPv4PortUnreachable)
		}
		copy(icmp[header.ICMPv4MinimumSize:], quote)
		icmp.SetChecksum(0)
		icmp.SetChecksum(^checksum.Checksum(icmp, 0))
	case 6:
		if len(quote) < header.IPv6MinimumSize {
			return
		}
		orig := header.IPv6(quote)
		proto = header.IPv6ProtocolNumber
		pkt = make([]byte, header.IPv6MinimumSize+header.ICMPv6ErrorHeaderSize+len(quote))
		ip := header.IPv6(pkt)
		src, dst := orig.DestinationAddress(), orig.SourceAddress()
		ip.Encode(&header.IPv6Fields{
			PayloadLength:     uint16(len(pkt) - header.IPv6MinimumSize),
			TransportProtocol: header.ICMPv6ProtocolNumber,
			HopLimit:          64,
			SrcAddr:           src,
			DstAddr:           dst,
		})
		icmp := header.ICMPv6(pkt[header.IPv6MinimumSize:])
		icmp.SetType(header.ICMPv6DstUnreachable)
		icmp.SetCode(header.ICMPv6AddressUnreachable)
		if port {
			icmp.SetCode(header.ICMPv6PortUnreachable)
		}
		copy(icmp[header.ICMPv6ErrorHeaderSize:], quote)
		icmp.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: icmp, Src: src, Dst: dst}))
	default:
		return
	}
	if err := s.ip.WriteRawPacket(nicID, proto, buffer.MakeWithData(pkt)); err != nil {
		s.log.Debug("send ICMP unreachable", "error", err)
	}
}
