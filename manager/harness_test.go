package manager

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/tp-run/tp/agent"
	"github.com/tp-run/tp/internal/kube"
	"github.com/tp-run/tp/internal/kube/typed"
	"github.com/tp-run/tp/internal/sessionid"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/tunnel"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// clock is a settable time source for sessions.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// harness is a Manager on a fake clientset, served over bufconn gRPC: the
// client API on cc, the agent API (as on the agent port, with a test
// authenticator instead of TLS and TokenReviews) on agentLis.
type harness struct {
	t     testing.TB
	m     *Manager
	kube  *fake.Clientset
	cc    *grpc.ClientConn
	mc    managerv1.ManagerClient
	clock *clock

	agentLis *bufconn.Listener
	// agents are the agent API connections by agent session id.
	agents map[string]*grpc.ClientConn
}

// testAgentKey is the metadata the test authenticator takes the caller's
// identity from (JSON of agentIdentity); nothing else is admitted.
const testAgentKey = "x-test-agent"

type testAuthenticator struct{}

func (testAuthenticator) authenticate(ctx context.Context) (*agentIdentity, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get(testAgentKey)
	if len(v) != 1 {
		return nil, status.Error(codes.Unauthenticated, "test: no identity")
	}
	id := &agentIdentity{}
	if err := json.Unmarshal([]byte(v[0]), id); err != nil {
		return nil, status.Errorf(codes.Unauthenticated, "test: %v", err)
	}
	return id, nil
}

// testAgentCreds present an identity to testAuthenticator.
type testAgentCreds struct{ id string }

func (c testAgentCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{testAgentKey: c.id}, nil
}

func (testAgentCreds) RequireTransportSecurity() bool { return false }

// agentConn connects to the agent API as the agent verified as id (nil: no
// identity at all).
func (h *harness) agentConn(id *agentIdentity) *grpc.ClientConn {
	h.t.Helper()
	opts := append(tunnel.DialOptions(),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return h.agentLis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if id != nil {
		b, err := json.Marshal(id)
		if err != nil {
			h.t.Fatal(err)
		}
		opts = append(opts, grpc.WithPerRPCCredentials(testAgentCreds{id: string(b)}))
	}
	cc, err := grpc.NewClient("passthrough:///agents", opts...)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { cc.Close() })
	return cc
}

// agentClient is the agent API as the agent of session id.
func (h *harness) agentClient(id string) managerv1.ManagerClient {
	h.t.Helper()
	cc := h.agents[id]
	if cc == nil {
		h.t.Fatalf("no agent connection for session %q", id)
	}
	return managerv1.NewManagerClient(cc)
}

// podIdentity is what the authenticator verifies for pod of ref that took
// over ports (container ports; agent ports from 9900, as arriveAgent
// claims).
func podIdentity(ref workloadRef, pod string, ports ...int32) *agentIdentity {
	id := &agentIdentity{Workload: ref, Pod: pod, PodUID: types.UID("uid-" + pod), PodIPs: []string{"10.1.0.7"}, Container: "app"}
	for i, p := range ports {
		id.Ports = append(id.Ports, agent.Port{ContainerPort: p, AgentPort: agent.FirstAgentPort + int32(i), Protocol: "TCP", Mechanism: agent.MechanismRename})
	}
	return id
}

const testTTL = 10 * time.Second

func newHarness(t testing.TB, objs ...runtime.Object) *harness {
	t.Helper()
	return newHarnessWith(t, fake.NewClientset(objs...))
}

// newHarnessWith serves a new Manager on kube: on the clientset of another
// harness, it is that manager's next pod.
func newHarnessWith(t testing.TB, kube *fake.Clientset) *harness {
	t.Helper()
	return newHarnessWrapped(t, kube, nil)
}

