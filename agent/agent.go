// Package agent is the traffic-agent: the sidecar `tp agent` that the
// traffic-manager's webhook injects into the pods of an intercepted
// workload, and `tp agent-init`, its init container (see
// docs/intercepts.md for the contract).
//
// The sidecar listens on one agent port per container port it took over
// (TP_AGENT_PORTS) and decides for every accepted connection, by the latest
// intercept snapshot of its workload:
//   - no intercept of the port: splice to the app at 127.0.0.1:containerPort;
//   - a global intercept: splice to the intercept's client through a tunnel
//     flow to the traffic-manager, paired with the client's flow by
//     Flow.PairingID "<intercept id>/<random>" (a failure resets the
//     connection);
//   - personal intercepts: serve HTTP/1.1 (keep-alive) and h2c (HTTP/2 with
//     prior knowledge, so gRPC too) on the connection and route every
//     request or stream: all of an intercept's headers match and the path
//     starts with its prefix -> that intercept's client, else the app. When
//     the client cannot be reached the request gets a 502 that says so; it
//     is not silently sent to the app. Such a port must carry plain HTTP
//     (not TLS); requests keep their Host and X-Forwarded-* headers.
//
// An intercept without headers is global (a path prefix alone does not make
// it personal), as the manager's ownership rules have it. When several
// personal intercepts match a request, the one with more headers wins, then
// the longer path prefix, then the smaller id.
//
// The snapshot is read per connection and, in HTTP mode, per request: new
// and removed intercepts apply at once to new connections and requests.
// Connections already spliced (to the app or to a client) are not torn down
// when intercepts change; they end when their peers close them. In
// particular a keep-alive connection that was spliced to the app before a
// personal intercept was created keeps reaching the app: clients that pool
// connections see a personal intercept on their new connections only.
//
// The agent talks to the manager's agent port over TLS (the certificate
// verified against TP_MANAGER_CA) and presents its pod's projected
// ServiceAccount token (audience tp, reread for every RPC) on every RPC.
// It arrives at the traffic-manager (ArriveAsAgent), keeps its session
// with Remain (every TTL/3), watches its workload's intercepts (telling the
// manager after every snapshot which intercepts its routes now carry,
// RoutesApplied: `tp intercept` waits for that) and arrives
// anew, with backoff, when the manager forgets the session (NOT_FOUND) or
// restarts. While the manager is unreachable it routes everything to the
// app: intercepts need the manager anyway.
//
// Health: ReadyPath answers 200 once every agent port listens, whether or
// not the manager answers: a pod (re)started while the manager is down
// becomes Ready and serves its Service, everything going to the app, while
// the agent keeps trying to arrive with backoff. When Run's context ends
// the agent departs at once, answers 503 on ReadyPath and keeps serving
// (everything to the app) for Config.DrainTimeout before it closes every
// connection.
//
// agent-init (Init) installs the nftables redirects of the ports whose
// mechanism is "redirect", in the pod's network namespace.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/tp-run/tp/internal/tlsbatch"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/tunnel"
)

// Run runs the traffic-agent sidecar until ctx ends; it then closes every
// connection and returns nil. It fails when the configuration is invalid or
// an agent port or the health address cannot be listened on.
func Run(ctx context.Context, cfg Config) error {
	a, err := newAgent(cfg)
	if err != nil {
		return err
	}
	return a.run(ctx)
}

