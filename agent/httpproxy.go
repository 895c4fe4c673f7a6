package agent

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"sync"
	"time"
)

// errInterceptGone: the request matched an intercept that ended before the
// agent could dial its client. Nothing was sent yet, so the app answers.
var errInterceptGone = errors.New("intercept ended")

// errClientUnreachable: the agent could not open the flow to an intercept's
// client (its owner is away: reconnecting, asleep, or gone until the session
// TTL ends it). Nothing was sent yet, so the app answers (docs/intercepts.md,
// "While the owner is away").
var errClientUnreachable = errors.New("the intercept's client is unreachable")

// httpProxy serves the connections of ports with personal intercepts: each
// request (HTTP/1.1) or stream (h2c) goes to the app or to an intercept's
// client through a reverse proxy that speaks the protocol the request came
// in: HTTP/1.1 or HTTP/2 with prior knowledge (gRPC needs HTTP/2 end to
// end for its trailers).
type httpProxy struct {
	a *agent
	// Transports to the app and to intercepts' clients, by protocol. The
	// intercept transports key their connection pools by the intercept's
	// host name (intercept.host).
	appH1, appH2       *http.Transport
	clientH1, clientH2 *http.Transport
	errLog             *log.Logger

	// Requests in flight; once closed, no new request starts.
	mu       sync.RWMutex
	closed   bool
	handlers sync.WaitGroup
}

func newHTTPProxy(a *agent) *httpProxy {
	h := &httpProxy{a: a, errLog: slog.NewLogLogger(a.log.Handler(), slog.LevelDebug)}
	h.appH1 = newTransport(a.dialApp, false, 90*time.Second)
	h.appH2 = newTransport(a.dialApp, true, 90*time.Second)
	h.clientH1 = newTransport(h.dialClient, false, 30*time.Second)
	h.clientH2 = newTransport(h.dialClient, true, 30*time.Second)
	return h
}

// newTransport returns a transport for HTTP/1.1 or for HTTP/2 with prior
// knowledge (h2c). It never uses a proxy from the environment (the app's
// HTTP_PROXY is not the agent's) and passes bodies through as they are.
func newTransport(dial func(context.Context, string, string) (net.Conn, error), h2 bool, idle time.Duration) *http.Transport {
	t := &http.Transport{
		Proxy:               nil,
		DialContext:         dial,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     idle,
		ReadBufferSize:      64 << 10,
		WriteBufferSize:     64 << 10,
	}
	if h2 {
		t.Protocols = new(http.Protocols)
		t.Protocols.SetUnencryptedHTTP2(true)
	}
	return t
}

// server returns the HTTP server of one agent port.
func (h *httpProxy) server(p Port) *http.Server {
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	return &http.Server{
		Handler:   http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.serve(p, w, r) }),
		Protocols: protocols,
		// Generous: only against connections that never send a request
		// (an idle keep-alive connection waits without limit, as a
		// splice would).
		ReadHeaderTimeout: 5 * time.Minute,
		ErrorLog:          h.errLog,
	}
}

// serve routes one request by the latest snapshot.
func (h *httpProxy) serve(p Port, w http.ResponseWriter, r *http.Request) {
	h.mu.RLock()
	if h.closed {
		h.mu.RUnlock()
		http.Error(w, "tp-agent: shutting down", http.StatusServiceUnavailable)
		return
	}
	h.handlers.Add(1)
	h.mu.RUnlock()
	defer h.handlers.Done()
	ic := h.a.routes.Load().port(p.ContainerPort).route(r)
	if ic == nil {
		h.toApp(p, w, r)
		return
	}
	h.toClient(p, ic, w, r)
}

func (h *httpProxy) toApp(p Port, w http.ResponseWriter, r *http.Request) {
	target := h.a.appAddr(p.ContainerPort)
	rp := h.reverseProxy(target, r, h.appH1, h.appH2)
	rp.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		if r.Context().Err() != nil {
			return // the client went away
		}
		h.a.log.Debug("the app did not answer a request", "containerPort", p.ContainerPort, "err", err)
		http.Error(w, fmt.Sprintf("tp-agent: the app at %s did not answer: %v", target, err), http.StatusBadGateway)
	}
	rp.ServeHTTP(w, r)
}

