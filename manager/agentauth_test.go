package manager

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	tpagent "github.com/tp-run/tp/agent"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/tunnel"
)

// reviewer answers TokenReviews as the API server would for the tokens it
// knows: each names a ServiceAccount and the pod it is bound to.
type reviewer struct {
	tokens  map[string]authnv1.UserInfo
	reviews atomic.Int32
}

func (r *reviewer) install(kube *fake.Clientset) {
	kube.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		r.reviews.Add(1)
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).DeepCopy()
		user, ok := r.tokens[tr.Spec.Token]
		switch {
		case !ok:
			tr.Status = authnv1.TokenReviewStatus{Error: "invalid bearer token"}
		case len(tr.Spec.Audiences) != 1 || tr.Spec.Audiences[0] != tpagent.TokenAudience:
			tr.Status = authnv1.TokenReviewStatus{Error: "token audiences is invalid for the target audiences"}
		default:
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: user, Audiences: tr.Spec.Audiences}
		}
		return true, tr, nil
	})
}

func podUser(ns, sa, pod, uid string) authnv1.UserInfo {
	return authnv1.UserInfo{
		Username: "system:serviceaccount:" + ns + ":" + sa,
		Extra:    map[string]authnv1.ExtraValue{extraPodName: {pod}, extraPodUID: {uid}},
	}
}

// agentPodObjects: Deployment shop/echo, its ReplicaSet, and the injected
// pod echo-5d9f-abcde (uid pod-1) with the agent of port 8080.
func agentPodObjects() []runtime.Object {
	d := deployment("shop", "echo", echoLabels, appContainer())
	d.UID = "dep-1"
	rs := echoReplicaSet()
	rs.UID = "rs-1"
	rs.OwnerReferences[0].UID = "dep-1"
	pod := echoPod(appContainer(), corev1.Container{Name: agentContainerName, Env: []corev1.EnvVar{
		{Name: tpagent.EnvContainer, Value: "app"},
		{Name: tpagent.EnvPorts, Value: `[{"name":"http","containerPort":8080,"agentPort":9900,"protocol":"TCP","mechanism":"rename"}]`},
		{Name: tpagent.EnvMounts, Value: `[{"path":"/etc/secret","readOnly":true},{"path":"/var"}]`},
	}})
	pod.Name, pod.UID = "echo-5d9f-abcde", "pod-1"
	pod.OwnerReferences[0].UID = "rs-1"
	pod.Annotations = map[string]string{injectedAnnotation: "true"}
	pod.Spec.ServiceAccountName = "default"
	pod.Status.PodIPs = []corev1.PodIP{{IP: "10.1.0.7"}}
	plain := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "plain", UID: "pod-2"},
		Spec: corev1.PodSpec{ServiceAccountName: "default", Containers: []corev1.Container{appContainer()}}}
	return []runtime.Object{d, rs, pod, plain}
}

