package kubeconfig_test

import (
	"bytes"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/tp-run/tp/daemoncontainer/kubeauth"
	"github.com/tp-run/tp/daemoncontainer/kubeconfig"
)

// config returns a kubeconfig with context "c" -> cluster "k" (server) and
// user "u", plus an unrelated context "other".
func config(server string) clientcmdapi.Config {
	cfg := clientcmdapi.NewConfig()
	cfg.CurrentContext = "c"
	cfg.Contexts["c"] = &clientcmdapi.Context{Cluster: "k", AuthInfo: "u", Namespace: "ns"}
	cfg.Clusters["k"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: []byte("ca")}
	cfg.AuthInfos["u"] = &clientcmdapi.AuthInfo{Token: "t"}
	cfg.Contexts["other"] = &clientcmdapi.Context{Cluster: "k2", AuthInfo: "u2"}
	cfg.Clusters["k2"] = &clientcmdapi.Cluster{Server: "https://10.1.1.1"}
	cfg.AuthInfos["u2"] = &clientcmdapi.AuthInfo{Token: "t2"}
	return *cfg
}

// load parses the YAML ForContainer wrote.
func load(t testing.TB, res *kubeconfig.Result) *clientcmdapi.Config {
	t.Helper()
	cfg, err := clientcmd.Load(res.Config)
	if err != nil {
		t.Fatalf("parsing the result: %v\n%s", err, res.Config)
	}
	return cfg
}

// kind publishes host port 41000 as 172.18.0.2:6443 on network "kind" and
// host port 42000 as [fd00::2]:6443 on network "kind6".
func kind(hostPort int) (string, string, int, bool) {
	switch hostPort {
	case 41000:
		return "kind", "172.18.0.2", 6443, true
	case 42000:
		return "kind6", "fd00::2", 6443, true
	}
	return "", "", 0, false
}