// agent is one run of the sidecar.
type agent struct {
	cfg Config
	log *slog.Logger

	// listen opens an agent port's listener; tests replace it.
	listen func(p Port) (net.Listener, error)
	// listenHealth opens the health listener; tests replace it.
	listenHealth func() (net.Listener, error)
	// appAddr is where the app serves a container port; tests replace it.
	appAddr func(containerPort int32) string
	// dialTimeout bounds dialing the app and opening tunnel flows (the
	// manager gives up pairing after 5 s, so this is a backstop).
	dialTimeout time.Duration
	// ownerGrace is how long a new connection or request of an intercept
	// whose owner is away waits for the owner before the app serves it.
	ownerGrace time.Duration

	routes atomic.Pointer[routes]
	// routesMu guards routesSet, closed (and replaced) on every change of routes.
	routesMu  sync.Mutex
	routesSet chan struct{}

	dialer   atomic.Pointer[tunnel.Dialer] // nil while no session
	listened atomic.Bool                   // every agent port listens
	arrived  atomic.Bool                   // arrived at the manager (at least once)
	draining atomic.Bool                   // Run's context ended

	http *httpProxy
	// export serves the app's volumes over SFTP (export.go); nil without
	// mounts or when ExportRoot cannot be opened.
	export *export

	connsMu sync.Mutex
	conns   map[net.Conn]struct{} // spliced client connections, closed at shutdown
	// appConns are the connections spliced to the app because their port
	// had no intercept when they arrived, by container port: when an
	// intercept of the port starts they are reset, so that their clients
	// (keep-alive pools) reconnect and reach it (docs/intercepts.md).
	appConns map[int32]map[net.Conn]struct{}
	connsWG  sync.WaitGroup // their goroutines
}

func newAgent(cfg Config) (*agent, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	log := cfg.Log.With("workload", cfg.Namespace+"/"+cfg.Workload, "pod", cfg.PodName)
	cfg.NodeAddrs = append(cfg.NodeAddrs, defaultGateways()...)
	a := &agent{
		cfg:         cfg,
		log:         log,
		dialTimeout: 10 * time.Second,
		ownerGrace:  DefaultOwnerGrace,
		routesSet:   make(chan struct{}),
		conns:       map[net.Conn]struct{}{},
		appConns:    map[int32]map[net.Conn]struct{}{},
		listen: func(p Port) (net.Listener, error) {
			return net.Listen("tcp", ":"+strconv.Itoa(int(p.AgentPort)))
		},
		listenHealth: func() (net.Listener, error) { return net.Listen("tcp", cfg.HealthAddr) },
		appAddr: func(cp int32) string {
			return net.JoinHostPort("127.0.0.1", strconv.Itoa(int(cp)))
		},
	}
	a.routes.Store(noRoutes)
	a.http = newHTTPProxy(a)
	return a, nil
}

