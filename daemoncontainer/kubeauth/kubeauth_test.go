package kubeauth_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/tp-run/tp/daemoncontainer/kubeauth"
)

const (
	secret = "relay-secret"
	v1     = "client.authentication.k8s.io/v1"
	v1beta = "client.authentication.k8s.io/v1beta1"
)

// testBinary is the path of this test binary, which TestMain turns into a
// fake plugin or `tp kubeauth-plugin`.
func testBinary(t testing.TB) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// fakeExec is the exec config of the fake plugin with the FAKE_* env given as
// name, value pairs.
func fakeExec(t testing.TB, apiVersion string, env ...string) *clientcmdapi.ExecConfig {
	t.Helper()
	cfg := &clientcmdapi.ExecConfig{Command: testBinary(t), Args: []string{"fake-plugin"}, APIVersion: apiVersion}
	for i := 0; i+1 < len(env); i += 2 {
		cfg.Env = append(cfg.Env, clientcmdapi.ExecEnvVar{Name: env[i], Value: env[i+1]})
	}
	return cfg
}

// startServer serves users on 127.0.0.1 until the test ends and returns the
// relay URL.
func startServer(t testing.TB, users map[string]*clientcmdapi.ExecConfig, configure func(*kubeauth.Server)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := kubeauth.NewServer(users, secret, slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if configure != nil {
		configure(srv)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: got %v, want nil after cancel", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return within 10s of cancel")
		}
	})
	return "http://" + l.Addr().String()
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// env returns an env func serving vars.
func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

// execCredential is the part of an ExecCredential the tests look at.
type execCredential struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Spec       struct {
		Interactive bool `json:"interactive"`
		Cluster     *struct {
			Server string `json:"server"`
		} `json:"cluster"`
	} `json:"spec"`
	Status *struct {
		Token               string `json:"token"`
		ExpirationTimestamp string `json:"expirationTimestamp"`
	} `json:"status"`
}

func decode(t testing.TB, data []byte) execCredential {
	t.Helper()
	var c execCredential
	if err := json.Unmarshal(data, &c); err != nil {
		t.Fatalf("decoding %q: %v", data, err)
	}
	return c
}

func TestRoundTrip(t *testing.T) {
	const user = "arn:aws:eks:eu-west-1:123456789012:cluster/prod" // slashes and colons survive the URL
	const expiry = "2031-05-06T07:08:09Z"
	tests := []struct {
		name        string
		apiVersion  string
		execInfo    string
		wantCluster string
	}{
		{name: "v1 with cluster info", apiVersion: v1,
			execInfo:    `{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","spec":{"interactive":false,"cluster":{"server":"https://eks.example"}}}`,
			wantCluster: "https://eks.example"},
		{name: "v1beta1", apiVersion: v1beta,
			execInfo: `{"apiVersion":"client.authentication.k8s.io/v1beta1","kind":"ExecCredential","spec":{"interactive":false}}`},
		{name: "interactive request made non-interactive", apiVersion: v1,
			execInfo: `{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","spec":{"interactive":true}}`},
		{name: "no exec info", apiVersion: v1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			record := filepath.Join(t.TempDir(), "exec-info")
			url := startServer(t, map[string]*clientcmdapi.ExecConfig{
				user: fakeExec(t, tt.apiVersion, "FAKE_TOKEN", "tok-"+tt.apiVersion, "FAKE_EXPIRY", expiry, "FAKE_RECORD", record),
			}, nil)

			var out bytes.Buffer
			err := kubeauth.RunPlugin(t.Context(), url, user, "", strings.NewReader(""), &out,
				env(map[string]string{kubeauth.EnvSecret: secret, kubeauth.EnvExecInfo: tt.execInfo}))
			if err != nil {
				t.Fatalf("RunPlugin: %v", err)
			}
			got := decode(t, out.Bytes())
			if got.APIVersion != tt.apiVersion || got.Kind != "ExecCredential" {
				t.Errorf("answer: got %s %s, want %s ExecCredential", got.APIVersion, got.Kind, tt.apiVersion)
			}
			if got.Status == nil || got.Status.Token != "tok-"+tt.apiVersion {
				t.Fatalf("status: got %+v, want token tok-%s", got.Status, tt.apiVersion)
			}
			if got.Status.ExpirationTimestamp != expiry {
				t.Errorf("expirationTimestamp: got %v, want %v", got.Status.ExpirationTimestamp, expiry)
			}

			data, err := os.ReadFile(record)
			if err != nil {
				t.Fatalf("the plugin recorded no %s: %v", kubeauth.EnvExecInfo, err)
			}
			seen := decode(t, data)
			if seen.APIVersion != tt.apiVersion || seen.Kind != "ExecCredential" {
				t.Errorf("plugin's request: got %s %s, want %s ExecCredential", seen.APIVersion, seen.Kind, tt.apiVersion)
			}
			if seen.Spec.Interactive {
				t.Errorf("plugin's request: got interactive, want non-interactive")
			}
			gotCluster := ""
			if seen.Spec.Cluster != nil {
				gotCluster = seen.Spec.Cluster.Server
			}
			if gotCluster != tt.wantCluster {
				t.Errorf("plugin's request cluster: got %q, want %q", gotCluster, tt.wantCluster)
			}
		})
	}
}

