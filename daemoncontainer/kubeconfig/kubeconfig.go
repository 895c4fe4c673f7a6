// Package kubeconfig writes the kubeconfig that `tp connect` hands to the
// daemon container.
//
// The user's kubeconfig is written for the host: it names files on the host
// (certificates, keys, token files), may point at an API server on the host's
// loopback (kind, minikube, k3d, `kubectl proxy`) and may authenticate with
// exec plugins that only exist on the host. [ForContainer] turns it into a
// self-contained kubeconfig for one context that works inside the container:
//
//   - minified: only the chosen context, its cluster and its user;
//   - flattened: certificate-authority, client-certificate, client-key and
//     token files are read on the host and embedded (a token file becomes a
//     static token, so a token file that the host rotates is not followed);
//   - loopback servers (127.0.0.0/8, ::1, localhost, 0.0.0.0, ::, and names
//     the host resolves to loopback only, [Options.LookupHost]) rewritten:
//     to the node container that publishes the port when
//     [Options.PublishedBy] knows one (kind, k3d, minikube on macOS and
//     Windows; the caller joins the daemon container to
//     [Result.Networks]), otherwise to [Options.LoopbackHost]
//     (host.docker.internal, which the daemon container gets as ExtraHosts
//     host.docker.internal:host-gateway on Linux and Docker Desktop
//     provides), on the port [Options.ForwardLoopback] says (a forwarder
//     on the host for a server bound to the host's 127.0.0.1 only). A
//     loopback name whose port needs no forwarder is kept and resolved to
//     the host instead ([Result.ExtraHosts]), unless the engine resolves it
//     itself ([Options.EngineHosts]: Docker Desktop's
//     kubernetes.docker.internal). A loopback proxy-url is rewritten to
//     LoopbackHost too;
//   - a server IP that a container on a Docker network has (minikube's
//     docker driver on Linux) kept, and that network joined
//     ([Options.NetworkOf]);
//   - TLS still verified against the original name: when a https server is
//     rewritten and the cluster sets neither tls-server-name nor
//     insecure-skip-tls-verify, tls-server-name is set to the original host
//     (e.g. 127.0.0.1 or localhost). The API server's certificate was valid
//     for that name on the host, and API server certificates carry the
//     loopback SANs, whereas they rarely carry host.docker.internal or a
//     docker network address;
//   - exec credential plugins relayed to the host (package
//     [github.com/tp-run/tp/daemoncontainer/kubeauth]) when
//     [Options.Kubeauth] is set; legacy auth-provider users are refused with
//     what to do.
//
// On Linux, host.docker.internal is the docker bridge gateway: a server that
// listens only on the host's 127.0.0.1 is not reachable there, which is what
// ForwardLoopback is for.
package kubeconfig

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/tp-run/tp/daemoncontainer/kubeauth"
)

// DefaultLoopbackHost is the host name under which the daemon container
// reaches the docker host.
const DefaultLoopbackHost = "host.docker.internal"

// DefaultKubeauthBinary is the path of tp in the daemon container image.
const DefaultKubeauthBinary = "/tp"

// Errors of ForContainer, for errors.Is.
var (
	// ErrContext: the context does not exist or names a cluster or user
	// that does not exist.
	ErrContext = errors.New("kubeconfig context unusable")
	// ErrAuthProvider: the user authenticates with a legacy auth-provider.
	ErrAuthProvider = errors.New("auth-provider is not supported in the daemon container")
	// ErrExecPlugin: the user's exec plugin cannot be relayed.
	ErrExecPlugin = errors.New("exec credential plugin cannot be relayed")
)

