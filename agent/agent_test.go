package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/tp-run/tp/internal/version"
	"github.com/tp-run/tp/tunnel"
)

// env is an app, a developer's server, a fake manager and an agent in front
// of the app.
type env struct {
	app, dev *testServer
	mgr      *fakeManager
	agent    *testAgent
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{app: newTestServer(t, "app"), dev: newTestServer(t, "dev")}
	e.mgr = newFakeManager(t, e.dev.addr.String())
	e.agent = startAgent(t, e.app, agentOptions{managerAddr: e.mgr.address()})
	waitFor(t, "the agent to arrive", func() bool { return e.agent.arrived.Load() })
	return e
}

// httpConn is one client connection to the agent port speaking HTTP/1.1.
type httpConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialHTTP(t *testing.T, addr string) *httpConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial agent: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return &httpConn{t: t, c: c, r: bufio.NewReader(c)}
}

// get sends a GET on the connection and returns the status and body.
func (h *httpConn) get(path string, header map[string]string) (int, string, error) {
	req, _ := http.NewRequest(http.MethodGet, "http://echo.default"+path, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	if err := req.Write(h.c); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(h.r, req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

func (h *httpConn) mustGet(path string, header map[string]string) string {
	h.t.Helper()
	code, body, err := h.get(path, header)
	if err != nil {
		h.t.Fatalf("GET %s %v: %v", path, header, err)
	}
	if code != http.StatusOK {
		h.t.Fatalf("GET %s %v: status %d (%s), want 200", path, header, code, body)
	}
	return body
}

// servedBy is who answered a test server's response body.
func servedBy(body string) string {
	name, _, _ := strings.Cut(body, " ")
	return name
}

func TestNoInterceptGoesToApp(t *testing.T) {
	e := newEnv(t)
	c := dialHTTP(t, e.agent.addr)
	for range 2 {
		if got := servedBy(c.mustGet("/", nil)); got != "app" {
			t.Errorf("served by %q, want app", got)
		}
	}
	// Half-close passes through the splice: the app answers a request whose
	// sender closed its direction, and then the connection ends.
	raw, err := net.Dial("tcp", e.agent.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(raw, "GET /half HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n")
	raw.(*net.TCPConn).CloseWrite()
	all, err := io.ReadAll(raw)
	if err != nil || !strings.Contains(string(all), "app HTTP/1.1 /half") {
		t.Errorf("after half-close: read %q, %v; want the app's answer then EOF", all, err)
	}
	if n := len(e.mgr.tunnelOpens()); n != 0 {
		t.Errorf("%d tunnel flows opened, want 0", n)
	}
}

func TestAppDownResetsConnection(t *testing.T) {
	app := newTestServer(t, "app")
	mgr := newFakeManager(t, dead)
	ta := startAgent(t, app, agentOptions{managerAddr: mgr.address(), appAddr: dead})

	if err := readReset(ta.addr); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("got %v, want ECONNRESET", err)
	}
}

// readReset connects to addr and reads; the reset it expects can come so
// fast that the dial itself reports it.
func readReset(addr string) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Read(make([]byte, 1))
	return err
}

func TestAppListeningOnPodIPOnly(t *testing.T) {
	// The app listens on the "pod IP" only, so 127.0.0.1 refuses.
	podIP := netip.MustParseAddr("127.0.0.2")
	app := newTestServerAt(t, "app", netip.AddrPortFrom(podIP, 0).String())
	dev := newTestServer(t, "dev")
	mgr := newFakeManager(t, dev.addr.String())
	ta := startAgent(t, app, agentOptions{managerAddr: mgr.address(), podIP: podIP})
	if got := servedBy(dialHTTP(t, ta.addr).mustGet("/", nil)); got != "app" {
		t.Errorf("spliced: served by %q, want app", got)
	}
	waitFor(t, "the agent to arrive", ta.arrived.Load)
	mgr.setIntercepts(personalIntercept("ic-1", ta.containerPt, map[string]string{"x-dev": "alice"}, ""))
	ta.waitRoutes(t, "ic-1")
	if got := servedBy(dialHTTP(t, ta.addr).mustGet("/", nil)); got != "app" {
		t.Errorf("HTTP mode: served by %q, want app", got)
	}
}

func TestGlobalInterceptGoesToClient(t *testing.T) {
	e := newEnv(t)
	e.mgr.setIntercepts(globalIntercept("ic-1", e.agent.containerPt))
	e.agent.waitRoutes(t, "ic-1")

	c := dialHTTP(t, e.agent.addr)
	for range 2 {
		if got := servedBy(c.mustGet("/", nil)); got != "dev" {
			t.Errorf("served by %q, want dev", got)
		}
	}
	opens := e.mgr.tunnelOpens()
	if len(opens) != 1 {
		t.Fatalf("%d tunnel flows opened, want 1 (one per connection)", len(opens))
	}
	o := opens[0]
	id, random, ok := strings.Cut(o.GetPairingId(), "/")
	if !ok || id != "ic-1" || len(random) < 8 {
		t.Errorf("pairing id %q, want \"ic-1/<random>\"", o.GetPairingId())
	}
	dst, _ := netip.AddrFromSlice(o.GetDestination().GetIp())
	if want := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(e.agent.containerPt)); dst.Unmap() != want.Addr() || o.GetDestination().GetPort() != uint32(want.Port()) {
		t.Errorf("destination %v:%d, want %v", dst, o.GetDestination().GetPort(), want)
	}
	src, _ := netip.AddrFromSlice(o.GetSource().GetIp())
	if local := c.c.LocalAddr().(*net.TCPAddr).AddrPort(); src.Unmap() != local.Addr() || o.GetSource().GetPort() != uint32(local.Port()) {
		t.Errorf("source %v:%d, want the client's %v", src, o.GetSource().GetPort(), local)
	}
}

// TestGlobalInterceptClientDownServesFromApp: a connection whose
// intercept's client cannot be reached (its owner is away) is not reset:
// the app serves it.
func TestGlobalInterceptClientDownServesFromApp(t *testing.T) {
	app := newTestServer(t, "app")
	mgr := newFakeManager(t, dead) // the "developer" refuses
	ta := startAgent(t, app, agentOptions{managerAddr: mgr.address()})
	waitFor(t, "the agent to arrive", ta.arrived.Load)
	mgr.setIntercepts(globalIntercept("ic-1", ta.containerPt))
	ta.waitRoutes(t, "ic-1")

	if got := servedBy(dialHTTP(t, ta.addr).mustGet("/", nil)); got != "app" {
		t.Errorf("served by %q, want app", got)
	}
}

func TestPersonalInterceptKeepAlive(t *testing.T) {
	e := newEnv(t)
	e.mgr.setIntercepts(personalIntercept("ic-1", e.agent.containerPt, map[string]string{"x-dev": "alice"}, "/api"))
	e.agent.waitRoutes(t, "ic-1")

	c := dialHTTP(t, e.agent.addr)
	cases := []struct {
		path   string
		header map[string]string
		want   string
	}{
		{"/api/users", map[string]string{"X-Dev": "alice"}, "dev"},
		{"/api/users", nil, "app"},
		{"/api/users", map[string]string{"x-dev": "alice"}, "dev"}, // names are case-insensitive
		{"/api/users", map[string]string{"X-Dev": "Alice"}, "app"}, // values are exact
		{"/other", map[string]string{"X-Dev": "alice"}, "app"},     // path prefix
		{"/api", map[string]string{"X-Dev": "alice", "X-B": "c"}, "dev"},
	}
	for _, tc := range cases {
		body := c.mustGet(tc.path, tc.header)
		if got := servedBy(body); got != tc.want {
			t.Errorf("GET %s %v: served by %q, want %q", tc.path, tc.header, got, tc.want)
		}
		if !strings.Contains(body, "HTTP/1.1 "+tc.path+" host=echo.default ") {
			t.Errorf("GET %s: %q, want the request's protocol, path and Host unchanged", tc.path, body)
		}
	}
	if n := e.agent.accepted.Load(); n != 1 {
		t.Errorf("the agent accepted %d connections, want 1 (keep-alive)", n)
	}
	// X-Forwarded-For passes as the client sent it.
	if body := c.mustGet("/api", map[string]string{"X-Dev": "alice", "X-Forwarded-For": "10.1.2.3"}); !strings.HasSuffix(body, "xff=10.1.2.3") {
		t.Errorf("X-Forwarded-For: %q, want it unchanged", body)
	}
	// Pairing ids name the intercept.
	for _, o := range e.mgr.tunnelOpens() {
		if !strings.HasPrefix(o.GetPairingId(), "ic-1/") {
			t.Errorf("pairing id %q, want ic-1/<random>", o.GetPairingId())
		}
	}
}

func TestPersonalInterceptsMostSpecificWins(t *testing.T) {
	e := newEnv(t)
	e.mgr.setIntercepts(
		personalIntercept("ic-a", e.agent.containerPt, map[string]string{"x-dev": "alice"}, ""),
		personalIntercept("ic-b", e.agent.containerPt, map[string]string{"x-dev": "alice", "x-team": "b"}, ""),
	)
	e.agent.waitRoutes(t, "ic-a", "ic-b")
	c := dialHTTP(t, e.agent.addr)
	c.mustGet("/", map[string]string{"X-Dev": "alice", "X-Team": "b"})
	c.mustGet("/", map[string]string{"X-Dev": "alice"})
	opens := e.mgr.tunnelOpens()
	if len(opens) < 2 || !strings.HasPrefix(opens[0].GetPairingId(), "ic-b/") || !strings.HasPrefix(opens[1].GetPairingId(), "ic-a/") {
		var ids []string
		for _, o := range opens {
			ids = append(ids, o.GetPairingId())
		}
		t.Errorf("pairing ids %v, want ic-b/... then ic-a/...", ids)
	}
}

// TestPersonalInterceptClientDownServesFromApp: a request matching an
// intercept whose client cannot be reached is answered by the app, not 502.
func TestPersonalInterceptClientDownServesFromApp(t *testing.T) {
	app := newTestServer(t, "app")
	mgr := newFakeManager(t, dead)
	ta := startAgent(t, app, agentOptions{managerAddr: mgr.address()})
	waitFor(t, "the agent to arrive", ta.arrived.Load)
	mgr.setIntercepts(personalIntercept("ic-1", ta.containerPt, map[string]string{"x-dev": "alice"}, ""))
	ta.waitRoutes(t, "ic-1")

	c := dialHTTP(t, ta.addr)
	if got := servedBy(c.mustGet("/", map[string]string{"X-Dev": "alice"})); got != "app" {
		t.Errorf("matching request served by %q, want app", got)
	}
	// The connection stays usable; requests without the header reach the app.
	if got := servedBy(c.mustGet("/", nil)); got != "app" {
		t.Errorf("served by %q, want app", got)
	}
}

func TestPersonalInterceptGRPC(t *testing.T) {
	e := newEnv(t)
	e.mgr.setIntercepts(personalIntercept("ic-1", e.agent.containerPt, map[string]string{"x-dev": "alice"}, ""))
	e.agent.waitRoutes(t, "ic-1")

	cc, err := grpc.NewClient(e.agent.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	check := func(ctx context.Context) string {
		t.Helper()
		var hdr metadata.MD
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Header(&hdr))
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("status %v, want SERVING", resp.GetStatus())
		}
		return strings.Join(hdr.Get("served-by"), ",")
	}
	alice := metadata.AppendToOutgoingContext(ctx, "x-dev", "alice")
	for range 2 { // streams of one connection, interleaved
		if got := check(alice); got != "dev" {
			t.Errorf("with the header: served by %q, want dev", got)
		}
		if got := check(ctx); got != "app" {
			t.Errorf("without the header: served by %q, want app", got)
		}
	}
	// A server stream: trailers and streaming pass through too.
	wctx, wcancel := context.WithCancel(alice)
	ws, err := hc.Watch(wctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	if resp, err := ws.Recv(); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("Watch: %v, %v; want SERVING", resp, err)
	}
	wcancel()
	if n := e.agent.accepted.Load(); n != 1 {
		t.Errorf("the agent accepted %d connections, want 1 (per-stream routing)", n)
	}
	// Unknown service: the status travels in the trailers.
	_, err = hc.Check(alice, &healthpb.HealthCheckRequest{Service: "nope"})
	if err == nil || !strings.Contains(err.Error(), "NotFound") {
		t.Errorf("Check of an unknown service: %v, want NotFound", err)
	}
}

