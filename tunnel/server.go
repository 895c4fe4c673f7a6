package tunnel

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"

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
	pair      atomic.Pointer[PairFunc]
}

// PairFunc serves a flow whose Open carries a pairing id, in place of
// dialing its destination: the traffic-manager matches an agent's flow with
// the flow the intercept's client opens for it and splices the two.
//
// accept answers the Open with Opened and returns the flow; pair owns the
// flow until it returns, and may hand accept to another goroutine until
// then. If pair returns before calling accept, the flow fails with pair's
// error (errors.Is(err, syscall.ECONNREFUSED) reaches the dialer as a
// refused dial, os.ErrDeadlineExceeded as a timeout). After accept, an
// error aborts the flow, nil closes it gracefully.
type PairFunc func(ctx context.Context, sessionID, pairingID string, accept func() (Conn, error)) error

// HandlePairing makes s serve flows with a pairing id with pair. Without
// it, such flows are refused. Call it before serving.
func (s *Server) HandlePairing(pair PairFunc) {
	s.pair.Store(&pair)
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
	pairingID := open.GetPairingId()
	dst, err := fromEndpoint(open.GetDestination())
	if err != nil || (!dst.IsValid() && pairingID == "") {
		return status.Errorf(codes.InvalidArgument, "tunnel: Open: bad destination: %v", err)
	}
	src, _ := fromEndpoint(open.GetSource())
	log := s.log.With("session", sessionID, "network", network, "dst", dst)
	if src.IsValid() {
		log = log.With("src", src)
	}
	// Seen from the server, the flow goes from the client's source to dst.
	cfg := flowConfig{
		network:    network,
		local:      netAddr(network, dst),
		remote:     netAddr(network, src),
		plainProto: firstValue(md, "content-type") != "application/grpc+"+codecName,
		log:        log,
	}
	if pairingID != "" {
		return s.handlePaired(ss, sessionID, pairingID, cfg)
	}

	conn, err := s.dial(ctx, network, dst.String())
	if err != nil {
		log.Debug("tunnel: dial failed", "err", err)
		return sendError(ss, err, err.Error())
	}
	if err := sendControl(ss, &tunnelv1.Frame{Kind: &tunnelv1.Frame_Opened{Opened: &tunnelv1.Opened{
		ProtocolVersion: ProtocolVersion,
		Local:           toEndpoint(addrPortOf(conn.LocalAddr())),
	}}}); err != nil {
		conn.Close()
		return err
	}
	log.Debug("tunnel: flow opened")

	f := newFlow(ss, cfg)
	err = Splice(ctx, f, conn)
	f.wait()
	log.Debug("tunnel: flow ended", "err", err)
	if ctxErr := ctx.Err(); ctxErr != nil {
		return toStatus(ctxErr)
	}
	return nil
}

// handlePaired serves a flow with a pairing id through the PairFunc.
func (s *Server) handlePaired(ss grpc.ServerStream, sessionID, pairingID string, cfg flowConfig) error {
	ctx := ss.Context()
	log := cfg.log.With("pairing", pairingID)
	pair := s.pair.Load()
	if pair == nil {
		return sendError(ss, syscall.ECONNREFUSED, "tunnel: this server does not pair flows")
	}

	var (
		mu       sync.Mutex
		accepted bool // accept was called (or may no longer be)
		f        *flow
	)
	accept := func() (Conn, error) {
		mu.Lock()
		defer mu.Unlock()
		if accepted {
			return nil, errors.New("tunnel: accept called twice or after the PairFunc returned")
		}
		accepted = true
		if err := sendControl(ss, &tunnelv1.Frame{Kind: &tunnelv1.Frame_Opened{Opened: &tunnelv1.Opened{
			ProtocolVersion: ProtocolVersion,
		}}}); err != nil {
			return nil, fromStatus(err)
		}
		f = newFlow(ss, cfg)
		return f, nil
	}
	err := (*pair)(ctx, sessionID, pairingID, accept)

	mu.Lock()
	tried := accepted
	accepted = true
	mu.Unlock()
	switch {
	case !tried:
		log.Debug("tunnel: pairing failed", "err", err)
		if err == nil {
			err = errors.New("tunnel: the pairing ended without a flow")
		}
		if ctx.Err() != nil {
			return toStatus(ctx.Err())
		}
		return sendError(ss, err, err.Error())
	case f == nil:
		return toStatus(err) // accept failed: the stream is broken
	}
	if err != nil {
		abortConn(f, err)
	}
	f.Close()
	f.wait()
	log.Debug("tunnel: paired flow ended", "err", err)
	if ctxErr := ctx.Err(); ctxErr != nil {
		return toStatus(ctxErr)
	}
	return nil
}

// sendError answers an Open with an Error frame for cause.
func sendError(ss grpc.ServerStream, cause error, msg string) error {
	return sendControl(ss, &tunnelv1.Frame{Kind: &tunnelv1.Frame_Error{Error: &tunnelv1.Error{
		Code: errorCode(cause), Message: msg,
	}}})
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