func TestRunPluginFailures(t *testing.T) {
	execInfo := `{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","spec":{"interactive":false}}`
	notFound := &clientcmdapi.ExecConfig{Command: "tp-test-no-such-plugin", APIVersion: v1, InstallHint: "install it with brew"}
	users := map[string]*clientcmdapi.ExecConfig{
		"ok":       fakeExec(t, v1, "FAKE_TOKEN", "tok"),
		"exit":     fakeExec(t, v1, "FAKE_EXIT", "1", "FAKE_STDERR", strings.Repeat("x", 10000)+"\nthe SSO session has expired; run aws sso login"),
		"notfound": notFound,
		"garbage":  fakeExec(t, v1, "FAKE_STDOUT", "not a credential"),
		"notoken":  fakeExec(t, v1, "FAKE_STDOUT", `{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{}}`),
		"version":  fakeExec(t, v1, "FAKE_STDOUT", `{"apiVersion":"client.authentication.k8s.io/v1beta1","kind":"ExecCredential","status":{"token":"t"}}`),
		"alpha":    {Command: testBinary(t), Args: []string{"fake-plugin"}, APIVersion: "client.authentication.k8s.io/v1alpha1"},
	}
	url := startServer(t, users, nil)

	tests := []struct {
		name     string
		user     string
		secret   string
		execInfo string
		wantCode int
		wantText []string
	}{
		{name: "wrong secret", user: "ok", secret: "guess", wantCode: http.StatusUnauthorized, wantText: []string{"secret", "tp connect"}},
		{name: "wrong secret hides users", user: "nobody", secret: "guess", wantCode: http.StatusUnauthorized},
		{name: "unknown user", user: "nobody", wantCode: http.StatusNotFound, wantText: []string{`"nobody"`}},
		{name: "plugin fails", user: "exit", wantCode: http.StatusBadGateway,
			wantText: []string{`"exit"`, "exit code 1", "run aws sso login", "..."}},
		{name: "plugin not on the host", user: "notfound", wantCode: http.StatusBadGateway,
			wantText: []string{"tp-test-no-such-plugin", "not found", "install it with brew"}},
		{name: "plugin writes garbage", user: "garbage", wantCode: http.StatusBadGateway, wantText: []string{"decoding"}},
		{name: "plugin writes no token", user: "notoken", wantCode: http.StatusBadGateway, wantText: []string{"token"}},
		{name: "plugin answers another version", user: "version", wantCode: http.StatusBadGateway, wantText: []string{"v1beta1"}},
		{name: "unsupported apiVersion", user: "alpha", wantCode: http.StatusBadGateway, wantText: []string{"v1alpha1"}},
		{name: "request of another version", user: "ok",
			execInfo: `{"apiVersion":"client.authentication.k8s.io/v1beta1","kind":"ExecCredential","spec":{}}`,
			wantCode: http.StatusBadRequest, wantText: []string{"v1beta1"}},
		{name: "request not a credential", user: "ok", execInfo: `{"apiVersion":"v1","kind":"Pod"}`, wantCode: http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, info := secret, execInfo
			if tt.secret != "" {
				s = tt.secret
			}
			if tt.execInfo != "" {
				info = tt.execInfo
			}
			var out bytes.Buffer
			err := kubeauth.RunPlugin(t.Context(), url, tt.user, s, nil, &out, env(map[string]string{kubeauth.EnvExecInfo: info}))
			var se *kubeauth.StatusError
			if !errors.As(err, &se) {
				t.Fatalf("error: got %v, want a *StatusError", err)
			}
			if se.Code != tt.wantCode {
				t.Errorf("status: got %d, want %d (%v)", se.Code, tt.wantCode, err)
			}
			for _, want := range tt.wantText {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q: want it to mention %q", err, want)
				}
			}
			if len(err.Error()) > 6000 {
				t.Errorf("error: got %d bytes, want the plugin's stderr truncated", len(err.Error()))
			}
			if out.Len() != 0 {
				t.Errorf("stdout: got %q, want nothing on failure", out.String())
			}
		})
	}
}