func TestTokenAuthenticator(t *testing.T) {
	const agentToken = "agent-token"
	tokens := map[string]authnv1.UserInfo{
		agentToken:   podUser("shop", "default", "echo-5d9f-abcde", "pod-1"),
		"plain":      podUser("shop", "default", "plain", "pod-2"),
		"unbound":    {Username: "system:serviceaccount:shop:default"},
		"user":       {Username: "alice", Extra: map[string]authnv1.ExtraValue{extraPodName: {"echo-5d9f-abcde"}, extraPodUID: {"pod-1"}}},
		"replaced":   podUser("shop", "default", "echo-5d9f-abcde", "pod-0"),
		"other-sa":   podUser("shop", "builder", "echo-5d9f-abcde", "pod-1"),
		"gone":       podUser("shop", "default", "echo-5d9f-gone", "pod-9"),
		"system-pod": podUser("kube-system", "default", "coredns", "pod-3"),
	}
	tests := []struct {
		name   string
		token  string
		mutate func(objs []runtime.Object)
		want   codes.Code
	}{
		{"no token", "", nil, codes.Unauthenticated},
		{"unknown token", "forged", nil, codes.Unauthenticated},
		{"not bound to a pod", "unbound", nil, codes.Unauthenticated},
		{"not a ServiceAccount", "user", nil, codes.Unauthenticated},
		{"an ordinary pod's token", "plain", nil, codes.PermissionDenied},
		{"a namespace the manager does not serve", "system-pod", nil, codes.PermissionDenied},
		{"pod gone", "gone", nil, codes.PermissionDenied},
		{"pod replaced under the same name", "replaced", nil, codes.PermissionDenied},
		{"another ServiceAccount", "other-sa", nil, codes.PermissionDenied},
		{"no annotation", agentToken, func(objs []runtime.Object) { objs[2].(*corev1.Pod).Annotations = nil }, codes.PermissionDenied},
		{"no tp-agent container", agentToken, func(objs []runtime.Object) {
			p := objs[2].(*corev1.Pod)
			p.Spec.Containers = p.Spec.Containers[:1]
		}, codes.PermissionDenied},
		{"no ports", agentToken, func(objs []runtime.Object) { objs[2].(*corev1.Pod).Spec.Containers[1].Env = nil }, codes.PermissionDenied},
		{"bad mounts", agentToken, func(objs []runtime.Object) {
			objs[2].(*corev1.Pod).Spec.Containers[1].Env[2].Value = `[{"path":"../etc"}]`
		}, codes.PermissionDenied},
		{"no controller", agentToken, func(objs []runtime.Object) { objs[2].(*corev1.Pod).OwnerReferences = nil }, codes.PermissionDenied},
		{"owner reference to another ReplicaSet uid", agentToken, func(objs []runtime.Object) {
			objs[2].(*corev1.Pod).OwnerReferences[0].UID = "rs-forged"
		}, codes.PermissionDenied},
		{"ReplicaSet's owner reference to another Deployment uid", agentToken, func(objs []runtime.Object) {
			objs[1].(*appsv1.ReplicaSet).OwnerReferences[0].UID = "dep-forged"
		}, codes.PermissionDenied},
		{"a Job's pod", agentToken, func(objs []runtime.Object) { objs[2].(*corev1.Pod).OwnerReferences[0].Kind = "Job" }, codes.PermissionDenied},
		{"the agent", agentToken, nil, codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs := agentPodObjects()
			if tt.mutate != nil {
				tt.mutate(objs)
			}
			kube := fake.NewClientset(objs...)
			(&reviewer{tokens: tokens}).install(kube)
			m, err := New(Config{Namespace: "tp", SessionTTL: testTTL, AgentImage: "tp:test"}, kube)
			if err != nil {
				t.Fatal(err)
			}
			id, err := m.agentAuth.authenticate(withToken(tt.token))
			if got := status.Code(err); got != tt.want {
				t.Fatalf("got %v (%v), want %v", got, err, tt.want)
			}
			if err != nil {
				return
			}
			want := podIdentity(echoRef, "echo-5d9f-abcde", 8080)
			want.PodUID = "pod-1"
			want.Ports[0].Name = "http"
			if id.String() != want.String() || id.Container != "app" || !sameAgentPorts(toAgentPorts(want.Ports), id.Ports) ||
				len(id.PodIPs) != 1 || id.PodIPs[0] != "10.1.0.7" {
				t.Errorf("identity: got %+v, want %+v", id, want)
			}
			if wantMounts := []tpagent.Mount{{Path: "/etc/secret", ReadOnly: true}, {Path: "/var"}}; !slices.Equal(id.Mounts, wantMounts) {
				t.Errorf("identity mounts: got %+v, want %+v", id.Mounts, wantMounts)
			}
		})
	}
}

func toAgentPorts(ps []tpagent.Port) []*managerv1.AgentPort {
	var out []*managerv1.AgentPort
	for _, p := range ps {
		out = append(out, &managerv1.AgentPort{ContainerPortName: p.Name, ContainerPort: p.ContainerPort, AgentPort: p.AgentPort, Protocol: "TCP"})
	}
	return out
}

func withToken(tok string) context.Context {
	md := map[string]string{}
	if tok != "" {
		md["authorization"] = "Bearer " + tok
	}
	return metadata.NewIncomingContext(context.Background(), metadata.New(md))
}

// A verified token is trusted for agentTokenCacheTTL without another
// TokenReview; then it is reviewed again.
func TestTokenAuthenticatorCaches(t *testing.T) {
	kube := fake.NewClientset(agentPodObjects()...)
	r := &reviewer{tokens: map[string]authnv1.UserInfo{"agent-token": podUser("shop", "default", "echo-5d9f-abcde", "pod-1")}}
	r.install(kube)
	m, err := New(Config{Namespace: "tp", SessionTTL: testTTL, AgentImage: "tp:test"}, kube)
	if err != nil {
		t.Fatal(err)
	}
	auth := m.agentAuth.(*tokenAuthenticator)
	clk := &clock{t: time.Now()}
	auth.now = clk.now
	for range 3 {
		if _, err := auth.authenticate(withToken("agent-token")); err != nil {
			t.Fatal(err)
		}
	}
	if got := r.reviews.Load(); got != 1 {
		t.Errorf("TokenReviews for 3 RPCs: got %d, want 1", got)
	}
	clk.advance(agentTokenCacheTTL + time.Second)
	if _, err := auth.authenticate(withToken("agent-token")); err != nil {
		t.Fatal(err)
	}
	if got := r.reviews.Load(); got != 2 {
		t.Errorf("TokenReviews after the cache TTL: got %d, want 2", got)
	}
	// Refusals are not cached: every attempt is reviewed (and logged).
	for range 2 {
		if _, err := auth.authenticate(withToken("forged")); status.Code(err) != codes.Unauthenticated {
			t.Errorf("forged token: got %v, want Unauthenticated", err)
		}
	}
	if got := r.reviews.Load(); got != 4 {
		t.Errorf("TokenReviews after 2 forged tokens: got %d, want 4", got)
	}
}