func TestPersonalInterceptH2C(t *testing.T) {
	e := newEnv(t)
	e.mgr.setIntercepts(personalIntercept("ic-1", e.agent.containerPt, map[string]string{"x-dev": "alice"}, ""))
	e.agent.waitRoutes(t, "ic-1")

	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	get := func(header string) string {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+e.agent.addr+"/h2", nil)
		if header != "" {
			req.Header.Set("X-Dev", header)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET: %v", err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(body), "HTTP/2.0 /h2") {
			t.Errorf("body %q, want HTTP/2.0 end to end", body)
		}
		return servedBy(string(body))
	}
	if got := get("alice"); got != "dev" {
		t.Errorf("with the header: served by %q, want dev", got)
	}
	if got := get(""); got != "app" {
		t.Errorf("without the header: served by %q, want app", got)
	}
	if n := e.agent.accepted.Load(); n != 1 {
		t.Errorf("the agent accepted %d connections, want 1", n)
	}
}

func TestSnapshotUpdates(t *testing.T) {
	e := newEnv(t)
	pt := e.agent.containerPt
	alice := map[string]string{"X-Dev": "alice"}

	first := dialHTTP(t, e.agent.addr)
	if got := servedBy(first.mustGet("/", alice)); got != "app" {
		t.Fatalf("before any intercept: served by %q, want app", got)
	}

	e.mgr.setIntercepts(personalIntercept("ic-1", pt, map[string]string{"x-dev": "alice"}, ""))
	e.agent.waitRoutes(t, "ic-1")
	// A connection spliced to the app before the intercept is reset, so
	// that its client reconnects and reaches the intercept (a keep-alive
	// connection would reach the app for as long as it lives otherwise).
	first.c.SetDeadline(time.Now().Add(time.Minute)) // a timeout is no reset
	waitFor(t, "the connection spliced to the app before the intercept reset", func() bool {
		_, _, err := first.get("/", alice) // the app may answer until the reset lands
		return err != nil
	})
	c := dialHTTP(t, e.agent.addr)
	if got := servedBy(c.mustGet("/", alice)); got != "dev" {
		t.Errorf("after the intercept: served by %q, want dev", got)
	}

	// The intercept ends: the next request of the same connection goes to
	// the app.
	e.mgr.setIntercepts()
	e.agent.waitRoutes(t)
	if got := servedBy(c.mustGet("/", alice)); got != "app" {
		t.Errorf("after the intercept ended: served by %q, want app", got)
	}

	// A global intercept takes the requests of HTTP-mode connections too,
	// and new connections whole.
	e.mgr.setIntercepts(globalIntercept("ic-2", pt))
	e.agent.waitRoutes(t, "ic-2")
	if got := servedBy(c.mustGet("/", nil)); got != "dev" {
		t.Errorf("HTTP-mode connection under a global intercept: served by %q, want dev", got)
	}
	if got := servedBy(dialHTTP(t, e.agent.addr).mustGet("/", nil)); got != "dev" {
		t.Errorf("new connection under a global intercept: served by %q, want dev", got)
	}

	// An intercept of a port the agent does not serve is ignored.
	e.mgr.setIntercepts(globalIntercept("ic-3", pt+1))
	e.agent.waitRoutes(t)
}

