package kubeauth

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// DefaultPluginTimeout bounds one plugin run when [Server.PluginTimeout] is
// zero. It is generous because browser-based logins (kubelogin) wait for the
// user.
const DefaultPluginTimeout = 3 * time.Minute

const (
	maxRequestBytes = 1 << 20 // an ExecCredential request is a few KiB at most
	maxStdoutBytes  = 1 << 20 // ... and so is a credential
	stderrTailBytes = 4 << 10 // how much of a failing plugin's stderr is reported
	waitDelay       = 5 * time.Second
)

// Server runs the exec credential plugins of a kubeconfig on the host for
// [RunPlugin] in the daemon container. See the package documentation for the
// protocol.
type Server struct {
	// PluginTimeout bounds one plugin run (zero: [DefaultPluginTimeout]).
	// Set it before Serve.
	PluginTimeout time.Duration

	users   map[string]*clientcmdapi.ExecConfig
	turns   map[string]chan struct{} // one run at a time per user
	secret  []byte
	log     *slog.Logger
	environ func() []string
}

// NewServer returns a server for the exec configs of users, keyed by user
// name as in the kubeconfig (the ORIGINAL configs, not the rewritten ones),
// accepting requests that carry secret. It copies users. A nil log discards.
// It panics if secret is empty: an unauthenticated relay would hand cloud
// credentials to every container on the host.
func NewServer(users map[string]*clientcmdapi.ExecConfig, secret string, log *slog.Logger) *Server {
	if secret == "" {
		panic("kubeauth.NewServer: empty secret")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		users:   make(map[string]*clientcmdapi.ExecConfig, len(users)),
		turns:   make(map[string]chan struct{}, len(users)),
		secret:  []byte(secret),
		log:     log,
		environ: os.Environ,
	}
	for name, cfg := range users {
		if cfg == nil {
			continue
		}
		s.users[name] = cfg.DeepCopy()
		s.turns[name] = make(chan struct{}, 1)
	}
	return s
}

// Serve answers requests on l until ctx is done, then stops: running plugins
// are killed and Serve returns nil once every request has ended. It closes l.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{
		Handler:           s.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("kubeauth relay on %s: %w", l.Addr(), err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		// Request contexts derive from ctx, so plugins are being killed;
		// give their handlers a moment to answer, then cut.
		shutdownCtx, cancel := context.WithTimeout(context.Background(), waitDelay+time.Second)
		defer cancel()
		if err := srv.Shutdown(shutdownCtx); err != nil {
			return srv.Close()
		}
		return nil
	})
	return g.Wait()
}

func (s *Server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /credentials/{user}", s.credentials)
	return mux
}

// httpError is a failure with the status it is answered with.
type httpError struct {
	code int
	err  error
}

func (e *httpError) Error() string { return e.err.Error() }
func (e *httpError) Unwrap() error { return e.err }

