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
		listened, arrived := a.listened.Load(), a.arrived.Load()
		if a.draining.Load() {
			http.Error(w, "not ready: shutting down", http.StatusServiceUnavailable)
			return
		}
		if listened && arrived {
			fmt.Fprintln(w, "ready")
			return
		}
		msg := "not ready: not yet listening on every agent port"
		if listened {
			msg = fmt.Sprintf("not ready: not yet arrived at the traffic-manager at %s", a.cfg.ManagerAddr)
		}
		http.Error(w, msg, http.StatusServiceUnavailable)
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