func (a *agent) run(ctx context.Context) error {
	creds, err := managerTLS(a.cfg.ManagerCA)
	if err != nil {
		return fmt.Errorf("traffic-agent: %w", err)
	}
	cc, err := grpc.NewClient(a.cfg.ManagerAddr, append(tunnel.DialOptions(),
		grpc.WithTransportCredentials(creds), grpc.WithWriteBufferSize(tlsbatch.WriteBufferSize),
		grpc.WithPerRPCCredentials(tokenFile{path: a.cfg.TokenFile}))...)
	if err != nil {
		return fmt.Errorf("traffic-agent: traffic-manager address %q: %w", a.cfg.ManagerAddr, err)
	}
	defer cc.Close()

	if len(a.cfg.Mounts) > 0 {
		if a.export, err = openExport(a.cfg.ExportRoot, a.cfg.Mounts); err != nil {
			// The app must be served all the same.
			a.log.Error("cannot export the pod's volumes; intercepts of this pod get no mounts", "root", a.cfg.ExportRoot, "err", err)
		} else {
			defer a.export.close()
			a.log.Info("exporting the app's volumes over SFTP to intercept owners (through the traffic-manager only)",
				"root", a.cfg.ExportRoot, "mounts", len(a.cfg.Mounts))
		}
	}

	health, err := a.listenHealth()
	if err != nil {
		return fmt.Errorf("traffic-agent: health endpoint: listen %s: %w", a.cfg.HealthAddr, err)
	}
	var listeners []net.Listener
	closeAll := func() {
		health.Close()
		for _, l := range listeners {
			l.Close()
		}
	}
	for _, p := range a.cfg.Ports {
		l, err := a.listen(p)
		if err != nil {
			closeAll()
			return fmt.Errorf("traffic-agent: port %d (for container port %d): listen: %w", p.AgentPort, p.ContainerPort, err)
		}
		listeners = append(listeners, l)
		a.log.Info("listening", "agentPort", p.AgentPort, "addr", l.Addr(), "containerPort", p.ContainerPort,
			"name", p.Name, "mechanism", p.Mechanism)
	}
	a.listened.Store(true)
	a.log.Info("listening on every agent port; ready (everything goes to the app until the traffic-manager answers)")

	healthSrv := a.healthServer()
	httpServers := make([]*http.Server, len(a.cfg.Ports))
	httpListeners := make([]*connListener, len(a.cfg.Ports))
	for i, p := range a.cfg.Ports {
		httpServers[i] = a.http.server(p)
		httpListeners[i] = newConnListener(listeners[i].Addr())
	}

	// Serving outlives ctx by the drain; the manager session does not.
	serveCtx, stopServing := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServing()
	g, gctx := errgroup.WithContext(serveCtx)
	mctx, stopManaging := context.WithCancel(ctx)
	defer stopManaging()
	stopManagingOnFailure := context.AfterFunc(gctx, stopManaging)
	defer stopManagingOnFailure()
	g.Go(func() error {
		if err := healthSrv.Serve(health); !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("traffic-agent: health endpoint: %w", err)
		}
		return nil
	})
	for i, p := range a.cfg.Ports {
		g.Go(func() error {
			if err := httpServers[i].Serve(httpListeners[i]); !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("traffic-agent: HTTP on port %d: %w", p.AgentPort, err)
			}
			return nil
		})
		g.Go(func() error { return a.acceptLoop(gctx, p, listeners[i], httpListeners[i]) })
	}
	managed := make(chan struct{})
	g.Go(func() error {
		defer close(managed)
		a.manage(mctx, managerv1.NewManagerClient(cc), cc)
		return nil
	})
	g.Go(func() error {
		select {
		case <-gctx.Done():
			return nil
		case <-ctx.Done():
		}
		a.draining.Store(true)
		<-managed // departed: everything goes to the app
		if d := a.cfg.DrainTimeout; d > 0 {
			a.log.Info("shutting down: serving for the drain period", "drain", d)
			sleep(gctx, d)
		}
		stopServing()
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		closeAll()
		healthSrv.Close()
		for i := range httpServers {
			httpListeners[i].Close()
			httpServers[i].Close() // closes its connections; handlers see their requests cancelled
		}
		a.closeConns()
		return nil
	})
	err = g.Wait()
	a.connsWG.Wait()
	a.http.close()
	if err != nil {
		return err
	}
	a.log.Info("traffic-agent stopped")
	return nil
}

// acceptLoop accepts the connections of one agent port until l is closed.
func (a *agent) acceptLoop(ctx context.Context, p Port, l net.Listener, httpConns *connListener) error {
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Like net/http: back off on temporary errors such as EMFILE.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			a.log.Warn("accept failed; retrying", "agentPort", p.AgentPort, "err", err, "in", delay)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		a.dispatch(ctx, p, c, httpConns)
	}
}

// dispatch routes one accepted connection by the latest snapshot.
func (a *agent) dispatch(ctx context.Context, p Port, c net.Conn, httpConns *connListener) {
	pr := a.routes.Load().port(p.ContainerPort)
	switch {
	case a.fromNode(c.RemoteAddr().String()):
		// The kubelet's probes (and anything else from the node) check the
		// app, never an intercept's client.
		a.goConn(c, func() { a.toApp(ctx, p, c) })
	case pr != nil && pr.global != nil:
		a.goConn(c, func() { a.toClient(ctx, p, pr.global, c) })
	case pr != nil && len(pr.personal) > 0:
		// HTTP mode: the port's server serves the connection and routes
		// each request; it owns the connection from here on.
		if err := httpConns.push(ctx, c); err != nil {
			c.Close()
		}
	default:
		a.goConn(c, func() {
			defer a.trackAppConn(p.ContainerPort, c)()
			a.toApp(ctx, p, c)
		})
	}
}