// newHarnessWrapped is newHarnessWith with the manager's client to the API
// wrapped by wrap (nil: none), e.g. to delay some calls outside the
// clientset's reactor lock.
func newHarnessWrapped(t testing.TB, kube *fake.Clientset, wrap func(kubernetes.Interface) kubernetes.Interface) *harness {
	t.Helper()
	var kc kubernetes.Interface = kube
	if wrap != nil {
		kc = wrap(kube)
	}
	m, err := New(Config{
		Namespace: "tp", SessionTTL: testTTL, Version: "v-test", AgentImage: "tp:test",
		AgentWait: 5 * time.Second, PairWait: 500 * time.Millisecond, Log: slog.New(slog.DiscardHandler),
	}, kc)
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Now()}
	m.sessions = newSessions(testTTL, testTTL, clk.now)
	// Like the API server with the chart's validating webhook: a patch that
	// writes the authorize annotation reaches the authorizer, as user
	// "user-<public session id>".
	for _, resource := range []string{"deployments", "statefulsets", "replicasets"} {
		kube.PrependReactor("patch", resource, func(action k8stesting.Action) (bool, runtime.Object, error) {
			pa := action.(k8stesting.PatchAction)
			var p struct {
				Metadata struct {
					Annotations map[string]string `json:"annotations"`
				} `json:"metadata"`
			}
			if json.Unmarshal(pa.GetPatch(), &p) == nil {
				if v := p.Metadata.Annotations[authorizeAnnotation]; v != "" {
					kind := map[string]string{"deployments": kindDeployment, "statefulsets": kindStatefulSet, "replicasets": kindReplicaSet}[pa.GetResource().Resource]
					if _, err := kube.Tracker().Get(pa.GetResource(), pa.GetNamespace(), pa.GetName()); err == nil {
						sess, _, _ := parseAuthorizeValue(v)
						user := "user-" + sess
						for _, s := range m.sessions.list(clientSession) {
							if s.id == sess {
								user = s.client.GetUser() // the API server authenticated them as who they say
							}
						}
						m.grants.record(v, grant{Ref: workloadRef{Namespace: pa.GetNamespace(), Kind: kind, Name: pa.GetName()},
							Session: sess, User: authenticationv1.UserInfo{Username: user}})
					}
				}
			}
			return false, nil, nil // the tracker applies the patch
		})
	}
	m.agentAuth = testAuthenticator{}

	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(tunnel.ServerOptions()...)
	managerv1.RegisterManagerServer(srv, m)
	tunnels, err := tunnel.NewServer(m.dial, m.authorize, nil)
	if err != nil {
		t.Fatal(err)
	}
	tunnels.HandlePairing(m.pair)
	tunnels.Register(srv)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	cc, err := grpc.NewClient("passthrough:///bufnet", append(tunnel.DialOptions(),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}

	// The agent API, as listenAgents serves it but without TLS.
	agentLis := bufconn.Listen(1 << 20)
	agentTunnels, err := tunnel.NewServer(refuseAgentDial, m.authorizeAgentFlow, nil)
	if err != nil {
		t.Fatal(err)
	}
	agentTunnels.HandlePairing(m.pair)
	agentSrv := grpc.NewServer(append(tunnel.ServerOptions(),
		grpc.UnaryInterceptor(m.authenticateAgentUnary), grpc.StreamInterceptor(m.authenticateAgentStream))...)
	managerv1.RegisterManagerServer(agentSrv, agentServer{m: m})
	agentTunnels.Register(agentSrv)
	agentServed := make(chan struct{})
	go func() {
		defer close(agentServed)
		_ = agentSrv.Serve(agentLis)
	}()
	t.Cleanup(func() {
		cc.Close()
		srv.Stop()
		agentSrv.Stop()
		<-served
		<-agentServed
	})
	return &harness{t: t, m: m, kube: kube, cc: cc, mc: managerv1.NewManagerClient(cc), clock: clk,
		agentLis: agentLis, agents: map[string]*grpc.ClientConn{}}
}

