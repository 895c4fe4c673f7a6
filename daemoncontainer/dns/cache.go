package dns

import (
	"hash/maphash"
	"sync"
	"time"

	"github.com/miekg/dns"
)

const (
	// maxTTL caps how long a positive answer is cached.
	maxTTL = time.Hour
	// maxNegativeTTL caps how long a negative answer is cached (RFC 2308
	// suggests 1-3 hours; a developer creates services while working).
	maxNegativeTTL = 5 * time.Minute
	// staleWindow is how long after expiry an answer may still be served
	// when the forward for it fails (RFC 8767).
	staleWindow = 10 * time.Minute
	// staleTTL is the TTL of a stale answer (RFC 8767 recommends 30 s).
	staleTTL = 30
	// cacheShards spreads lock contention in caches of at least
	// shardedCacheSize answers; a power of two.
	cacheShards      = 16
	shardedCacheSize = 1024
)

// cacheKey identifies a question. The DO and CD bits change the answer, the
// ID and the case of the name do not.
type cacheKey struct {
	name   string // lower-case FQDN
	qtype  uint16
	qclass uint16
	do, cd bool
}

// answer is a response from the cluster or an upstream, normalized (no OPT
// record) and read-only once created: replies copy what they change.
type answer struct {
	msg     *dns.Msg
	at      time.Time // when it was received
	expires time.Time // at plus its cache TTL
}

// cacheTTL returns how long m may be cached: the smallest TTL of its records
// for a positive answer, the SOA's min(TTL, MINIMUM) for a negative one (RFC
// 2308). Truncated, failed and SOA-less negative answers are not cached.
func cacheTTL(m *dns.Msg) (time.Duration, bool) {
	if m.Truncated {
		return 0, false
	}
	switch {
	case m.Rcode == dns.RcodeSuccess && len(m.Answer) > 0:
		ttl := ^uint32(0)
		for _, section := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
			for _, rr := range section {
				if h := rr.Header(); h.Rrtype != dns.TypeOPT {
					ttl = min(ttl, h.Ttl)
				}
			}
		}
		return min(time.Duration(ttl)*time.Second, maxTTL), ttl > 0
	case m.Rcode == dns.RcodeSuccess || m.Rcode == dns.RcodeNameError:
		for _, rr := range m.Ns {
			if soa, ok := rr.(*dns.SOA); ok {
				ttl := min(soa.Hdr.Ttl, soa.Minttl)
				return min(time.Duration(ttl)*time.Second, maxNegativeTTL), ttl > 0
			}
		}
	}
	return 0, false
}

// cache is a bounded, sharded LRU of answers. A nil *cache caches nothing.
type cache struct {
	seed   maphash.Seed
	shards []cacheShard
}

type cacheShard struct {
	mu    sync.Mutex
	items map[cacheKey]*cacheNode
	lru   cacheNode // sentinel: lru.next is the most recently used
	limit int
}

type cacheNode struct {
	key        cacheKey
	ans        *answer
	prev, next *cacheNode
}

func newCache(size int) *cache {
	if size <= 0 {
		return nil
	}
	shards := 1
	if size >= shardedCacheSize {
		shards = cacheShards
	}
	c := &cache{seed: maphash.MakeSeed(), shards: make([]cacheShard, shards)}
	per := (size + shards - 1) / shards
	for i := range c.shards {
		sh := &c.shards[i]
		sh.items = make(map[cacheKey]*cacheNode)
		sh.lru.next, sh.lru.prev = &sh.lru, &sh.lru
		sh.limit = per
	}
	return c
}

func (c *cache) shard(k cacheKey) *cacheShard {
	if len(c.shards) == 1 {
		return &c.shards[0]
	}
	h := maphash.String(c.seed, k.name) ^ uint64(k.qtype)
	return &c.shards[h%uint64(len(c.shards))]
}

// get returns the answer for k. fresh is false for an answer past its expiry
// but within the stale window; such answers are only for when a forward fails.
func (c *cache) get(k cacheKey, now time.Time) (a *answer, fresh bool) {
	if c == nil {
		return nil, false
	}
	sh := c.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	n := sh.items[k]
	switch {
	case n == nil:
		return nil, false
	case now.Before(n.ans.expires):
		sh.unlink(n)
		sh.pushFront(n)
		return n.ans, true
	case now.Before(n.ans.expires.Add(staleWindow)):
		return n.ans, false
	default:
		sh.unlink(n)
		delete(sh.items, k)
		return nil, false
	}
}

// put stores a under k, evicting the least recently used answer when full.
func (c *cache) put(k cacheKey, a *answer) {
	if c == nil {
		return
	}
	sh := c.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if n := sh.items[k]; n != nil {
		n.ans = a
		sh.unlink(n)
		sh.pushFront(n)
		return
	}
	if len(sh.items) >= sh.limit {
		oldest := sh.lru.prev
		sh.unlink(oldest)
		delete(sh.items, oldest.key)
	}
	n := &cacheNode{key: k, ans: a}
	sh.items[k] = n
	sh.pushFront(n)
}

// len returns the number of cached answers, stale ones included.
func (c *cache) len() int {
	if c == nil {
		return 0
	}
	total := 0
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		total += len(sh.items)
		sh.mu.Unlock()
	}
	return total
}

func (sh *cacheShard) unlink(n *cacheNode) {
	n.prev.next, n.next.prev = n.next, n.prev
	n.prev, n.next = nil, nil
}

func (sh *cacheShard) pushFront(n *cacheNode) {
	n.prev, n.next = &sh.lru, sh.lru.next
	sh.lru.next.prev = n
	sh.lru.next = n
}
