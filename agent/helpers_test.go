package agent

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	tunnelv1 "github.com/tp-run/tp/rpc/tunnel/v1"
	"github.com/tp-run/tp/tunnel"
)

func testLogger(tb testing.TB) *slog.Logger {
	tb.Helper()
	if os.Getenv("AGENT_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fakeManager is a traffic-manager for one workload: a real gRPC server on
// loopback with the agent RPCs and a tunnel server that sends every flow to
// the developer's server, whatever its destination and pairing.
type fakeManager struct {
	managerv1.UnimplementedManagerServer
	tb  testing.TB
	ttl time.Duration

	mu        sync.Mutex
	addr      string
	gs        *grpc.Server
	served    chan struct{}
	sessions  map[string]bool
	nextID    int
	arrivals  []*managerv1.AgentInfo
	snapshot  *managerv1.InterceptSnapshot
	changed   chan struct{} // closed on every change of snapshot or sessions
	opens     []*tunnelv1.Open
	acks      [][]string // RoutesApplied, in order
	devAddr   string
	flowCount int
	// cert is what the manager serves (default: signed by the CA the
	// agents trust); wantToken the bearer token it admits.
	cert      tls.Certificate
	wantToken string
	tokens    []string // every token presented, in order, once each
	refused   int      // RPCs refused for their token
	// mountReqs go to the agents' WatchMountRequests streams.
	mountReqs chan *managerv1.MountRequest
}

func (m *fakeManager) WatchMountRequests(ref *managerv1.SessionRef, stream grpc.ServerStreamingServer[managerv1.MountRequest]) error {
	if err := m.authorize(stream.Context(), ref.GetSessionId()); err != nil {
		return err
	}
	for {
		select {
		case req := <-m.mountReqs:
			if err := stream.Send(req); err != nil {
				return err
			}
		case <-stream.Context().Done():
			return nil
		}
	}
}

func newFakeManager(tb testing.TB, devAddr string) *fakeManager {
	tb.Helper()
	trusted, _ := testCerts(tb)
	m := &fakeManager{tb: tb, ttl: 300 * time.Millisecond, sessions: map[string]bool{},
		snapshot: &managerv1.InterceptSnapshot{}, changed: make(chan struct{}), devAddr: devAddr,
		cert: trusted.cert, wantToken: testToken, mountReqs: make(chan *managerv1.MountRequest, 8)}
	m.start("127.0.0.1:0")
	tb.Cleanup(m.stop)
	return m
}

// start serves on addr (the previous address after a stop: a restart).
func (m *fakeManager) start(addr string) {
	m.tb.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		m.tb.Fatalf("fake manager: listen: %v", err)
	}
	tunnels, err := tunnel.NewServer(m.dialDeveloper, m.authorize, nil)
	if err != nil {
		m.tb.Fatalf("tunnel.NewServer: %v", err)
	}
	m.mu.Lock()
	cert := m.cert
	m.mu.Unlock()
	gs := grpc.NewServer(append(tunnel.ServerOptions(),
		grpc.Creds(credentials.NewServerTLSFromCert(&cert)),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			if err := m.checkToken(ctx); err != nil {
				return nil, err
			}
			return handler(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			if err := m.checkToken(ss.Context()); err != nil {
				return err
			}
			return handler(srv, ss)
		}, m.recordOpen))...)
	// Paired flows (intercepts) go to the developer's server too: the
	// fake stands in for the manager pairing them with a client's flow.
	tunnels.HandlePairing(func(ctx context.Context, _, _ string, accept func() (tunnel.Conn, error)) error {
		dev, err := m.dialDeveloper(ctx, "tcp", "")
		if err != nil {
			return err
		}
		flow, err := accept()
		if err != nil {
			dev.Close()
			return err
		}
		return tunnel.Splice(ctx, flow, dev)
	})
	managerv1.RegisterManagerServer(gs, m)
	tunnels.Register(gs)
	served := make(chan struct{})
	go func() {
		defer close(served)
		gs.Serve(lis)
	}()
	m.mu.Lock()
	m.addr, m.gs, m.served = lis.Addr().String(), gs, served
	m.mu.Unlock()
}

