package plugin

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

// testServer is the daemon's side of the mount port, in-process: it checks
// the handshake's token and serves the real filesystem over SFTP. It can
// break or stall its connections.
type testServer struct {
	l     net.Listener
	token string

	mu      sync.Mutex
	conns   []net.Conn
	stalled chan struct{} // closed: reads go on; open: reads block
	wg      sync.WaitGroup
}

func newTestServer(t testing.TB, token string) *testServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{l: l, token: token}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(s.close)
	return s
}

func (s *testServer) addr() string { return s.l.Addr().String() }

func (s *testServer) accept() {
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

func (s *testServer) serve(c net.Conn) {
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
	srv, err := sftp.NewServer(struct {
		io.Reader
		io.WriteCloser
	}{&gatedReader{r: br, s: s}, c})
	if err != nil {
		return
	}
	_ = srv.Serve()
	srv.Close()
}

// gatedReader blocks reads while the server is stalled.
type gatedReader struct {
	r *bufio.Reader
	s *testServer
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

// stall makes the server stop answering (reads block) until unstall.
func (s *testServer) stall() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stalled == nil {
		s.stalled = make(chan struct{})
	}
}

func (s *testServer) unstall() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stalled != nil {
		close(s.stalled)
		s.stalled = nil
	}
}

// breakConns closes every connection, as a dead daemon or agent would.
func (s *testServer) breakConns() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
}

func (s *testServer) close() {
	s.l.Close()
	s.breakConns()
	s.unstall()
	s.wg.Wait()
}
