package tunnel

import (
	"encoding/binary"
	"fmt"

	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the "proto" codec used for control frames
	"google.golang.org/grpc/mem"

	tunnelv1 "github.com/tp-run/tp/rpc/tunnel/v1"
)

// codecName is the gRPC content-subtype of tunnel streams
// ("application/grpc+tptunnel"). The bytes on the wire are the protobuf
// encoding of tunnelv1.Frame; the codec only avoids copying Data payloads.
const codecName = "tptunnel"

// maxPayload is the largest Data frame payload a sender produces for TCP.
// Big frames amortize gRPC's per-message costs (256 KiB measured about 10%
// less CPU per byte than 64 KiB); gRPC still interleaves flows on the wire
// in 16 KiB HTTP/2 frames.
const maxPayload = 256 << 10

// maxDatagram is the largest UDP datagram, the limit of a Data frame for UDP.
const maxDatagram = 64<<10 - 1

// smallRead is the buffer a flow reads a connection into after a read that
// did not fill its buffer: an idle connection holds this much, not
// maxPayload, while it waits for data.
const smallRead = 16 << 10

// maxMessage is the largest message a peer accepts. It leaves room for
// peers that send bigger Data frames than maxPayload.
const maxMessage = 4 << 20

// dataTag is the protobuf key of Frame.data: field 3, wire type bytes.
const dataTag = 3<<3 | 2

func init() {
	encoding.RegisterCodecV2(codec{})
}

// payloadPool holds the buffers of Data payloads.
var payloadPool mem.BufferPool = pool

// frame is one tunnelv1.Frame in memory. A Data frame keeps its payload in
// data, in reference-counted buffers that travel from the transport to the
// reader (and from a reader to the transport) without being copied. Other
// frames, and Data frames decoded by another codec, live in the embedded
// message, which also makes *frame a proto.Message for the plain proto codec.
type frame struct {
	tunnelv1.Frame
	isData bool
	data   mem.BufferSlice // owned by the frame when isData
}

// newDataFrame returns a Data frame that takes over data.
func newDataFrame(data mem.BufferSlice) *frame {
	return &frame{isData: true, data: data}
}

func newControlFrame(m *tunnelv1.Frame) *frame {
	f := &frame{}
	f.Kind = m.Kind
	return f
}

// normalize moves a Data payload decoded into the embedded message into data.
func (f *frame) normalize() {
	if d, ok := f.Kind.(*tunnelv1.Frame_Data); ok {
		f.isData = true
		f.data = mem.BufferSlice{mem.SliceBuffer(d.Data)}
		f.Kind = nil
	}
}

// materialize puts a Data payload into the embedded message for a stream
// that uses the plain proto codec.
func (f *frame) materialize() {
	if f.isData {
		f.Kind = &tunnelv1.Frame_Data{Data: f.data.Materialize()}
	}
}

// release frees the payload. The frame must not be used afterwards.
func (f *frame) release() {
	if f.data != nil {
		f.data.Free()
		f.data = nil
	}
}

// codec is a gRPC CodecV2 that encodes *frame without copying Data payloads
// and falls back to the proto codec for everything else.
type codec struct{}

func (codec) Name() string { return codecName }

func protoCodec() encoding.CodecV2 { return encoding.GetCodecV2("proto") }

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	f, ok := v.(*frame)
	if !ok {
		return protoCodec().Marshal(v)
	}
	if !f.isData {
		return protoCodec().Marshal(&f.Frame)
	}
	hdr := make([]byte, 0, 1+binary.MaxVarintLen64)
	hdr = append(hdr, dataTag)
	hdr = binary.AppendUvarint(hdr, uint64(f.data.Len()))
	out := make(mem.BufferSlice, 0, 1+len(f.data))
	out = append(out, mem.SliceBuffer(hdr))
	for _, b := range f.data {
		b.Ref() // gRPC frees its references once written; the frame keeps its own
		out = append(out, b)
	}
	return out, nil
}

func (codec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*frame)
	if !ok {
		return protoCodec().Unmarshal(data, v)
	}
	if skip, ok := dataHeader(data); ok {
		f.isData = true
		f.data = refFrom(data, skip)
		return nil
	}
	if err := protoCodec().Unmarshal(data, &f.Frame); err != nil {
		return fmt.Errorf("decode tunnel frame: %w", err)
	}
	f.normalize()
	return nil
}

// dataHeader reports whether data is exactly one Frame.data field (the form
// every sender produces) and how many bytes its key and length take.
func dataHeader(data mem.BufferSlice) (int, bool) {
	var hdr [1 + binary.MaxVarintLen64]byte
	n := 0
	for _, b := range data {
		n += copy(hdr[n:], b.ReadOnlyData())
		if n == len(hdr) {
			break
		}
	}
	if n == 0 || hdr[0] != dataTag {
		return 0, false
	}
	length, m := binary.Uvarint(hdr[1:n])
	if m <= 0 || uint64(data.Len()-1-m) != length {
		return 0, false
	}
	return 1 + m, true
}

// refFrom returns new references to data without its first skip bytes.
func refFrom(data mem.BufferSlice, skip int) mem.BufferSlice {
	out := make(mem.BufferSlice, 0, len(data))
	for _, b := range data {
		l := b.Len()
		switch {
		case skip >= l:
			skip -= l
			continue
		case skip > 0:
			out = append(out, b.Slice(skip, l))
			skip = 0
		default:
			b.Ref()
			out = append(out, b)
		}
	}
	return out
}