// stop stops the manager as a crash would: connections break, and the
// restarted manager knows no session.
func (m *fakeManager) stop() {
	m.mu.Lock()
	gs, served := m.gs, m.served
	m.gs = nil
	m.sessions = map[string]bool{}
	m.mu.Unlock()
	if gs != nil {
		gs.Stop()
		<-served
	}
}

func (m *fakeManager) address() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.addr
}

// notify wakes the watchers; m.mu is held.
func (m *fakeManager) notify() {
	close(m.changed)
	m.changed = make(chan struct{})
}

func (m *fakeManager) setIntercepts(ics ...*managerv1.InterceptInfo) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.snapshot = &managerv1.InterceptSnapshot{Intercepts: ics}
	m.notify()
}

// forgetSessions makes the manager forget every session (as if they expired).
func (m *fakeManager) forgetSessions() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sessions = map[string]bool{}
	m.notify()
}

func (m *fakeManager) arrivalCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.arrivals)
}

func (m *fakeManager) lastArrival() *managerv1.AgentInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.arrivals) == 0 {
		return nil
	}
	return m.arrivals[len(m.arrivals)-1]
}

func (m *fakeManager) tunnelOpens() []*tunnelv1.Open {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*tunnelv1.Open(nil), m.opens...)
}

func (m *fakeManager) sessionCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.sessions)
}

func (m *fakeManager) ArriveAsAgent(_ context.Context, info *managerv1.AgentInfo) (*managerv1.SessionInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nextID++
	id := "agent-session-" + strconv.Itoa(m.nextID)
	m.sessions[id] = true
	m.arrivals = append(m.arrivals, info)
	return &managerv1.SessionInfo{SessionId: id, Ttl: durationpb.New(m.ttl), ManagerVersion: "fake"}, nil
}

func (m *fakeManager) Remain(_ context.Context, ref *managerv1.SessionRef) (*managerv1.RemainResponse, error) {
	if err := m.authorize(context.Background(), ref.GetSessionId()); err != nil {
		return nil, err
	}
	return &managerv1.RemainResponse{}, nil
}

func (m *fakeManager) Depart(_ context.Context, ref *managerv1.SessionRef) (*managerv1.DepartResponse, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.sessions, ref.GetSessionId())
	return &managerv1.DepartResponse{}, nil
}

func (m *fakeManager) WatchIntercepts(ref *managerv1.SessionRef, stream grpc.ServerStreamingServer[managerv1.InterceptSnapshot]) error {
	for {
		m.mu.Lock()
		known := m.sessions[ref.GetSessionId()]
		snap, changed := m.snapshot, m.changed
		m.mu.Unlock()
		if !known {
			return status.Errorf(codes.NotFound, "session %q unknown", ref.GetSessionId())
		}
		if err := stream.Send(snap); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
}

func (m *fakeManager) RoutesApplied(_ context.Context, req *managerv1.RoutesAppliedRequest) (*managerv1.RoutesAppliedResponse, error) {
	if err := m.authorize(context.Background(), req.GetSessionId()); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.acks = append(m.acks, req.GetInterceptIds())
	return &managerv1.RoutesAppliedResponse{}, nil
}

func (m *fakeManager) ackCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.acks)
}

// lastAck is the intercept ids of the last RoutesApplied.
func (m *fakeManager) lastAck() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.acks) == 0 {
		return nil
	}
	return m.acks[len(m.acks)-1]
}

func (m *fakeManager) authorize(_ context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.sessions[id] {
		return status.Errorf(codes.NotFound, "session %q unknown", id)
	}
	return nil
}