// TestRoutesAcknowledged: after applying a snapshot the agent tells the
// manager which intercepts its routes carry (not those of ports it does not
// serve), and by then new connections follow them.
func TestRoutesAcknowledged(t *testing.T) {
	e := newEnv(t)
	pt := e.agent.containerPt
	waitFor(t, "the first snapshot acknowledged", func() bool { return e.mgr.ackCount() > 0 })
	if got := e.mgr.lastAck(); len(got) != 0 {
		t.Fatalf("acknowledged before any intercept: got %v, want none", got)
	}

	e.mgr.setIntercepts(globalIntercept("ic-1", pt), globalIntercept("ic-2", pt+1))
	waitFor(t, "ic-1 acknowledged", func() bool { return slices.Equal(e.mgr.lastAck(), []string{"ic-1"}) })
	if got := servedBy(dialHTTP(t, e.agent.addr).mustGet("/", nil)); got != "dev" {
		t.Errorf("new connection once ic-1 is acknowledged: served by %q, want dev", got)
	}

	e.mgr.setIntercepts()
	waitFor(t, "no intercept acknowledged", func() bool { return len(e.mgr.lastAck()) == 0 })
	if got := servedBy(dialHTTP(t, e.agent.addr).mustGet("/", nil)); got != "app" {
		t.Errorf("new connection once the end is acknowledged: served by %q, want app", got)
	}
}