func TestForContainerServer(t *testing.T) {
	tests := []struct {
		name          string
		server        string
		insecure      bool
		tlsServerName string
		opts          kubeconfig.Options
		wantServer    string
		wantTLSName   string
		wantNetworks  []string
	}{
		{name: "127.0.0.1", server: "https://127.0.0.1:6443",
			wantServer: "https://host.docker.internal:6443", wantTLSName: "127.0.0.1"},
		{name: "localhost", server: "https://localhost:6443",
			wantServer: "https://host.docker.internal:6443", wantTLSName: "localhost"},
		{name: "LOCALHOST with dot", server: "https://LOCALHOST.:6443",
			wantServer: "https://host.docker.internal:6443", wantTLSName: "LOCALHOST."},
		{name: "ipv6 loopback", server: "https://[::1]:6443",
			wantServer: "https://host.docker.internal:6443", wantTLSName: "::1"},
		{name: "0.0.0.0 (k3d)", server: "https://0.0.0.0:38001",
			wantServer: "https://host.docker.internal:38001", wantTLSName: "0.0.0.0"},
		{name: "ipv6 unspecified", server: "https://[::]:6443",
			wantServer: "https://host.docker.internal:6443", wantTLSName: "::"},
		{name: "127/8 without port", server: "https://127.0.1.1",
			wantServer: "https://host.docker.internal:443", wantTLSName: "127.0.1.1"},
		{name: "path kept", server: "https://127.0.0.1:8443/k8s/clusters/c-1",
			wantServer: "https://host.docker.internal:8443/k8s/clusters/c-1", wantTLSName: "127.0.0.1"},
		{name: "no scheme", server: "127.0.0.1:6443",
			wantServer: "host.docker.internal:6443", wantTLSName: "127.0.0.1"},
		{name: "no scheme, :// further on", server: "localhost:6443/?next=://x", // client-go dials localhost:6443
			wantServer: "host.docker.internal:6443/?next=://x", wantTLSName: "localhost"},
		{name: "http has no tls-server-name", server: "http://localhost:8001",
			wantServer: "http://host.docker.internal:8001"},
		{name: "http without port", server: "http://localhost",
			wantServer: "http://host.docker.internal:80"},
		{name: "tls-server-name kept", server: "https://127.0.0.1:6443", tlsServerName: "kubernetes",
			wantServer: "https://host.docker.internal:6443", wantTLSName: "kubernetes"},
		{name: "insecure has no tls-server-name", server: "https://127.0.0.1:6443", insecure: true,
			wantServer: "https://host.docker.internal:6443"},
		{name: "custom loopback host", server: "https://127.0.0.1:6443",
			opts:       kubeconfig.Options{LoopbackHost: "192.168.65.254"},
			wantServer: "https://192.168.65.254:6443", wantTLSName: "127.0.0.1"},
		{name: "loopback host equal to the original", server: "https://localhost:6443",
			opts:       kubeconfig.Options{LoopbackHost: "localhost"},
			wantServer: "https://localhost:6443"},
		{name: "kind node container", server: "https://127.0.0.1:41000",
			opts:       kubeconfig.Options{PublishedBy: kind},
			wantServer: "https://172.18.0.2:6443", wantTLSName: "127.0.0.1", wantNetworks: []string{"kind"}},
		{name: "published on ipv6", server: "https://[::1]:42000",
			opts:       kubeconfig.Options{PublishedBy: kind},
			wantServer: "https://[fd00::2]:6443", wantTLSName: "::1", wantNetworks: []string{"kind6"}},
		{name: "port not published", server: "https://127.0.0.1:6443",
			opts:       kubeconfig.Options{PublishedBy: kind},
			wantServer: "https://host.docker.internal:6443", wantTLSName: "127.0.0.1"},
		{name: "remote IP untouched", server: "https://10.0.0.1:6443",
			opts:       kubeconfig.Options{PublishedBy: kind},
			wantServer: "https://10.0.0.1:6443"},
		{name: "remote name untouched", server: "https://ABC.gr7.eu-west-1.eks.amazonaws.com",
			wantServer: "https://ABC.gr7.eu-west-1.eks.amazonaws.com"},
		{name: "host.docker.internal untouched", server: "https://host.docker.internal:6443",
			wantServer: "https://host.docker.internal:6443"},
		{name: "localhost lookalike untouched", server: "https://localhost.example.com:6443",
			wantServer: "https://localhost.example.com:6443"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw := config(tt.server)
			raw.Clusters["k"].InsecureSkipTLSVerify = tt.insecure
			if tt.insecure {
				raw.Clusters["k"].CertificateAuthorityData = nil
			}
			raw.Clusters["k"].TLSServerName = tt.tlsServerName
			res, err := kubeconfig.ForContainer(raw, "", tt.opts)
			if err != nil {
				t.Fatalf("ForContainer: %v", err)
			}
			got := load(t, res).Clusters["k"]
			if got.Server != tt.wantServer {
				t.Errorf("server: got %v, want %v", got.Server, tt.wantServer)
			}
			if got.TLSServerName != tt.wantTLSName {
				t.Errorf("tls-server-name: got %q, want %q", got.TLSServerName, tt.wantTLSName)
			}
			if !slices.Equal(res.Networks, tt.wantNetworks) {
				t.Errorf("networks: got %v, want %v", res.Networks, tt.wantNetworks)
			}
			if rewritten := tt.wantServer != tt.server; rewritten != (len(res.Rewrites) > 0) {
				t.Errorf("rewrites: got %q, want notes only when the server changes (%v)", res.Rewrites, rewritten)
			}
			if raw.Clusters["k"].Server != tt.server {
				t.Errorf("raw modified: got server %v, want %v", raw.Clusters["k"].Server, tt.server)
			}
		})
	}
}

