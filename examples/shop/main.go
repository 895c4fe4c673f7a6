// Command shop is the example application of `tp compose`: a small shop
// whose parts are one binary each in the same image (tp-shop:dev).
//
//	shop frontend   the web front: GET / asks the API for the orders (PROPAGATE_HEADERS go along)
//	shop api        the API: orders in PostgreSQL (PGHOST, PGPORT, PGUSER, PGPASSWORD or PGPASSWORD_FILE, PGDATABASE)
//	shop worker     polls SOURCE_URL every WORKER_EVERY and logs each answer
//	shop mailer     a local-only helper the API notifies (GET /send); its answers name it
//	shop get URL    GET URL, print the body (exit 1 on failure): for tests and debugging
//
// Every server listens on LISTEN (default :8080) and says in its answers
// which copy it is (COPY: cluster in the cluster, local in compose) and
// which pod or container (HOSTNAME).
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	_ "github.com/lib/pq"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("shop: ")
	if len(os.Args) < 2 {
		log.Fatal("usage: shop frontend|api|worker|mailer|get URL")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "frontend":
		err = serve(ctx, frontend())
	case "api":
		var h http.Handler
		if h, err = api(ctx); err == nil {
			err = serve(ctx, h)
		}
	case "worker":
		err = worker(ctx)
	case "mailer":
		err = serve(ctx, mailer())
	case "get":
		if len(os.Args) != 3 {
			log.Fatal("usage: shop get URL")
		}
		var body string
		if body, err = get(ctx, os.Args[2], nil); err == nil {
			fmt.Println(body)
		}
	default:
		err = fmt.Errorf("unknown command %q: want frontend, api, worker, mailer or get", os.Args[1])
	}
	if err != nil {
		log.Fatal(err)
	}
}

func env(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// who is what every answer carries: which copy, which pod or container.
func who(service string) map[string]any {
	host, _ := os.Hostname()
	return map[string]any{"service": service, "copy": env("COPY", "cluster"), "host": host}
}

func serve(ctx context.Context, h http.Handler) error {
	srv := &http.Server{Addr: env("LISTEN", ":8080"), Handler: h, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Printf("listening on %s", srv.Addr)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(shutdown)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

var client = &http.Client{Timeout: 5 * time.Second}

// get GETs url with headers and returns the body; a status other than 200 is an error.
func get(ctx context.Context, url string, headers http.Header) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	for k, v := range headers {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(b)))
	}
	return strings.TrimSpace(string(b)), nil
}

// frontend answers GET / with the API's orders; the headers named in
// PROPAGATE_HEADERS go along to the API (a personal intercept routes on them).
func frontend() http.Handler {
	apiURL := env("API_URL", "http://api")
	propagate := strings.Fields(strings.ReplaceAll(env("PROPAGATE_HEADERS", "x-dev"), ",", " "))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, who("frontend"))
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		h := http.Header{}
		for _, k := range propagate {
			if v := r.Header.Values(k); len(v) > 0 {
				h[http.CanonicalHeaderKey(k)] = v
			}
		}
		out := who("frontend")
		body, err := get(r.Context(), apiURL+"/orders", h)
		if err != nil {
			out["error"] = err.Error()
			writeJSON(w, http.StatusBadGateway, out)
			return
		}
		out["api"] = json.RawMessage(body)
		writeJSON(w, http.StatusOK, out)
	})
	return mux
}