func TestManagerDown(t *testing.T) {
	e := newEnv(t)
	e.mgr.setIntercepts(personalIntercept("ic-1", e.agent.containerPt, map[string]string{"x-dev": "alice"}, ""))
	e.agent.waitRoutes(t, "ic-1")
	c := dialHTTP(t, e.agent.addr)
	if got := servedBy(c.mustGet("/", map[string]string{"X-Dev": "alice"})); got != "dev" {
		t.Fatalf("served by %q, want dev", got)
	}

	e.mgr.stop()
	e.agent.waitRoutes(t)
	if got := servedBy(c.mustGet("/", map[string]string{"X-Dev": "alice"})); got != "app" {
		t.Errorf("manager down, old connection: served by %q, want app", got)
	}
	if got := servedBy(dialHTTP(t, e.agent.addr).mustGet("/", map[string]string{"X-Dev": "alice"})); got != "app" {
		t.Errorf("manager down, new connection: served by %q, want app", got)
	}
	// Still ready: taking the pod out of its service would not help anyone.
	if code := httpStatus(t, "http://"+e.agent.healthAddr+ReadyPath); code != http.StatusOK {
		t.Errorf("ready while the manager is down: %d, want 200", code)
	}

	// The manager comes back knowing nothing: the agent arrives anew and
	// routes by the new manager's snapshot.
	e.mgr.start(e.mgr.address())
	waitFor(t, "the agent to arrive again", func() bool { return e.mgr.arrivalCount() == 2 })
	e.agent.waitRoutes(t, "ic-1")
	if got := servedBy(dialHTTP(t, e.agent.addr).mustGet("/", map[string]string{"X-Dev": "alice"})); got != "dev" {
		t.Errorf("after the manager came back: served by %q, want dev", got)
	}
}