// Options is what the host knows about reaching the cluster from the daemon
// container.
type Options struct {
	// LoopbackHost replaces a loopback API server host (127.0.0.1,
	// localhost, ::1, 0.0.0.0) that no container publishes. Default
	// [DefaultLoopbackHost].
	LoopbackHost string
	// PublishedBy, when non-nil, is asked whether a local container
	// publishes the host port of a loopback server (kind, minikube, k3d
	// node containers); if so it returns that container's network, IP and
	// container port, and the server is rewritten to it (the caller joins
	// the daemon container to that network, see [Result.Networks]).
	PublishedBy func(hostPort int) (network string, ip string, containerPort int, ok bool)
	// Kubeauth, when non-nil, describes the host relay for exec credential
	// plugins. Without it, a user with an exec plugin is an error.
	Kubeauth *KubeauthRelay
	// ForwardLoopback, when non-nil, is asked for a loopback server (host
	// as the kubeconfig names it) that no container publishes which port of LoopbackHost reaches it: its own
	// port when the server also listens where LoopbackHost leads (the
	// docker bridge's gateway on Linux), else the port of a forwarder the
	// caller started there (a server bound to the host's 127.0.0.1 only,
	// Rancher Desktop's and `kubectl proxy`'s). Nil: the server's port.
	ForwardLoopback func(host string, hostPort int) (int, error)
	// NetworkOf, when non-nil, is asked for a server IP that is not
	// loopback whether a container on a local Docker network has it
	// (minikube's docker driver on Linux writes its node container's
	// address, 192.168.49.2); the server is kept and the caller joins the
	// daemon container to that network ([Result.Networks]).
	NetworkOf func(ip string) (network string, ok bool)
	// LookupHost, when non-nil, resolves a server's host name on the host:
	// a name that resolves to loopback addresses only
	// (kubernetes.docker.internal in the /etc/hosts Docker Desktop
	// writes) is a loopback server, which the container resolves to the
	// host ([Result.ExtraHosts]) or is rewritten like 127.0.0.1.
	LookupHost func(host string) ([]string, error)
	// EngineHosts are names the Docker engine itself resolves in every
	// container (Docker Desktop: [DockerDesktopHosts]): servers with those
	// names are kept as they are.
	EngineHosts []string
}

// DockerDesktopHosts are the names Docker Desktop resolves in containers:
// its Kubernetes' API server (kubernetes.docker.internal, the server of
// its kubeconfig) and the host.
var DockerDesktopHosts = []string{"kubernetes.docker.internal", "host.docker.internal", "gateway.docker.internal"}

// HostGateway is Docker's ExtraHosts value for the host's address as the
// container reaches it.
const HostGateway = "host-gateway"

// KubeauthRelay describes the host's [kubeauth.Server] as the container
// reaches it.
type KubeauthRelay struct {
	// URL of the relay as reachable from the container, e.g.
	// http://host.docker.internal:41234.
	URL string
	// Secret the relay accepts.
	Secret string
	// Binary is the path of tp inside the container. Default
	// [DefaultKubeauthBinary].
	Binary string
}

// Result is the container's kubeconfig and what the caller must do for it.
type Result struct {
	// Config is the kubeconfig YAML for the container.
	Config []byte
	// Networks are the docker networks the daemon container must join to
	// reach the rewritten servers.
	Networks []string
	// ExtraHosts are the "name:address" entries (docker run --add-host)
	// the daemon container needs to resolve the servers it keeps, e.g.
	// kubernetes.docker.internal:host-gateway.
	ExtraHosts []string
	// Direct are the servers' hosts that stand for the host's loopback or
	// a local container: the user's HTTP(S)_PROXY must not be used for
	// them (it never is for loopback on the host), so the caller adds them
	// to the container's NO_PROXY.
	Direct []string
	// Rewrites are human-readable notes of what was changed, for logs.
	Rewrites []string
	// ExecUsers are the users whose exec plugin is relayed: the caller
	// serves raw.AuthInfos[u].Exec for each with a [kubeauth.Server].
	ExecUsers []string
}