func TestForContainerMinifies(t *testing.T) {
	raw := config("https://10.0.0.1:6443")
	raw.CurrentContext = "other"
	res, err := kubeconfig.ForContainer(raw, "c", kubeconfig.Options{})
	if err != nil {
		t.Fatalf("ForContainer: %v", err)
	}
	got := load(t, res)
	if got.CurrentContext != "c" {
		t.Errorf("current-context: got %v, want c", got.CurrentContext)
	}
	for what, keys := range map[string][]string{
		"contexts": slices.Sorted(maps.Keys(got.Contexts)),
		"clusters": slices.Sorted(maps.Keys(got.Clusters)),
		"users":    slices.Sorted(maps.Keys(got.AuthInfos)),
	} {
		want := map[string][]string{"contexts": {"c"}, "clusters": {"k"}, "users": {"u"}}[what]
		if !slices.Equal(keys, want) {
			t.Errorf("%s: got %v, want %v", what, keys, want)
		}
	}
	if ns := got.Contexts["c"].Namespace; ns != "ns" {
		t.Errorf("namespace: got %v, want ns", ns)
	}
	if tok := got.AuthInfos["u"].Token; tok != "t" {
		t.Errorf("token: got %v, want t", tok)
	}
}

func TestForContainerEmbedsFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	write("ca.crt", "CA PEM")
	write("client.crt", "CERT PEM")
	keyPath := write("client.key", "KEY PEM")
	write("token", "file-token\n")
	origin := filepath.Join(dir, "config")

	raw := config("https://10.0.0.1:6443")
	c := raw.Clusters["k"]
	c.CertificateAuthorityData, c.CertificateAuthority, c.LocationOfOrigin = nil, "ca.crt", origin // relative to the kubeconfig
	raw.AuthInfos["u"] = &clientcmdapi.AuthInfo{
		LocationOfOrigin:  origin,
		ClientCertificate: "client.crt",
		ClientKey:         keyPath, // absolute
		TokenFile:         "token",
	}

	res, err := kubeconfig.ForContainer(raw, "c", kubeconfig.Options{})
	if err != nil {
		t.Fatalf("ForContainer: %v", err)
	}
	got := load(t, res)
	gc, gu := got.Clusters["k"], got.AuthInfos["u"]
	for _, f := range []struct{ field, got, want string }{
		{"certificate-authority-data", string(gc.CertificateAuthorityData), "CA PEM"},
		{"certificate-authority", gc.CertificateAuthority, ""},
		{"client-certificate-data", string(gu.ClientCertificateData), "CERT PEM"},
		{"client-certificate", gu.ClientCertificate, ""},
		{"client-key-data", string(gu.ClientKeyData), "KEY PEM"},
		{"client-key", gu.ClientKey, ""},
		{"token", gu.Token, "file-token"},
		{"tokenFile", gu.TokenFile, ""},
	} {
		if f.got != f.want {
			t.Errorf("%s: got %q, want %q", f.field, f.got, f.want)
		}
	}
	if bytes.Contains(res.Config, []byte(dir)) {
		t.Errorf("the result still names a host path under %s:\n%s", dir, res.Config)
	}
}

func TestForContainerInlineDataWins(t *testing.T) {
	raw := config("https://10.0.0.1:6443")
	raw.Clusters["k"].CertificateAuthority = "/does/not/exist" // ignored: data is inline
	res, err := kubeconfig.ForContainer(raw, "c", kubeconfig.Options{})
	if err != nil {
		t.Fatalf("ForContainer: %v", err)
	}
	got := load(t, res).Clusters["k"]
	if string(got.CertificateAuthorityData) != "ca" || got.CertificateAuthority != "" {
		t.Errorf("got data %q file %q, want data \"ca\" and no file", got.CertificateAuthorityData, got.CertificateAuthority)
	}
}

func TestForContainerProxyURL(t *testing.T) {
	raw := config("https://10.0.0.1:6443")
	raw.Clusters["k"].ProxyURL = "socks5://127.0.0.1:1080"
	res, err := kubeconfig.ForContainer(raw, "c", kubeconfig.Options{})
	if err != nil {
		t.Fatalf("ForContainer: %v", err)
	}
	if got, want := load(t, res).Clusters["k"].ProxyURL, "socks5://host.docker.internal:1080"; got != want {
		t.Errorf("proxy-url: got %v, want %v", got, want)
	}
}

