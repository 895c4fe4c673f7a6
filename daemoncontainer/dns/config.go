package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Defaults applied by [NewServer] to zero fields of [Config].
const (
	DefaultListenAddr    = "127.0.0.1:53"
	DefaultClusterDomain = "cluster.local."
	DefaultCacheSize     = 4096
	DefaultTimeout       = 2 * time.Second
)

// Exchanger sends one DNS query and returns the answer. The daemon implements
// it over the tunnel to the cluster DNS service. Exchange must return when ctx
// is done (every call carries the server's forward deadline). The query is the
// exchanger's once passed; the answer must not be modified after it is
// returned, since the server caches it and shares its records between replies.
// An exchanger should answer over TCP or retry on truncation: truncated
// answers are relayed with the TC bit and never cached.
type Exchanger interface {
	Exchange(ctx context.Context, m *dns.Msg) (*dns.Msg, error)
}

// ExchangerFunc adapts a function to [Exchanger].
type ExchangerFunc func(ctx context.Context, m *dns.Msg) (*dns.Msg, error)

// Exchange calls f(ctx, m).
func (f ExchangerFunc) Exchange(ctx context.Context, m *dns.Msg) (*dns.Msg, error) {
	return f(ctx, m)
}

// Config configures a [Server].
type Config struct {
	// ListenAddr is the "ip:port" the server listens on, for UDP and TCP.
	// Port 0 picks a free port (the same one for both). Default 127.0.0.1:53.
	ListenAddr string
	// ClusterDomain is the cluster's DNS domain. Default "cluster.local.".
	ClusterDomain string
	// ClusterPrefixes are the cluster's pod and service CIDRs; reverse
	// (in-addr.arpa, ip6.arpa) names of addresses inside them go to Cluster.
	ClusterPrefixes []netip.Prefix
	// Cluster answers the names of the cluster. Required.
	Cluster Exchanger
	// Upstreams are the original resolvers as "ip:port" (see
	// [ResolvConf.Upstreams]). Without upstreams, names outside the cluster
	// are answered SERVFAIL.
	Upstreams []string
	// DockerDNS is the "ip:port" of Docker's embedded DNS server
	// ([DefaultDockerDNS]); names outside the cluster are asked there first
	// (see docker.go): a container joined to the daemon container then
	// reaches the services of the compose projects the daemon container has
	// joined by their names. Empty: Docker's DNS is not asked.
	DockerDNS string
	// SearchDomains are the original search domains (see [ResolvConf]).
	// "<x>.<ClusterDomain>.<search domain>" is answered NXDOMAIN locally.
	SearchDomains []string
	// Logger receives forward failures (rate limited) and per-query debug
	// records. Default: discard.
	Logger *slog.Logger
	// CacheSize bounds the number of cached answers. 0 means
	// DefaultCacheSize; a negative value disables the cache.
	CacheSize int
	// Timeout bounds every forward to the cluster or upstream; when it
	// expires the client gets SERVFAIL. Default 2s.
	Timeout time.Duration
}

// config is a validated, normalized Config.
type config struct {
	listen        netip.AddrPort
	clusterDomain string // lower-case FQDN
	prefixes      []netip.Prefix
	cluster       Exchanger
	upstreams     []string
	docker        string   // "" without Docker's DNS
	search        []string // lower-case FQDNs, outside the cluster domain
	logger        *slog.Logger
	cacheSize     int
	timeout       time.Duration
}

// ErrInvalidConfig is wrapped by every error NewServer returns for a bad Config.
var ErrInvalidConfig = errors.New("invalid DNS server config")

func (c Config) validate() (config, error) {
	var out config
	invalid := func(format string, args ...any) (config, error) {
		return config{}, fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
	}

	listen := c.ListenAddr
	if listen == "" {
		listen = DefaultListenAddr
	}
	ap, err := netip.ParseAddrPort(listen)
	if err != nil {
		return invalid("ListenAddr %q is not an ip:port: %v", listen, err)
	}
	out.listen = ap

	domain := c.ClusterDomain
	if domain == "" {
		domain = DefaultClusterDomain
	}
	domain = strings.ToLower(dns.Fqdn(domain))
	if _, ok := dns.IsDomainName(domain); !ok || domain == "." {
		return invalid("ClusterDomain %q is not a domain name", c.ClusterDomain)
	}
	out.clusterDomain = domain

	for _, p := range c.ClusterPrefixes {
		if !p.IsValid() {
			return invalid("ClusterPrefixes contains an invalid prefix %v", p)
		}
		out.prefixes = append(out.prefixes, p.Masked())
	}

	if c.Cluster == nil {
		return invalid("Cluster exchanger is required")
	}
	out.cluster = c.Cluster

	for _, u := range c.Upstreams {
		ap, err := netip.ParseAddrPort(u)
		if err != nil {
			return invalid("upstream %q is not an ip:port: %v", u, err)
		}
		if loops(out.listen, ap) {
			return invalid("upstream %s is this server's own address; it would forward to itself (pass the resolvers of the original resolv.conf)", u)
		}
		out.upstreams = append(out.upstreams, ap.String())
	}

	if c.DockerDNS != "" {
		ap, err := netip.ParseAddrPort(c.DockerDNS)
		if err != nil {
			return invalid("DockerDNS %q is not an ip:port: %v", c.DockerDNS, err)
		}
		if loops(out.listen, ap) {
			return invalid("DockerDNS %s is this server's own address; it would forward to itself", c.DockerDNS)
		}
		out.docker = ap.String()
		// A resolv.conf read after Docker rewrote it names Docker's DNS:
		// it is asked first anyway, and as an upstream its forwards back
		// to this server would go round.
		out.upstreams = slices.DeleteFunc(out.upstreams, func(u string) bool { return u == out.docker })
	}

	for _, s := range c.SearchDomains {
		s = strings.ToLower(dns.Fqdn(s))
		if _, ok := dns.IsDomainName(s); !ok || s == "." {
			return invalid("search domain %q is not a domain name", s)
		}
		if inZone(s, out.clusterDomain) {
			continue // the cluster answers these itself
		}
		out.search = append(out.search, s)
	}

	out.logger = c.Logger
	if out.logger == nil {
		out.logger = slog.New(slog.DiscardHandler)
	}

	switch {
	case c.CacheSize == 0:
		out.cacheSize = DefaultCacheSize
	case c.CacheSize > 0:
		out.cacheSize = c.CacheSize
	}

	switch {
	case c.Timeout == 0:
		out.timeout = DefaultTimeout
	case c.Timeout < 0:
		return invalid("Timeout %v is negative", c.Timeout)
	default:
		out.timeout = c.Timeout
	}
	return out, nil
}

// loops reports whether forwarding to upstream would reach a server
// listening on listen.
func loops(listen, upstream netip.AddrPort) bool {
	if listen.Port() == 0 || upstream.Port() != listen.Port() {
		return false
	}
	l, u := listen.Addr().Unmap(), upstream.Addr().Unmap()
	return l == u || (l.IsUnspecified() && (u.IsLoopback() || u.IsUnspecified()))
}
