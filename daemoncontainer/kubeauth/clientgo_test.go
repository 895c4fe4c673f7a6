package kubeauth_test

import (
	"encoding/pem"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/tp-run/tp/daemoncontainer/kubeconfig"
)

// TestClientGoAuthenticates runs the whole hand-off: the host's kubeconfig
// with an exec plugin goes through kubeconfig.ForContainer; client-go, given
// the result, runs `kubeauth-plugin` (this test binary calling RunPlugin),
// which gets the token from the relay running the original plugin; the token
// reaches a stand-in API server. The server is on 127.0.0.1 and rewritten to
// "localhost", which its certificate does not cover: the request succeeds
// only because tls-server-name keeps verifying 127.0.0.1.
func TestClientGoAuthenticates(t *testing.T) {
	const token = "k8s-aws-v1.token-from-the-host"
	apiServer := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"major":"1","minor":"37","gitVersion":"v1.37.2"}`)
	}))
	apiServer.Config.ErrorLog = log.New(io.Discard, "", 0) // the failing handshake below is expected
	apiServer.StartTLS()
	t.Cleanup(apiServer.Close)
	if !strings.HasPrefix(apiServer.URL, "https://127.0.0.1:") {
		t.Fatalf("API server URL %s, want a loopback one", apiServer.URL)
	}

	const user = "eks-user"
	raw := clientcmdapi.NewConfig()
	raw.CurrentContext = "eks"
	raw.Contexts["eks"] = &clientcmdapi.Context{Cluster: "eks", AuthInfo: user}
	raw.Clusters["eks"] = &clientcmdapi.Cluster{
		Server:                   apiServer.URL,
		CertificateAuthorityData: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: apiServer.Certificate().Raw}),
	}
	raw.AuthInfos[user] = &clientcmdapi.AuthInfo{Exec: fakeExec(t, v1, "FAKE_TOKEN", token, "FAKE_EXPIRY", "2031-01-01T00:00:00Z")}
	raw.AuthInfos[user].Exec.ProvideClusterInfo = true

	relayURL := startServer(t, map[string]*clientcmdapi.ExecConfig{user: raw.AuthInfos[user].Exec}, nil)
	res, err := kubeconfig.ForContainer(*raw, "", kubeconfig.Options{
		LoopbackHost: "localhost",
		Kubeauth:     &kubeconfig.KubeauthRelay{URL: relayURL, Secret: secret, Binary: testBinary(t)},
	})
	if err != nil {
		t.Fatalf("ForContainer: %v", err)
	}
	t.Logf("rewrites: %q", res.Rewrites)

	get := func(t *testing.T, config []byte) (int, string, error) {
		t.Helper()
		rc, err := clientcmd.RESTConfigFromKubeConfig(config)
		if err != nil {
			t.Fatalf("rest config: %v", err)
		}
		if !strings.HasPrefix(rc.Host, "https://localhost:") {
			t.Fatalf("host: got %v, want the rewritten https://localhost:port", rc.Host)
		}
		hc, err := rest.HTTPClientFor(rc)
		if err != nil {
			t.Fatalf("http client: %v", err)
		}
		resp, err := hc.Get(rc.Host + "/version")
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), nil
	}

	t.Run("authenticated", func(t *testing.T) {
		code, body, err := get(t, res.Config)
		if err != nil {
			t.Fatalf("GET /version: %v", err)
		}
		if code != http.StatusOK || !strings.Contains(body, "v1.37.2") {
			t.Errorf("GET /version: got %d %s, want 200 with the version", code, body)
		}
	})

	t.Run("without tls-server-name the certificate does not verify", func(t *testing.T) {
		cfg, err := clientcmd.Load(res.Config)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Clusters["eks"].TLSServerName = ""
		config, err := clientcmd.Write(*cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := get(t, config); err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Errorf("GET /version: got %v, want a certificate error", err)
		}
	})
}