// trackAppConn records c as spliced to the app on containerPort until the
// returned func runs.
func (a *agent) trackAppConn(containerPort int32, c net.Conn) (untrack func()) {
	a.connsMu.Lock()
	defer a.connsMu.Unlock()
	m := a.appConns[containerPort]
	if m == nil {
		m = map[net.Conn]struct{}{}
		a.appConns[containerPort] = m
	}
	m[c] = struct{}{}
	return func() {
		a.connsMu.Lock()
		defer a.connsMu.Unlock()
		delete(a.appConns[containerPort], c)
	}
}

// resetAppConns resets the connections spliced to the app on the ports that
// from old to cur began to send connections to a client: an intercept
// started, or its owner came back. A connection stays with whoever got it
// when it was accepted; without this, a client's keep-alive connection
// opened while the port had no intercept (before it, while the agent
// re-arrived after a manager restart, or while the owner was away) would
// reach the app for as long as it lives. Its client sees one reset and
// reconnects to the intercept.
func (a *agent) resetAppConns(old, cur *routes) {
	a.connsMu.Lock()
	defer a.connsMu.Unlock()
	for cp := range cur.ports {
		if !sendsToClients(cur.port(cp)) || sendsToClients(old.port(cp)) || len(a.appConns[cp]) == 0 {
			continue
		}
		a.log.Info("an intercept of the port started: resetting the connections the app was serving, so that their clients reconnect to it",
			"containerPort", cp, "connections", len(a.appConns[cp]))
		for c := range a.appConns[cp] {
			reset(c)
		}
	}
}

// goConn runs handle for c in a goroutine that Run waits for; c is closed
// at shutdown.
func (a *agent) goConn(c net.Conn, handle func()) {
	a.connsMu.Lock()
	a.conns[c] = struct{}{}
	a.connsMu.Unlock()
	a.connsWG.Add(1)
	go func() {
		defer a.connsWG.Done()
		defer func() {
			a.connsMu.Lock()
			delete(a.conns, c)
			a.connsMu.Unlock()
		}()
		handle()
	}()
}

func (a *agent) closeConns() {
	a.connsMu.Lock()
	defer a.connsMu.Unlock()
	for c := range a.conns {
		c.Close()
	}
}

// setRoutes applies a snapshot of the workload's intercepts and returns the
// ids of the intercepts the routes now carry.
func (a *agent) setRoutes(snap *managerv1.InterceptSnapshot) (applied []string) {
	served := make(map[int32]bool, len(a.cfg.Ports))
	for _, p := range a.cfg.Ports {
		served[p.ContainerPort] = true
	}
	r, ignored := newRoutes(snap, served)
	carryAwaySince(a.routes.Load(), r, time.Now())
	old := a.routes.Swap(r)
	a.routesChanged()
	for _, info := range ignored {
		a.log.Warn("intercept of a port this agent does not serve; ignoring it",
			"intercept", info.GetId(), "containerPort", info.GetContainerPort())
	}
	a.logChanges(old, r)
	a.http.routesChanged(old, r)
	a.resetAppConns(old, r)
	applied = make([]string, 0, len(r.byHost))
	for _, ic := range r.byHost {
		applied = append(applied, ic.id)
	}
	slices.Sort(applied)
	return applied
}

// routesChanged wakes those waiting for a change of the routes (awaitOwner).
func (a *agent) routesChanged() {
	a.routesMu.Lock()
	defer a.routesMu.Unlock()
	close(a.routesSet)
	a.routesSet = make(chan struct{})
}

// nextRoutes returns a channel closed by the next change of the routes.
func (a *agent) nextRoutes() <-chan struct{} {
	a.routesMu.Lock()
	defer a.routesMu.Unlock()
	return a.routesSet
}

