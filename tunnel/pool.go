package tunnel

import (
	"math/bits"
	"sync"

	"google.golang.org/grpc/mem"
)

// bufferPool is a mem.BufferPool with power-of-two size classes from 4 KiB
// to 1 MiB. Unlike gRPC's default pool it does not zero buffers (every user
// overwrites what it reads) and it has a class for each payload size, where
// the default rounds 64 KiB up to 1 MiB. Both the tunnel's payloads and,
// through DialOptions and ServerOptions, gRPC's transport use it.
type bufferPool struct {
	classes [maxClass - minClass + 1]sync.Pool
}

const (
	minClass = 12 // 4 KiB
	maxClass = 20 // 1 MiB
)

var pool = &bufferPool{}

// class returns the index of the smallest class that holds size bytes, or
// -1 when none does.
func class(size int) int {
	if size <= 1<<minClass {
		return 0
	}
	c := bits.Len(uint(size-1)) - minClass
	if c > maxClass-minClass {
		return -1
	}
	return c
}

func (p *bufferPool) Get(size int) *[]byte {
	c := class(size)
	if c < 0 {
		b := make([]byte, size)
		return &b
	}
	if b, ok := p.classes[c].Get().(*[]byte); ok {
		*b = (*b)[:size]
		return b
	}
	b := make([]byte, size, 1<<(c+minClass))
	return &b
}

func (p *bufferPool) Put(b *[]byte) {
	c := class(cap(*b))
	if c < 0 || cap(*b) != 1<<(c+minClass) {
		return // not from a class: let the GC have it
	}
	p.classes[c].Put(b)
}

var _ mem.BufferPool = (*bufferPool)(nil)
