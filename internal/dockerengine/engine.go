// Package dockerengine finds the Docker engine tp talks to the way the docker
// CLI does, with the CLI's own configuration and context store
// (github.com/docker/cli): tp's --docker-context, else DOCKER_HOST (with
// DOCKER_TLS_VERIFY and DOCKER_CERT_PATH), else DOCKER_CONTEXT, else the
// current context of ~/.docker/config.json (DOCKER_CONFIG), else the default
// socket. An Engine makes API clients for tp's own calls and the environment
// for the docker CLI processes tp runs, so that every Docker call of tp, its
// daemon container, `--docker-run`, the volume plugin and compose, goes to
// that one engine.
package dockerengine

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/cli/cli/command"
	"github.com/docker/cli/cli/connhelper"
	dcontext "github.com/docker/cli/cli/context/docker"
	cliflags "github.com/docker/cli/cli/flags"
	"github.com/docker/docker/client"
	"github.com/docker/go-connections/tlsconfig"
	"github.com/spf13/pflag"
)

// DefaultContext is the docker CLI's context without a store entry: the
// engine of DOCKER_HOST, or the platform's default socket.
const DefaultContext = command.DefaultContextName

// The variables that pick the engine of a docker CLI process.
const (
	EnvHost    = client.EnvOverrideHost     // DOCKER_HOST
	EnvContext = command.EnvOverrideContext // DOCKER_CONTEXT
)

// Options pick the engine.
type Options struct {
	// Context is a docker context name (tp's --docker-context): it wins
	// over DOCKER_HOST, DOCKER_CONTEXT and the configuration's current
	// context, as the docker CLI's --context does.
	Context string
	// ConfigDir is the docker CLI's configuration directory (default:
	// DOCKER_CONFIG, else ~/.docker).
	ConfigDir string
}

// Engine is the resolved Docker engine.
type Engine struct {
	// Context is the docker context that names the engine (DefaultContext
	// when DOCKER_HOST or nothing picked one).
	Context string
	// Host is the engine's endpoint: unix://, tcp://, ssh://, npipe://.
	Host string

	endpoint dcontext.Endpoint
	headers  map[string]string
	options  *cliflags.ClientOptions
}

// Resolve finds the engine as the docker CLI would for the same flags,
// environment and configuration.
func Resolve(o Options) (*Engine, error) {
	opts := cliflags.NewClientOptions()
	// The CLI's own flags give the defaults from the environment
	// (DOCKER_TLS_VERIFY, DOCKER_CERT_PATH, DOCKER_TLS) and the config dir.
	fs := pflag.NewFlagSet("docker", pflag.ContinueOnError)
	opts.InstallFlags(fs)
	if err := fs.Parse(nil); err != nil {
		return nil, err
	}
	opts.SetDefaultOptions(fs)
	opts.Context = o.Context
	if o.ConfigDir != "" {
		opts.ConfigDir = o.ConfigDir
	}
	cli, err := command.NewDockerCli()
	if err != nil {
		return nil, fmt.Errorf("docker CLI configuration: %w", err)
	}
	if err := cli.Initialize(opts); err != nil {
		return nil, fmt.Errorf("docker CLI configuration: %w", err)
	}
	// What the CLI's resolveDockerEndpoint does; the store resolves the
	// default context from DOCKER_HOST and the TLS options.
	name := cli.CurrentContext()
	s := cli.ContextStore()
	meta, err := s.GetMetadata(name)
	if cerrdefs.IsNotFound(err) {
		return nil, fmt.Errorf("docker context %q not found (from %s): pick one of `docker context ls`", name, contextSource(o))
	}
	if err != nil {
		return nil, fmt.Errorf("docker context %q: %w", name, err)
	}
	epMeta, err := dcontext.EndpointFromContext(meta)
	if err != nil {
		return nil, fmt.Errorf("docker context %q: %w", name, err)
	}
	ep, err := dcontext.WithTLSData(s, name, epMeta)
	if err != nil {
		return nil, fmt.Errorf("docker context %q: %w", name, err)
	}
	e := &Engine{Context: name, Host: ep.Host, endpoint: ep, options: opts}
	if cf := cli.ConfigFile(); cf != nil {
		e.headers = cf.HTTPHeaders
	}
	return e, nil
}

// contextSource says where the context name came from, for errors.
func contextSource(o Options) string {
	if o.Context != "" {
		return "--docker-context"
	}
	return EnvContext + " or the current context of the docker CLI configuration (`docker context use`)"
}

// String names the engine for people: its context and endpoint.
func (e *Engine) String() string { return fmt.Sprintf("context %s (%s)", e.Context, e.Host) }

// ClientOptions are the docker CLI's options for this engine, for a
// command.DockerCli (docker compose's) that must talk to it.
func (e *Engine) ClientOptions() *cliflags.ClientOptions {
	o := *e.options
	return &o
}