func TestNoManagerAppStillAnswers(t *testing.T) {
	app := newTestServer(t, "app")
	ta := startAgent(t, app, agentOptions{managerAddr: dead})
	if got := servedBy(dialHTTP(t, ta.addr).mustGet("/", nil)); got != "app" {
		t.Errorf("served by %q, want app", got)
	}
	// Ready without the manager: the pod serves its Service (issue 10).
	if code := httpStatus(t, "http://"+ta.healthAddr+ReadyPath); code != http.StatusOK {
		t.Errorf("%s without a manager: %d, want 200", ReadyPath, code)
	}
	if code := httpStatus(t, "http://"+ta.healthAddr+LivePath); code != http.StatusOK {
		t.Errorf("%s: %d, want 200", LivePath, code)
	}
}

// TestReadyBeforeManagerComesUp starts the agent while its manager is down
// (a pod restarted during a manager outage): it is ready and serves the app
// at once, keeps trying to arrive, and routes by the intercepts once the
// manager comes up.
func TestReadyBeforeManagerComesUp(t *testing.T) {
	app, dev := newTestServer(t, "app"), newTestServer(t, "dev")
	mgr := newFakeManager(t, dev.addr.String())
	mgr.stop()
	ta := startAgent(t, app, agentOptions{managerAddr: mgr.address()})

	if code := httpStatus(t, "http://"+ta.healthAddr+ReadyPath); code != http.StatusOK {
		t.Errorf("%s while the manager is down: %d, want 200", ReadyPath, code)
	}
	if got := servedBy(dialHTTP(t, ta.addr).mustGet("/", nil)); got != "app" {
		t.Errorf("manager down: served by %q, want app", got)
	}
	if ta.arrived.Load() {
		t.Fatal("the agent says it arrived while the manager is down")
	}

	// The agent keeps retrying: once the manager is up it arrives and
	// routes by its intercepts, and stays ready throughout.
	mgr.setIntercepts(globalIntercept("ic-1", ta.containerPt))
	mgr.start(mgr.address())
	waitFor(t, "the agent to arrive", ta.arrived.Load)
	ta.waitRoutes(t, "ic-1")
	if got := servedBy(dialHTTP(t, ta.addr).mustGet("/", nil)); got != "dev" {
		t.Errorf("after the manager came up: served by %q, want dev", got)
	}
	if code := httpStatus(t, "http://"+ta.healthAddr+ReadyPath); code != http.StatusOK {
		t.Errorf("%s after arriving: %d, want 200", ReadyPath, code)
	}
}

