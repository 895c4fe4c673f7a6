package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	tunnelv1 "github.com/tp-run/tp/rpc/tunnel/v1"
)

// Dialer opens flows through a Tunnel server on a gRPC connection.
type Dialer struct {
	cc        grpc.ClientConnInterface
	sessionID string
	log       *slog.Logger
	version   uint32 // ProtocolVersion; tests pretend to be other versions
}

// NewDialer returns a Dialer that opens flows on cc for the session. Give cc
// the DialOptions for full throughput. A nil log discards.
func NewDialer(cc grpc.ClientConnInterface, sessionID string, log *slog.Logger) *Dialer {
	if log == nil {
		log = discardLogger
	}
	return &Dialer{cc: cc, sessionID: sessionID, log: log, version: ProtocolVersion}
}

// Flow describes a flow to open.
type Flow struct {
	Network     string         // "tcp" or "udp"
	Destination netip.AddrPort // where the server dials; optional with a PairingID
	Source      netip.AddrPort // optional: where the flow comes from
	// PairingID, if set, makes the server pair the flow with another one
	// (see PairFunc) instead of dialing Destination.
	PairingID string
}

// Dial opens a flow to dst. ctx bounds the dial only, like
// (*net.Dialer).DialContext: cancelling it later does not affect the Conn.
// Errors are *net.OpError values wrapping native errors: a refused dial
// satisfies errors.Is(err, syscall.ECONNREFUSED) (see the package doc).
func (d *Dialer) Dial(ctx context.Context, network string, dst netip.AddrPort) (Conn, error) {
	return d.DialFlow(ctx, Flow{Network: network, Destination: dst})
}

// DialFlow is Dial with the optional parts of a flow.
func (d *Dialer) DialFlow(ctx context.Context, fl Flow) (Conn, error) {
	network, netEnum, err := parseNetwork(fl.Network)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: fl.Network, Err: err}
	}
	remote := netAddr(network, fl.Destination)
	opErr := func(err error) error {
		return &net.OpError{Op: "dial", Net: network, Addr: remote, Err: err}
	}
	if !fl.Destination.IsValid() && fl.PairingID == "" {
		return nil, opErr(errors.New("invalid destination address"))
	}
	if err := ctx.Err(); err != nil {
		return nil, opErr(contextError(err))
	}

	// The stream outlives ctx; only the dial watches it.
	sctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(
		context.WithoutCancel(ctx), SessionMetadataKey, d.sessionID))
	stop := context.AfterFunc(ctx, cancel)
	fail := func(err error) (Conn, error) {
		stop()
		cancel()
		if ctxErr := ctx.Err(); ctxErr != nil {
			err = contextError(ctxErr)
		}
		return nil, opErr(err)
	}

	cs, err := d.cc.NewStream(sctx, &tunnelv1.Tunnel_ServiceDesc.Streams[0],
		tunnelv1.Tunnel_Stream_FullMethodName, grpc.ForceCodecV2(codec{}))
	if err != nil {
		return fail(fromStatus(err))
	}
	open := newControlFrame(&tunnelv1.Frame{Kind: &tunnelv1.Frame_Open{Open: &tunnelv1.Open{
		ProtocolVersion: d.version,
		Network:         netEnum,
		Destination:     toEndpoint(fl.Destination),
		Source:          toEndpoint(fl.Source),
		PairingId:       fl.PairingID,
	}}})
	// A failed send shows up as the status RecvMsg returns.
	_ = cs.SendMsg(open)
	first := &frame{}
	if err := cs.RecvMsg(first); err != nil {
		if errors.Is(err, io.EOF) {
			err = errors.New("tunnel: server ended the stream without answering Open")
		}
		return fail(fromStatus(err))
	}
	var local net.Addr
	switch {
	case first.GetOpened() != nil:
		opened := first.GetOpened()
		if v := opened.GetProtocolVersion(); v != d.version {
			return fail(&VersionError{Client: d.version, Server: v})
		}
		if la, err := fromEndpoint(opened.GetLocal()); err == nil && la.IsValid() {
			local = netAddr(network, la)
		}
	case first.GetError() != nil:
		e := first.GetError()
		return fail(&RemoteError{Code: e.GetCode(), Message: e.GetMessage()})
	default:
		first.release()
		return fail(fmt.Errorf("tunnel: server answered Open with %T", first.Kind))
	}
	if !stop() {
		return fail(ctx.Err()) // ctx ended meanwhile and cancelled the stream
	}
	if fl.Source.IsValid() {
		local = netAddr(network, fl.Source)
	}
	if local == nil {
		local = netAddr(network, netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
	}
	d.log.Debug("tunnel: flow opened", "network", network, "dst", fl.Destination)
	return newFlow(cs, flowConfig{
		network:   network,
		local:     local,
		remote:    remote,
		client:    true,
		closeSend: cs.CloseSend,
		cancel:    cancel,
		log:       d.log,
	}), nil
}
