package agent

import (
	"fmt"
	"net/http"
	"time"
)

// healthServer serves the readiness and liveness endpoints.
func (a *agent) healthServer() *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+ReadyPath, func(w http.ResponseWriter, _ *http.Request) {
		if a.draining.Load() {
			http.Error(w, "not ready: shutting down", http.StatusServiceUnavailable)
			return
		}
		if !a.listened.Load() {
			http.Error(w, "not ready: not yet listening on every agent port", http.StatusServiceUnavailable)
			return
		}
		// Ready whether or not the traffic-manager answers: without a
		// session every connection goes to the app, so the pod serves
		// its Service even while the manager is down (issue 10).
		if a.dialer.Load() == nil {
			fmt.Fprintf(w, "ready; no session with the traffic-manager at %s, routing everything to the app\n", a.cfg.ManagerAddr)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("GET "+LivePath, func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	return &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          a.http.errLog,
	}
}