func TestArrivalAndReArrival(t *testing.T) {
	e := newEnv(t)
	info := e.mgr.lastArrival()
	if info.GetWorkload() != "echo" || info.GetNamespace() != "default" || info.GetKind() != "Deployment" ||
		info.GetPodName() != "echo-7d9c-abcde" || info.GetPodIp() != "127.0.0.1" || info.GetContainer() != "echo" {
		t.Errorf("AgentInfo %v, want the agent's workload, pod and container", info)
	}
	if info.GetVersion() != version.Version || info.GetProtocolVersion() != tunnel.ProtocolVersion {
		t.Errorf("versions %q/%d, want %q/%d", info.GetVersion(), info.GetProtocolVersion(), version.Version, tunnel.ProtocolVersion)
	}
	if env := info.GetEnvironment(); len(env) != 1 || env["GREETING"] != "hello" {
		t.Errorf("environment %v, want the configured one", env)
	}
	if ps := info.GetPorts(); len(ps) != 1 || ps[0].GetContainerPort() != e.agent.containerPt ||
		ps[0].GetAgentPort() != FirstAgentPort || ps[0].GetContainerPortName() != "http" || ps[0].GetProtocol() != "TCP" {
		t.Errorf("ports %v, want the agent's port", ps)
	}
	if code := httpStatus(t, "http://"+e.agent.healthAddr+ReadyPath); code != http.StatusOK {
		t.Errorf("%s: %d, want 200", ReadyPath, code)
	}

	// The manager forgets the session (Remain and the watch say NOT_FOUND):
	// the agent arrives anew.
	e.mgr.forgetSessions()
	waitFor(t, "the agent to arrive again", func() bool { return e.mgr.arrivalCount() >= 2 })
	waitFor(t, "one live session", func() bool { return e.mgr.sessionCount() == 1 })

	// Heartbeats keep the session: after several TTLs it is still the same.
	n := e.mgr.arrivalCount()
	time.Sleep(4 * e.mgr.ttl)
	if got := e.mgr.arrivalCount(); got != n {
		t.Errorf("%d arrivals after 4 TTLs, want %d (heartbeats keep the session)", got, n)
	}
}

func TestDepartOnShutdown(t *testing.T) {
	app := newTestServer(t, "app")
	mgr := newFakeManager(t, "127.0.0.1:1")
	a, err := newAgent(Config{
		ManagerAddr: mgr.address(), ManagerCA: trustedCA(t), TokenFile: writeToken(t, "", testToken),
		Workload: "echo", Kind: "Deployment", Namespace: "default", PodName: "p",
		PodIP: netip.MustParseAddr("127.0.0.1"), Log: testLogger(t), DrainTimeout: -1,
		Ports: []Port{{ContainerPort: int32(app.addr.Port()), AgentPort: 9900, Mechanism: MechanismRename}},
	})
	if err != nil {
		t.Fatal(err)
	}
	a.listen = func(Port) (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }
	a.listenHealth = func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.run(ctx) }()
	waitFor(t, "the agent to arrive", a.arrived.Load)
	if n := mgr.sessionCount(); n != 1 {
		t.Fatalf("%d sessions, want 1", n)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n := mgr.sessionCount(); n != 0 {
		t.Errorf("%d sessions after the agent stopped, want 0 (it departs)", n)
	}
}

