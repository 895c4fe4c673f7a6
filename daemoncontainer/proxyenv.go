package daemoncontainer

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"net/url"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"

	"github.com/tp-run/tp/daemoncontainer/kubeconfig"
)

// The user's proxy settings reach the daemon container's environment, where
// client-go reads them (http.ProxyFromEnvironment) for the API server
// connection: behind a corporate proxy the daemon reaches a cloud cluster the
// way kubectl on the host does. A proxy on the host's loopback (cntlm, px, a
// VPN client's local proxy) is rewritten to host.docker.internal, like a
// loopback API server, and the hosts the kubeconfig rewrite introduced
// (host.docker.internal, a node container's address) are added to NO_PROXY:
// the host never proxies the loopback servers they stand for.

// proxyVars are the variables Go's net/http (golang.org/x/net/http/httpproxy)
// reads, in both spellings.
var proxyVars = []string{"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"}

// ProxyEnv returns the proxy variables of environ (KEY=VALUE) for the daemon
// container: loopback proxies rewritten to loopbackHost, direct appended to
// NO_PROXY when a proxy is set. Nil when environ sets no proxy.
func ProxyEnv(environ []string, loopbackHost string, direct []string) []string {
	vals := map[string]string{}
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if ok && slices.Contains(proxyVars, k) {
			vals[k] = v
		}
	}
	proxied := false
	for _, k := range []string{"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"} {
		if vals[k] != "" {
			vals[k] = rewriteLoopbackProxy(vals[k], loopbackHost)
			proxied = true
		}
	}
	if !proxied {
		return nil
	}
	// Go reads NO_PROXY, else no_proxy: extend those that are set, or
	// NO_PROXY.
	noProxy := []string{"NO_PROXY", "no_proxy"}
	if _, ok := vals["NO_PROXY"]; !ok {
		if _, ok := vals["no_proxy"]; ok {
			noProxy = []string{"no_proxy"}
		} else {
			noProxy = []string{"NO_PROXY"}
		}
	}
	for _, k := range noProxy {
		if _, ok := vals[k]; !ok && k == "no_proxy" {
			continue
		}
		vals[k] = appendNoProxy(vals[k], direct)
	}
	var out []string
	for _, k := range proxyVars {
		if v, ok := vals[k]; ok {
			out = append(out, k+"="+v)
		}
	}
	return out
}

// rewriteLoopbackProxy points a proxy URL (or a bare host:port, which Go
// reads as http://host:port) on the host's loopback at loopbackHost.
func rewriteLoopbackProxy(proxy, loopbackHost string) string {
	bare := !strings.Contains(proxy, "://")
	u, err := url.Parse(proxy)
	if bare {
		u, err = url.Parse("http://" + proxy)
	}
	if err != nil || u.Host == "" || !kubeconfig.IsLoopback(u.Hostname()) {
		return proxy
	}
	if p := u.Port(); p != "" {
		u.Host = loopbackHost + ":" + p
	} else {
		u.Host = loopbackHost
	}
	if bare {
		return strings.TrimPrefix(u.String(), "http://")
	}
	return u.String()
}

func appendNoProxy(list string, hosts []string) string {
	entries := strings.FieldsFunc(list, func(r rune) bool { return r == ',' || r == ' ' })
	for _, h := range hosts {
		if !slices.ContainsFunc(entries, func(e string) bool { return strings.EqualFold(e, h) }) {
			entries = append(entries, h)
		}
	}
	return strings.Join(entries, ",")
}

// CABundlePath is where the daemon container has the user's extra CA
// bundle: Go's crypto/x509 reads every file of /etc/ssl/certs besides the
// image's ca-certificates.crt, so the extra certificates add to the public
// ones instead of replacing them (as SSL_CERT_FILE would).
const CABundlePath = "/etc/ssl/certs/tp-extra-ca.pem"

// readCABundle reads a PEM bundle of CA certificates on the host.
func readCABundle(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("CA bundle: %w; pass a readable PEM file with --ca-bundle (or unset SSL_CERT_FILE)", err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("CA bundle %s holds no PEM certificate: pass a PEM file (-----BEGIN CERTIFICATE-----) with --ca-bundle", path)
	}
	return data, nil
}

// caBundleTar is the tar stream Docker's CopyToContainer takes for
// CABundlePath.
func caBundleTar(data []byte) (*bytes.Buffer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: path.Base(CABundlePath), Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	return &buf, tw.Close()
}

func copyCABundle(ctx context.Context, docker client.APIClient, id string, data []byte) error {
	tarball, err := caBundleTar(data)
	if err != nil {
		return fmt.Errorf("CA bundle: %w", err)
	}
	if err := docker.CopyToContainer(ctx, id, path.Dir(CABundlePath), tarball, container.CopyToContainerOptions{}); err != nil {
		return fmt.Errorf("copy the CA bundle into the daemon container: %w", dockerHint(err))
	}
	return nil
}
