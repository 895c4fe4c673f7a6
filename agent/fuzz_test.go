package agent

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// fuzzPort is the container port of FuzzHTTPRoute's intercepts.
const fuzzPort = 8080

// routeHeader is the response header in which the fuzz handler says where
// the request was routed: an intercept id or "app".
const routeHeader = "X-Tp-Route"

// fuzzRoutes is what the fuzz handler routes by in one iteration.
type fuzzRoutes struct {
	routes *routes
	infos  []*managerv1.InterceptInfo
	// mismatches collects requests the agent routed differently from
	// wantRoute; handlers of one iteration append here (never to t, which
	// a late h2 handler could outlive).
	mu         sync.Mutex
	mismatches []string
}

func (fr *fuzzRoutes) mismatch(format string, args ...any) {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	fr.mismatches = append(fr.mismatches, fmt.Sprintf(format, args...))
}

// wantRoute is the routing rule written out independently of routes.go:
// an intercept matches when the path starts with its prefix and every one
// of its headers is in the request (Host as r.Host; names case-insensitive;
// values equal without leading and trailing whitespace, which HTTP does not
// count as part of a field value). Among matches, more headers win, then
// the longer prefix, then the smaller id.
func wantRoute(infos []*managerv1.InterceptInfo, r *http.Request) string {
	best, bestHeaders, bestPrefix := "app", -1, -1
	for _, info := range infos {
		spec := info.GetSpec()
		ok := strings.HasPrefix(r.URL.Path, spec.GetPathPrefix())
		for name, value := range spec.GetHeaders() {
			value = strings.Trim(value, " \t")
			if strings.EqualFold(strings.TrimSpace(name), "host") {
				ok = ok && r.Host == value
				continue
			}
			found := false
			for k, vs := range r.Header {
				if !strings.EqualFold(k, strings.TrimSpace(name)) {
					continue
				}
				for _, v := range vs {
					found = found || strings.Trim(v, " \t") == value
				}
			}
			ok = ok && found
		}
		if !ok {
			continue
		}
		h, p := len(spec.GetHeaders()), len(spec.GetPathPrefix())
		if h > bestHeaders || (h == bestHeaders && (p > bestPrefix || (p == bestPrefix && info.GetId() < best))) {
			best, bestHeaders, bestPrefix = info.GetId(), h, p
		}
	}
	return best
}

// fuzzConn is the server's end of a connection whose client sent in and
// then half-closed; what the server writes is discarded. done is closed
// when the server is done with the connection: it closed it, or (h2) it
// sent GOAWAY, after which it stops reading and holds the connection for
// another second.
type fuzzConn struct {
	in       *bytes.Reader
	h2       bool
	out      []byte // h2: what the server wrote, from the start of a frame
	doneOnce sync.Once
	done     chan struct{}
	closed   atomic.Bool
}

func (c *fuzzConn) Read(b []byte) (int, error) { return c.in.Read(b) }

func (c *fuzzConn) Write(b []byte) (int, error) {
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	if c.h2 {
		c.out = append(c.out, b...)
		for len(c.out) >= 9 {
			n := 9 + (int(c.out[0])<<16 | int(c.out[1])<<8 | int(c.out[2]))
			if c.out[3] == byte(http2.FrameGoAway) {
				c.finish()
			}
			if len(c.out) < n {
				break
			}
			c.out = c.out[n:]
		}
	}
	return len(b), nil
}

func (c *fuzzConn) Close() error {
	c.closed.Store(true)
	c.finish()
	return nil
}

func (c *fuzzConn) finish()                          { c.doneOnce.Do(func() { close(c.done) }) }
func (c *fuzzConn) LocalAddr() net.Addr              { return &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 9900} }
func (c *fuzzConn) RemoteAddr() net.Addr             { return &net.TCPAddr{IP: net.IPv4(10, 0, 0, 2), Port: 40000} }
func (c *fuzzConn) SetDeadline(time.Time) error      { return nil }
func (c *fuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fuzzConn) SetWriteDeadline(time.Time) error { return nil }

// routeServer is the agent's HTTP server of one port with a handler that
// routes like httpProxy.serve and reports the decision instead of proxying.
type routeServer struct {
	current atomic.Pointer[fuzzRoutes]
	active  atomic.Int64 // handlers running
	open    atomic.Int64 // connections not closed yet
	l       *connListener
	done    chan struct{}
}

func newRouteServer(tb testing.TB) *routeServer {
	a := &agent{log: testLogger(tb)}
	a.routes.Store(noRoutes)
	rs := &routeServer{l: newConnListener(&net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 9900}), done: make(chan struct{})}
	srv := newHTTPProxy(a).server(Port{Name: "http", AgentPort: 9900, ContainerPort: fuzzPort})
	srv.Handler = http.HandlerFunc(rs.serve)
	srv.ConnState = func(_ net.Conn, state http.ConnState) {
		switch state {
		case http.StateNew:
			rs.open.Add(1)
		case http.StateClosed, http.StateHijacked:
			rs.open.Add(-1)
		}
	}
	go func() {
		defer close(rs.done)
		_ = srv.Serve(rs.l)
	}()
	tb.Cleanup(func() {
		rs.l.Close()
		srv.Close()
		<-rs.done
		// An h2 connection lingers a second after its GOAWAY.
		waitFor(tb, "the HTTP connections to close", func() bool { return rs.open.Load() == 0 })
	})
	return rs
}