func (s *Server) credentials(w http.ResponseWriter, r *http.Request) {
	user := r.PathValue("user")
	if !s.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="tp kubeauth"`)
		http.Error(w, "missing or wrong relay secret", http.StatusUnauthorized)
		s.log.Warn("kubeauth: rejected a request with a missing or wrong secret", "user", user, "remote", r.RemoteAddr)
		return
	}
	start := time.Now()
	out, err := s.serveUser(r, user)
	if err != nil {
		code := http.StatusInternalServerError
		if he := (*httpError)(nil); errors.As(err, &he) {
			code = he.code
		}
		s.log.Warn("kubeauth: no credential", "user", user, "status", code, "error", err, "duration", time.Since(start))
		http.Error(w, err.Error(), code)
		return
	}
	s.log.Debug("kubeauth: credential handed out", "user", user, "duration", time.Since(start))
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(out)
}

func (s *Server) authorized(r *http.Request) bool {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(token), s.secret) == 1
}

func (s *Server) serveUser(r *http.Request, user string) ([]byte, error) {
	cfg, ok := s.users[user]
	if !ok {
		return nil, &httpError{http.StatusNotFound, fmt.Errorf("no exec credential plugin is relayed for user %q", user)}
	}
	gv, ok := apiVersions[cfg.APIVersion]
	if !ok {
		return nil, &httpError{http.StatusBadGateway, fmt.Errorf("user %q: %w", user, CheckAPIVersion(cfg.APIVersion))}
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxRequestBytes))
	if err != nil {
		return nil, &httpError{http.StatusBadRequest, fmt.Errorf("reading the request: %w", err)}
	}
	execInfo, err := requestFor(gv, body)
	if err != nil {
		return nil, &httpError{http.StatusBadRequest, err}
	}

	turn := s.turns[user]
	select {
	case turn <- struct{}{}:
		defer func() { <-turn }()
	case <-r.Context().Done():
		return nil, &httpError{http.StatusServiceUnavailable, fmt.Errorf("waiting for the running plugin of user %q: %w", user, r.Context().Err())}
	}

	out, err := s.run(r.Context(), cfg, execInfo)
	if err == nil {
		err = checkCredential(gv, out)
	}
	if err != nil {
		return nil, &httpError{http.StatusBadGateway, fmt.Errorf("user %q: %w", user, err)}
	}
	return out, nil
}

// run executes the plugin as client-go's exec authenticator does: the host
// environment plus the plugin's env plus KUBERNETES_EXEC_INFO, no stdin
// (interactiveMode Never), stdout captured; and in addition bounded by the
// timeout and with stderr captured for the error.
func (s *Server) run(ctx context.Context, cfg *clientcmdapi.ExecConfig, execInfo []byte) ([]byte, error) {
	timeout := s.PluginTimeout
	if timeout <= 0 {
		timeout = DefaultPluginTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	env := s.environ()
	for _, e := range cfg.Env {
		env = append(env, e.Name+"="+e.Value)
	}
	env = append(env, EnvExecInfo+"="+string(execInfo))

	var stdout bytes.Buffer
	stderr := &tailWriter{max: stderrTailBytes}
	cmd := exec.CommandContext(ctx, cfg.Command, cfg.Args...)
	cmd.Env = env
	cmd.Stdout = &limitWriter{w: &stdout, n: maxStdoutBytes}
	cmd.Stderr = stderr
	cmd.WaitDelay = waitDelay // a plugin's children must not keep its pipes (and us) open

	err := cmd.Run()
	switch {
	case err == nil:
		if text := stderr.String(); text != "" {
			s.log.Debug("kubeauth: plugin stderr", "command", cfg.Command, "stderr", text)
		}
		return stdout.Bytes(), nil
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return nil, fmt.Errorf("exec plugin %s timed out after %v%s", cfg.Command, timeout, stderr.suffix())
	case ctx.Err() != nil:
		return nil, fmt.Errorf("exec plugin %s: %w", cfg.Command, ctx.Err())
	}
	var execErr *exec.Error
	var exitErr *exec.ExitError
	switch {
	case errors.As(err, &execErr):
		msg := fmt.Sprintf("exec plugin %s not found on the host: %v", cfg.Command, execErr.Err)
		if cfg.InstallHint != "" {
			msg += "\n" + cfg.InstallHint
		}
		return nil, errors.New(msg)
	case errors.As(err, &exitErr):
		return nil, fmt.Errorf("exec plugin %s failed with exit code %d%s", cfg.Command, exitErr.ExitCode(), stderr.suffix())
	}
	return nil, fmt.Errorf("exec plugin %s: %w%s", cfg.Command, err, stderr.suffix())
}

// tailWriter keeps the last max bytes written to it.
type tailWriter struct {
	max       int
	buf       []byte
	truncated bool
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
		t.truncated = true
	}
	return len(p), nil
}

func (t *tailWriter) String() string {
	s := strings.TrimSpace(string(t.buf))
	if t.truncated && s != "" {
		s = "..." + s
	}
	return s
}

// suffix formats the stderr tail for an error message.
func (t *tailWriter) suffix() string {
	if s := t.String(); s != "" {
		return "; stderr: " + s
	}
	return "; no stderr"
}

// limitWriter fails writes beyond n bytes, so a runaway plugin cannot fill
// the memory.
type limitWriter struct {
	w io.Writer
	n int
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if len(p) > l.n {
		return 0, fmt.Errorf("exec plugin wrote more than %d bytes to stdout", maxStdoutBytes)
	}
	l.n -= len(p)
	return l.w.Write(p)
}