func (m *fakeManager) dialDeveloper(ctx context.Context, network, _ string) (net.Conn, error) {
	m.mu.Lock()
	addr := m.devAddr
	m.flowCount++
	m.mu.Unlock()
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// testToken is the token startAgent's agents present by default.
const testToken = "agent-token"

// checkToken admits RPCs with the bearer token m.wantToken.
func (m *fakeManager) checkToken(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	var got string
	if v := md.Get("authorization"); len(v) == 1 {
		got = strings.TrimPrefix(v[0], "Bearer ")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if n := len(m.tokens); n == 0 || m.tokens[n-1] != got {
		m.tokens = append(m.tokens, got)
	}
	if got != m.wantToken {
		m.refused++
		return status.Error(codes.Unauthenticated, "fake manager: wrong token")
	}
	return nil
}

func (m *fakeManager) setCert(c tls.Certificate) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cert = c
}

func (m *fakeManager) setWantToken(tok string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.wantToken = tok
}

func (m *fakeManager) presentedTokens() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.tokens...)
}

// recordOpen records the Open frame of every tunnel flow.
func (m *fakeManager) recordOpen(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if info.FullMethod != tunnelv1.Tunnel_Stream_FullMethodName {
		return handler(srv, ss)
	}
	return handler(srv, &openRecorder{ServerStream: ss, m: m})
}

type openRecorder struct {
	grpc.ServerStream
	m    *fakeManager
	seen bool
}

func (r *openRecorder) RecvMsg(msg any) error {
	err := r.ServerStream.RecvMsg(msg)
	if err == nil && !r.seen {
		r.seen = true
		if f, ok := msg.(interface{ GetOpen() *tunnelv1.Open }); ok && f.GetOpen() != nil {
			r.m.mu.Lock()
			r.m.opens = append(r.m.opens, f.GetOpen())
			r.m.mu.Unlock()
		}
	}
	return err
}

// writeToken writes tok to path (a new file when path is empty), as the
// kubelet rotates a projected token: a new file renamed into place.
func writeToken(tb testing.TB, path, tok string) string {
	tb.Helper()
	if path == "" {
		path = filepath.Join(tb.TempDir(), "token")
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(tok), 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		tb.Fatal(err)
	}
	return path
}

// testServer is the app or the developer's server: HTTP/1.1 and h2c on
// loopback, with gRPC (health) for requests of content type
// application/grpc. Every answer says who served it.
type testServer struct {
	name string
	addr netip.AddrPort
}

func newTestServer(tb testing.TB, name string) *testServer {
	tb.Helper()
	return newTestServerAt(tb, name, "127.0.0.1:0")
}

func newTestServerAt(tb testing.TB, name, listenAddr string) *testServer {
	tb.Helper()
	gs := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		grpc.SetHeader(ctx, metadata.Pairs("served-by", name))
		return handler(ctx, req)
	}))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Protocols: protocols,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
				gs.ServeHTTP(w, r)
				return
			}
			w.Header().Set("Served-By", name)
			fmt.Fprintf(w, "%s %s %s host=%s remote=%s xff=%s", name, r.Proto, r.URL.Path, r.Host, r.RemoteAddr,
				r.Header.Get("X-Forwarded-For"))
		}),
	}
	lis, err := net.Listen("tcp", listenAddr)
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(lis)
	}()
	tb.Cleanup(func() {
		srv.Close()
		gs.Stop()
		<-done
	})
	return &testServer{name: name, addr: lis.Addr().(*net.TCPAddr).AddrPort()}
}

// testAgent is a running agent with one port in front of the app.
type testAgent struct {
	*agent
	addr        string // the agent port, on loopback
	healthAddr  string
	accepted    atomic.Int32 // connections accepted on the agent port
	containerPt int32
	done        <-chan struct{} // closed when Run returned
	runErr      error           // what it returned
}

type agentOptions struct {
	managerAddr string
	tokenFile   string     // default: a file holding testToken
	appAddr     string     // instead of the app's address
	podIP       netip.Addr // instead of 127.0.0.1
	drain       time.Duration
	// mounts the agent exports from exportRoot.
	mounts     []Mount
	exportRoot string
	// ctx ends the agent instead of the test's cleanup.
	ctx context.Context
}

