package netstack

import (
	"sync"
	"sync/atomic"
)

const (
	// bigBufSize is the copy buffer of a busy flow: one 64 KiB TUN packet.
	bigBufSize = 64 << 10
	// smallBufSize is what an idle TCP flow holds while it waits for the cluster, and what it
	// copies through when the copy buffers are exhausted.
	smallBufSize = 4 << 10
	// maxCopyBuffers bounds the big buffers TCP flows hold at once (16 MiB).
	maxCopyBuffers = 256
)

var bigBufs = sync.Pool{New: func() any { b := make([]byte, bigBufSize); return &b }}

// getBuf and putBuf manage big buffers outside the budget (UDP needs whole datagrams).
func getBuf() *[]byte  { return bigBufs.Get().(*[]byte) }
func putBuf(b *[]byte) { bigBufs.Put(b) }

// copyBuffers hands out big buffers to TCP flows up to maxCopyBuffers at a time. Beyond that,
// get returns nil and the flow copies through its small buffer: slower, but it never waits
// for another flow (whose peer may not be reading) to release a buffer.
type copyBuffers struct {
	inUse atomic.Int64
}

func (c *copyBuffers) get() *[]byte {
	if c.inUse.Add(1) > maxCopyBuffers {
		c.inUse.Add(-1)
		return nil
	}
	return getBuf()
}

func (c *copyBuffers) put(b *[]byte) {
	putBuf(b)
	c.inUse.Add(-1)
}
