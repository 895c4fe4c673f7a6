package kubeconfig_test

import (
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/tp-run/tp/daemoncontainer/kubeconfig"
)

// loopbackHost is the fuzz target's own, independent idea of a host name
// that means "this machine" to a client on it.
func loopbackHost(host string) bool {
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	if i := strings.LastIndexByte(h, '%'); i >= 0 {
		h = h[:i]
	}
	ip := net.ParseIP(h)
	return ip != nil && (ip.IsLoopback() || ip.IsUnspecified())
}

// clientGoHost returns the host client-go dials for a cluster's server, ok
// false when client-go cannot use the server at all.
func clientGoHost(server string) (string, bool) {
	u, _, err := rest.DefaultServerURL(server, "", schema.GroupVersion{}, true)
	if err != nil {
		return "", false
	}
	return u.Hostname(), true
}

// FuzzForContainer rewrites arbitrary kubeconfig YAML for the container
// (files it names are replaced by test files first: the target must not
// read the host; a server and a proxy-url from the input replace those of
// every cluster when set). It asserts that ForContainer never panics and does not
// modify its input; and, when it succeeds, that the result parses, holds
// exactly the chosen context with its cluster, names no files, points no
// server or proxy-url at a loopback host (as client-go reads the server), leaves
// servers that were not loopback as they were, still gives client-go a usable
// server when the input had one, and relays every exec plugin.
func FuzzForContainer(f *testing.F) {
	for _, server := range []string{
		"https://127.0.0.1:6443", "https://localhost:6443", "https://LOCALHOST.:6443", "https://[::1]:6443",
		"https://0.0.0.0:38001", "https://[::]:6443", "https://127.0.1.1", "127.0.0.1:6443", "localhost",
		"http://127.0.0.1:8001", "https://127.0.0.1:41000", "https://[::1]:42000", "https://10.0.0.1:6443",
		"https://kubernetes.example.com/prefix", "https://[fe80::1%25lo0]:6443", "https://[::ffff:127.0.0.1]:6443", "localhost:6443/?next=://x",
	} {
		raw := config(server)
		b, err := clientcmd.Write(raw)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, "", "", "")
		f.Add(b, "", server, "")
	}
	files := config("https://127.0.0.1:6443")
	files.Clusters["k"].CertificateAuthority = "ca.crt"
	files.Clusters["k"].ProxyURL = "socks5://localhost:1080"
	files.AuthInfos["u"] = &clientcmdapi.AuthInfo{ClientCertificate: "c.crt", ClientKey: "c.key", TokenFile: "token"}
	exec := config("https://[::1]:6443")
	exec.AuthInfos["u"] = &clientcmdapi.AuthInfo{Exec: &clientcmdapi.ExecConfig{
		APIVersion: "client.authentication.k8s.io/v1", Command: "gke-gcloud-auth-plugin", InteractiveMode: clientcmdapi.NeverExecInteractiveMode}}
	for _, raw := range []clientcmdapi.Config{files, exec} {
		b, err := clientcmd.Write(raw)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, "", "", "")
		f.Add(b, "other", "", "http://[::1]:3128")
	}

	dir := f.TempDir()
	testFile := filepath.Join(dir, "file")
	if err := os.WriteFile(testFile, []byte("PEM\n"), 0o600); err != nil {
		f.Fatal(err)
	}
	opts := kubeconfig.Options{
		PublishedBy: kind,
		Kubeauth:    &kubeconfig.KubeauthRelay{URL: "http://host.docker.internal:41234", Secret: "s"},
	}
	f.Fuzz(func(t *testing.T, yaml []byte, contextName, server, proxyURL string) {
		raw, err := clientcmd.Load(yaml)
		if err != nil || !utf8.ValidString(server) || !utf8.ValidString(proxyURL) {
			return // YAML has no strings that are not UTF-8
		}
		// server and proxyURL, when set, replace those of every cluster:
		// the YAML mutates slowly into new URLs.
		for _, c := range raw.Clusters {
			if c == nil {
				continue
			}
			if c.CertificateAuthority != "" {
				c.CertificateAuthority = testFile
			}
			if server != "" {
				c.Server = server
			}
			if proxyURL != "" {
				c.ProxyURL = proxyURL
			}
		}
		for _, u := range raw.AuthInfos {
			if u == nil {
				continue
			}
			for _, p := range []*string{&u.ClientCertificate, &u.ClientKey, &u.TokenFile} {
				if *p != "" {
					*p = testFile
				}
			}
		}
		before := raw.DeepCopy()
		res, err := kubeconfig.ForContainer(*raw, contextName, opts)
		if !reflect.DeepEqual(raw, before) {
			t.Fatalf("ForContainer modified its input")
		}
		if err != nil {
			return
		}
		out, err := clientcmd.Load(res.Config)
		if err != nil {
			t.Fatalf("the result does not parse: %v\n%s", err, res.Config)
		}
		name := contextName
		if name == "" {
			name = raw.CurrentContext
		}
		kctx := out.Contexts[name]
		if out.CurrentContext != name || len(out.Contexts) != 1 || kctx == nil {
			t.Fatalf("result: current-context %q, contexts %d, want only %q", out.CurrentContext, len(out.Contexts), name)
		}
		if len(out.Clusters) > 1 || (kctx.Cluster != "" && out.Clusters[kctx.Cluster] == nil) {
			t.Fatalf("result: clusters %v for context cluster %q", out.Clusters, kctx.Cluster)
		}
		for cname, c := range out.Clusters {
			in := raw.Clusters[cname]
			if c.CertificateAuthority != "" {
				t.Errorf("cluster %q: still names the file %q", cname, c.CertificateAuthority)
			}
			inHost, inOK := clientGoHost(in.Server)
			outHost, outOK := clientGoHost(c.Server)
			switch {
			case in.Server == "":
			case inOK && !outOK:
				t.Errorf("cluster %q: server %q became %q, which client-go cannot use", cname, in.Server, c.Server)
			case outOK && loopbackHost(outHost):
				t.Errorf("cluster %q: server %q rewritten to %q, still loopback for client-go", cname, in.Server, c.Server)
			case inOK && !loopbackHost(inHost) && c.Server != in.Server:
				t.Errorf("cluster %q: server %q is not loopback but was rewritten to %q", cname, in.Server, c.Server)
			}
			if c.ProxyURL != "" {
				if u, err := url.Parse(c.ProxyURL); err == nil && loopbackHost(u.Hostname()) {
					t.Errorf("cluster %q: proxy-url %q is loopback", cname, c.ProxyURL)
				}
			}
		}
		for uname, u := range out.AuthInfos {
			if u.ClientCertificate != "" || u.ClientKey != "" || u.TokenFile != "" {
				t.Errorf("user %q: still names files %q %q %q", uname, u.ClientCertificate, u.ClientKey, u.TokenFile)
			}
			if in := raw.AuthInfos[uname]; in.Exec != nil && (u.Exec == nil || u.Exec.Command != kubeconfig.DefaultKubeauthBinary) {
				t.Errorf("user %q: exec plugin %q not relayed: %+v", uname, in.Exec.Command, u.Exec)
			}
		}
	})
}