// An agent session belongs to the pod whose agent arrived: it may claim
// only that pod's workload and ports, and nobody else may use its session.
func TestAgentSessionBoundToPod(t *testing.T) {
	h := newHarness(t, echoObjects()...)
	ctx := h.ctx()
	info := func(mutate func(*managerv1.AgentInfo)) *managerv1.AgentInfo {
		a := &managerv1.AgentInfo{
			Workload: "echo", Namespace: "shop", Kind: kindDeployment, PodName: "echo-abc", PodIp: "10.1.0.7",
			Container: "app", ProtocolVersion: tunnel.ProtocolVersion,
			Ports: []*managerv1.AgentPort{{ContainerPort: 8080, AgentPort: 9900, Protocol: "TCP"}},
		}
		if mutate != nil {
			mutate(a)
		}
		return a
	}
	abc := managerv1.NewManagerClient(h.agentConn(podIdentity(echoRef, "echo-abc", 8080)))
	for name, mutate := range map[string]func(*managerv1.AgentInfo){
		"another workload":  func(a *managerv1.AgentInfo) { a.Workload = "db" },
		"another namespace": func(a *managerv1.AgentInfo) { a.Namespace = "bank" },
		"another kind":      func(a *managerv1.AgentInfo) { a.Kind = kindStatefulSet },
		"another pod":       func(a *managerv1.AgentInfo) { a.PodName = "echo-xyz" },
		"another pod IP":    func(a *managerv1.AgentInfo) { a.PodIp = "10.1.0.8" },
		"another container": func(a *managerv1.AgentInfo) { a.Container = "sidecar" },
		"another port": func(a *managerv1.AgentInfo) {
			a.Ports = []*managerv1.AgentPort{{ContainerPort: 5432, AgentPort: 9900, Protocol: "TCP"}}
		},
		"an extra port": func(a *managerv1.AgentInfo) {
			a.Ports = append(a.Ports, &managerv1.AgentPort{ContainerPort: 5432, AgentPort: 9901, Protocol: "TCP"})
		},
		"a mount the webhook did not give it": func(a *managerv1.AgentInfo) {
			a.Mounts = []*managerv1.AgentMount{{Path: "/"}}
		},
	} {
		if _, err := abc.ArriveAsAgent(ctx, info(mutate)); status.Code(err) != codes.PermissionDenied {
			t.Errorf("arriving with %s: got %v, want PermissionDenied", name, err)
		}
	}
	if n := len(h.m.sessions.list(agentSession)); n != 0 {
		t.Fatalf("agent sessions after refused arrivals: got %d, want 0", n)
	}
	sess, err := abc.ArriveAsAgent(ctx, info(nil))
	if err != nil {
		t.Fatalf("arriving as itself: %v", err)
	}
	ref := &managerv1.SessionRef{SessionId: sess.GetSessionId()}

	// Another verified agent (of the same workload) cannot use the session.
	xyz := h.agentConn(podIdentity(echoRef, "echo-xyz", 8080))
	other := managerv1.NewManagerClient(xyz)
	if _, err := other.Remain(ctx, ref); status.Code(err) != codes.PermissionDenied {
		t.Errorf("Remain of another pod's session: got %v, want PermissionDenied", err)
	}
	if w, err := other.WatchIntercepts(ctx, ref); err == nil {
		if _, err = w.Recv(); status.Code(err) != codes.PermissionDenied {
			t.Errorf("WatchIntercepts of another pod's session: got %v, want PermissionDenied", err)
		}
	}
	if _, err := other.Depart(ctx, ref); status.Code(err) != codes.PermissionDenied {
		t.Errorf("Depart of another pod's session: got %v, want PermissionDenied", err)
	}
	alice := h.arriveClient("tp", "laptop", "alice")
	ic := h.intercept(alice, "echo", nil)
	if _, err := tunnel.NewDialer(xyz, sess.GetSessionId(), nil).DialFlow(ctx, tunnel.Flow{Network: "tcp", PairingID: ic.GetId() + "/1"}); err == nil {
		t.Error("a paired flow in another pod's session: got a flow, want an error")
	}
	// Nor can a client, on the client port.
	if _, err := h.mc.Remain(ctx, ref); status.Code(err) != codes.PermissionDenied {
		t.Errorf("Remain of an agent session on the client port: got %v, want PermissionDenied", err)
	}
	if _, err := h.mc.Depart(ctx, ref); status.Code(err) != codes.PermissionDenied {
		t.Errorf("Depart of an agent session on the client port: got %v, want PermissionDenied", err)
	}
	if _, err := tunnel.NewDialer(h.cc, sess.GetSessionId(), nil).DialFlow(ctx, tunnel.Flow{Network: "tcp", PairingID: ic.GetId() + "/2"}); err == nil {
		t.Error("an agent's paired flow on the client port: got a flow, want an error")
	}
	if _, ok := h.m.sessions.get(sess.GetSessionId()); !ok {
		t.Fatal("the session ended")
	}
	// The agent itself may, but it may not dial through the manager.
	if _, err := abc.Remain(ctx, ref); err != nil {
		t.Errorf("Remain of its own session: %v", err)
	}
	_, err = tunnel.NewDialer(h.agentConn(podIdentity(echoRef, "echo-abc", 8080)), sess.GetSessionId(), nil).
		DialFlow(ctx, tunnel.Flow{Network: "tcp", Destination: netip.MustParseAddrPort("10.96.0.1:443")})
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("an agent dialing a destination: got %v, want ECONNREFUSED", err)
	}
}