// ForContainer minifies raw to contextName (raw.CurrentContext when empty),
// flattens it and rewrites it for the daemon container as the package
// documentation describes. raw is not modified; it should come from
// clientcmd's loading rules, so that relative file paths resolve against
// the kubeconfig file that named them (LocationOfOrigin).
func ForContainer(raw clientcmdapi.Config, contextName string, opts Options) (*Result, error) {
	if opts.LoopbackHost == "" {
		opts.LoopbackHost = DefaultLoopbackHost
	}
	cfg := raw.DeepCopy()
	if contextName == "" {
		contextName = cfg.CurrentContext
	}
	kctx, err := lookupContext(cfg, contextName)
	if err != nil {
		return nil, err
	}
	cfg.CurrentContext = contextName
	if err := clientcmdapi.MinifyConfig(cfg); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrContext, err)
	}

	res := &Result{}
	if kctx.Cluster != "" {
		if err := res.cluster(kctx.Cluster, cfg.Clusters[kctx.Cluster], opts); err != nil {
			return nil, fmt.Errorf("cluster %q: %w", kctx.Cluster, err)
		}
	}
	if kctx.AuthInfo != "" {
		if err := res.user(kctx.AuthInfo, cfg.AuthInfos[kctx.AuthInfo], opts); err != nil {
			return nil, fmt.Errorf("user %q: %w", kctx.AuthInfo, err)
		}
	}
	res.Config, err = clientcmd.Write(*cfg)
	if err != nil {
		return nil, fmt.Errorf("writing the kubeconfig for the daemon container: %w", err)
	}
	return res, nil
}

func lookupContext(cfg *clientcmdapi.Config, name string) (*clientcmdapi.Context, error) {
	available := func() string {
		names := slices.Sorted(maps.Keys(cfg.Contexts))
		if len(names) == 0 {
			return "the kubeconfig has no contexts"
		}
		return "available contexts: " + strings.Join(names, ", ")
	}
	if name == "" {
		return nil, fmt.Errorf("%w: no context given and the kubeconfig has no current-context; pass --context (%s)", ErrContext, available())
	}
	kctx, ok := cfg.Contexts[name]
	if !ok {
		return nil, fmt.Errorf("%w: context %q not found in the kubeconfig (%s)", ErrContext, name, available())
	}
	if kctx.Cluster == "" {
		return nil, fmt.Errorf("%w: context %q names no cluster (%s)", ErrContext, name, available())
	}
	if _, ok := cfg.Clusters[kctx.Cluster]; !ok {
		return nil, fmt.Errorf("%w: context %q refers to cluster %q, which is not in the kubeconfig (%s)", ErrContext, name, kctx.Cluster, available())
	}
	if _, ok := cfg.AuthInfos[kctx.AuthInfo]; kctx.AuthInfo != "" && !ok {
		return nil, fmt.Errorf("%w: context %q refers to user %q, which is not in the kubeconfig (%s)", ErrContext, name, kctx.AuthInfo, available())
	}
	return kctx, nil
}

func (res *Result) cluster(name string, c *clientcmdapi.Cluster, opts Options) error {
	if err := embed(&c.CertificateAuthority, &c.CertificateAuthorityData, c.LocationOfOrigin, "certificate-authority"); err != nil {
		return err
	}
	if c.Server != "" {
		if err := res.server(name, c, opts); err != nil {
			return err
		}
	}
	if c.ProxyURL != "" {
		u, err := url.Parse(c.ProxyURL)
		if err != nil {
			return fmt.Errorf("parsing proxy-url %q: %w", c.ProxyURL, err)
		}
		if isLoopback(u.Hostname()) {
			old := c.ProxyURL
			u.Host = joinHostPort(opts.LoopbackHost, u.Port())
			c.ProxyURL = u.String()
			res.note("cluster %q: proxy-url %s -> %s", name, old, c.ProxyURL)
		}
	}
	return nil
}