func (rs *routeServer) serve(w http.ResponseWriter, r *http.Request) {
	rs.active.Add(1)
	defer rs.active.Add(-1)
	fr := rs.current.Load()
	got := "app"
	func() {
		defer func() {
			if p := recover(); p != nil {
				fr.mismatch("route panicked on %s %q: %v", r.Method, r.URL, p)
			}
		}()
		if ic := fr.routes.port(fuzzPort).route(r); ic != nil {
			got = ic.id
		}
	}()
	if want := wantRoute(fr.infos, r); got != want {
		fr.mismatch("%s %s host %q header %q: routed to %s, want %s", r.Proto, r.URL.Path, r.Host, r.Header, got, want)
	}
	w.Header().Set(routeHeader, got)
}

// serveRaw has the server read in as one connection until EOF.
func (rs *routeServer) serveRaw(tb testing.TB, in []byte) {
	tb.Helper()
	c := &fuzzConn{in: bytes.NewReader(in), h2: bytes.HasPrefix(in, []byte(http2.ClientPreface)), done: make(chan struct{})}
	if err := rs.l.push(context.Background(), c); err != nil {
		tb.Fatalf("push: %v", err)
	}
	<-c.done
	// h2 handlers may still run after the connection closed.
	for rs.active.Load() > 0 {
		time.Sleep(100 * time.Microsecond)
	}
}

// ask sends one request on a new connection and returns where the server
// routed it, or ok false when the server refused the request.
func (rs *routeServer) ask(tb testing.TB, h2 bool, path, host, name, value string) (route string, ok bool) {
	tb.Helper()
	client, server := net.Pipe()
	defer client.Close()
	if err := rs.l.push(context.Background(), server); err != nil {
		tb.Fatalf("push: %v", err)
	}
	_ = client.SetDeadline(time.Now().Add(20 * time.Second))
	if !h2 {
		req := "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\n"
		if name != "" {
			req += name + ": " + value + "\r\n"
		}
		go func() { _, _ = io.WriteString(client, req+"\r\n") }()
		resp, err := http.ReadResponse(bufio.NewReader(client), nil)
		if err != nil {
			tb.Fatalf("HTTP/1.1 %q: reading the response: %v", req, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return "", false
		}
		return resp.Header.Get(routeHeader), true
	}

	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", path}, {":authority", host}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if name != "" {
		_ = enc.WriteField(hpack.HeaderField{Name: strings.ToLower(name), Value: value})
	}
	framer := http2.NewFramer(client, client)
	framer.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	go func() {
		_, _ = io.WriteString(client, http2.ClientPreface)
		_ = framer.WriteSettings()
		_ = framer.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
	}()
	for {
		f, err := framer.ReadFrame()
		if err != nil {
			tb.Fatalf("h2 %s %q: reading the response: %v", path, name, err)
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if f.StreamID != 1 {
				continue
			}
			if f.PseudoValue("status") != "200" {
				return "", false
			}
			for _, hf := range f.RegularFields() {
				if hf.Name == strings.ToLower(routeHeader) {
					return hf.Value, true
				}
			}
			return "", true
		case *http2.RSTStreamFrame, *http2.GoAwayFrame:
			return "", false
		}
	}
}

// specValid is the manager's check of an intercept's header names and path
// prefix (manager.normalizeSpec).
func specValid(prefix string, names ...string) bool {
	for _, k := range names {
		if k == "" || strings.ContainsAny(k, " :\t\r\n") {
			return false
		}
	}
	return prefix == "" || strings.HasPrefix(prefix, "/")
}

// framingHeaders are consumed by HTTP itself (net/http moves them out of
// Header or HTTP/2 forbids them): not headers to route by.
var framingHeaders = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Transfer-Encoding": true,
	"Upgrade": true, "Te": true, "Content-Length": true, "Trailer": true, "Expect": true,
}

