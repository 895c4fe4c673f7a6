package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sync/errgroup"
)

const (
	// tcpReadTimeout bounds the wait for a query on a new TCP connection,
	// tcpIdleTimeout the wait for the next one.
	tcpReadTimeout = 2 * time.Second
	tcpIdleTimeout = 8 * time.Second
	// warnEvery rate-limits warnings about failed forwards.
	warnEvery = 10 * time.Second
)

var (
	errServerFailure   = errors.New("server failure (SERVFAIL)")
	errWrongQuestion   = errors.New("answer does not match the question")
	errMalformedAnswer = errors.New("answer cannot be relayed: a client could not parse it")
)

// Server is the DNS server of the daemon container. Create it with
// [NewServer], serve with [Server.Run].
type Server struct {
	cfg      config
	router   atomic.Pointer[router] // replaced by SetClusterPrefixes
	cache    *cache
	flight   flight
	upstream Exchanger // nil without upstreams
	local    Exchanger // Docker's DNS, then upstream; nil without Docker's DNS
	pending  *pending  // the questions in flight to Docker's DNS
	log      *slog.Logger
	now      func() time.Time

	// base is the parent of every forward's context; it is cancelled when
	// Run's context is done so that in-flight forwards end at shutdown.
	base       context.Context
	cancelBase context.CancelFunc

	// exchanges tracks the goroutines that call exchangers, so that a
	// forward can give up at its deadline even if an exchanger does not.
	exchanges sync.WaitGroup

	started  atomic.Bool
	ready    chan struct{}
	addrMu   sync.Mutex
	udpAddr  net.Addr
	tcpAddr  net.Addr
	lastWarn atomic.Int64 // unix nanos of the last warning

	aliases    aliases                           // SetAliases
	aliasTable atomic.Pointer[map[string]string] // aliases.table, read by ServeDNS

	stats struct {
		queries, cacheHits, clusterForwards, upstreamForwards atomic.Uint64
		coalesced, failures, stale, synthesized               atomic.Uint64
		dockerForwards, looped, aliased                       atomic.Uint64
	}
}

// Stats counts what the server did since it was created.
type Stats struct {
	Queries          uint64 // questions received
	CacheHits        uint64 // questions answered from the cache
	ClusterForwards  uint64 // exchanges with the cluster
	UpstreamForwards uint64 // exchanges with the original resolvers
	DockerForwards   uint64 // exchanges with Docker's DNS first (then the original resolvers)
	Looped           uint64 // questions of this server that Docker's DNS forwarded back to it
	Coalesced        uint64 // questions that waited for an identical question's forward
	Failures         uint64 // questions whose forward failed (answered SERVFAIL or stale)
	Stale            uint64 // expired answers served because their forward failed
	Synthesized      uint64 // search-list expansions of cluster names answered NXDOMAIN
	Aliased          uint64 // questions for an alias (answered with a CNAME to its cluster name)
	CacheEntries     int    // answers in the cache now
}

// NewServer validates cfg and returns a server ready to Run.
func NewServer(cfg Config) (*Server, error) {
	c, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:    c,
		cache:  newCache(c.cacheSize),
		flight: flight{calls: make(map[cacheKey]*call)},
		log:    c.logger,
		now:    time.Now,
		ready:  make(chan struct{}),
	}
	s.router.Store(&router{clusterDomain: c.clusterDomain, prefixes: c.prefixes, search: c.search})
	if len(c.upstreams) > 0 {
		s.upstream = newForwarder(c.upstreams)
	}
	if c.docker != "" {
		s.pending = &pending{}
		s.local = &dockerFirst{docker: newForwarder([]string{c.docker}), upstream: s.upstream,
			stagger: dockerStagger, pending: s.pending}
	}
	s.base, s.cancelBase = context.WithCancel(context.Background())
	return s, nil
}

// Ready is closed once Run listens; [Server.Addr] then returns its
// addresses. If Run fails to listen it returns the error and Ready stays open,
// so wait for both.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr returns the addresses the server listens on, nil before it does.
func (s *Server) Addr() (udp, tcp net.Addr) {
	s.addrMu.Lock()
	defer s.addrMu.Unlock()
	return s.udpAddr, s.tcpAddr
}