// server rewrites c.Server for the container when the container would not
// reach it as written: a loopback address or name, or the address of a
// container on a Docker network the daemon container is not on.
func (res *Result) server(name string, c *clientcmdapi.Cluster, opts Options) error {
	// client-go accepts a server without a scheme ("127.0.0.1:6443"): what
	// does not parse as a URL with a scheme and a host is host:port to it
	// (rest.DefaultServerURL), even with a "://" further on.
	u, err := url.Parse(c.Server)
	hasScheme := err == nil && u.Scheme != "" && u.Host != ""
	if !hasScheme {
		u, err = url.Parse("https://" + c.Server)
	}
	if err != nil {
		return fmt.Errorf("parsing server %q: %w", c.Server, err)
	}
	origHost := u.Hostname()
	port := u.Port()
	if port == "" {
		port = "443"
		if u.Scheme == "http" {
			port = "80"
		}
	}
	loopbackName := false // a name other than localhost that means the host
	switch {
	case isLoopback(origHost):
	case slices.ContainsFunc(opts.EngineHosts, func(h string) bool { return strings.EqualFold(h, strings.TrimSuffix(origHost, ".")) }):
		return nil
	case net.ParseIP(origHost) != nil:
		if opts.NetworkOf != nil {
			if network, ok := opts.NetworkOf(origHost); ok {
				res.join(network)
				res.direct(origHost)
				res.note("cluster %q: server %s is a container on network %q, which the daemon container joins", name, c.Server, network)
			}
		}
		return nil
	case opts.LookupHost != nil && resolvesToLoopback(opts.LookupHost, origHost):
		loopbackName = true
	default:
		return nil
	}

	host, how := opts.LoopbackHost, ""
	hostPort, err := strconv.Atoi(port)
	if err != nil {
		return fmt.Errorf("parsing the port of server %q: %w", c.Server, err)
	}
	published := false
	if opts.PublishedBy != nil {
		if network, ip, containerPort, ok := opts.PublishedBy(hostPort); ok {
			host, port, published = ip, strconv.Itoa(containerPort), true
			how = fmt.Sprintf(" (published by a container on network %q)", network)
			res.join(network)
		}
	}
	if !published && opts.ForwardLoopback != nil {
		fwd, err := opts.ForwardLoopback(origHost, hostPort)
		if err != nil {
			return fmt.Errorf("reaching the loopback server %s from the daemon container: %w", c.Server, err)
		}
		if fwd != hostPort {
			port = strconv.Itoa(fwd)
			how = fmt.Sprintf(" (a forwarder on the host to %s, which listens on the host's loopback only)", joinHostPort(origHost, u.Port()))
		}
	}
	if loopbackName && !published && port == strconv.Itoa(hostPort) {
		// The name stays (and with it what TLS verifies): the container
		// resolves it to the host.
		gw := HostGateway
		if opts.LoopbackHost != DefaultLoopbackHost {
			gw = opts.LoopbackHost
		}
		entry := strings.TrimSuffix(origHost, ".") + ":" + gw
		res.direct(strings.TrimSuffix(origHost, "."))
		if !slices.Contains(res.ExtraHosts, entry) {
			res.ExtraHosts = append(res.ExtraHosts, entry)
			res.note("cluster %q: %s resolves to the host's loopback: the daemon container resolves it to %s", name, origHost, gw)
		}
		return nil
	}
	u.Host = joinHostPort(host, port)
	res.direct(host)
	if u.Host == joinHostPort(origHost, port) {
		return nil
	}
	old := c.Server
	c.Server = u.String()
	if !hasScheme {
		c.Server = strings.TrimPrefix(c.Server, "https://")
	}
	res.note("cluster %q: server %s -> %s%s", name, old, c.Server, how)

	if u.Scheme == "https" && c.TLSServerName == "" && !c.InsecureSkipTLSVerify {
		c.TLSServerName = origHost
		res.note("cluster %q: tls-server-name %s (the name the certificate was verified against on the host)", name, origHost)
	}
	return nil
}

func (res *Result) direct(host string) {
	if !slices.Contains(res.Direct, host) {
		res.Direct = append(res.Direct, host)
	}
}

func (res *Result) join(network string) {
	if !slices.Contains(res.Networks, network) {
		res.Networks = append(res.Networks, network)
	}
}

// resolvesToLoopback says whether host resolves, on the host, to loopback
// addresses only.
func resolvesToLoopback(lookup func(string) ([]string, error), host string) bool {
	addrs, err := lookup(host)
	if err != nil || len(addrs) == 0 {
		return false
	}
	for _, a := range addrs {
		if !isLoopback(a) {
			return false
		}
	}
	return true
}

