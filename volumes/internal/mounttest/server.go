// Package mounttest is the daemon's side of the mount port for tests, in
// process: it checks the handshake's token and serves a local directory
// tree over SFTP, and it can stall or break its connections.
package mounttest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/pkg/sftp"
)

// Server is the daemon's side of the mount port, in-process: it checks
// the handshake's token and serves the real filesystem over SFTP. It can
// break or stall its connections.
type Server struct {
	l        net.Listener
	token    string
	handlers *sftp.Handlers // a request server's; nil: the host's files

	mu      sync.Mutex
	conns   []net.Conn
	stalled chan struct{} // closed: reads go on; open: reads block
	wg      sync.WaitGroup
}

// NewServer listens on 127.0.0.1 and serves the host's files until the
// test ends.
func NewServer(t testing.TB, token string) *Server { return newServer(t, token, nil) }

// NewRequestServer is NewServer with an sftp.RequestServer of handlers
// (e.g. sftp.InMemHandler()), as the traffic-agent serves.
func NewRequestServer(t testing.TB, token string, handlers sftp.Handlers) *Server {
	return newServer(t, token, &handlers)
}

func newServer(t testing.TB, token string, handlers *sftp.Handlers) *Server {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{l: l, token: token, handlers: handlers}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(s.Close)
	return s
}

func (s *Server) Addr() string { return s.l.Addr().String() }

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.l.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns = append(s.conns, c)
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			s.serve(c)
		}()
	}
}

func (s *Server) serve(c net.Conn) {
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	if strings.TrimSpace(line) != fmt.Sprintf("TP-MOUNT 1 %s", s.token) {
		fmt.Fprintf(c, "ERR unknown token\n")
		return
	}
	fmt.Fprintf(c, "OK\n")
	rwc := struct {
		io.Reader
		io.WriteCloser
	}{&gatedReader{r: br, s: s}, c}
	if s.handlers != nil {
		rs := sftp.NewRequestServer(rwc, *s.handlers)
		_ = rs.Serve()
		rs.Close()
		return
	}
	srv, err := sftp.NewServer(rwc)
	if err != nil {
		return
	}
	_ = srv.Serve()
	srv.Close()
}

// gatedReader blocks reads while the server is stalled.
type gatedReader struct {
	r *bufio.Reader
	s *Server
}

func (g *gatedReader) Read(p []byte) (int, error) {
	g.s.mu.Lock()
	gate := g.s.stalled
	g.s.mu.Unlock()
	if gate != nil {
		<-gate
	}
	return g.r.Read(p)
}

// Stall makes the server stop answering (reads block) until Unstall.
func (s *Server) Stall() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stalled == nil {
		s.stalled = make(chan struct{})
	}
}

// Unstall lets the reads go on.
func (s *Server) Unstall() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stalled != nil {
		close(s.stalled)
		s.stalled = nil
	}
}

// Break closes every connection, as a dead daemon or agent would.
func (s *Server) Break() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
}

// Close stops listening and breaks every connection.
func (s *Server) Close() {
	s.l.Close()
	s.Break()
	s.Unstall()
	s.wg.Wait()
}