func (h *httpProxy) toClient(p Port, ic *intercept, w http.ResponseWriter, r *http.Request) {
	ic, ok := h.a.awaitOwner(r.Context(), ic)
	if !ok {
		if r.Context().Err() != nil {
			return // the client went away
		}
		h.a.log.Info("the intercept's owner is away; the app answers", "client", r.RemoteAddr,
			"method", r.Method, "path", r.URL.Path, "grace", h.a.ownerGrace)
		h.toApp(p, w, r)
		return
	}
	rp := h.reverseProxy(ic.host, r, h.clientH1, h.clientH2)
	rp.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		if errors.Is(err, errInterceptGone) {
			h.toApp(p, w, r)
			return
		}
		if errors.Is(err, errClientUnreachable) && r.Context().Err() == nil {
			h.a.log.Warn("cannot reach the intercept's client; the app answers", "intercept", ic.id,
				"client", r.RemoteAddr, "method", r.Method, "path", r.URL.Path, "err", err)
			h.toApp(p, w, r)
			return
		}
		if r.Context().Err() != nil {
			return
		}
		h.a.log.Warn("cannot reach the intercept's client; answering 502", "intercept", ic.id,
			"client", r.RemoteAddr, "method", r.Method, "path", r.URL.Path, "err", err)
		http.Error(w, fmt.Sprintf("tp-agent: this request matches intercept %q (%s) of %s, but its client could not be reached: %v",
			ic.name, ic.id, ic.owner, err), http.StatusBadGateway)
	}
	h.a.log.Debug("request sent to the intercept's client", "intercept", ic.id, "client", r.RemoteAddr,
		"method", r.Method, "path", r.URL.Path)
	if src, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		r = r.WithContext(context.WithValue(r.Context(), sourceKey{}, src))
	}
	rp.ServeHTTP(w, r)
}

// reverseProxy forwards r to host (the app's host:port or an intercept's
// host name) with the transport of r's protocol. It changes the request as
// little as a proxy can: Host and X-Forwarded-* stay as the client sent
// them.
func (h *httpProxy) reverseProxy(host string, r *http.Request, h1, h2 *http.Transport) *httputil.ReverseProxy {
	transport := h1
	if r.ProtoMajor == 2 {
		transport = h2
	}
	target := &url.URL{Scheme: "http", Host: host}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			for _, k := range []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
				if v, ok := pr.In.Header[k]; ok {
					pr.Out.Header[k] = v
				}
			}
		},
		Transport:     transport,
		FlushInterval: -1, // stream (gRPC, server-sent events) without delay
		ErrorLog:      h.errLog,
	}
}

// dialClient opens a tunnel flow to the client of the intercept whose host
// name addr carries.
func (h *httpProxy) dialClient(ctx context.Context, _, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ic := h.a.routes.Load().byHost[host]
	if ic == nil {
		return nil, errInterceptGone
	}
	for _, p := range h.a.cfg.Ports {
		if p.ContainerPort == ic.containerPort {
			c, err := h.a.dialIntercept(ctx, p, ic, sourceFromContext(ctx))
			if err != nil {
				return nil, fmt.Errorf("%w: %w", errClientUnreachable, err)
			}
			return c, nil
		}
	}
	return nil, errInterceptGone
}

// routesChanged drops idle connections to intercepts that ended.
func (h *httpProxy) routesChanged(old, cur *routes) {
	for host := range old.byHost {
		if _, ok := cur.byHost[host]; !ok {
			h.clientH1.CloseIdleConnections()
			h.clientH2.CloseIdleConnections()
			return
		}
	}
}

// close waits for the requests in flight (their servers are closed) and
// closes the idle connections.
func (h *httpProxy) close() {
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
	h.handlers.Wait()
	for _, t := range []*http.Transport{h.appH1, h.appH2, h.clientH1, h.clientH2} {
		t.CloseIdleConnections()
	}
}

// sourceKey carries the original client's address from a request to the
// dial of the tunnel flow it triggers (for the manager's and client's logs).
type sourceKey struct{}

func sourceFromContext(ctx context.Context) netip.AddrPort {
	src, _ := ctx.Value(sourceKey{}).(netip.AddrPort)
	return src
}
