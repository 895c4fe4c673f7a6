// Package mounttest is the daemon's side of the mount port for tests, in
// process: it checks the handshake's token and serves a local directory
// tree over SFTP, and it can stall or break its connections.
package mounttest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

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
	latency time.Duration // added to every answer of the connections made after SetLatency
	wg      sync.WaitGroup
}

// SetLatency delays every answer of the connections accepted from now on by
// d (a round trip of the tunnel), without limiting their throughput.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
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
	var w io.WriteCloser = c
	s.mu.Lock()
	latency := s.latency
	s.mu.Unlock()
	if latency > 0 {
		d := newDelayedWriter(c, latency)
		defer d.wait()
		w = d
	}
	rwc := struct {
		io.Reader
		io.WriteCloser
	}{&gatedReader{r: br, s: s}, w}
	if s.handlers != nil {
		rs := sftp.NewRequestServer(rwc, *s.handlers)
		_ = rs.Serve()
		rs.Close()
		return
	}
	srv, err := sftp.NewServer(rwc, sftp.WithMaxTxPacket(256<<10)) // as the agent's export answers
	if err != nil {
		return
	}
	_ = srv.Serve()
	srv.Close()
}

// delayedWriter writes what it is given to w latency later, in order: a
// link with that one-way delay and no bandwidth limit.
type delayedWriter struct {
	w       io.WriteCloser
	latency time.Duration
	q       chan delayed
	done    chan struct{}

	mu     sync.Mutex
	closed bool
}

type delayed struct {
	at time.Time
	b  []byte
}

func newDelayedWriter(w io.WriteCloser, latency time.Duration) *delayedWriter {
	d := &delayedWriter{w: w, latency: latency, q: make(chan delayed, 4096), done: make(chan struct{})}
	go d.pump()
	return d
}

func (d *delayedWriter) pump() {
	defer close(d.done)
	for m := range d.q {
		time.Sleep(time.Until(m.at))
		if _, err := d.w.Write(m.b); err != nil {
			for range d.q { // drain until Close
			}
			return
		}
	}
}

func (d *delayedWriter) Write(p []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return 0, net.ErrClosed
	}
	d.q <- delayed{time.Now().Add(d.latency), slices.Clone(p)}
	return len(p), nil
}

// Close closes the connection at once (what is queued is lost, as on a cut link).
func (d *delayedWriter) Close() error {
	err := d.w.Close()
	d.stop()
	return err
}

func (d *delayedWriter) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.closed {
		d.closed = true
		close(d.q)
	}
}

// wait ends the queue and waits for the pump.
func (d *delayedWriter) wait() {
	d.stop()
	<-d.done
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
