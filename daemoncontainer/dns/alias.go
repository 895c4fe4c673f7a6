package dns

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

// aliasTTL is the TTL of an alias's CNAME: short, since an alias goes
// away with its compose project.
const aliasTTL = 5

var (
	// ErrInvalidAlias is wrapped by SetAliases' errors for a name that is not
	// a DNS label or a target outside the cluster domain.
	ErrInvalidAlias = errors.New("invalid DNS alias")
	// ErrAliasTaken is wrapped by SetAliases' errors for a name another
	// owner holds.
	ErrAliasTaken = errors.New("DNS alias held by another owner")
)

// aliases are the names the server answers as a CNAME to a cluster name.
// They live in memory only: a restarted server has none.
type aliases struct {
	mu      sync.Mutex
	byOwner map[string]map[string]string // owner -> label -> target FQDN
}

// IsLabel reports whether s is a DNS label as Kubernetes and Docker names
// use them (RFC 1123): 1 to 63 lower-case letters, digits and '-', not
// starting or ending with '-'.
func IsLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// SetAliases replaces the aliases of owner: each name, a DNS label,
// answers (bare, and with any search domain of the joined containers:
// the original ones, the cluster domain, svc.<cluster domain> and the
// target's <namespace>.svc.<cluster domain>) as a CNAME to its target, an
// FQDN in the cluster domain, followed by the target's records. An alias
// shadows a cluster service of the same name in those expansions. An empty
// map removes owner's aliases. Names another owner holds are refused with
// ErrAliasTaken, bad names with ErrInvalidAlias; then nothing changes.
func (s *Server) SetAliases(owner string, set map[string]string) error {
	if owner == "" {
		return fmt.Errorf("%w: empty owner", ErrInvalidAlias)
	}
	clean := make(map[string]string, len(set))
	for _, name := range slices.Sorted(maps.Keys(set)) {
		target := strings.ToLower(dns.Fqdn(set[name]))
		if !IsLabel(name) {
			return fmt.Errorf("%w: %q is not a DNS label (lower-case letters, digits and '-', at most 63)", ErrInvalidAlias, name)
		}
		if _, ok := dns.IsDomainName(target); !ok || !inZone(target, s.cfg.clusterDomain) || target == s.cfg.clusterDomain {
			return fmt.Errorf("%w: %s: target %q is not a name in the cluster domain %s", ErrInvalidAlias, name, set[name], s.cfg.clusterDomain)
		}
		clean[name] = target
	}
	a := &s.aliases
	a.mu.Lock()
	defer a.mu.Unlock()
	for other, names := range a.byOwner {
		if other == owner {
			continue
		}
		for name := range clean {
			if _, ok := names[name]; ok {
				return fmt.Errorf("%w: %s is an alias of %s already; take it down first", ErrAliasTaken, name, other)
			}
		}
	}
	if a.byOwner == nil {
		a.byOwner = map[string]map[string]string{}
	}
	if len(clean) == 0 {
		delete(a.byOwner, owner)
	} else {
		a.byOwner[owner] = clean
	}
	table := map[string]string{}
	for _, names := range a.byOwner {
		maps.Copy(table, names)
	}
	s.aliasTable.Store(&table)
	return nil
}

// Aliases returns the aliases of every owner: owner -> name -> target.
func (s *Server) Aliases() map[string]map[string]string {
	a := &s.aliases
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]map[string]string, len(a.byOwner))
	for o, names := range a.byOwner {
		out[o] = maps.Clone(names)
	}
	return out
}

// aliasTarget returns the target of name (a lower-case FQDN) when it is
// an alias, bare or with one of the search domains.
func (s *Server) aliasTarget(name string) (string, bool) {
	tp := s.aliasTable.Load()
	if tp == nil || len(*tp) == 0 {
		return "", false
	}
	label, rest, ok := strings.Cut(name, ".")
	if !ok {
		return "", false
	}
	target, ok := (*tp)[label]
	if !ok {
		return "", false
	}
	if rest == "" { // the bare name
		return target, true
	}
	domain := s.cfg.clusterDomain
	_, ns, _ := strings.Cut(target, ".") // <namespace>.svc.<domain>
	if rest == domain || rest == "svc."+domain || rest == ns || slices.Contains(s.cfg.search, rest) {
		return target, true
	}
	return "", false
}

// answerAlias answers a question for an alias: the CNAME, then the
// target's answer from the cluster (cached like any other).
func (s *Server) answerAlias(w dns.ResponseWriter, req *dns.Msg, key cacheKey, target string) {
	s.stats.aliased.Add(1)
	q := req.Question[0]
	cname := &dns.CNAME{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeCNAME, Class: q.Qclass, Ttl: aliasTTL}, Target: target}
	if key.qtype == dns.TypeCNAME {
		resp := new(dns.Msg)
		resp.SetReply(req)
		resp.RecursionAvailable = true
		resp.Answer = []dns.RR{cname}
		s.write(w, req, resp)
		return
	}
	tkey := key
	tkey.name = target
	now := s.now()
	a, fresh := s.cache.get(tkey, now)
	stale := false
	if fresh {
		s.stats.cacheHits.Add(1)
	} else {
		got, shared, err := s.flight.do(tkey, func() (*answer, error) {
			s.stats.clusterForwards.Add(1)
			return s.resolve(tkey, s.cfg.cluster)
		})
		if shared {
			s.stats.coalesced.Add(1)
		}
		switch {
		case err == nil:
			a, now = got, s.now()
		case a != nil:
			s.stats.failures.Add(1)
			s.stats.stale.Add(1)
			stale = true
			s.logFailure(routeCluster, tkey, err)
		default:
			s.stats.failures.Add(1)
			s.logFailure(routeCluster, tkey, err)
			s.writeRcode(w, req, dns.RcodeServerFailure)
			return
		}
	}
	resp := s.reply(req, a, now, stale)
	resp.AuthenticatedData = false // the CNAME is ours
	resp.Answer = append([]dns.RR{cname}, resp.Answer...)
	s.write(w, req, resp)
}
