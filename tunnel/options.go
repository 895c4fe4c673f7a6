package tunnel

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/keepalive"
)

// Transport tuning. HTTP/2's default 64 KiB windows hold a stream to one
// window per round trip; these let one flow fill the link while the
// per-stream window still bounds what one stalled flow can buffer, and
// gRPC's writer round-robins between streams, so flows share fairly.
const (
	// streamWindow is the per-stream flow-control window: what one flow may
	// have in flight, and buffered at a receiver that does not read.
	streamWindow = 4 << 20
	// connWindow is the per-connection window shared by all flows.
	connWindow = 32 << 20
	// ioBufferSize is the size of gRPC's socket read and write buffers (all
	// data is copied through them). Bigger ones (128 KiB to 1 MiB) measured
	// more CPU per byte on loopback than gRPC's default 32 KiB.
	ioBufferSize = 32 << 10

	keepaliveTime    = 30 * time.Second
	keepaliveTimeout = 20 * time.Second
)

// DialOptions returns transport options for gRPC connections that carry
// tunnel flows. Add credentials and the rest; the options apply to every
// RPC on the connection.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		experimental.WithBufferPool(pool),
		grpc.WithInitialWindowSize(streamWindow),
		grpc.WithInitialConnWindowSize(connWindow),
		grpc.WithReadBufferSize(ioBufferSize),
		grpc.WithWriteBufferSize(ioBufferSize),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                keepaliveTime,
			Timeout:             keepaliveTimeout,
			PermitWithoutStream: true,
		}),
	}
}

// ServerOptions returns transport options for gRPC servers that serve
// tunnel flows (and possibly other services).
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		experimental.BufferPool(pool),
		grpc.InitialWindowSize(streamWindow),
		grpc.InitialConnWindowSize(connWindow),
		grpc.ReadBufferSize(ioBufferSize),
		grpc.WriteBufferSize(ioBufferSize),
		grpc.MaxRecvMsgSize(maxMessage),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             keepaliveTime / 2,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    keepaliveTime,
			Timeout: keepaliveTimeout,
		}),
	}
}