// The client port serves no agent RPC, the agent port no client RPC and
// nothing without an identity.
func TestAgentAndClientAPIsApart(t *testing.T) {
	h := newHarness(t, echoObjects()...)
	ctx := h.ctx()
	agentID := h.arriveAgent(echoRef, "echo-abc", nil, 8080)
	if _, err := h.mc.ArriveAsAgent(ctx, &managerv1.AgentInfo{Workload: "echo", Namespace: "shop", Kind: kindDeployment,
		PodName: "echo-abc", ProtocolVersion: tunnel.ProtocolVersion}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("ArriveAsAgent on the client port: got %v, want PermissionDenied", err)
	}
	if w, err := h.mc.WatchIntercepts(ctx, &managerv1.SessionRef{SessionId: agentID}); err == nil {
		if _, err = w.Recv(); status.Code(err) != codes.PermissionDenied {
			t.Errorf("WatchIntercepts on the client port: got %v, want PermissionDenied", err)
		}
	}
	agentAPI := h.agentClient(agentID)
	if _, err := agentAPI.ArriveAsClient(ctx, &managerv1.ClientInfo{ProtocolVersion: tunnel.ProtocolVersion}); status.Code(err) != codes.Unimplemented {
		t.Errorf("ArriveAsClient on the agent port: got %v, want Unimplemented", err)
	}
	if _, err := agentAPI.ListSessions(ctx, &managerv1.ListSessionsRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("ListSessions on the agent port: got %v, want Unimplemented", err)
	}
	anonymous := managerv1.NewManagerClient(h.agentConn(nil))
	if _, err := anonymous.Version(ctx, &managerv1.VersionRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("Version on the agent port without identity: got %v, want Unauthenticated", err)
	}
	if _, err := anonymous.ArriveAsAgent(ctx, &managerv1.AgentInfo{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("ArriveAsAgent without identity: got %v, want Unauthenticated", err)
	}
}

// Run serves the agent port with TLS from the certificate directory, and
// nothing there without TLS or without a verified token.
func TestRunServesAgentPort(t *testing.T) {
	dir := t.TempDir()
	cert := writeCert(t, dir, 1)
	m, cfg := runManager(t, dir, (&reviewer{}).install)
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	dial := func(creds credentials.TransportCredentials, opts ...grpc.DialOption) managerv1.ManagerClient {
		cc, err := grpc.NewClient(cfg.AgentAddr, append(opts, grpc.WithTransportCredentials(creds))...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return managerv1.NewManagerClient(cc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tlsClient := dial(credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}))
	eventually(t, "agent port serving", func() bool {
		_, err := tlsClient.Version(ctx, &managerv1.VersionRequest{})
		return status.Code(err) == codes.Unauthenticated
	})

	plain := dial(insecure.NewCredentials())
	if _, err := plain.ArriveAsAgent(ctx, &managerv1.AgentInfo{}); status.Code(err) != codes.Unavailable {
		t.Errorf("plain text to the agent port: got %v, want Unavailable (no TLS, no RPC)", err)
	}
	// A token the API server does not authenticate.
	forged := dial(credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}),
		grpc.WithPerRPCCredentials(bearer("forged")))
	if _, err := forged.ArriveAsAgent(ctx, &managerv1.AgentInfo{}); status.Code(err) != codes.Unauthenticated ||
		!strings.Contains(err.Error(), "audience tp") {
		t.Errorf("a forged token: got %v, want Unauthenticated for audience tp", err)
	}
	if n := len(m.sessions.list(agentSession)); n != 0 {
		t.Errorf("agent sessions: got %d, want 0", n)
	}
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return true }