// api serves the orders from PostgreSQL. It connects lazily, so that it
// starts before the database answers and says why it cannot reach it.
func api(ctx context.Context) (http.Handler, error) {
	// libpq's variables: PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE;
	// PGPASSWORD_FILE names a file with the password (a mounted Secret),
	// which wins over PGPASSWORD.
	auth := "PGPASSWORD"
	if f := os.Getenv("PGPASSWORD_FILE"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("PGPASSWORD_FILE: %w", err)
		}
		os.Setenv("PGPASSWORD", strings.TrimSpace(string(b))) // lib/pq reads it when it connects
		auth = "PGPASSWORD_FILE " + f
	}
	dsn := fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=disable connect_timeout=5",
		env("PGHOST", "db"), env("PGPORT", "5432"), env("PGUSER", "shop"), env("PGDATABASE", "postgres"))
	if os.Getenv("PGPASSWORD") == "" {
		log.Print("api: PGPASSWORD is not set: the database will refuse the connection")
	}
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		return nil, err
	}
	context.AfterFunc(ctx, func() { db.Close() })
	ready := func(ctx context.Context) error {
		_, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, item text NOT NULL, by text NOT NULL, at timestamptz NOT NULL DEFAULT now())`)
		return err
	}
	mailerURL := os.Getenv("MAILER_URL")
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, who("api"))
	})
	// GET /orders lists the orders with the database's version and user:
	// the answer shows which server the API reached, and as whom.
	mux.HandleFunc("GET /orders", func(w http.ResponseWriter, r *http.Request) {
		out := who("api")
		if err := ready(r.Context()); err != nil {
			out["error"] = "database: " + err.Error()
			writeJSON(w, http.StatusServiceUnavailable, out)
			return
		}
		var version, user string
		var n int
		err := db.QueryRowContext(r.Context(), `SELECT version(), current_user, (SELECT count(*) FROM orders)`).Scan(&version, &user, &n)
		if err != nil {
			out["error"] = "database: " + err.Error()
			writeJSON(w, http.StatusServiceUnavailable, out)
			return
		}
		out["db"] = map[string]any{"version": version, "user": user, "orders": n, "auth": auth}
		writeJSON(w, http.StatusOK, out)
	})
	// POST /orders?item=X adds an order and tells the mailer, if any.
	mux.HandleFunc("POST /orders", func(w http.ResponseWriter, r *http.Request) {
		item := r.URL.Query().Get("item")
		if item == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "missing ?item="})
			return
		}
		out := who("api")
		if err := ready(r.Context()); err != nil {
			out["error"] = "database: " + err.Error()
			writeJSON(w, http.StatusServiceUnavailable, out)
			return
		}
		var id int
		if err := db.QueryRowContext(r.Context(), `INSERT INTO orders (item, by) VALUES ($1, $2) RETURNING id`, item, out["host"]).Scan(&id); err != nil {
			out["error"] = "database: " + err.Error()
			writeJSON(w, http.StatusServiceUnavailable, out)
			return
		}
		out["id"] = id
		writeJSON(w, http.StatusOK, out)
	})
	// GET /mailer asks the mailer (MAILER_URL) and relays its answer.
	mux.HandleFunc("GET /mailer", func(w http.ResponseWriter, r *http.Request) {
		if mailerURL == "" {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no MAILER_URL"})
			return
		}
		body, err := get(r.Context(), mailerURL+"/send?to=ops", nil)
		if err != nil {
			writeJSON(w, http.StatusBadGateway, map[string]string{"error": err.Error()})
			return
		}
		out := who("api")
		out["mailer"] = json.RawMessage(body)
		writeJSON(w, http.StatusOK, out)
	})
	return mux, nil
}

// worker polls SOURCE_URL and logs each answer on one line.
func worker(ctx context.Context) error {
	url := env("SOURCE_URL", "http://frontend/healthz")
	every, err := time.ParseDuration(env("WORKER_EVERY", "2s"))
	if err != nil {
		return fmt.Errorf("WORKER_EVERY: %w", err)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		body, err := get(ctx, url, nil)
		switch {
		case errors.Is(err, context.Canceled):
			return nil
		case err != nil:
			log.Printf("worker: %v", err)
		default:
			log.Printf("worker: %s: %s", url, body)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func mailer() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /send", func(w http.ResponseWriter, r *http.Request) {
		out := who("mailer")
		out["to"] = r.URL.Query().Get("to")
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, who("mailer"))
	})
	return mux
}
