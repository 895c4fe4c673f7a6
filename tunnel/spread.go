package tunnel

import (
	"context"
	"sync"

	"google.golang.org/grpc"
)

// Spread is a grpc.ClientConnInterface over several connections to the same
// server: each new stream (each flow a Dialer opens on it) goes to the
// connection with the fewest open streams, the earliest added on a tie;
// unary calls go to the first connection. When one transport (one
// port-forward stream, one TLS connection to the API server) is the ceiling,
// flows spread over several of them. Connections come and go while flows run
// (Add, Remove); a flow stays on its connection until it ends.
type Spread struct {
	mu    sync.Mutex
	conns []*spreadConn
}

type spreadConn struct {
	cc   grpc.ClientConnInterface
	open int // streams started and not yet ended
}

// NewSpread returns a Spread over first; first also carries the unary calls
// and is never removed.
func NewSpread(first grpc.ClientConnInterface) *Spread {
	return &Spread{conns: []*spreadConn{{cc: first}}}
}

// Add makes cc take new streams.
func (s *Spread) Add(cc grpc.ClientConnInterface) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conns = append(s.conns, &spreadConn{cc: cc})
}

// Remove stops giving new streams to cc (not the first connection); the
// streams already on it carry on or fail with it.
func (s *Spread) Remove(cc grpc.ClientConnInterface) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := 1; i < len(s.conns); i++ {
		if s.conns[i].cc == cc {
			s.conns = append(s.conns[:i:i], s.conns[i+1:]...)
			return
		}
	}
}

// Len is the number of connections taking new streams.
func (s *Spread) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Invoke runs a unary call on the first connection.
func (s *Spread) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	s.mu.Lock()
	cc := s.conns[0].cc
	s.mu.Unlock()
	return cc.Invoke(ctx, method, args, reply, opts...)
}

// NewStream starts a stream on the least-loaded connection. The stream
// counts as open until its context ends: when it finished (both sides done,
// an error) or was cancelled (a Dialer cancels a flow's stream when the flow
// ends, also a refused one).
func (s *Spread) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s.mu.Lock()
	pick := s.conns[0]
	for _, c := range s.conns[1:] {
		if c.open < pick.open {
			pick = c
		}
	}
	pick.open++
	s.mu.Unlock()
	cs, err := pick.cc.NewStream(ctx, desc, method, opts...)
	if err != nil {
		s.done(pick)
		return nil, err
	}
	context.AfterFunc(cs.Context(), func() { s.done(pick) })
	return cs, nil
}

func (s *Spread) done(c *spreadConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c.open--
}

var _ grpc.ClientConnInterface = (*Spread)(nil)