func TestDrainOnShutdown(t *testing.T) {
	app := newTestServer(t, "app")
	dev := newTestServer(t, "dev")
	mgr := newFakeManager(t, dev.addr.String())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const drain = 500 * time.Millisecond
	ta := startAgent(t, app, agentOptions{managerAddr: mgr.address(), drain: drain, ctx: ctx})
	waitFor(t, "the agent to arrive", ta.arrived.Load)
	mgr.setIntercepts(globalIntercept("ic-1", ta.containerPt))
	ta.waitRoutes(t, "ic-1")
	before := dialHTTP(t, ta.addr)
	if got := servedBy(before.mustGet("/", nil)); got != "dev" {
		t.Fatalf("served by %q, want dev", got)
	}

	stopped := time.Now()
	cancel()
	// The agent departs and serves on: new connections reach the app, the
	// old one still works, and it is no longer ready.
	waitFor(t, "the agent to depart", func() bool { return mgr.sessionCount() == 0 })
	if got := servedBy(dialHTTP(t, ta.addr).mustGet("/", nil)); got != "app" {
		t.Errorf("during the drain: served by %q, want app", got)
	}
	if got := servedBy(before.mustGet("/", nil)); got != "dev" {
		t.Errorf("during the drain, old connection: served by %q, want dev", got)
	}
	if code := httpStatus(t, "http://"+ta.healthAddr+ReadyPath); code != http.StatusServiceUnavailable {
		t.Errorf("%s during the drain: %d, want 503", ReadyPath, code)
	}
	select {
	case <-ta.done:
		if d := time.Since(stopped); d < drain {
			t.Errorf("Run returned %s after its context ended, want at least the drain of %s", d, drain)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the drain")
	}
	if _, _, err := before.get("/", nil); err == nil {
		t.Error("the old connection still works after Run returned")
	}
}

func TestRunFailsOnBadConfigAndBusyPort(t *testing.T) {
	if err := Run(context.Background(), Config{}); err == nil {
		t.Error("Run with an empty Config: nil error")
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := int32(busy.Addr().(*net.TCPAddr).Port)
	err = Run(context.Background(), Config{
		ManagerAddr: "127.0.0.1:1", ManagerCA: trustedCA(t), TokenFile: "/t", Workload: "w", Kind: "Deployment", Namespace: "n", PodName: "p",
		PodIP: netip.MustParseAddr("127.0.0.1"), HealthAddr: "127.0.0.1:0", Log: testLogger(t),
		Ports: []Port{{ContainerPort: 1, AgentPort: port, Mechanism: MechanismRename}},
	})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("port %d", port)) {
		t.Errorf("Run with a busy agent port: %v, want an error naming the port", err)
	}
}

// dead is an address nobody listens on (and, unlike a closed ephemeral
// port, no test listener gets by chance).
const dead = "127.0.0.1:1"

func httpStatus(t *testing.T, url string) int {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// The agent presents its token on every RPC and rereads the file, so a
// token the kubelet rotated is used from the next RPC on.
func TestTokenPresentedAndReread(t *testing.T) {
	app, dev := newTestServer(t, "app"), newTestServer(t, "dev")
	mgr := newFakeManager(t, dev.addr.String())
	tokenPath := writeToken(t, "", testToken)
	ta := startAgent(t, app, agentOptions{managerAddr: mgr.address(), tokenFile: tokenPath})
	waitFor(t, "the agent to arrive", ta.arrived.Load)

	mgr.setWantToken("rotated")
	writeToken(t, tokenPath, "rotated")
	// Heartbeats (every TTL/3) carry the new token.
	waitFor(t, "the rotated token", func() bool { return slices.Contains(mgr.presentedTokens(), "rotated") })
	if got := mgr.presentedTokens(); got[0] != testToken {
		t.Errorf("tokens presented: got %q, want %q first", got, testToken)
	}
	// Its intercepted connections are flows with the new token too.
	mgr.setIntercepts(globalIntercept("ic-1", ta.containerPt))
	ta.waitRoutes(t, "ic-1")
	if got := servedBy(dialHTTP(t, ta.addr).mustGet("/", nil)); got != "dev" {
		t.Errorf("intercepted with the rotated token: served by %q, want dev", got)
	}
}

// A manager whose certificate the CA did not sign gets no session (and
// no token): the agent routes everything to the app.
func TestUntrustedManagerGetsNothing(t *testing.T) {
	app, dev := newTestServer(t, "app"), newTestServer(t, "dev")
	_, untrusted := testCerts(t)
	mgr := newFakeManager(t, dev.addr.String())
	mgr.stop()
	mgr.setCert(untrusted.cert)
	mgr.start(mgr.address())
	ta := startAgent(t, app, agentOptions{managerAddr: mgr.address()})
	// The agent tries (and backs off) meanwhile; the app answers.
	if got := servedBy(dialHTTP(t, ta.addr).mustGet("/", nil)); got != "app" {
		t.Errorf("served by %q, want app", got)
	}
	mgr.stop()
	if n, toks := mgr.arrivalCount(), mgr.presentedTokens(); n != 0 || len(toks) != 0 {
		t.Errorf("untrusted manager: got %d arrivals and tokens %q, want none", n, toks)
	}
	if ta.arrived.Load() {
		t.Error("the agent says it arrived at an untrusted manager")
	}
}