// Environ is environ (os.Environ()'s form) changed so that a docker CLI
// process started with it talks to this engine: DOCKER_CONTEXT names the
// context, or, for the default context, DOCKER_HOST its host (the TLS
// variables stay as they are: they made that endpoint).
func (e *Engine) Environ(environ []string) []string {
	out := slices.DeleteFunc(slices.Clone(environ), func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		return k == EnvHost || k == EnvContext
	})
	if e.Context == DefaultContext {
		return append(out, EnvHost+"="+e.Host)
	}
	return append(out, EnvContext+"="+e.Context)
}

// Client returns an API client for the engine that negotiates the API
// version, after checking that the engine answers.
func (e *Engine) Client(ctx context.Context) (*client.Client, error) {
	c, err := e.NewClient()
	if err != nil {
		return nil, err
	}
	if _, err := c.Ping(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("docker: %w", e.Hint(err))
	}
	return c, nil
}

// NewClient returns an API client for the engine without contacting it.
func (e *Engine) NewClient() (*client.Client, error) {
	opts, err := e.clientOpts()
	if err != nil {
		return nil, fmt.Errorf("docker client for %s: %w", e, err)
	}
	c, err := client.NewClientWithOpts(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker client for %s: %w", e, err)
	}
	return c, nil
}

// Hint adds what to do when the engine cannot be reached.
func (e *Engine) Hint(err error) error {
	if client.IsErrConnectionFailed(err) {
		return fmt.Errorf("%w: Docker is not running or not reachable at %s; start Docker (Docker Desktop, or dockerd), or pick the engine with --docker-context, %s or %s",
			err, e, EnvContext, EnvHost)
	}
	return err
}

// clientOpts are the endpoint's client options, as the docker CLI's
// Endpoint.ClientOpts makes them for its own (moby) client: a connection
// helper (ssh://) dials for the client, TLS applies to TCP only.
func (e *Engine) clientOpts() ([]client.Opt, error) {
	opts := []client.Opt{client.WithVersionFromEnv(), client.WithAPIVersionNegotiation()}
	if len(e.headers) > 0 {
		opts = append(opts, client.WithHTTPHeaders(e.headers))
	}
	if e.Host == "" {
		return opts, nil
	}
	helper, err := connhelper.GetConnectionHelper(e.Host)
	if err != nil {
		return nil, err
	}
	if helper != nil {
		return append(opts,
			client.WithHTTPClient(&http.Client{Transport: &http.Transport{DialContext: helper.Dialer}}),
			client.WithHost(helper.Host), client.WithDialContext(helper.Dialer)), nil
	}
	if !isSocket(e.Host) {
		cfg, err := tlsConfig(e.endpoint)
		if err != nil {
			return nil, err
		}
		if cfg != nil {
			opts = append(opts, client.WithHTTPClient(&http.Client{
				Transport: &http.Transport{
					TLSClientConfig: cfg,
					DialContext:     (&net.Dialer{KeepAlive: 30 * time.Second, Timeout: 30 * time.Second}).DialContext,
				},
				CheckRedirect: client.CheckRedirect,
			}))
		}
	}
	return append(opts, client.WithHost(e.Host)), nil
}

// isSocket says whether addr is a unix socket, named pipe or file descriptor
// (no TLS there).
func isSocket(addr string) bool {
	proto, _, _ := strings.Cut(addr, "://")
	return proto == "unix" || proto == "npipe" || proto == "fd"
}

// tlsConfig is the endpoint's TLS configuration (nil: none), as the docker
// CLI makes it: the context's (or DOCKER_CERT_PATH's) CA, client key pair
// and skip-verify.
func tlsConfig(ep dcontext.Endpoint) (*tls.Config, error) {
	if ep.TLSData == nil && !ep.SkipTLSVerify {
		return nil, nil
	}
	var tlsOpts []func(*tls.Config)
	if ep.TLSData != nil && ep.TLSData.CA != nil {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(ep.TLSData.CA) {
			return nil, errors.New("TLS: the CA (ca.pem) holds no valid certificate")
		}
		tlsOpts = append(tlsOpts, func(c *tls.Config) { c.RootCAs = pool })
	}
	if ep.TLSData != nil && ep.TLSData.Key != nil && ep.TLSData.Cert != nil {
		if b, _ := pem.Decode(ep.TLSData.Key); b == nil {
			return nil, errors.New("TLS: no valid private key (key.pem)")
		}
		pair, err := tls.X509KeyPair(ep.TLSData.Cert, ep.TLSData.Key)
		if err != nil {
			return nil, fmt.Errorf("TLS client certificate: %w", err)
		}
		tlsOpts = append(tlsOpts, func(c *tls.Config) { c.Certificates = []tls.Certificate{pair} })
	}
	if ep.SkipTLSVerify {
		tlsOpts = append(tlsOpts, func(c *tls.Config) { c.InsecureSkipVerify = true })
	}
	return tlsconfig.ClientDefault(tlsOpts...), nil
}