// SetClusterPrefixes replaces Config.ClusterPrefixes (the cluster's ranges
// changed): reverse names inside the new prefixes go to the cluster from now
// on. Invalid prefixes are left out.
func (s *Server) SetClusterPrefixes(prefixes []netip.Prefix) {
	r := *s.router.Load()
	r.prefixes = nil
	for _, p := range prefixes {
		if p.IsValid() {
			r.prefixes = append(r.prefixes, p.Masked())
		}
	}
	s.router.Store(&r)
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	return Stats{
		Queries:          s.stats.queries.Load(),
		CacheHits:        s.stats.cacheHits.Load(),
		ClusterForwards:  s.stats.clusterForwards.Load(),
		UpstreamForwards: s.stats.upstreamForwards.Load(),
		DockerForwards:   s.stats.dockerForwards.Load(),
		Looped:           s.stats.looped.Load(),
		Coalesced:        s.stats.coalesced.Load(),
		Failures:         s.stats.failures.Load(),
		Stale:            s.stats.stale.Load(),
		Synthesized:      s.stats.synthesized.Load(),
		Aliased:          s.stats.aliased.Load(),
		CacheEntries:     s.cache.len(),
	}
}

// Run listens on the configured address over UDP and TCP and serves until
// ctx is done. It returns nil after a shutdown once the listeners are closed
// and every query in flight is answered, or the error that stopped it. A
// server runs once.
func (s *Server) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("dns: Server.Run called twice")
	}
	defer s.cancelBase()
	stop := context.AfterFunc(ctx, s.cancelBase)
	defer stop()

	pc, ln, err := s.listen(ctx)
	if err != nil {
		return err
	}
	s.addrMu.Lock()
	s.udpAddr, s.tcpAddr = pc.LocalAddr(), ln.Addr()
	s.addrMu.Unlock()
	close(s.ready)
	s.log.Info("DNS server listening", "addr", pc.LocalAddr(), "clusterDomain", s.cfg.clusterDomain,
		"clusterPrefixes", s.cfg.prefixes, "upstreams", s.cfg.upstreams, "dockerDNS", s.cfg.docker)

	udp := &dns.Server{PacketConn: pc, Handler: s, UDPSize: dns.DefaultMsgSize}
	tcp := &dns.Server{
		Listener:    ln,
		Handler:     s,
		ReadTimeout: tcpReadTimeout,
		IdleTimeout: func() time.Duration { return tcpIdleTimeout },
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return serve(gctx, udp, "udp") })
	g.Go(func() error { return serve(gctx, tcp, "tcp") })
	err = g.Wait()
	s.exchanges.Wait()
	return err
}

// listen binds UDP and TCP on the same port; with port 0 it retries until
// the port the kernel picked for UDP is free for TCP too.
func (s *Server) listen(ctx context.Context) (net.PacketConn, net.Listener, error) {
	var lc net.ListenConfig
	var err error
	for range 10 {
		var pc net.PacketConn
		pc, err = lc.ListenPacket(ctx, "udp", s.cfg.listen.String())
		if err != nil {
			return nil, nil, fmt.Errorf("dns: listen udp %s: %w", s.cfg.listen, err)
		}
		port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
		var ln net.Listener
		ln, err = lc.Listen(ctx, "tcp", netip.AddrPortFrom(s.cfg.listen.Addr(), port).String())
		if err == nil {
			return pc, ln, nil
		}
		_ = pc.Close()
		if s.cfg.listen.Port() != 0 {
			break
		}
	}
	return nil, nil, fmt.Errorf("dns: listen tcp %s: %w", s.cfg.listen, err)
}

// serve runs srv until ctx is done, then shuts it down and waits for the
// queries in flight.
func serve(ctx context.Context, srv *dns.Server, network string) error {
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	done := make(chan error, 1)
	go func() { done <- srv.ActivateAndServe() }() // owned: every path below receives from done

	select {
	case err := <-done:
		if err == nil {
			err = errors.New("stopped unexpectedly")
		}
		return fmt.Errorf("dns: serve %s: %w", network, err)
	case <-ctx.Done():
	}
	select {
	case err := <-done: // stopped before it started
		if err != nil {
			return fmt.Errorf("dns: serve %s: %w", network, err)
		}
		return nil
	case <-started:
	}
	_ = srv.ShutdownContext(context.Background()) // waits for the queries in flight
	if err := <-done; err != nil {
		return fmt.Errorf("dns: serve %s: %w", network, err)
	}
	return nil
}

