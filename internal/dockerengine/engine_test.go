package dockerengine

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/cli/cli/command"
	dcontext "github.com/docker/cli/cli/context/docker"
	"github.com/docker/cli/cli/context/store"
	"github.com/docker/docker/client"
)

// cleanEnv clears every variable that picks an engine.
func cleanEnv(t *testing.T) {
	t.Helper()
	for _, k := range []string{EnvHost, EnvContext, "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_TLS", "DOCKER_API_VERSION"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
}

// configDir makes a docker CLI configuration directory with the contexts
// (name: host) and the current context.
func configDir(t *testing.T, current string, contexts map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	s := store.New(filepath.Join(dir, "contexts"), command.DefaultContextStoreConfig())
	for name, host := range contexts {
		err := s.CreateOrUpdate(store.Metadata{Name: name, Metadata: command.DockerContext{},
			Endpoints: map[string]any{dcontext.DockerEndpoint: dcontext.EndpointMeta{Host: host}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	cfg, _ := json.Marshal(map[string]string{"currentContext": current})
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestResolveOrder(t *testing.T) {
	contexts := map[string]string{"a": "unix:///run/a.sock", "b": "unix:///run/b.sock", "remote": "ssh://dev@build.example.com"}
	for _, tc := range []struct {
		name               string
		flag, current      string
		dockerHost, dockCx string
		wantContext        string
		wantHost           string
		wantEnv            string
	}{
		{name: "nothing: the default socket", wantContext: "default", wantHost: client.DefaultDockerHost, wantEnv: "DOCKER_HOST=" + client.DefaultDockerHost},
		{name: "config's current context", current: "a", wantContext: "a", wantHost: "unix:///run/a.sock", wantEnv: "DOCKER_CONTEXT=a"},
		{name: "DOCKER_CONTEXT over the config", current: "a", dockCx: "b", wantContext: "b", wantHost: "unix:///run/b.sock", wantEnv: "DOCKER_CONTEXT=b"},
		{name: "DOCKER_HOST over DOCKER_CONTEXT and the config", current: "a", dockCx: "b", dockerHost: "unix:///run/h.sock",
			wantContext: "default", wantHost: "unix:///run/h.sock", wantEnv: "DOCKER_HOST=unix:///run/h.sock"},
		{name: "DOCKER_HOST tcp without a port", dockerHost: "tcp://10.1.2.3", wantContext: "default", wantHost: "tcp://10.1.2.3:2375", wantEnv: "DOCKER_HOST=tcp://10.1.2.3:2375"},
		{name: "DOCKER_HOST ssh", dockerHost: "ssh://dev@build.example.com", wantContext: "default", wantHost: "ssh://dev@build.example.com", wantEnv: "DOCKER_HOST=ssh://dev@build.example.com"},
		{name: "--docker-context over DOCKER_HOST", flag: "a", dockerHost: "unix:///run/h.sock", dockCx: "b",
			wantContext: "a", wantHost: "unix:///run/a.sock", wantEnv: "DOCKER_CONTEXT=a"},
		{name: "--docker-context default over the config", flag: "default", current: "a", wantContext: "default", wantHost: client.DefaultDockerHost, wantEnv: "DOCKER_HOST=" + client.DefaultDockerHost},
		{name: "ssh context", current: "remote", wantContext: "remote", wantHost: "ssh://dev@build.example.com", wantEnv: "DOCKER_CONTEXT=remote"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cleanEnv(t)
			if tc.dockerHost != "" {
				t.Setenv(EnvHost, tc.dockerHost)
			}
			if tc.dockCx != "" {
				t.Setenv(EnvContext, tc.dockCx)
			}
			e, err := Resolve(Options{Context: tc.flag, ConfigDir: configDir(t, tc.current, contexts)})
			if err != nil {
				t.Fatal(err)
			}
			if e.Context != tc.wantContext || e.Host != tc.wantHost {
				t.Errorf("got context %q host %q, want %q %q", e.Context, e.Host, tc.wantContext, tc.wantHost)
			}
			env := e.Environ([]string{"PATH=/bin", "DOCKER_HOST=unix:///old", "DOCKER_CONTEXT=old", "DOCKER_CONFIG=/c"})
			want := []string{"PATH=/bin", "DOCKER_CONFIG=/c", tc.wantEnv}
			if !slices.Equal(env, want) {
				t.Errorf("Environ = %q, want %q", env, want)
			}
			if _, err := e.NewClient(); err != nil {
				t.Errorf("NewClient: %v", err)
			}
		})
	}
}

func TestResolveUnknownContext(t *testing.T) {
	for _, tc := range []struct {
		name, flag, current, want string
	}{
		{"flag", "nope", "", "--docker-context"},
		{"config", "", "gone", "docker context use"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cleanEnv(t)
			_, err := Resolve(Options{Context: tc.flag, ConfigDir: configDir(t, tc.current, nil)})
			if err == nil || !strings.Contains(err.Error(), "docker context ls") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error naming %q and `docker context ls`", err, tc.want)
			}
		})
	}
}

// fakeEngine answers the Docker API's ping and records the requests.
func fakeEngine(t *testing.T, hits *[]string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		*hits = append(*hits, r.URL.Path)
		w.Header().Set("Api-Version", "1.41")
		_, _ = w.Write([]byte("OK"))
	})
}

// TestClientTalksToTheContextsEngine: the client goes to the socket the
// context names, not to DOCKER_HOST's.
func TestClientTalksToTheContextsEngine(t *testing.T) {
	cleanEnv(t)
	l, host := listenEngine(t)
	var hits []string
	srv := &httptest.Server{Listener: l, Config: &http.Server{Handler: fakeEngine(t, &hits)}}
	srv.Start()
	defer srv.Close()
	t.Setenv(EnvHost, "unix:///nonexistent/docker.sock")
	e, err := Resolve(Options{Context: "second", ConfigDir: configDir(t, "", map[string]string{"second": host})})
	if err != nil {
		t.Fatal(err)
	}
	c, err := e.Client(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if len(hits) == 0 || !strings.HasSuffix(hits[0], "/_ping") {
		t.Errorf("engine got %q, want a ping", hits)
	}
}

func TestClientUnreachableSaysWhatToDo(t *testing.T) {
	cleanEnv(t)
	t.Setenv(EnvHost, "unix:///nonexistent/docker.sock")
	e, err := Resolve(Options{ConfigDir: configDir(t, "", nil)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.Client(context.Background())
	for _, want := range []string{"Docker is not running", "unix:///nonexistent/docker.sock", "--docker-context"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v, want it to contain %q", err, want)
		}
	}
}

// pki writes a CA, a server certificate for 127.0.0.1 and a client
// certificate as ca.pem, cert.pem and key.pem (the docker CLI's names) into
// a directory, and returns it with the server's TLS configuration, which
// requires a client certificate of the CA.
func pki(t *testing.T) (string, *tls.Config) {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(serial int64, usage x509.ExtKeyUsage) ([]byte, []byte) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "leaf"}, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			KeyUsage: x509.KeyUsageDigitalSignature, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalECPrivateKey(key)
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	}
	srvCert, srvKey := issue(2, x509.ExtKeyUsageServerAuth)
	cliCert, cliKey := issue(3, x509.ExtKeyUsageClientAuth)
	for name, b := range map[string][]byte{
		"ca.pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), "cert.pem": cliCert, "key.pem": cliKey,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pair, err := tls.X509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return dir, &tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
}

// TestTLSContext: a tcp context with TLS material reaches an engine that
// verifies the client's certificate.
func TestTLSContext(t *testing.T) {
	cleanEnv(t)
	certs, srvTLS := pki(t)
	var hits []string
	srv := httptest.NewUnstartedServer(fakeEngine(t, &hits))
	srv.TLS = srvTLS
	srv.StartTLS()
	defer srv.Close()
	dir := configDir(t, "tls", map[string]string{"tls": strings.Replace(srv.URL, "https://", "tcp://", 1)})
	s := store.New(filepath.Join(dir, "contexts"), command.DefaultContextStoreConfig())
	read := func(n string) []byte { b, _ := os.ReadFile(filepath.Join(certs, n)); return b }
	if err := s.ResetEndpointTLSMaterial("tls", dcontext.DockerEndpoint, &store.EndpointTLSData{Files: map[string][]byte{
		"ca.pem": read("ca.pem"), "cert.pem": read("cert.pem"), "key.pem": read("key.pem"),
	}}); err != nil {
		t.Fatal(err)
	}
	e, err := Resolve(Options{ConfigDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	c, err := e.Client(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if len(hits) == 0 {
		t.Error("the TLS engine got no request")
	}
}

// TestTLSFromEnv: DOCKER_HOST=tcp:// with DOCKER_TLS_VERIFY and
// DOCKER_CERT_PATH reaches an engine that verifies the client's
// certificate. The docker CLI reads those variables when its package
// initializes, so this runs the test binary again with them set.
func TestTLSFromEnv(t *testing.T) {
	if os.Getenv("TP_DOCKERENGINE_TLS_CHILD") == "1" {
		e, err := Resolve(Options{ConfigDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		c, err := e.Client(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		return
	}
	certs, srvTLS := pki(t)
	var hits []string
	srv := httptest.NewUnstartedServer(fakeEngine(t, &hits))
	srv.TLS = srvTLS
	srv.StartTLS()
	defer srv.Close()
	run := func(env ...string) error {
		cmd := exec.Command(os.Args[0], "-test.run=^TestTLSFromEnv$", "-test.count=1")
		cmd.Env = append(os.Environ(), "TP_DOCKERENGINE_TLS_CHILD=1", "DOCKER_CONTEXT=", "DOCKER_HOST="+strings.Replace(srv.URL, "https://", "tcp://", 1))
		cmd.Env = append(cmd.Env, env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Logf("child: %s", out)
		}
		return err
	}
	if err := run("DOCKER_TLS_VERIFY=1", "DOCKER_CERT_PATH="+certs); err != nil {
		t.Fatalf("with DOCKER_TLS_VERIFY and DOCKER_CERT_PATH: %v", err)
	}
	if len(hits) == 0 {
		t.Fatal("the TLS engine got no request")
	}
	// Without the client certificate the engine refuses: the variables
	// were what made it work.
	if err := run("DOCKER_TLS_VERIFY=", "DOCKER_CERT_PATH="); err == nil {
		t.Fatal("without TLS variables the child reached the TLS engine")
	}
}