func TestForContainerExecUser(t *testing.T) {
	tests := []struct {
		name        string
		apiVersion  string
		clusterInfo bool
		binary      string
		wantBinary  string
	}{
		{name: "v1 default binary", apiVersion: "client.authentication.k8s.io/v1", wantBinary: "/tp"},
		{name: "v1beta1 with cluster info", apiVersion: "client.authentication.k8s.io/v1beta1", clusterInfo: true,
			binary: "/usr/local/bin/tp", wantBinary: "/usr/local/bin/tp"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw := config("https://ABC.gr7.eu-west-1.eks.amazonaws.com")
			orig := &clientcmdapi.ExecConfig{
				Command:            "aws",
				Args:               []string{"eks", "get-token", "--cluster-name", "prod"},
				Env:                []clientcmdapi.ExecEnvVar{{Name: "AWS_PROFILE", Value: "prod"}},
				APIVersion:         tt.apiVersion,
				ProvideClusterInfo: tt.clusterInfo,
				InteractiveMode:    clientcmdapi.IfAvailableExecInteractiveMode,
			}
			user := "arn:aws:eks:eu-west-1:123:cluster/prod"
			raw.Contexts["c"].AuthInfo = user
			raw.AuthInfos[user] = &clientcmdapi.AuthInfo{Exec: orig}
			relay := &kubeconfig.KubeauthRelay{URL: "http://host.docker.internal:41234", Secret: "s3cret", Binary: tt.binary}

			res, err := kubeconfig.ForContainer(raw, "c", kubeconfig.Options{Kubeauth: relay})
			if err != nil {
				t.Fatalf("ForContainer: %v", err)
			}
			if !slices.Equal(res.ExecUsers, []string{user}) {
				t.Errorf("exec users: got %v, want [%s]", res.ExecUsers, user)
			}
			got := load(t, res).AuthInfos[user].Exec
			if got == nil {
				t.Fatalf("exec: got none, want the relay\n%s", res.Config)
			}
			wantArgs := []string{kubeauth.PluginCommand, "--url", relay.URL, "--user", user}
			wantEnv := []clientcmdapi.ExecEnvVar{{Name: kubeauth.EnvSecret, Value: "s3cret"}}
			if got.Command != tt.wantBinary {
				t.Errorf("command: got %v, want %v", got.Command, tt.wantBinary)
			}
			if !slices.Equal(got.Args, wantArgs) {
				t.Errorf("args: got %q, want %q", got.Args, wantArgs)
			}
			if !slices.Equal(got.Env, wantEnv) {
				t.Errorf("env: got %v, want %v", got.Env, wantEnv)
			}
			if got.APIVersion != tt.apiVersion {
				t.Errorf("apiVersion: got %v, want %v", got.APIVersion, tt.apiVersion)
			}
			if got.InteractiveMode != clientcmdapi.NeverExecInteractiveMode {
				t.Errorf("interactiveMode: got %v, want Never", got.InteractiveMode)
			}
			if got.ProvideClusterInfo != tt.clusterInfo {
				t.Errorf("provideClusterInfo: got %v, want %v", got.ProvideClusterInfo, tt.clusterInfo)
			}
			if raw.AuthInfos[user].Exec.Command != "aws" {
				t.Errorf("raw modified: got command %v, want aws", raw.AuthInfos[user].Exec.Command)
			}
		})
	}
}

