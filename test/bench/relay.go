package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// delayRelay is the RTT phases' stand-in for netem on a kernel without it:
// a TCP relay in front of the API server that holds every chunk the API
// server sends for delay before passing it on (the client's direction is
// not delayed: one delay per round trip, as the netem filter on the API
// server's source port does). It terminates TCP, so the kernel's windows do
// not see the delay; what does is everything above TCP: the port-forward's
// and tp's own flow-control windows and every request/response exchange.
type delayRelay struct {
	target string
	delay  time.Duration
	port   int

	ls []net.Listener
	wg sync.WaitGroup // the accept loops and every connection's pumps

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// startDelayRelay listens on the same free port of each host in hosts and
// relays every connection to target.
func startDelayRelay(target string, delay time.Duration, hosts ...string) (*delayRelay, error) {
	r := &delayRelay{target: target, delay: delay, conns: map[net.Conn]struct{}{}}
	for _, h := range hosts {
		l, err := net.Listen("tcp", net.JoinHostPort(h, strconv.Itoa(r.port)))
		if err != nil {
			_ = r.Close()
			return nil, fmt.Errorf("delay relay: listen on %s port %d: %w", h, r.port, err)
		}
		r.port = l.Addr().(*net.TCPAddr).Port
		r.ls = append(r.ls, l)
	}
	for _, l := range r.ls {
		r.wg.Add(1)
		go r.serve(l)
	}
	return r, nil
}

func (r *delayRelay) serve(l net.Listener) {
	defer r.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			return // closed
		}
		if !r.track(c) {
			c.Close()
			return
		}
		r.wg.Add(1)
		go r.handle(c)
	}
}

// track registers c for Close; false once the relay is closed.
func (r *delayRelay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *delayRelay) untrack(cs ...net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range cs {
		delete(r.conns, c)
		c.Close()
	}
}

// handle relays one client connection: client -> API server as it comes,
// API server -> client each chunk delay after it arrived.
func (r *delayRelay) handle(client net.Conn) {
	defer r.wg.Done()
	up, err := net.DialTimeout("tcp", r.target, 10*time.Second)
	if err != nil {
		r.untrack(client)
		return
	}
	if !r.track(up) {
		r.untrack(client, up)
		return
	}
	defer r.untrack(client, up)
	var pumps sync.WaitGroup
	pumps.Add(2)
	go func() {
		defer pumps.Done()
		_, _ = io.Copy(up, client)
		closeWrite(up)
	}()
	go func() {
		defer pumps.Done()
		r.delayed(client, up)
		closeWrite(client)
	}()
	pumps.Wait()
}

type chunk struct {
	at   time.Time
	data []byte
}

// delayed copies src to dst, each chunk delay after it was read. At most
// 1024 chunks (32 MiB) wait: beyond that, src is not read (TCP backpressure).
func (r *delayRelay) delayed(dst io.Writer, src io.Reader) {
	q := make(chan chunk, 1024)
	done := make(chan struct{})
	go func() { // owned by delayed: it waits on done
		defer close(done)
		failed := false
		for c := range q {
			if failed {
				continue // drain
			}
			if d := time.Until(c.at.Add(r.delay)); d > 0 {
				time.Sleep(d)
			}
			if _, err := dst.Write(c.data); err != nil {
				failed = true
			}
		}
	}()
	for {
		buf := make([]byte, 32<<10)
		n, err := src.Read(buf)
		if n > 0 {
			q <- chunk{time.Now(), buf[:n]}
		}
		if err != nil {
			break
		}
	}
	close(q)
	<-done
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
		return
	}
	c.Close()
}

// Close stops listening, closes every relayed connection and waits for
// their goroutines.
func (r *delayRelay) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	var errs []error
	for _, l := range r.ls {
		if err := l.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
	return errors.Join(errs...)
}
