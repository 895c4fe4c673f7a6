package tunnel

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tunnelv1 "github.com/tp-run/tp/rpc/tunnel/v1"
)

// Server implements the Tunnel service: it dials the destination of each
// flow and splices the two.
type Server struct {
	dial      DialFunc
	authorize Authorizer
	log       *slog.Logger
}

// NewServer returns a Server that reaches destinations with dial and admits
// sessions that authorize accepts. A nil log discards.
func NewServer(dial DialFunc, authorize Authorizer, log *slog.Logger) (*Server, error) {
	if dial == nil {
		return nil, errors.New("tunnel: NewServer needs a DialFunc")
	}
	if authorize == nil {
		return nil, errors.New("tunnel: NewServer needs an Authorizer")
	}
	if log == nil {
		log = discardLogger
	}
	return &Server{dial: dial, authorize: authorize, log: log}, nil
}

// Register registers the Tunnel service on r. Serve it with ServerOptions
// for full throughput.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	r.RegisterService(&serviceDesc, s)
}

// streamHandler is what serviceDesc dispatches to.
type streamHandler interface {
	handleStream(grpc.ServerStream) error
}

// serviceDesc is tunnelv1.Tunnel_ServiceDesc with a handler that receives
// *frame instead of *tunnelv1.Frame, which lets the tunnel codec keep Data
// payloads in the transport's buffers.
var serviceDesc = grpc.ServiceDesc{
	ServiceName: tunnelv1.Tunnel_ServiceDesc.ServiceName,
	HandlerType: (*streamHandler)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    tunnelv1.Tunnel_ServiceDesc.Streams[0].StreamName,
		ServerStreams: true,
		ClientStreams: true,
		Handler: func(srv any, ss grpc.ServerStream) error {
			return srv.(streamHandler).handleStream(ss)
		},
	}},
	Metadata: tunnelv1.Tunnel_ServiceDesc.Metadata,
}

func (s *Server) handleStream(ss grpc.ServerStream) error {
	ctx := ss.Context()
	md, _ := metadata.FromIncomingContext(ctx)

	first := &frame{}
	if err := ss.RecvMsg(first); err != nil {
		return err
	}
	open := first.GetOpen()
	if open == nil {
		first.release()
		return status.Errorf(codes.InvalidArgument, "tunnel: first frame is %T, want Open", first.Kind)
	}
	if v := open.GetProtocolVersion(); v != ProtocolVersion {
		return toStatus(&VersionError{Client: v, Server: ProtocolVersion})
	}
	sessionID := firstValue(md, SessionMetadataKey)
	if err := s.authorizeSession(ctx, sessionID); err != nil {
		return err
	}
	network, err := networkName(open.GetNetwork())
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "tunnel: Open: %v", err)
	}
	dst, err := fromEndpoint(open.GetDestination())
	if err != nil || !dst.IsValid() {
		return status.Errorf(codes.InvalidArgument, "tunnel: Open: bad destination: %v", err)
	}
	src, _ := fromEndpoint(open.GetSource())
	log := s.log.With("session", sessionID, "network", network, "dst", dst)
	if src.IsValid() {
		log = log.With("src", src)
	}

	conn, err := s.dial(ctx, network, dst.String())
	if err != nil {
		log.Debug("tunnel: dial failed", "err", err)
		return sendControl(ss, &tunnelv1.Frame{Kind: &tunnelv1.Frame_Error{Error: &tunnelv1.Error{
			Code: errorCode(err), Message: err.Error(),
		}}})
	}
	if err := sendControl(ss, &tunnelv1.Frame{Kind: &tunnelv1.Frame_Opened{Opened: &tunnelv1.Opened{
		ProtocolVersion: ProtocolVersion,
		Local:           toEndpoint(addrPortOf(conn.LocalAddr())),
	}}}); err != nil {
		conn.Close()
		return err
	}
	log.Debug("tunnel: flow opened")

	// Seen from the server, the flow goes from the client's source to dst.
	f := newFlow(ss, flowConfig{
		network:    network,
		local:      netAddr(network, dst),
		remote:     netAddr(network, src),
		plainProto: firstValue(md, "content-type") != "application/grpc+"+codecName,
		log:        log,
	})
	err = Splice(ctx, f, conn)
	f.wait()
	log.Debug("tunnel: flow ended", "err", err)
	if ctxErr := ctx.Err(); ctxErr != nil {
		return toStatus(ctxErr)
	}
	return nil
}

// authorizeSession maps the Authorizer's verdict to a status.
func (s *Server) authorizeSession(ctx context.Context, sessionID string) error {
	if sessionID == "" {
		return status.Errorf(codes.Unauthenticated,
			"tunnel: no %s in the request metadata: %v", SessionMetadataKey, ErrUnknownSession)
	}
	err := s.authorize(ctx, sessionID)
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok || errors.Is(err, ErrUnknownSession) {
		return toStatus(err)
	}
	return status.Error(codes.PermissionDenied, err.Error())
}

func sendControl(ss grpc.ServerStream, m *tunnelv1.Frame) error {
	return ss.SendMsg(newControlFrame(m))
}

func firstValue(md metadata.MD, key string) string {
	if v := md.Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}
