package tunnel

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	tunnelv1 "github.com/tp-run/tp/rpc/tunnel/v1"
)

// Fuzz targets for what a peer sends on a tunnel stream: the codec that
// decodes frames (FuzzFrameCodec), the server's handling of a whole stream
// of them, Open first (FuzzServerStream), and the dialer's handling of the
// server's answer and the flow after it (FuzzDialerStream). See
// docs/fuzzing.md.

// refBuffers cuts b into reference-counted buffers at the given cuts (the
// transport hands a message over in pieces at HTTP/2 frame boundaries).
// Their capacity is above gRPC's pooling threshold, so that a missing Ref or
// a double Free panics instead of going unnoticed.
func refBuffers(b []byte, cuts ...int) mem.BufferSlice {
	var s mem.BufferSlice
	prev := 0
	for _, c := range append(cuts, len(b)) {
		c = min(max(c, prev), len(b))
		buf := make([]byte, c-prev, max(c-prev, 4096))
		copy(buf, b[prev:c])
		s = append(s, mem.NewBuffer(&buf, mem.DefaultBufferPool()))
		prev = c
	}
	return s
}

func marshalFrame(tb testing.TB, m *tunnelv1.Frame) []byte {
	tb.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// codecSeeds are frames of every kind, as peers send them.
func codecSeeds(tb testing.TB) [][]byte {
	ep := &tunnelv1.Endpoint{Ip: []byte{10, 96, 0, 10}, Port: 53}
	frames := []*tunnelv1.Frame{
		{Kind: &tunnelv1.Frame_Open{Open: &tunnelv1.Open{ProtocolVersion: ProtocolVersion,
			Network: tunnelv1.Network_NETWORK_TCP, Destination: ep, Source: &tunnelv1.Endpoint{
				Ip: netip.MustParseAddr("fd00::1").AsSlice(), Port: 40000}}}},
		{Kind: &tunnelv1.Frame_Open{Open: &tunnelv1.Open{ProtocolVersion: ProtocolVersion,
			Network: tunnelv1.Network_NETWORK_UDP, PairingId: "ic-1/abc"}}},
		{Kind: &tunnelv1.Frame_Opened{Opened: &tunnelv1.Opened{ProtocolVersion: ProtocolVersion, Local: ep}}},
		{Kind: &tunnelv1.Frame_Data{Data: []byte("hello")}},
		{Kind: &tunnelv1.Frame_Data{Data: pattern(300, 7)}},
		{Kind: &tunnelv1.Frame_Data{}},
		{Kind: &tunnelv1.Frame_Fin{Fin: &tunnelv1.Fin{}}},
		{Kind: &tunnelv1.Frame_Error{Error: &tunnelv1.Error{Code: tunnelv1.ErrorCode_ERROR_CODE_REFUSED, Message: "refused"}}},
		{Kind: &tunnelv1.Frame_Error{Error: &tunnelv1.Error{Code: tunnelv1.ErrorCode_ERROR_CODE_DENIED, Message: "denied"}}},
		{Kind: &tunnelv1.Frame_Error{Error: &tunnelv1.Error{Code: 42}}},
		{},
	}
	var out [][]byte
	for _, m := range frames {
		out = append(out, marshalFrame(tb, m))
	}
	// A Data frame with a non-minimal length and one with two data fields.
	out = append(out, []byte{dataTag, 0x83, 0x00, 'a', 'b', 'c'})
	out = append(out, []byte{dataTag, 1, 'a', dataTag, 1, 'b'})
	return out
}

// FuzzFrameCodec decodes arbitrary bytes, cut into arbitrary buffers, with
// the tunnel codec. It asserts that decoding never panics, agrees with the
// plain protobuf decoding (same error verdict, same frame, same payload),
// keeps the payload alive after the transport frees its buffers, and that
// the frame re-encodes to bytes that decode to the same frame.
func FuzzFrameCodec(f *testing.F) {
	for _, b := range codecSeeds(f) {
		f.Add(b, uint16(0), uint16(0))
		f.Add(b, uint16(1), uint16(2))
	}
	f.Fuzz(func(t *testing.T, wire []byte, cut1, cut2 uint16) {
		c1 := int(cut1) % (len(wire) + 1)
		c2 := c1 + int(cut2)%(len(wire)-c1+1)
		in := refBuffers(wire, c1, c2)

		var ref tunnelv1.Frame
		refErr := proto.Unmarshal(wire, &ref)

		var got frame
		err := (codec{}).Unmarshal(in, &got)
		in.Free() // the transport frees its references once decoded
		if (err == nil) != (refErr == nil) {
			t.Fatalf("codec error %v, proto error %v", err, refErr)
		}
		if err != nil {
			return
		}
		defer got.release()
		if got.isData {
			d, ok := ref.Kind.(*tunnelv1.Frame_Data)
			if !ok {
				t.Fatalf("codec decoded a Data frame, proto %v", &ref)
			}
			if payload := got.data.Materialize(); !bytes.Equal(payload, d.Data) {
				t.Fatalf("payload %x, proto %x", payload, d.Data)
			}
		} else if !proto.Equal(&got.Frame, &ref) {
			t.Fatalf("codec decoded %v, proto %v", &got.Frame, &ref)
		}

		out, err := (codec{}).Marshal(&got)
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		again := out.Materialize()
		out.Free()
		var back tunnelv1.Frame
		if err := proto.Unmarshal(again, &back); err != nil {
			t.Fatalf("re-encoded frame does not decode: %v", err)
		}
		// Unknown fields of a Data frame are not kept.
		discardUnknown(ref.ProtoReflect())
		discardUnknown(back.ProtoReflect())
		if !proto.Equal(&back, &ref) {
			t.Fatalf("round trip: got %v, want %v", &back, &ref)
		}

		if e := ref.GetError(); e != nil {
			checkRemoteError(t, &RemoteError{Code: e.GetCode(), Message: e.GetMessage()})
		}
		if o := ref.GetOpen(); o != nil {
			checkEndpoint(t, o.GetDestination())
			checkEndpoint(t, o.GetSource())
		}
	})
}

// discardUnknown drops the unknown fields of m and its sub-messages.
func discardUnknown(m protoreflect.Message) {
	m.SetUnknown(nil)
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Message() != nil && !fd.IsList() && !fd.IsMap() {
			discardUnknown(v.Message())
		}
		return true
	})
}

