// Package tlsbatch wraps gRPC TLS transport credentials so that TLS moves
// its records through fewer system calls: crypto/tls writes every record
// (at most 16 KiB) with its own write(2) and reads about one record per
// read(2). Under the TLS connection, tlsbatch collects the records of one
// Write of the connection (one flush of gRPC's write buffer) into one
// write(2), and reads the socket through a buffer, so one read(2) returns
// several records. The agent's connection to the traffic-manager carries
// every intercepted byte this way (docs/intercepts.md), over the pod
// network, where each system call also crosses veth and netfilter.
package tlsbatch

import (
	"bufio"
	"context"
	"net"
	"sync"

	"google.golang.org/grpc/credentials"
)

// WriteBufferSize is gRPC's write buffer for connections with batched
// records (grpc.WithWriteBufferSize, grpc.WriteBufferSize): a full buffer is
// one Write, so one write(2) of up to 8 records instead of 8.
const WriteBufferSize = 128 << 10

// readBuffer is the size of the buffer under TLS on the read side: a few
// records, as much as one read(2) takes off the socket.
const readBuffer = 64 << 10

// Wrap returns creds whose connections batch their TLS records.
func Wrap(creds credentials.TransportCredentials) credentials.TransportCredentials {
	return &batchCreds{TransportCredentials: creds}
}

type batchCreds struct {
	credentials.TransportCredentials
}

func (c *batchCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	bc := newBatchConn(raw)
	conn, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, bc)
	if err != nil {
		return nil, nil, err
	}
	return &recordConn{Conn: conn, raw: bc}, info, nil
}

func (c *batchCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	bc := newBatchConn(raw)
	conn, info, err := c.TransportCredentials.ServerHandshake(bc)
	if err != nil {
		return nil, nil, err
	}
	return &recordConn{Conn: conn, raw: bc}, info, nil
}

func (c *batchCreds) Clone() credentials.TransportCredentials {
	return &batchCreds{TransportCredentials: c.TransportCredentials.Clone()}
}

// recordConn is the TLS connection: a Write hands all its records to the
// socket at once.
type recordConn struct {
	net.Conn // the TLS connection
	raw      *batchConn
}

func (c *recordConn) Write(b []byte) (int, error) {
	c.raw.hold()
	n, err := c.Conn.Write(b)
	if ferr := c.raw.flush(); err == nil {
		err = ferr
	}
	return n, err
}

// batchConn is the socket under TLS. Between hold and flush it collects
// what TLS writes; reads go through a buffer.
type batchConn struct {
	net.Conn
	r *bufio.Reader

	mu      sync.Mutex
	holding bool
	pending []byte
}

func newBatchConn(c net.Conn) *batchConn {
	return &batchConn{Conn: c, r: bufio.NewReaderSize(c, readBuffer)}
}

func (c *batchConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// Write writes b, or collects it while a Write of the TLS connection runs.
// TLS may also write outside one (alerts, key updates): that goes out at
// once, or with the records it lands between.
func (c *batchConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.holding {
		c.pending = append(c.pending, b...)
		return len(b), nil
	}
	if len(c.pending) > 0 {
		// A write while an error left records behind: keep the order.
		if err := c.writePending(); err != nil {
			return 0, err
		}
	}
	return c.Conn.Write(b)
}

func (c *batchConn) hold() {
	c.mu.Lock()
	c.holding = true
	c.mu.Unlock()
}

// flush writes what was collected since hold.
func (c *batchConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.holding = false
	return c.writePending()
}

func (c *batchConn) writePending() error {
	if len(c.pending) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.pending)
	c.pending = c.pending[:0]
	if cap(c.pending) > 4*readBuffer {
		c.pending = nil // a large write: do not pin its buffer
	}
	return err
}