func (res *Result) user(name string, u *clientcmdapi.AuthInfo, opts Options) error {
	if u.AuthProvider != nil {
		return fmt.Errorf("%w: the user authenticates with the legacy auth-provider %q, which client-go no longer runs; "+
			"switch the kubeconfig to its exec credential plugin (gcp: install gke-gcloud-auth-plugin and run "+
			"`gcloud container clusters get-credentials`; azure: `kubelogin convert-kubeconfig`; oidc: kubelogin/oidc-login "+
			"as an exec plugin) and connect again", ErrAuthProvider, u.AuthProvider.Name)
	}
	if err := embed(&u.ClientCertificate, &u.ClientCertificateData, u.LocationOfOrigin, "client-certificate"); err != nil {
		return err
	}
	if err := embed(&u.ClientKey, &u.ClientKeyData, u.LocationOfOrigin, "client-key"); err != nil {
		return err
	}
	if u.TokenFile != "" {
		if u.Token == "" {
			path := clientcmdapi.ResolvePath(u.TokenFile, baseDir(u.LocationOfOrigin))
			data, err := os.ReadFile(path)
			if err != nil {
				return fmt.Errorf("embedding tokenFile: %w", err)
			}
			u.Token = strings.TrimSpace(string(data))
			res.note("user %q: tokenFile %s embedded as a static token (a rotation on the host is not followed)", name, path)
		}
		u.TokenFile = ""
	}
	if u.Exec != nil {
		if opts.Kubeauth == nil {
			return fmt.Errorf("%w: the user authenticates with the exec plugin %q, which must run on the host, and no kubeauth relay was given",
				ErrExecPlugin, u.Exec.Command)
		}
		if opts.Kubeauth.URL == "" || opts.Kubeauth.Secret == "" {
			return fmt.Errorf("%w: the kubeauth relay for the exec plugin %q needs a URL and a secret", ErrExecPlugin, u.Exec.Command)
		}
		if err := kubeauth.CheckAPIVersion(u.Exec.APIVersion); err != nil {
			return fmt.Errorf("%w: %w", ErrExecPlugin, err)
		}
		binary := opts.Kubeauth.Binary
		if binary == "" {
			binary = DefaultKubeauthBinary
		}
		orig := u.Exec.Command
		u.Exec = kubeauth.PluginExecConfig(binary, opts.Kubeauth.URL, name, opts.Kubeauth.Secret, u.Exec)
		res.ExecUsers = append(res.ExecUsers, name)
		res.note("user %q: exec plugin %s relayed to the host through %s", name, orig, opts.Kubeauth.URL)
	}
	return nil
}

// embed replaces a file reference by its contents. Like client-go, data that
// is already inline wins over the file.
func embed(path *string, data *[]byte, origin, field string) error {
	if *path == "" {
		return nil
	}
	if len(*data) == 0 {
		file := clientcmdapi.ResolvePath(*path, baseDir(origin))
		content, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("embedding %s: %w", field, err)
		}
		*data = content
	}
	*path = ""
	return nil
}

// baseDir is the directory relative paths of a kubeconfig entry resolve
// against: that of the file that defined it, else the working directory.
func baseDir(origin string) string {
	if origin == "" {
		return ""
	}
	dir, err := clientcmdapi.MakeAbs(filepath.Dir(origin), "")
	if err != nil {
		return filepath.Dir(origin)
	}
	return dir
}

// IsLoopback reports whether host names the host itself: a loopback or
// unspecified address, or localhost.
func IsLoopback(host string) bool { return isLoopback(host) }

func isLoopback(host string) bool {
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	if i := strings.IndexByte(h, '%'); i >= 0 { // fe80::1%lo0 style zone
		h = h[:i]
	}
	ip := net.ParseIP(h)
	return ip != nil && (ip.IsLoopback() || ip.IsUnspecified())
}

func joinHostPort(host, port string) string {
	if port == "" {
		if strings.Contains(host, ":") {
			return "[" + host + "]"
		}
		return host
	}
	return net.JoinHostPort(host, port)
}

func (res *Result) note(format string, args ...any) {
	res.Rewrites = append(res.Rewrites, fmt.Sprintf(format, args...))
}