// checkRemoteError checks that an Error frame's code maps to a native error
// and back to the same code (unknown codes to OTHER).
func checkRemoteError(t *testing.T, re *RemoteError) {
	t.Helper()
	if re.Error() == "" || re.Unwrap() == nil {
		t.Fatalf("RemoteError %d: empty Error() or nil Unwrap", re.Code)
	}
	// Every code the protocol defines has its own native error; unknown
	// codes (and UNSPECIFIED) are OTHER.
	want := re.Code
	if _, defined := tunnelv1.ErrorCode_name[int32(re.Code)]; !defined ||
		re.Code == tunnelv1.ErrorCode_ERROR_CODE_UNSPECIFIED {
		want = tunnelv1.ErrorCode_ERROR_CODE_OTHER
	}
	// Relayed as is, and as its native error.
	if got := errorCode(re); got != re.Code {
		t.Fatalf("errorCode(RemoteError %d) = %d", re.Code, got)
	}
	if got := errorCode(re.Unwrap()); got != want {
		t.Fatalf("errorCode(native of %d) = %d, want %d", re.Code, got, want)
	}
	if re.Timeout() != (re.Code == tunnelv1.ErrorCode_ERROR_CODE_TIMEOUT) {
		t.Fatalf("RemoteError %d: Timeout() = %v", re.Code, re.Timeout())
	}
}

// checkEndpoint checks that an endpoint either converts to a valid address
// and back or is refused.
func checkEndpoint(t *testing.T, e *tunnelv1.Endpoint) {
	t.Helper()
	ap, err := fromEndpoint(e)
	if err != nil || e == nil {
		return
	}
	if !ap.IsValid() {
		t.Fatalf("fromEndpoint(%v) = invalid address without error", e)
	}
	if uint32(ap.Port()) != e.GetPort() {
		t.Fatalf("fromEndpoint(%v): port %d", e, ap.Port())
	}
	back, err := fromEndpoint(toEndpoint(ap))
	if err != nil || back != ap {
		t.Fatalf("endpoint round trip of %v: got %v, %v", ap, back, err)
	}
}

// fuzzStream is a grpc.ServerStream that receives the frames of a fuzz
// input and records what the server sends.
type fuzzStream struct {
	ctx        context.Context
	plainProto bool

	mu     sync.Mutex
	frames [][]byte // still to receive
	sent   []*tunnelv1.Frame
}

