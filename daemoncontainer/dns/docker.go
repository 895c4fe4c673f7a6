package dns

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Docker's embedded DNS server.
//
// A container on a user-defined Docker network (a compose project's) has
// Docker's embedded DNS server at 127.0.0.11: it alone knows the project's
// service names, container names and aliases, and forwards other names to
// the resolvers Docker recorded for the container. The daemon container
// joins the project's networks for `tp compose`, so the containers joined to
// it reach local services by their compose names when the server asks
// Docker's DNS first for the names outside the cluster:
//
//   - the cluster's names never go to Docker (they win for the search list's
//     cluster entries, which a resolver tries first with ndots:5);
//   - Docker's DNS is asked first, the original resolvers if it fails
//     (refused: the daemon container is on no user-defined network; SERVFAIL,
//     REFUSED) or has not answered within dockerStagger, and the first usable
//     answer wins, so no name waits for a dead Docker DNS;
//   - Docker forwards a name it does not know to its recorded resolvers. When
//     the daemon container joined a network while its resolv.conf named this
//     server, Docker 20.10 records this server itself, and forwards the
//     question back with the query's own ID: the server recognises its own
//     question in flight and answers it from the original resolvers, so the
//     question does not go round until its deadline;
//   - answers for single-label names (Docker's own: service and container
//     names) are cached at most dockerTTL: compose recreates containers with
//     new addresses, and a name asked before its container started must not
//     stay NXDOMAIN for minutes.

// DefaultDockerDNS is the address of Docker's embedded DNS server inside a
// container on a user-defined network.
const DefaultDockerDNS = "127.0.0.11:53"

const (
	// dockerStagger is how long a question waits for Docker's DNS before
	// the original resolvers are asked too. Docker answers its own names
	// from memory; a slower answer is one it forwards.
	dockerStagger = 250 * time.Millisecond
	// dockerTTL caps the cache lifetime of answers for single-label names.
	dockerTTL = 5 * time.Second
)

// pendingKey is a question in flight to Docker's DNS.
type pendingKey struct {
	id   uint16
	name string // lower-case FQDN
}

// pending records the questions in flight to Docker's DNS.
type pending struct {
	mu sync.Mutex
	m  map[pendingKey]int
}

func (p *pending) add(k pendingKey) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = make(map[pendingKey]int)
	}
	p.m[k]++
}

func (p *pending) remove(k pendingKey) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m[k]--; p.m[k] <= 0 {
		delete(p.m, k)
	}
}

func (p *pending) has(k pendingKey) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.m[k] > 0
}

// dockerFirst asks Docker's DNS, then the original resolvers. It implements
// Exchanger.
type dockerFirst struct {
	docker   Exchanger
	upstream Exchanger // nil without original resolvers
	stagger  time.Duration
	pending  *pending
}

// Exchange returns the first usable answer: Docker's, or the upstreams' when
// Docker's failed or is late. An answer is usable when it is NOERROR or
// NXDOMAIN.
func (d *dockerFirst) Exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	type result struct {
		m   *dns.Msg
		err error
	}
	results := make(chan result, 2)
	uq := q.Copy() // packing writes into the message: one each
	k := pendingKey{id: q.Id, name: canonicalName(q)}
	d.pending.add(k)
	wg.Go(func() {
		defer d.pending.remove(k)
		m, err := d.docker.Exchange(ctx, q)
		results <- result{m, err}
	})
	pendingN := 1
	upstreamAsked := false
	askUpstream := func() {
		if upstreamAsked || d.upstream == nil {
			return
		}
		upstreamAsked = true
		pendingN++
		wg.Go(func() {
			m, err := d.upstream.Exchange(ctx, uq)
			results <- result{m, err}
		})
	}
	timer := time.NewTimer(d.stagger)
	defer timer.Stop()
	var (
		lastErr  error
		fallback *dns.Msg
	)
	for pendingN > 0 {
		select {
		case r := <-results:
			pendingN--
			switch {
			case r.err != nil:
				lastErr = r.err
			case r.m == nil:
				lastErr = errNoAnswer
			case r.m.Rcode != dns.RcodeSuccess && r.m.Rcode != dns.RcodeNameError:
				fallback = r.m
			default:
				return r.m, nil
			}
			askUpstream()
		case <-timer.C:
			askUpstream()
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if fallback != nil {
		return fallback, nil
	}
	return nil, lastErr
}

// canonicalName is q's name in lower case, as cache keys have it.
func canonicalName(q *dns.Msg) string {
	if len(q.Question) == 0 {
		return ""
	}
	return strings.ToLower(q.Question[0].Name)
}

// singleLabel reports whether name (an FQDN) has one label: Docker's names
// (services, containers, aliases) are such names.
func singleLabel(name string) bool {
	return dns.CountLabel(name) == 1
}