// ServeDNS answers one query. It implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	s.stats.queries.Add(1)
	if req.Opcode != dns.OpcodeQuery {
		s.writeRcode(w, req, dns.RcodeNotImplemented)
		return
	}
	if len(req.Question) != 1 {
		s.writeRcode(w, req, dns.RcodeFormatError)
		return
	}
	opt := req.IsEdns0()
	if opt != nil && opt.Version() != 0 {
		s.writeRcode(w, req, dns.RcodeBadVers)
		return
	}
	q := req.Question[0]
	if q.Qtype == dns.TypeAXFR || q.Qtype == dns.TypeIXFR {
		s.writeRcode(w, req, dns.RcodeRefused)
		return
	}
	key := cacheKey{
		name:   strings.ToLower(q.Name),
		qtype:  q.Qtype,
		qclass: q.Qclass,
		do:     opt != nil && opt.Do(),
		cd:     req.CheckingDisabled,
	}

	if s.pending != nil && s.pending.has(pendingKey{id: req.Id, name: key.name}) {
		// Docker's DNS forwards our own question back to us (it recorded
		// this server as the container's resolver): the original resolvers
		// answer it, outside the flight of the question that waits for it.
		s.stats.looped.Add(1)
		s.answerLooped(w, req, key)
		return
	}

	if target, ok := s.aliasTarget(key.name); ok {
		s.answerAlias(w, req, key, target)
		return
	}

	now := s.now()
	cached, fresh := s.cache.get(key, now)
	if fresh {
		s.stats.cacheHits.Add(1)
		s.writeAnswer(w, req, cached, now, false)
		return
	}

	r := s.router.Load().route(key.name)
	var ex Exchanger
	var forwards *atomic.Uint64
	switch r {
	case routeNXDomain:
		s.stats.synthesized.Add(1)
		s.writeRcode(w, req, dns.RcodeNameError)
		return
	case routeCluster:
		ex, forwards = s.cfg.cluster, &s.stats.clusterForwards
	default:
		ex, forwards = s.upstream, &s.stats.upstreamForwards
		if s.local != nil {
			ex, forwards = s.local, &s.stats.dockerForwards
		}
	}

	a, shared, err := s.flight.do(key, func() (*answer, error) {
		if ex == nil {
			return nil, errors.New("no upstream resolvers configured")
		}
		forwards.Add(1)
		return s.resolve(key, ex)
	})
	if shared {
		s.stats.coalesced.Add(1)
	}
	if err != nil {
		s.stats.failures.Add(1)
		s.logFailure(r, key, err)
		if cached != nil {
			s.stats.stale.Add(1)
			s.writeAnswer(w, req, cached, now, true)
			return
		}
		s.writeRcode(w, req, dns.RcodeServerFailure)
		return
	}
	s.writeAnswer(w, req, a, s.now(), false)
}

// answerLooped answers a question Docker's DNS forwarded back to this server
// from the original resolvers.
func (s *Server) answerLooped(w dns.ResponseWriter, req *dns.Msg, key cacheKey) {
	if s.upstream == nil {
		s.writeRcode(w, req, dns.RcodeServerFailure)
		return
	}
	s.stats.upstreamForwards.Add(1)
	a, err := s.resolve(key, s.upstream)
	if err != nil {
		s.stats.failures.Add(1)
		s.logFailure(routeUpstream, key, err)
		s.writeRcode(w, req, dns.RcodeServerFailure)
		return
	}
	s.writeAnswer(w, req, a, s.now(), false)
}

// resolve asks ex for the answer to key under the forward deadline and caches it.
func (s *Server) resolve(key cacheKey, ex Exchanger) (*answer, error) {
	ctx, cancel := context.WithTimeout(s.base, s.cfg.timeout)
	defer cancel()

	q := &dns.Msg{
		MsgHdr:   dns.MsgHdr{Id: dns.Id(), RecursionDesired: true, CheckingDisabled: key.cd},
		Question: []dns.Question{{Name: key.name, Qtype: key.qtype, Qclass: key.qclass}},
	}
	q.SetEdns0(ednsSize, key.do)
	m, err := s.exchange(ctx, ex, q)
	switch {
	case err != nil:
		return nil, err
	case m == nil:
		return nil, errNoAnswer
	case m.Rcode == dns.RcodeServerFailure, m.Rcode > 0xF:
		return nil, fmt.Errorf("%w: rcode %s", errServerFailure, dns.RcodeToString[m.Rcode])
	case !sameQuestion(m, q):
		return nil, errWrongQuestion
	}

	// Keep the exchanger's message intact; drop the OPT record, the reply
	// gets its own.
	norm := &dns.Msg{MsgHdr: m.MsgHdr, Question: m.Question, Answer: m.Answer, Ns: m.Ns}
	for _, rr := range m.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			norm.Extra = append(norm.Extra, rr)
		}
	}
	if err := roundTrips(norm); err != nil {
		return nil, fmt.Errorf("%w: %w", errMalformedAnswer, err)
	}
	now := s.now()
	a := &answer{msg: norm, at: now, expires: now}
	if ttl, ok := cacheTTL(norm); ok {
		if s.local != nil && singleLabel(key.name) {
			ttl = min(ttl, dockerTTL) // Docker's names follow the containers
		}
		a.expires = now.Add(ttl)
		s.cache.put(key, a)
	}
	return a, nil
}

// roundTrips checks that m packs into bytes that unpack again. The dns
// package unpacks some malformed records into values it then packs wrongly
// (an SOA with empty RDATA comes out with a short RDATA), which clients
// cannot parse; such answers are not relayed.
func roundTrips(m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	return new(dns.Msg).Unpack(b)
}