func (s *fuzzStream) Context() context.Context     { return s.ctx }
func (s *fuzzStream) SetHeader(metadata.MD) error  { return nil }
func (s *fuzzStream) SendHeader(metadata.MD) error { return nil }
func (s *fuzzStream) SetTrailer(metadata.MD)       {}

func (s *fuzzStream) RecvMsg(m any) error {
	s.mu.Lock()
	if len(s.frames) == 0 {
		s.mu.Unlock()
		// The client half-closed; a real stream then blocks nothing.
		return io.EOF
	}
	wire := s.frames[0]
	s.frames = s.frames[1:]
	s.mu.Unlock()
	in := refBuffers(wire, len(wire)/2)
	defer in.Free()
	var err error
	if s.plainProto {
		err = protoCodec().Unmarshal(in, m)
	} else {
		err = (codec{}).Unmarshal(in, m)
	}
	if err != nil {
		return status.Errorf(codes.Internal, "grpc: failed to unmarshal the received message: %v", err)
	}
	return nil
}

func (s *fuzzStream) SendMsg(m any) error {
	if s.ctx.Err() != nil {
		return status.FromContextError(s.ctx.Err()).Err()
	}
	var out mem.BufferSlice
	var err error
	if s.plainProto {
		out, err = protoCodec().Marshal(m)
	} else {
		out, err = (codec{}).Marshal(m)
	}
	if err != nil {
		return status.Errorf(codes.Internal, "grpc: error while marshaling: %v", err)
	}
	wire := out.Materialize()
	out.Free()
	var fr tunnelv1.Frame
	if err := proto.Unmarshal(wire, &fr); err != nil {
		panic("server sent an undecodable frame: " + err.Error())
	}
	s.mu.Lock()
	s.sent = append(s.sent, &fr)
	s.mu.Unlock()
	return nil
}