// DefaultOwnerGrace is how long a connection of an intercept whose owner is
// away waits for the owner to come back before the app serves it.
const DefaultOwnerGrace = 5 * time.Second

// awaitOwner returns ic as the routes have it now once its owner is connected
// (its daemon watches dials): at once, or within what is left of the owner
// grace since the owner went away. False when
// the owner did not come back in time or the intercept ended: then the app
// serves (docs/intercepts.md, "While the owner is away").
func (a *agent) awaitOwner(ctx context.Context, ic *intercept) (*intercept, bool) {
	if ic.ownerConnected {
		return ic, true
	}
	// The grace runs from the owner's departure, not per connection: once
	// it is over, the app serves at once (a crashed daemon must not delay
	// every caller until its session expires).
	left := a.ownerGrace - time.Since(ic.awaySince)
	if left <= 0 {
		return nil, false
	}
	timer := time.NewTimer(left)
	defer timer.Stop()
	for {
		changed := a.nextRoutes()
		cur := a.routes.Load().byHost[ic.host]
		switch {
		case cur == nil:
			return nil, false
		case cur.ownerConnected:
			return cur, true
		}
		select {
		case <-changed:
		case <-timer.C:
			return nil, false
		case <-ctx.Done():
			return nil, false
		}
	}
}

// clearRoutes routes everything to the app (no session with the manager).
func (a *agent) clearRoutes() {
	old := a.routes.Swap(noRoutes)
	a.routesChanged()
	a.logChanges(old, noRoutes)
	a.http.routesChanged(old, noRoutes)
}

func (a *agent) logChanges(old, cur *routes) {
	for host, ic := range cur.byHost {
		if _, ok := old.byHost[host]; !ok {
			kind := "personal"
			if len(ic.headers) == 0 {
				kind = "global"
			}
			a.log.Info("intercept started", "intercept", ic.id, "name", ic.name, "kind", kind, "owner", ic.owner,
				"containerPort", ic.containerPort, "headers", headerNames(ic), "pathPrefix", ic.pathPrefix)
		}
	}
	for host, ic := range old.byHost {
		if _, ok := cur.byHost[host]; !ok {
			a.log.Info("intercept ended; its new connections and requests go to the app",
				"intercept", ic.id, "name", ic.name, "containerPort", ic.containerPort)
		}
	}
}

func headerNames(ic *intercept) []string {
	names := make([]string, len(ic.headers))
	for i, h := range ic.headers {
		names[i] = h.name
	}
	return names
}

// connListener hands connections to an http.Server.
type connListener struct {
	addr      net.Addr
	ch        chan net.Conn
	closeOnce sync.Once
	closed    chan struct{}
}

func newConnListener(addr net.Addr) *connListener {
	return &connListener{addr: addr, ch: make(chan net.Conn), closed: make(chan struct{})}
}

// push hands c to the server; it fails once the listener is closed.
func (l *connListener) push(ctx context.Context, c net.Conn) error {
	select {
	case l.ch <- c:
		return nil
	case <-l.closed:
		return net.ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

func (l *connListener) Addr() net.Addr { return l.addr }

// carryAwaySince sets when each intercept of cur whose owner is away went
// away: as in old if it was away there already, else now.
func carryAwaySince(old, cur *routes, now time.Time) {
	for host, ic := range cur.byHost {
		if ic.ownerConnected {
			continue
		}
		if o := old.byHost[host]; o != nil && o.id == ic.id && !o.ownerConnected {
			ic.awaySince = o.awaySince
		} else {
			ic.awaySince = now
		}
	}
}

// sendsToClients reports whether new connections of a port go to a client:
// it has a global intercept whose owner is connected, or personal ones
// (whose requests the port's HTTP server routes one by one).
func sendsToClients(pr *portRoutes) bool {
	switch {
	case pr == nil:
		return false
	case pr.global != nil:
		return pr.global.ownerConnected
	default:
		return len(pr.personal) > 0
	}
}
