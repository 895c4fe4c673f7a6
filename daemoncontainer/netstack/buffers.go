package netstack

import "sync"

const (
	// bigBufSize is the copy buffer of a busy flow: one 64 KiB TUN packet.
	bigBufSize = 64 << 10
	// smallBufSize is what an idle TCP flow holds while it waits for the cluster.
	smallBufSize = 4 << 10
)

var bigBufs = sync.Pool{New: func() any { b := make([]byte, bigBufSize); return &b }}

func getBuf() *[]byte  { return bigBufs.Get().(*[]byte) }
func putBuf(b *[]byte) { bigBufs.Put(b) }