// splitFrames cuts a fuzz input into messages: each is a 2-byte big-endian
// length and that many bytes (the last one takes what is left).
func splitFrames(b []byte) [][]byte {
	var out [][]byte
	for len(b) >= 2 {
		n := int(binary.BigEndian.Uint16(b))
		b = b[2:]
		n = min(n, len(b))
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

func joinFrames(frames ...[]byte) []byte {
	var out []byte
	for _, f := range frames {
		out = binary.BigEndian.AppendUint16(out, uint16(len(f)))
		out = append(out, f...)
	}
	return out
}

// fuzzStreamTimeout bounds one stream: a server that does not return by
// then hangs on that input.
const fuzzStreamTimeout = 10 * time.Second

// FuzzServerStream serves one stream whose frames come from the fuzz input
// (the first should be an Open) against a destination that reads what the
// server writes. It asserts that the server never panics and always
// returns; that it refuses a bad first frame with INVALID_ARGUMENT or
// FAILED_PRECONDITION without dialing or sending; that it dials exactly the
// Open's destination and answers Opened (or Error when the dial fails)
// first; that the destination receives exactly the Data payloads of a
// well-formed TCP flow (a prefix of them otherwise); and that the last frame
// it sends is Fin or Error.
func FuzzServerStream(f *testing.F) {
	open := func(network tunnelv1.Network, version uint32) []byte {
		return marshalFrame(f, &tunnelv1.Frame{Kind: &tunnelv1.Frame_Open{Open: &tunnelv1.Open{
			ProtocolVersion: version, Network: network,
			Destination: &tunnelv1.Endpoint{Ip: []byte{10, 0, 0, 1}, Port: 80}}}})
	}
	data := func(s string) []byte {
		return marshalFrame(f, &tunnelv1.Frame{Kind: &tunnelv1.Frame_Data{Data: []byte(s)}})
	}
	fin := marshalFrame(f, &tunnelv1.Frame{Kind: &tunnelv1.Frame_Fin{Fin: &tunnelv1.Fin{}}})
	abort := marshalFrame(f, &tunnelv1.Frame{Kind: &tunnelv1.Frame_Error{Error: &tunnelv1.Error{
		Code: tunnelv1.ErrorCode_ERROR_CODE_RESET}}})
	tcp, udp := open(tunnelv1.Network_NETWORK_TCP, ProtocolVersion), open(tunnelv1.Network_NETWORK_UDP, ProtocolVersion)
	for _, flags := range []byte{0, 1, 2} {
		f.Add(flags, joinFrames(tcp, data("GET / HTTP/1.1\r\n\r\n"), fin))
		f.Add(flags, joinFrames(tcp, data("a"), data(""), data("b")))
		f.Add(flags, joinFrames(tcp, data("a"), abort, data("b")))
		f.Add(flags, joinFrames(tcp, data("a"), tcp))
		f.Add(flags, joinFrames(udp, data("query"), data(""), fin))
		f.Add(flags, joinFrames(open(tunnelv1.Network_NETWORK_TCP, 7), fin))
		f.Add(flags, joinFrames(open(0, ProtocolVersion)))
		f.Add(flags, joinFrames(fin))
		f.Add(flags, joinFrames(tcp, []byte{0xff}))
	}
	f.Fuzz(func(t *testing.T, flags byte, input []byte) {
		plainProto, dialFails := flags&1 != 0, flags&2 != 0
		frames := splitFrames(input)

		// What the input says, decoded independently of the server.
		var first *tunnelv1.Open
		var firstOK, pairing bool // a valid Open to dial, a valid Open to pair
		if len(frames) > 0 {
			var fr tunnelv1.Frame
			if proto.Unmarshal(frames[0], &fr) == nil && fr.GetOpen() != nil {
				first = fr.GetOpen()
				dst, err := fromEndpoint(first.GetDestination())
				_, nerr := networkName(first.GetNetwork())
				valid := first.GetProtocolVersion() == ProtocolVersion && nerr == nil && err == nil
				pairing = valid && first.GetPairingId() != ""
				firstOK = valid && !pairing && dst.IsValid()
			}
		}
		// How the flow after the Open ends, and the Data payloads before.
		var payload []byte
		end := "eof" // the client half-closes the stream
	scan:
		for _, w := range frames[min(1, len(frames)):] {
			var fr tunnelv1.Frame
			if proto.Unmarshal(w, &fr) != nil {
				end = "broken" // the stream fails
				break
			}
			switch fr.Kind.(type) {
			case *tunnelv1.Frame_Data:
				payload = append(payload, fr.GetData()...)
			case *tunnelv1.Frame_Fin:
				end = "fin" // anything after it is not read
				break scan
			case *tunnelv1.Frame_Error:
				end = "abort"
				break scan
			default:
				end = "violation"
				break scan
			}
		}
		clean := end == "eof" || end == "fin"

		ctx, cancel := context.WithTimeout(context.Background(), fuzzStreamTimeout)
		defer cancel()
		ct := "application/grpc+" + codecName
		if plainProto {
			ct = "application/grpc"
		}
		ctx = metadata.NewIncomingContext(ctx, metadata.Pairs(SessionMetadataKey, testSession, "content-type", ct))
		ss := &fuzzStream{ctx: ctx, plainProto: plainProto, frames: frames}

		var (
			dialMu   sync.Mutex
			dialed   []string
			received bytes.Buffer
			app      sync.WaitGroup
		)
		dial := func(_ context.Context, network, address string) (net.Conn, error) {
			dialMu.Lock()
			dialed = append(dialed, network+" "+address)
			dialMu.Unlock()
			if dialFails {
				return nil, syscall.ECONNREFUSED
			}
			c, peer := net.Pipe()
			app.Go(func() {
				defer peer.Close()
				buf := make([]byte, 4096)
				for {
					n, err := peer.Read(buf)
					dialMu.Lock()
					received.Write(buf[:n])
					dialMu.Unlock()
					if err != nil {
						return
					}
				}
			})
			return c, nil
		}
		srv, err := NewServer(dial, allowSession, nil)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- srv.handleStream(ss) }()
		var herr error
		select {
		case herr = <-done:
		case <-time.After(fuzzStreamTimeout + 5*time.Second):
			t.Fatalf("handleStream did not return")
		}
		app.Wait()
		if ctx.Err() != nil {
			t.Fatalf("handleStream returned only at the stream's deadline: %v", herr)
		}

		if pairing {
			// This server pairs no flows: it refuses them, without dialing.
			if len(dialed) > 0 || herr != nil || len(ss.sent) != 1 ||
				ss.sent[0].GetError().GetCode() != tunnelv1.ErrorCode_ERROR_CODE_REFUSED {
				t.Fatalf("Open with a pairing id: dialed %v, sent %v, returned %v; want one Error REFUSED", dialed, ss.sent, herr)
			}
			return
		}
		if !firstOK {
			if len(dialed) > 0 {
				t.Fatalf("dialed %v for a bad first frame", dialed)
			}
			if len(ss.sent) > 0 {
				t.Fatalf("sent %v for a bad first frame", ss.sent)
			}
			switch status.Code(herr) {
			case codes.InvalidArgument, codes.FailedPrecondition, codes.Internal:
			default:
				if !errors.Is(herr, io.EOF) { // no frame at all
					t.Fatalf("bad first frame: returned %v, want INVALID_ARGUMENT or FAILED_PRECONDITION", herr)
				}
			}
			return
		}
		dst, _ := fromEndpoint(first.GetDestination())
		network, _ := networkName(first.GetNetwork())
		if want := network + " " + dst.String(); len(dialed) != 1 || dialed[0] != want {
			t.Fatalf("dialed %v, want [%s]", dialed, want)
		}
		if herr != nil {
			t.Fatalf("handleStream: %v", herr)
		}
		if len(ss.sent) == 0 {
			t.Fatalf("the server answered nothing")
		}
		if dialFails {
			if len(ss.sent) != 1 || ss.sent[0].GetError().GetCode() != tunnelv1.ErrorCode_ERROR_CODE_REFUSED {
				t.Fatalf("failed dial: sent %v, want one Error REFUSED", ss.sent)
			}
			return
		}
		if ss.sent[0].GetOpened().GetProtocolVersion() != ProtocolVersion {
			t.Fatalf("first frame sent %v, want Opened", ss.sent[0])
		}
		last := ss.sent[len(ss.sent)-1]
		for _, fr := range ss.sent[1:max(1, len(ss.sent)-1)] {
			if _, ok := fr.Kind.(*tunnelv1.Frame_Data); !ok {
				t.Fatalf("sent %v before the last frame, want only Data", fr)
			}
		}
		switch {
		case clean && last.GetFin() == nil:
			t.Fatalf("well-formed flow (%s) ended with %v, want Fin", end, last)
		case end == "violation" && last.GetError() == nil:
			t.Fatalf("protocol violation answered with %v, want Error", last)
		}
		if network != "tcp" {
			return // datagrams: the pipe may merge them
		}
		got := received.Bytes()
		if clean && !bytes.Equal(got, payload) {
			t.Fatalf("destination received %q, want %q", got, payload)
		}
		if !bytes.HasPrefix(payload, got) {
			t.Fatalf("destination received %q, not a prefix of the payloads %q", got, payload)
		}
	})
}

// TestProtocolViolationAborts: a frame other than Data, Fin or Error after
// the Open resets the flow (Error frame), every time. FuzzServerStream found
// that the reader's Close raced the abort and sometimes sent Fin instead
// (testdata/fuzz/FuzzServerStream/protocol-violation).
func TestProtocolViolationAborts(t *testing.T) {
	open := marshalFrame(t, &tunnelv1.Frame{Kind: &tunnelv1.Frame_Open{Open: &tunnelv1.Open{
		ProtocolVersion: ProtocolVersion, Network: tunnelv1.Network_NETWORK_TCP,
		Destination: &tunnelv1.Endpoint{Ip: []byte{10, 0, 0, 1}, Port: 80}}}})
	data := marshalFrame(t, &tunnelv1.Frame{Kind: &tunnelv1.Frame_Data{Data: []byte("a")}})
	srv, err := NewServer(func(context.Context, string, string) (net.Conn, error) {
		c, peer := net.Pipe()
		go func() { // ends when the server closes c
			defer peer.Close()
			_, _ = io.Copy(io.Discard, peer)
		}()
		return c, nil
	}, allowSession, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		ctx := metadata.NewIncomingContext(testContext(t), metadata.Pairs(SessionMetadataKey, testSession))
		ss := &fuzzStream{ctx: ctx, frames: [][]byte{open, data, open}}
		if err := srv.handleStream(ss); err != nil {
			t.Fatalf("run %d: handleStream: %v", i, err)
		}
		last := ss.sent[len(ss.sent)-1]
		if last.GetError() == nil {
			t.Fatalf("run %d: a second Open was answered with %v, want Error", i, last)
		}
	}
}

// fuzzClientConn is a grpc.ClientConnInterface whose one stream answers
// with the frames of a fuzz input, then ends with status OK.
type fuzzClientConn struct {
	frames [][]byte
	stream *fuzzClientStream
}

func (c *fuzzClientConn) Invoke(context.Context, string, any, any, ...grpc.CallOption) error {
	return status.Error(codes.Unimplemented, "no unary calls")
}

func (c *fuzzClientConn) NewStream(ctx context.Context, _ *grpc.StreamDesc, _ string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
	c.stream = &fuzzClientStream{fuzzStream: fuzzStream{ctx: ctx, frames: c.frames}}
	return c.stream, nil
}

type fuzzClientStream struct {
	fuzzStream
	closeSends    atomic.Int32
	sendAfterHalf atomic.Bool // SendMsg after CloseSend, which gRPC forbids
}

func (s *fuzzClientStream) SendMsg(m any) error {
	if s.closeSends.Load() > 0 {
		s.sendAfterHalf.Store(true)
	}
	return s.fuzzStream.SendMsg(m)
}

func (s *fuzzClientStream) Header() (metadata.MD, error) { return nil, nil }
func (s *fuzzClientStream) Trailer() metadata.MD         { return nil }
func (s *fuzzClientStream) CloseSend() error {
	s.closeSends.Add(1)
	return nil
}

func (s *fuzzClientStream) RecvMsg(m any) error {
	if err := s.ctx.Err(); err != nil {
		return status.FromContextError(err).Err()
	}
	return s.fuzzStream.RecvMsg(m)
}

// FuzzDialerStream dials a flow whose server answers with the frames of the
// fuzz input, reads it to the end and closes it. It asserts that nothing
// panics or hangs; that Dial succeeds exactly when the first frame is an
// Opened of this protocol version, and otherwise fails with the Error
// frame's code as a RemoteError, a *VersionError or a plain error; that a
// TCP flow reads exactly the Data payloads before the first Fin (EOF) or
// Error (the error, with its code); and that the client sends its Open
// first, then only Data, Fin and Error, and nothing after CloseSend.
func FuzzDialerStream(f *testing.F) {
	opened := marshalFrame(f, &tunnelv1.Frame{Kind: &tunnelv1.Frame_Opened{Opened: &tunnelv1.Opened{
		ProtocolVersion: ProtocolVersion, Local: &tunnelv1.Endpoint{Ip: []byte{10, 0, 0, 2}, Port: 40000}}}})
	data := func(s string) []byte {
		return marshalFrame(f, &tunnelv1.Frame{Kind: &tunnelv1.Frame_Data{Data: []byte(s)}})
	}
	fin := marshalFrame(f, &tunnelv1.Frame{Kind: &tunnelv1.Frame_Fin{Fin: &tunnelv1.Fin{}}})
	reset := marshalFrame(f, &tunnelv1.Frame{Kind: &tunnelv1.Frame_Error{Error: &tunnelv1.Error{
		Code: tunnelv1.ErrorCode_ERROR_CODE_RESET, Message: "reset"}}})
	refused := marshalFrame(f, &tunnelv1.Frame{Kind: &tunnelv1.Frame_Error{Error: &tunnelv1.Error{
		Code: tunnelv1.ErrorCode_ERROR_CODE_REFUSED}}})
	v2 := marshalFrame(f, &tunnelv1.Frame{Kind: &tunnelv1.Frame_Opened{Opened: &tunnelv1.Opened{ProtocolVersion: 2}}})
	for _, udp := range []bool{false, true} {
		f.Add(udp, joinFrames(opened, data("HTTP/1.1 200 OK\r\n\r\n"), fin))
		f.Add(udp, joinFrames(opened, data("a"), fin, data("after fin")))
		f.Add(udp, joinFrames(opened, data("a"), reset))
		f.Add(udp, joinFrames(opened, data("a"), opened))
		f.Add(udp, joinFrames(opened, data("")))
		f.Add(udp, joinFrames(refused))
		f.Add(udp, joinFrames(v2))
		f.Add(udp, joinFrames(fin))
		f.Add(udp, joinFrames(opened, []byte{0xff}))
		f.Add(udp, []byte{})
	}
	f.Fuzz(func(t *testing.T, udp bool, input []byte) {
		frames := splitFrames(input)
		network := "tcp"
		if udp {
			network = "udp"
		}

		// What the input says, decoded independently of the client.
		var first tunnelv1.Frame
		firstOK := len(frames) > 0 && proto.Unmarshal(frames[0], &first) == nil
		var payload []byte
		end, endCode := "eof", tunnelv1.ErrorCode(0)
	scan:
		for _, w := range frames[min(1, len(frames)):] {
			var fr tunnelv1.Frame
			if proto.Unmarshal(w, &fr) != nil {
				end = "broken"
				break
			}
			switch fr.Kind.(type) {
			case *tunnelv1.Frame_Data:
				payload = append(payload, fr.GetData()...)
			case *tunnelv1.Frame_Fin:
				end = "fin"
				break scan
			case *tunnelv1.Frame_Error:
				end, endCode = "abort", fr.GetError().GetCode()
				break scan
			default:
				end = "violation"
				break scan
			}
		}

		cc := &fuzzClientConn{frames: frames}
		ctx, cancel := context.WithTimeout(context.Background(), fuzzStreamTimeout)
		defer cancel()
		c, err := NewDialer(cc, testSession, nil).Dial(ctx, network, netip.MustParseAddrPort("10.0.0.1:80"))
		switch {
		case firstOK && first.GetOpened().GetProtocolVersion() == ProtocolVersion:
			if err != nil {
				t.Fatalf("Dial answered Opened: %v", err)
			}
		case err == nil:
			t.Fatalf("Dial succeeded on %v", &first)
		case firstOK && first.GetError() != nil:
			var re *RemoteError
			if !errors.As(err, &re) || re.Code != first.GetError().GetCode() {
				t.Fatalf("Dial answered %v: got %v, want a RemoteError with its code", &first, err)
			}
			return
		case firstOK && first.GetOpened() != nil:
			var ve *VersionError
			if !errors.As(err, &ve) || !errors.Is(err, ErrIncompatibleVersion) {
				t.Fatalf("Dial answered %v: got %v, want a VersionError", &first, err)
			}
			return
		default:
			return // no Opened: a plain error
		}

		got, rerr := io.ReadAll(c)
		c.Close()
		if fl, ok := c.(*flow); ok {
			fl.wait()
		}
		if ctx.Err() != nil {
			t.Fatalf("the flow ended only at the deadline")
		}
		s := cc.stream
		if len(s.sent) == 0 || s.sent[0].GetOpen() == nil {
			t.Fatalf("the client sent %v, want Open first", s.sent)
		}
		for _, fr := range s.sent[1:] {
			switch fr.Kind.(type) {
			case *tunnelv1.Frame_Data, *tunnelv1.Frame_Fin, *tunnelv1.Frame_Error:
			default:
				t.Fatalf("the client sent %v after its Open", fr)
			}
		}
		if s.sendAfterHalf.Load() {
			t.Fatalf("the client sent after CloseSend")
		}
		if udp {
			return // io.ReadAll joins datagrams; nothing more to compare
		}
		switch end {
		case "eof", "fin":
			if rerr != nil || !bytes.Equal(got, payload) {
				t.Fatalf("read %q, %v; want %q and EOF", got, rerr, payload)
			}
		case "abort":
			var re *RemoteError
			if !errors.As(rerr, &re) || re.Code != endCode || !bytes.Equal(got, payload) {
				t.Fatalf("read %q, %v; want %q and a RemoteError with code %v", got, rerr, payload, endCode)
			}
		default:
			if rerr == nil || !bytes.HasPrefix(payload, got) {
				t.Fatalf("read %q, %v; want a prefix of %q and an error", got, rerr, payload)
			}
		}
	})
}

// blockingStream is a fuzzStream whose RecvMsg waits for its context.
type blockingStream struct{ fuzzStream }

func (s *blockingStream) RecvMsg(any) error {
	<-s.ctx.Done()
	return status.FromContextError(s.ctx.Err()).Err()
}

// TestAbortSendsError: Abort (which also closes the flow) sends an Error
// frame, never a Fin, wherever sendLoop is when it comes. FuzzServerStream
// found the select in sendLoop picking Fin when abort and close both came
// between its abort check and its select
// (testdata/fuzz/FuzzServerStream/violation-abort-races-fin).
func TestAbortSendsError(t *testing.T) {
	for i := range 5000 {
		ctx, cancel := context.WithCancel(context.Background())
		ss := &blockingStream{fuzzStream{ctx: ctx}}
		f := newFlow(ss, flowConfig{network: "tcp"})
		for range i % 8 { // catch sendLoop at different points
			runtime.Gosched()
		}
		f.Abort()
		<-f.sendDone
		cancel()
		f.wait()
		if len(ss.sent) != 1 || ss.sent[0].GetError() == nil {
			t.Fatalf("run %d: Abort sent %v, want one Error", i, ss.sent)
		}
	}
}
