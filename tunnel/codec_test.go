package tunnel

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	tunnelv1 "github.com/tp-run/tp/rpc/tunnel/v1"
)

// split cuts b into buffers at the given offsets, as the transport does at
// HTTP/2 frame boundaries.
func split(b []byte, cuts ...int) mem.BufferSlice {
	var s mem.BufferSlice
	prev := 0
	for _, c := range append(cuts, len(b)) {
		s = append(s, mem.Copy(b[prev:c], mem.DefaultBufferPool()))
		prev = c
	}
	return s
}

func TestCodecDataFrames(t *testing.T) {
	for _, size := range []int{0, 1, 127, 128, 16383, 16384, 65536, 100_000} {
		payload := pattern(size, byte(size))
		wire, err := proto.Marshal(&tunnelv1.Frame{Kind: &tunnelv1.Frame_Data{Data: payload}})
		if err != nil {
			t.Fatal(err)
		}
		var cuts [][]int
		cuts = append(cuts, nil, []int{1})
		if len(wire) > 3 {
			cuts = append(cuts, []int{2}, []int{1, 2, 3})
		}
		if len(wire) > 16384 {
			cuts = append(cuts, []int{16384})
		}
		for _, c := range cuts {
			in := split(wire, c...)
			var f frame
			if err := (codec{}).Unmarshal(in, &f); err != nil {
				t.Fatalf("Unmarshal(%d bytes cut at %v): %v", size, c, err)
			}
			in.Free()
			if !f.isData || !bytes.Equal(f.data.Materialize(), payload) {
				t.Fatalf("Unmarshal(%d bytes cut at %v): got isData=%v, %d bytes", size, c, f.isData, f.data.Len())
			}

			out, err := (codec{}).Marshal(&f)
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			f.release()
			if got := out.Materialize(); !bytes.Equal(got, wire) {
				t.Fatalf("Marshal(%d bytes): differs from proto.Marshal", size)
			}
			out.Free()
		}
	}
}

func TestCodecControlFrames(t *testing.T) {
	msgs := []*tunnelv1.Frame{
		{Kind: &tunnelv1.Frame_Open{Open: &tunnelv1.Open{ProtocolVersion: 1, PairingId: "p"}}},
		{Kind: &tunnelv1.Frame_Fin{Fin: &tunnelv1.Fin{}}},
		{Kind: &tunnelv1.Frame_Error{Error: &tunnelv1.Error{Code: tunnelv1.ErrorCode_ERROR_CODE_RESET}}},
	}
	for _, m := range msgs {
		out, err := (codec{}).Marshal(newControlFrame(m))
		if err != nil {
			t.Fatalf("Marshal(%v): %v", m, err)
		}
		var f frame
		if err := (codec{}).Unmarshal(out, &f); err != nil {
			t.Fatalf("Unmarshal(%v): %v", m, err)
		}
		if f.isData || !proto.Equal(&f.Frame, m) {
			t.Fatalf("round trip: got %v, want %v", &f.Frame, m)
		}
		// Plain messages pass through to the proto codec.
		var plain tunnelv1.Frame
		if err := (codec{}).Unmarshal(out, &plain); err != nil || !proto.Equal(&plain, m) {
			t.Fatalf("Unmarshal into *tunnelv1.Frame: got %v, %v, want %v", &plain, err, m)
		}
		out.Free()
	}
	// A Data field followed by another field is not the fast path.
	wire, _ := proto.Marshal(&tunnelv1.Frame{Kind: &tunnelv1.Frame_Data{Data: []byte("abc")}})
	wire = append(wire, 0x22, 0x00) // fin = {} after it: the last field wins
	var f frame
	if err := (codec{}).Unmarshal(split(wire), &f); err != nil {
		t.Fatalf("Unmarshal: %v", err)
	}
	if f.isData || f.GetFin() == nil {
		t.Fatalf("Unmarshal(data then fin): got isData=%v kind=%T, want Fin", f.isData, f.Kind)
	}
}