// FuzzHTTPRoute routes requests on a port with two personal intercepts
// whose headers and path prefix come from the fuzz input: A (name1=value1,
// prefix) and B (name1=value1, name2=value2), both specs the manager
// accepts. It serves the fuzz input as one HTTP/1.1 or h2c connection
// through the agent's HTTP server and asserts that the agent never panics
// and routes every request it parses as wantRoute says. Then it sends
// "GET prefix+suffix" with only header name1=value1 over HTTP/1.1 and over
// h2c and asserts that both go where wantRoute sends that request (to A or
// B, never to the app) unless the server refuses the request.
func FuzzHTTPRoute(f *testing.F) {
	h1 := func(path string, headers ...string) []byte {
		s := "GET " + path + " HTTP/1.1\r\nHost: echo\r\n"
		for i := 0; i+1 < len(headers); i += 2 {
			s += headers[i] + ": " + headers[i+1] + "\r\n"
		}
		return []byte(s + "\r\n")
	}
	h2 := func(path string, headers ...string) []byte {
		var out bytes.Buffer // FuzzHTTPRoute prepends the client preface
		fr := http2.NewFramer(&out, nil)
		_ = fr.WriteSettings()
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		for _, kv := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", path}, {":authority", "echo"}} {
			_ = enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
		}
		for i := 0; i+1 < len(headers); i += 2 {
			_ = enc.WriteField(hpack.HeaderField{Name: headers[i], Value: headers[i+1]})
		}
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
		return out.Bytes()
	}
	type spec struct{ name1, value1, name2, value2, prefix, suffix string }
	specs := []spec{
		{"x-dev", "alice", "x-team", "b", "/api", "/users"},
		{"X-Dev", "alice", "x-dev", "alice", "", "/"},
		{"Host", "preview.example", "x-dev", "bob", "/", "x"},
		{"x-dev", "alice ", "x-team", "b", "/api", ""},
		{"cookie", "a=1", "x-b3-traceid", "0af7651916cd43dd8448eb211c80319c", "/grpc.health.v1.Health/", "Check"},
	}
	for i, s := range specs {
		raw := [][]byte{
			h1(s.prefix+s.suffix, s.name1, s.value1),
			h1(s.prefix+s.suffix, s.name1, s.value1, s.name2, s.value2),
			append(h1("/", s.name1, s.value1), h1(s.prefix, s.name2, s.value2)...),
			h2(s.prefix+s.suffix, strings.ToLower(s.name1), s.value1),
			h2(s.prefix+s.suffix, strings.ToLower(s.name1), s.value1, strings.ToLower(s.name2), s.value2),
		}
		for j, r := range raw {
			f.Add(r, j >= 3, s.name1, s.value1, s.name2, s.value2, s.prefix, s.suffix)
		}
		f.Add([]byte("GET / HTTP/1.1\r\n\r\n"), i%2 == 0, s.name1, s.value1, s.name2, s.value2, s.prefix, s.suffix)
	}
	rs := newRouteServer(f)
	f.Fuzz(func(t *testing.T, raw []byte, isH2 bool, name1, value1, name2, value2, prefix, suffix string) {
		if !specValid(prefix, name1, name2) {
			return
		}
		headersB := map[string]string{name1: value1, name2: value2}
		infos := []*managerv1.InterceptInfo{
			personalIntercept("a", fuzzPort, map[string]string{name1: value1}, prefix),
			personalIntercept("b", fuzzPort, headersB, ""),
		}
		r, _ := newRoutes(&managerv1.InterceptSnapshot{Intercepts: infos}, map[int32]bool{fuzzPort: true})
		fr := &fuzzRoutes{routes: r, infos: infos}
		rs.current.Store(fr)

		if isH2 {
			raw = append([]byte(http2.ClientPreface), raw...)
		}
		rs.serveRaw(t, raw)
		fr.mu.Lock()
		mismatches := fr.mismatches
		fr.mu.Unlock()
		if len(mismatches) > 0 {
			t.Fatalf("%d requests misrouted: %s", len(mismatches), strings.Join(mismatches, "; "))
		}

		// A request with exactly A's header and a path under A's prefix.
		canonical := http.CanonicalHeaderKey(name1)
		if !httpguts.ValidHeaderFieldName(name1) || !httpguts.ValidHeaderFieldValue(value1) ||
			framingHeaders[canonical] || strings.HasPrefix(name1, ":") {
			return
		}
		path := (&url.URL{Path: prefix + suffix}).EscapedPath()
		if !strings.HasPrefix(path, "/") {
			return
		}
		host, name, value := "echo", name1, value1
		if canonical == "Host" {
			if !httpguts.ValidHostHeader(value1) || value1 == "" {
				return
			}
			host, name, value = value1, "", ""
		}
		logical := &http.Request{URL: &url.URL{Path: prefix + suffix}, Host: host, Header: http.Header{}}
		if name != "" {
			logical.Header.Set(canonical, value)
		}
		want := wantRoute(infos, logical)
		if want == "app" {
			t.Fatalf("oracle: a request with A's header and prefix goes to the app")
		}
		for _, h2 := range []bool{false, true} {
			got, ok := rs.ask(t, h2, path, host, name, value)
			if !ok {
				continue // the server refused the request (e.g. a value HTTP/2 forbids)
			}
			if got != want {
				t.Errorf("h2=%v GET %s with %s: %q: routed to %q, want %q", h2, path, name1, value1, got, want)
			}
		}
		if errs := fr.mismatches; len(errs) > 0 {
			t.Fatalf("misrouted: %s", strings.Join(errs, "; "))
		}
	})
}