// exchange calls ex and returns when it does or when ctx is done, whichever
// comes first: a client gets its SERVFAIL at the deadline even from an
// exchanger that ignores ctx. Run waits for such exchangers before returning.
func (s *Server) exchange(ctx context.Context, ex Exchanger, q *dns.Msg) (*dns.Msg, error) {
	type result struct {
		m   *dns.Msg
		err error
	}
	done := make(chan result, 1)
	s.exchanges.Go(func() {
		m, err := ex.Exchange(ctx, q)
		done <- result{m, err}
	})
	select {
	case r := <-done:
		return r.m, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: no answer in %v", ctx.Err(), s.cfg.timeout)
	}
}

// writeAnswer replies to req with a, its TTLs lowered by its age, or set to
// staleTTL for a stale answer.
func (s *Server) writeAnswer(w dns.ResponseWriter, req *dns.Msg, a *answer, now time.Time, stale bool) {
	s.write(w, req, s.reply(req, a, now, stale))
}

// reply is the reply to req with a, its TTLs lowered by its age, or set to
// staleTTL for a stale answer.
func (s *Server) reply(req *dns.Msg, a *answer, now time.Time, stale bool) *dns.Msg {
	src := a.msg
	do := false
	if opt := req.IsEdns0(); opt != nil {
		do = opt.Do()
	}
	resp := &dns.Msg{
		MsgHdr: dns.MsgHdr{
			Id:                 req.Id,
			Response:           true,
			Opcode:             req.Opcode,
			Truncated:          src.Truncated,
			RecursionDesired:   req.RecursionDesired,
			RecursionAvailable: true,
			AuthenticatedData:  src.AuthenticatedData && (do || req.AuthenticatedData),
			CheckingDisabled:   req.CheckingDisabled,
			Rcode:              src.Rcode,
		},
		Question: req.Question,
	}
	var age uint32
	if d := now.Sub(a.at); d > 0 {
		age = uint32(d / time.Second)
	}
	resp.Answer = withTTL(src.Answer, age, stale)
	resp.Ns = withTTL(src.Ns, age, stale)
	resp.Extra = withTTL(src.Extra, age, stale)
	return resp
}

// withTTL returns rrs with TTLs lowered by age. Unchanged records are shared
// with the cache (packing does not modify them); the slice is clipped so
// that appending to it never writes into the cached one.
func withTTL(rrs []dns.RR, age uint32, stale bool) []dns.RR {
	if len(rrs) == 0 {
		return nil
	}
	if age == 0 && !stale {
		return slices.Clip(rrs)
	}
	out := make([]dns.RR, len(rrs))
	for i, rr := range rrs {
		c := dns.Copy(rr)
		h := c.Header()
		switch {
		case stale:
			h.Ttl = min(h.Ttl, staleTTL)
			if h.Ttl == 0 {
				h.Ttl = staleTTL
			}
		case h.Ttl > age:
			h.Ttl -= age
		default:
			h.Ttl = 0
		}
		out[i] = c
	}
	return out
}

// writeRcode replies to req with an empty answer and rcode.
func (s *Server) writeRcode(w dns.ResponseWriter, req *dns.Msg, rcode int) {
	resp := new(dns.Msg)
	resp.SetRcode(req, rcode)
	resp.RecursionAvailable = true
	s.write(w, req, resp)
}

// write adds an OPT record if the client sent one, truncates to what the
// client can receive over UDP and sends resp.
func (s *Server) write(w dns.ResponseWriter, req, resp *dns.Msg) {
	size := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
		o.SetUDPSize(ednsSize)
		if opt.Do() {
			o.SetDo()
		}
		resp.Extra = append(resp.Extra, o)
		size = max(int(opt.UDPSize()), dns.MinMsgSize)
	}
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		size = dns.MaxMsgSize
	}
	resp.Truncate(size)
	if err := w.WriteMsg(resp); err != nil {
		s.log.Debug("DNS reply not sent", "to", w.RemoteAddr(), "error", err)
	}
}

// logFailure logs a failed forward: a warning at most every warnEvery, debug
// records in between, so that a dead upstream does not flood the log.
func (s *Server) logFailure(r route, k cacheKey, err error) {
	level := slog.LevelDebug
	now := time.Now().UnixNano()
	if last := s.lastWarn.Load(); now-last >= int64(warnEvery) && s.lastWarn.CompareAndSwap(last, now) {
		level = slog.LevelWarn
	}
	s.log.Log(context.Background(), level, "DNS forward failed; answering SERVFAIL or a stale answer",
		"route", r, "name", k.name, "type", dns.Type(k.qtype), "error", err)
}