func startAgent(tb testing.TB, app *testServer, opts agentOptions) *testAgent {
	tb.Helper()
	cp := int32(app.addr.Port())
	if opts.tokenFile == "" {
		opts.tokenFile = writeToken(tb, "", testToken)
	}
	trusted, _ := testCerts(tb)
	cfg := Config{
		ManagerAddr:  opts.managerAddr,
		ManagerCA:    trusted.caPEM,
		TokenFile:    opts.tokenFile,
		Workload:     "echo",
		Kind:         "Deployment",
		Namespace:    "default",
		PodName:      "echo-7d9c-abcde",
		PodIP:        netip.MustParseAddr("127.0.0.1"),
		Container:    "echo",
		Ports:        []Port{{Name: "http", ContainerPort: cp, AgentPort: FirstAgentPort, Protocol: "TCP", Mechanism: MechanismRename}},
		Environment:  map[string]string{"GREETING": "hello"},
		DrainTimeout: opts.drain,
		Mounts:       opts.mounts,
		ExportRoot:   opts.exportRoot,
		Log:          testLogger(tb),
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = -1
	}
	if opts.podIP.IsValid() {
		cfg.PodIP = opts.podIP
	}
	a, err := newAgent(cfg)
	if err != nil {
		tb.Fatalf("newAgent: %v", err)
	}
	if opts.appAddr == "" {
		// The app's port on loopback, wherever the app listens.
		opts.appAddr = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), app.addr.Port()).String()
	}
	ta := &testAgent{agent: a, containerPt: cp}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	health, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	ta.addr, ta.healthAddr = lis.Addr().String(), health.Addr().String()
	a.listen = func(Port) (net.Listener, error) { return &countingListener{Listener: lis, n: &ta.accepted}, nil }
	a.listenHealth = func() (net.Listener, error) { return health, nil }
	a.dialTimeout = 3 * time.Second
	if opts.appAddr != "" {
		a.appAddr = func(int32) string { return opts.appAddr }
	}

	parent := opts.ctx
	if parent == nil {
		parent = context.Background()
	}
	ctx, cancel := context.WithCancel(parent)
	done := make(chan struct{})
	go func() {
		defer close(done)
		ta.runErr = a.run(ctx)
	}()
	ta.done = done
	tb.Cleanup(func() {
		cancel()
		select {
		case <-done:
			if ta.runErr != nil {
				tb.Errorf("Run: %v", ta.runErr)
			}
		case <-time.After(10 * time.Second):
			tb.Errorf("Run did not return after its context ended")
		}
	})
	waitFor(tb, "the agent to listen", a.listened.Load)
	return ta
}

type countingListener struct {
	net.Listener
	n *atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// waitRoutes waits until the agent routes by exactly the intercepts ids.
func (ta *testAgent) waitRoutes(tb testing.TB, ids ...string) {
	tb.Helper()
	waitFor(tb, fmt.Sprintf("the agent to route by intercepts %v", ids), func() bool {
		r := ta.routes.Load()
		if len(r.byHost) != len(ids) {
			return false
		}
		for _, id := range ids {
			found := false
			for _, ic := range r.byHost {
				found = found || ic.id == id
			}
			if !found {
				return false
			}
		}
		return true
	})
}

func globalIntercept(id string, containerPort int32) *managerv1.InterceptInfo {
	return &managerv1.InterceptInfo{
		Id:             id,
		Spec:           &managerv1.InterceptSpec{Name: "echo-" + id, Workload: "echo", Namespace: "default", LocalPort: 8080},
		Owner:          &managerv1.ClientInfo{Host: "laptop", User: "alice"},
		State:          managerv1.InterceptState_INTERCEPT_STATE_ACTIVE,
		ContainerPort:  containerPort,
		OwnerConnected: true,
	}
}

func personalIntercept(id string, containerPort int32, headers map[string]string, pathPrefix string) *managerv1.InterceptInfo {
	info := globalIntercept(id, containerPort)
	info.Spec.Headers = headers
	info.Spec.PathPrefix = pathPrefix
	return info
}