func TestForContainerErrors(t *testing.T) {
	withUser := func(u *clientcmdapi.AuthInfo) clientcmdapi.Config {
		raw := config("https://10.0.0.1")
		raw.AuthInfos["u"] = u
		return raw
	}
	relay := kubeconfig.Options{Kubeauth: &kubeconfig.KubeauthRelay{URL: "http://x", Secret: "s"}}
	tests := []struct {
		name     string
		raw      func() clientcmdapi.Config
		context  string
		opts     kubeconfig.Options
		wantErr  error
		wantText []string
	}{
		{name: "missing context", raw: func() clientcmdapi.Config { return config("https://10.0.0.1") }, context: "nope",
			wantErr: kubeconfig.ErrContext, wantText: []string{`"nope"`, "available contexts: c, other"}},
		{name: "no current context", raw: func() clientcmdapi.Config {
			raw := config("https://10.0.0.1")
			raw.CurrentContext = ""
			return raw
		}, wantErr: kubeconfig.ErrContext, wantText: []string{"current-context", "available contexts: c, other"}},
		{name: "missing cluster", raw: func() clientcmdapi.Config {
			raw := config("https://10.0.0.1")
			delete(raw.Clusters, "k")
			return raw
		}, wantErr: kubeconfig.ErrContext, wantText: []string{`cluster "k"`, "available contexts: c, other"}},
		{name: "missing user", raw: func() clientcmdapi.Config {
			raw := config("https://10.0.0.1")
			delete(raw.AuthInfos, "u")
			return raw
		}, wantErr: kubeconfig.ErrContext, wantText: []string{`user "u"`, "available contexts: c, other"}},
		{name: "auth-provider", raw: func() clientcmdapi.Config {
			return withUser(&clientcmdapi.AuthInfo{AuthProvider: &clientcmdapi.AuthProviderConfig{Name: "gcp"}})
		}, opts: relay, wantErr: kubeconfig.ErrAuthProvider, wantText: []string{`user "u"`, `"gcp"`, "gke-gcloud-auth-plugin"}},
		{name: "exec without relay", raw: func() clientcmdapi.Config {
			return withUser(&clientcmdapi.AuthInfo{Exec: &clientcmdapi.ExecConfig{Command: "aws", APIVersion: "client.authentication.k8s.io/v1"}})
		}, wantErr: kubeconfig.ErrExecPlugin, wantText: []string{`user "u"`, `"aws"`}},
		{name: "exec with an incomplete relay", raw: func() clientcmdapi.Config {
			return withUser(&clientcmdapi.AuthInfo{Exec: &clientcmdapi.ExecConfig{Command: "aws", APIVersion: "client.authentication.k8s.io/v1"}})
		}, opts: kubeconfig.Options{Kubeauth: &kubeconfig.KubeauthRelay{URL: "http://x"}}, wantErr: kubeconfig.ErrExecPlugin, wantText: []string{"secret"}},
		{name: "exec v1alpha1", raw: func() clientcmdapi.Config {
			return withUser(&clientcmdapi.AuthInfo{Exec: &clientcmdapi.ExecConfig{Command: "aws", APIVersion: "client.authentication.k8s.io/v1alpha1"}})
		}, opts: relay, wantErr: kubeconfig.ErrExecPlugin, wantText: []string{`user "u"`, "v1alpha1"}},
		{name: "missing CA file", raw: func() clientcmdapi.Config {
			raw := config("https://10.0.0.1")
			raw.Clusters["k"].CertificateAuthorityData = nil
			raw.Clusters["k"].CertificateAuthority = "/does/not/exist/ca.crt"
			return raw
		}, wantErr: os.ErrNotExist, wantText: []string{`cluster "k"`, "certificate-authority", filepath.FromSlash("/does/not/exist/ca.crt")}},
		{name: "missing token file", raw: func() clientcmdapi.Config {
			return withUser(&clientcmdapi.AuthInfo{TokenFile: "/does/not/exist/token"})
		}, wantErr: os.ErrNotExist, wantText: []string{`user "u"`, "tokenFile"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := kubeconfig.ForContainer(tt.raw(), tt.context, tt.opts)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error: got %v, want %v", err, tt.wantErr)
			}
			for _, want := range tt.wantText {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q: want it to mention %s", err, want)
				}
			}
		})
	}
}