func (h *harness) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	h.t.Cleanup(cancel)
	return ctx
}

// arriveClient opens a client session of user on host with connection name.
func (h *harness) arriveClient(name, host, user string) string {
	h.t.Helper()
	info, err := h.mc.ArriveAsClient(h.ctx(), &managerv1.ClientInfo{
		Name: name, Host: host, User: user, Namespace: "shop", ProtocolVersion: tunnel.ProtocolVersion,
	})
	if err != nil {
		h.t.Fatalf("ArriveAsClient: %v", err)
	}
	return info.GetSessionId()
}

// arriveAgent opens an agent session for pod of ref that took over ports
// (container ports; agent ports from 9900).
func (h *harness) arriveAgent(ref workloadRef, pod string, env map[string]string, ports ...int32) string {
	h.t.Helper()
	a := &managerv1.AgentInfo{
		Workload: ref.Name, Namespace: ref.Namespace, Kind: ref.Kind, PodName: pod, PodIp: "10.1.0.7",
		Container: "app", Environment: env, ProtocolVersion: tunnel.ProtocolVersion,
	}
	for i, p := range ports {
		a.Ports = append(a.Ports, &managerv1.AgentPort{ContainerPort: p, AgentPort: agent.FirstAgentPort + int32(i), Protocol: "TCP"})
	}
	cc := h.agentConn(podIdentity(ref, pod, ports...))
	info, err := managerv1.NewManagerClient(cc).ArriveAsAgent(h.ctx(), a)
	if err != nil {
		h.t.Fatalf("ArriveAsAgent: %v", err)
	}
	h.agents[info.GetSessionId()] = cc
	return info.GetSessionId()
}

// authorize writes the authorize annotation on workload in namespace shop
// for session, as tp's daemon does with the user's credentials.
func (h *harness) authorize(session, workload string) {
	h.t.Helper()
	if _, err := kube.Authorize(h.ctx(), typed.Workloads(h.kube), "shop", workload, sessionid.Public(session)); err != nil && !errors.Is(err, kube.ErrNoWorkload) {
		h.t.Fatalf("authorize %s: %v", workload, err)
	}
}

// intercept creates a global (no headers) or personal intercept of workload
// "echo" and fails the test on error.
func (h *harness) intercept(session, name string, headers map[string]string) *managerv1.InterceptInfo {
	h.t.Helper()
	h.authorize(session, "echo")
	info, err := h.mc.CreateIntercept(h.ctx(), &managerv1.CreateInterceptRequest{SessionId: session, Spec: &managerv1.InterceptSpec{
		Name: name, Workload: "echo", Namespace: "shop", LocalPort: 8000, Headers: headers,
	}})
	if err != nil {
		h.t.Fatalf("CreateIntercept %s: %v", name, err)
	}
	return info
}

var echoRef = workloadRef{Namespace: "shop", Kind: kindDeployment, Name: "echo"}

var echoLabels = map[string]string{"app": "echo"}

func appContainer(ports ...corev1.ContainerPort) corev1.Container {
	return corev1.Container{Name: "app", Image: "echo:1", Ports: ports}
}

func deployment(ns, name string, labels map[string]string, containers ...corev1.Container) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: containers},
			},
		},
	}
}

func service(ns, name string, selector map[string]string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{Selector: selector, Ports: ports, ClusterIP: "10.96.0.10"},
	}
}

func namedPort(name string, port int32, target intstr.IntOrString) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Port: port, TargetPort: target, Protocol: corev1.ProtocolTCP}
}

// echoObjects: Deployment shop/echo (container port http 8080) behind
// Service echo (80 -> http).
func echoObjects() []runtime.Object {
	return []runtime.Object{
		deployment("shop", "echo", echoLabels, appContainer(corev1.ContainerPort{Name: "http", ContainerPort: 8080})),
		service("shop", "echo", echoLabels, namedPort("http", 80, intstr.FromString("http"))),
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
