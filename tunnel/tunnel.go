// Package tunnel carries TCP connections and UDP flows over gRPC: one
// bidirectional stream of tp.tunnel.v1.Tunnel per flow (see
// rpc/tunnel/v1/tunnel.proto for the wire protocol).
//
// A Dialer opens flows on a gRPC connection (the workstation daemon dials
// the traffic-manager through a port-forward); a Server answers them by
// dialing the destination and splicing (the traffic-manager, later agents
// and the daemon). Errors cross the wire as codes and come back as native
// errors: a refused dial satisfies errors.Is(err, syscall.ECONNREFUSED), an
// unreachable destination syscall.EHOSTUNREACH, a timeout
// os.ErrDeadlineExceeded, an unknown session ErrUnknownSession and an
// incompatible peer *VersionError.
//
// Data frames travel in pooled, reference-counted buffers from the socket
// to the gRPC transport and back without extra copies; DialOptions and
// ServerOptions size HTTP/2 flow-control windows and buffers for bulk
// throughput.
package tunnel

import (
	"context"
	"log/slog"
	"net"
)

// ProtocolVersion is the version of the tunnel wire protocol this package
// speaks. Peers refuse flows from any other version.
const ProtocolVersion = 1

// SessionMetadataKey is the gRPC metadata key that carries the session id.
const SessionMetadataKey = "tp-session-id"

// Conn is a tunneled flow. For "udp", each Write is one datagram and each
// Read returns one.
type Conn interface {
	net.Conn
	// CloseWrite half-closes the flow: the peer reads EOF after the data
	// written before.
	CloseWrite() error
}

// DialFunc dials a destination, like (*net.Dialer).DialContext.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// Authorizer checks that a session may open flows. It returns nil, an error
// wrapping ErrUnknownSession (sent as codes.Unauthenticated), a gRPC status
// error (sent as is) or another error (sent as codes.PermissionDenied).
type Authorizer func(ctx context.Context, sessionID string) error

var discardLogger = slog.New(slog.DiscardHandler)