func TestPluginTimeout(t *testing.T) {
	url := startServer(t, map[string]*clientcmdapi.ExecConfig{
		"slow": fakeExec(t, v1, "FAKE_SLEEP", "1m", "FAKE_STDERR", "waiting for the browser", "FAKE_TOKEN", "late"),
	}, func(s *kubeauth.Server) { s.PluginTimeout = 3 * time.Second })

	err := kubeauth.RunPlugin(t.Context(), url, "slow", secret, nil, &bytes.Buffer{}, env(nil))
	var se *kubeauth.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusBadGateway {
		t.Fatalf("error: got %v, want a 502 *StatusError", err)
	}
	for _, want := range []string{"timed out after 3s", "waiting for the browser"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q: want it to mention %q", err, want)
		}
	}
}

func TestRunPluginWithoutRelay(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + l.Addr().String()
	l.Close()

	err = kubeauth.RunPlugin(t.Context(), url, "u", secret, nil, &bytes.Buffer{}, env(nil))
	if err == nil || !strings.Contains(err.Error(), "tp connect") {
		t.Errorf("error: got %v, want one that says the relay (tp connect) is not running", err)
	}

	err = kubeauth.RunPlugin(t.Context(), url, "u", "", nil, &bytes.Buffer{}, env(nil))
	if err == nil || !strings.Contains(err.Error(), kubeauth.EnvSecret) {
		t.Errorf("error: got %v, want one naming %s", err, kubeauth.EnvSecret)
	}
}

func TestServerHTTP(t *testing.T) {
	url := startServer(t, map[string]*clientcmdapi.ExecConfig{"u": fakeExec(t, v1, "FAKE_TOKEN", "tok")}, nil)
	tests := []struct {
		name   string
		method string
		auth   string
		want   int
	}{
		{name: "no authorization", method: http.MethodPost, want: http.StatusUnauthorized},
		{name: "basic auth", method: http.MethodPost, auth: "Basic " + secret, want: http.StatusUnauthorized},
		{name: "empty bearer", method: http.MethodPost, auth: "Bearer ", want: http.StatusUnauthorized},
		{name: "GET", method: http.MethodGet, auth: "Bearer " + secret, want: http.StatusMethodNotAllowed},
		{name: "POST", method: http.MethodPost, auth: "Bearer " + secret, want: http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(t.Context(), tt.method, url+"/credentials/u", nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("status: got %d, want %d", resp.StatusCode, tt.want)
			}
		})
	}
}

func TestServeStopsRunningPlugins(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + l.Addr().String()
	started := filepath.Join(t.TempDir(), "started")
	srv := kubeauth.NewServer(map[string]*clientcmdapi.ExecConfig{
		"u": fakeExec(t, v1, "FAKE_RECORD", started, "FAKE_SLEEP", "1m", "FAKE_TOKEN", "late"),
	}, secret, nil)
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, l) }()

	asked := make(chan error, 1)
	go func() { asked <- kubeauth.RunPlugin(t.Context(), url, "u", secret, nil, &bytes.Buffer{}, env(nil)) }()
	// Cancel once the plugin runs (it records its request first).
	deadline := time.Now().Add(10 * time.Second)
	for _, err := os.Stat(started); err != nil; _, err = os.Stat(started) {
		if time.Now().After(deadline) {
			t.Fatal("the plugin did not start within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	cancel()

	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: got %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return within 10s of cancel")
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("Serve returned %v after cancel, want the running plugin killed", d)
	}
	if err := <-asked; err == nil {
		t.Errorf("RunPlugin: got nil, want an error once the relay stopped")
	}
}
