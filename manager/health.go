package manager

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// HealthPort serves the kubelet's probes: plain HTTP, /healthz and /readyz.
// It answers anyone who reaches it and tells them nothing but "ok": the
// client API is on the pod's loopback (port-forward only) and the agents'
// API needs TLS and a token, so the probes get a listener of their own.
const HealthPort = 8083

// probes answers the kubelet: live while the process serves, ready once the
// manager serves its APIs.
type probes struct {
	ready atomic.Bool
}

func (h *probes) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/healthz":
		_, _ = w.Write([]byte("ok\n"))
	case "/readyz":
		if !h.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	default:
		http.NotFound(w, r)
	}
}

// serveHealth serves h on lis until ctx ends.
func serveHealth(ctx context.Context, lis net.Listener, h *probes, log *slog.Logger) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return serveHTTP(ctx, srv, "health", func() error { return srv.Serve(lis) }, 2*time.Second)
}
