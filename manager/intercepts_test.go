package manager

import (
	"context"
	"errors"
	"maps"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	k8stesting "k8s.io/client-go/testing"

	"github.com/tp-run/tp/agent"
	"github.com/tp-run/tp/internal/kube"
	"github.com/tp-run/tp/internal/kube/typed"
	"github.com/tp-run/tp/internal/sessionid"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/tunnel"
)

func TestCreateInterceptInjectsAndWaitsForAgent(t *testing.T) {
	h := newHarness(t, echoObjects()...)
	sess := h.arriveClient("tp", "laptop", "alice")

	type result struct {
		info *managerv1.InterceptInfo
		err  error
	}
	done := make(chan result, 1)
	h.authorize(sess, "echo")
	go func() {
		info, err := h.mc.CreateIntercept(h.ctx(), &managerv1.CreateInterceptRequest{SessionId: sess, Spec: &managerv1.InterceptSpec{
			Workload: "echo", LocalPort: 8000,
		}})
		done <- result{info, err}
	}()

	// The pod template gets the label, the intercept waits for the agent.
	eventually(t, "pod template labelled", func() bool {
		d, err := h.kube.AppsV1().Deployments("shop").Get(context.Background(), "echo", metav1.GetOptions{})
		return err == nil && d.Spec.Template.Labels[agentLabel] == agentLabelEnabled
	})
	var listed *managerv1.WorkloadInfo
	eventually(t, "intercept listed", func() bool {
		resp, err := h.mc.ListWorkloads(h.ctx(), &managerv1.ListWorkloadsRequest{Namespace: "shop"})
		if err != nil || len(resp.GetWorkloads()) != 1 || len(resp.GetWorkloads()[0].GetIntercepts()) != 1 {
			return false
		}
		listed = resp.GetWorkloads()[0]
		return true
	})
	if got, want := listed.GetIntercepts()[0].GetState(), managerv1.InterceptState_INTERCEPT_STATE_WAITING; got != want {
		t.Errorf("state before the agent: got %v, want %v", got, want)
	}
	if !listed.GetAgentInstalled() || listed.GetKind() != kindDeployment || !reflect.DeepEqual(listed.GetServices(), []string{"echo"}) {
		t.Errorf("workload: got %v, want Deployment echo with agent, service echo", listed)
	}
	select {
	case r := <-done:
		t.Fatalf("CreateIntercept returned before an agent arrived: %v, %v", r.info, r.err)
	default:
	}

	h.arriveAgent(echoRef, "echo-abc", map[string]string{"GREETING": "hi", "TP_AGENT_PORTS": "[]", "TP_MANAGER_ADDR": "x"}, 8080)
	r := <-done
	if r.err != nil {
		t.Fatalf("CreateIntercept: %v", r.err)
	}
	info := r.info
	if got, want := info.GetState(), managerv1.InterceptState_INTERCEPT_STATE_ACTIVE; got != want {
		t.Errorf("state: got %v, want %v", got, want)
	}
	if got, want := info.GetEnvironment(), map[string]string{"GREETING": "hi"}; !maps.Equal(got, want) {
		t.Errorf("environment: got %v, want %v", got, want)
	}
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"name", info.GetSpec().GetName(), "echo"},
		{"namespace", info.GetSpec().GetNamespace(), "shop"},
		{"service", info.GetServiceName(), "echo"},
		{"service port", info.GetServicePort(), int32(80)},
		{"service port name", info.GetServicePortName(), "http"},
		{"container port", info.GetContainerPort(), int32(8080)},
		{"pod", info.GetPodName(), "echo-abc"},
		{"owner", info.GetOwner().GetUser(), "alice"},
		{"session", info.GetSessionId(), sessionid.Public(sess)},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
		}
	}

	// A retried request returns the same intercept.
	again := h.intercept(sess, "echo", nil)
	if again.GetId() != info.GetId() {
		t.Errorf("retried CreateIntercept: got id %s, want %s", again.GetId(), info.GetId())
	}
}

func TestCreateInterceptTimesOutWithoutAgent(t *testing.T) {
	h := newHarness(t, echoObjects()...)
	h.m.cfg.AgentWait = 200 * time.Millisecond
	sess := h.arriveClient("tp", "laptop", "alice")

	short, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	for name, ctx := range map[string]context.Context{
		"no deadline: AgentWait": context.Background(),
		"the request's deadline": short,
	} {
		h.authorize(sess, "echo")
		_, err := h.mc.CreateIntercept(ctx, &managerv1.CreateInterceptRequest{SessionId: sess, Spec: &managerv1.InterceptSpec{
			Workload: "echo", LocalPort: 8000,
		}})
		if got := status.Code(err); got != codes.DeadlineExceeded {
			t.Fatalf("%s: CreateIntercept without agent: got %v, want DeadlineExceeded", name, err)
		}
		if msg := status.Convert(err).Message(); !strings.Contains(msg, "no traffic-agent of deployment echo") || !strings.Contains(msg, "0 pods") {
			t.Errorf("%s: error: got %q, want it to name the workload and count its pods", name, msg)
		}
		ics, _ := h.m.registry.list(context.Background(), nil)
		if len(ics) != 0 {
			t.Errorf("%s: intercepts after a failed CreateIntercept: got %d, want 0", name, len(ics))
		}
	}
}

func TestCreateInterceptRefuses(t *testing.T) {
	optedOut := deployment("shop", "echo", echoLabels, appContainer(corev1.ContainerPort{Name: "http", ContainerPort: 8080}))
	optedOut.Annotations = map[string]string{injectAnnotation: "false"}
	svc := service("shop", "echo", echoLabels, namedPort("http", 80, intstr.FromString("http")))
	other := service("shop", "echo2", echoLabels, namedPort("http", 80, intstr.FromString("http")))
	twoPorts := service("shop", "echo", echoLabels, namedPort("http", 80, intstr.FromString("http")), namedPort("admin", 81, intstr.FromInt32(9000)))
	udp := service("shop", "echo", echoLabels, corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP})
	hostNet := deployment("shop", "echo", echoLabels, appContainer(corev1.ContainerPort{Name: "http", ContainerPort: 8080}))
	hostNet.Spec.Template.Spec.HostNetwork = true
	clash := deployment("shop", "echo", echoLabels, appContainer(corev1.ContainerPort{Name: "http", ContainerPort: 8080},
		corev1.ContainerPort{Name: "metrics", ContainerPort: 9898}))
	targetClash := deployment("shop", "echo", echoLabels, appContainer(corev1.ContainerPort{Name: "http", ContainerPort: 9900}))

	tests := []struct {
		name     string
		objs     []runtime.Object
		spec     *managerv1.InterceptSpec
		wantCode codes.Code
		wantMsg  string
	}{
		{"opted out", []runtime.Object{optedOut, svc}, &managerv1.InterceptSpec{Workload: "echo"}, codes.FailedPrecondition, `tp.run/inject: "false"`},
		{"no workload", echoObjects(), &managerv1.InterceptSpec{Workload: "nope"}, codes.NotFound, "no Deployment, StatefulSet or ReplicaSet"},
		{"no service", echoObjects()[:1], &managerv1.InterceptSpec{Workload: "echo"}, codes.FailedPrecondition, "no service selects"},
		{"two services", append(echoObjects(), other), &managerv1.InterceptSpec{Workload: "echo"}, codes.FailedPrecondition, "echo, echo2"},
		{"wrong service", echoObjects(), &managerv1.InterceptSpec{Workload: "echo", Service: "x"}, codes.FailedPrecondition, "does not select"},
		{"two ports", []runtime.Object{echoObjects()[0], twoPorts}, &managerv1.InterceptSpec{Workload: "echo"}, codes.FailedPrecondition, "several ports"},
		{"no such port", echoObjects(), &managerv1.InterceptSpec{Workload: "echo", ServicePort: "grpc"}, codes.FailedPrecondition, "no port grpc"},
		{"udp", []runtime.Object{echoObjects()[0], udp}, &managerv1.InterceptSpec{Workload: "echo"}, codes.FailedPrecondition, "TCP only"},
		{"manager namespace", echoObjects(), &managerv1.InterceptSpec{Workload: "echo", Namespace: "tp"}, codes.FailedPrecondition, "holds the traffic-manager"},
		{"kube-system", echoObjects(), &managerv1.InterceptSpec{Workload: "echo", Namespace: "kube-system"}, codes.FailedPrecondition, "kube-system"},
		{"no local port", echoObjects(), &managerv1.InterceptSpec{Workload: "echo", LocalPort: -1}, codes.InvalidArgument, "local port"},
		{"no workload name", echoObjects(), &managerv1.InterceptSpec{}, codes.InvalidArgument, "no workload"},
		{"hostNetwork", []runtime.Object{hostNet, svc}, &managerv1.InterceptSpec{Workload: "echo"}, codes.FailedPrecondition,
			"cannot intercept deployment echo in namespace shop: the traffic-agent cannot be added: the pod uses the node's network (hostNetwork: true)"},
		{"agent health port taken", []runtime.Object{clash, svc}, &managerv1.InterceptSpec{Workload: "echo"}, codes.FailedPrecondition,
			"deployment echo in namespace shop: the traffic-agent cannot be added: container app uses port 9898, the traffic-agent's health port"},
		{"agent port taken", []runtime.Object{targetClash, svc}, &managerv1.InterceptSpec{Workload: "echo"}, codes.FailedPrecondition,
			"container app uses port 9900, the traffic-agent's port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.objs...)
			sess := h.arriveClient("tp", "laptop", "alice")
			if tt.spec.LocalPort == 0 {
				tt.spec.LocalPort = 8000
			}
			h.authorize(sess, tt.spec.GetWorkload())
			_, err := h.mc.CreateIntercept(h.ctx(), &managerv1.CreateInterceptRequest{SessionId: sess, Spec: tt.spec})
			if got := status.Code(err); got != tt.wantCode {
				t.Fatalf("CreateIntercept: got %v, want code %v", err, tt.wantCode)
			}
			if !strings.Contains(status.Convert(err).Message(), tt.wantMsg) {
				t.Errorf("message: got %q, want it to contain %q", status.Convert(err).Message(), tt.wantMsg)
			}
			d, err := h.kube.AppsV1().Deployments("shop").Get(context.Background(), "echo", metav1.GetOptions{})
			if err == nil && d.Spec.Template.Labels[agentLabel] != "" {
				t.Errorf("pod template labelled %v after a refused intercept, want untouched", d.Spec.Template.Labels)
			}
		})
	}

	t.Run("unknown session", func(t *testing.T) {
		h := newHarness(t, echoObjects()...)
		_, err := h.mc.CreateIntercept(h.ctx(), &managerv1.CreateInterceptRequest{SessionId: "nope", Spec: &managerv1.InterceptSpec{Workload: "echo", LocalPort: 1}})
		if got := status.Code(err); got != codes.NotFound {
			t.Errorf("CreateIntercept of an unknown session: got %v, want NotFound", err)
		}
	})
	t.Run("no webhook", func(t *testing.T) {
		h := newHarness(t, echoObjects()...)
		h.m.setInjectErr(errors.New("webhook certificate: no such file"))
		sess := h.arriveClient("tp", "laptop", "alice")
		_, err := h.mc.CreateIntercept(h.ctx(), &managerv1.CreateInterceptRequest{SessionId: sess, Spec: &managerv1.InterceptSpec{Workload: "echo", LocalPort: 1}})
		if got := status.Code(err); got != codes.FailedPrecondition || !strings.Contains(err.Error(), "no such file") {
			t.Errorf("CreateIntercept without webhook: got %v, want FailedPrecondition with the cause", err)
		}
	})
}

func TestInterceptOwnership(t *testing.T) {
	h := newHarness(t, echoObjects()...)
	h.arriveAgent(echoRef, "echo-abc", nil, 8080)
	alice := h.arriveClient("tp", "laptop", "alice")
	bob := h.arriveClient("dev", "desktop", "bob")
	carol := h.arriveClient("tp", "carolbox", "carol")

	create := func(session, name string, headers map[string]string) error {
		h.authorize(session, "echo")
		_, err := h.mc.CreateIntercept(h.ctx(), &managerv1.CreateInterceptRequest{SessionId: session, Spec: &managerv1.InterceptSpec{
			Name: name, Workload: "echo", LocalPort: 8000, Headers: headers,
		}})
		return err
	}
	wantExists := func(err error, owner ...string) {
		t.Helper()
		if status.Code(err) != codes.AlreadyExists {
			t.Fatalf("got %v, want AlreadyExists", err)
		}
		for _, o := range owner {
			if !strings.Contains(err.Error(), o) {
				t.Errorf("error %q does not name %q", err, o)
			}
		}
		var holder *managerv1.InterceptInfo
		for _, d := range status.Convert(err).Details() {
			if info, ok := d.(*managerv1.InterceptInfo); ok {
				holder = info
			}
		}
		if holder == nil || holder.GetOwner() == nil || holder.GetOwnerLastSeen() == nil {
			t.Errorf("details: got %v, want the holder's InterceptInfo with owner and last seen", status.Convert(err).Details())
		}
	}

	if err := create(alice, "echo", nil); err != nil {
		t.Fatalf("alice global: %v", err)
	}
	wantExists(create(bob, "echo", nil), "alice", "laptop", "connection tp", "last seen")
	wantExists(create(bob, "mine", map[string]string{"x-user": "bob"}), "alice", "global")
	if _, err := h.mc.RemoveIntercept(h.ctx(), &managerv1.RemoveInterceptRequest{SessionId: alice, Name: "echo", Namespace: "shop"}); err != nil {
		t.Fatalf("RemoveIntercept: %v", err)
	}
	if _, err := h.mc.RemoveIntercept(h.ctx(), &managerv1.RemoveInterceptRequest{SessionId: alice, Name: "echo", Namespace: "shop"}); status.Code(err) != codes.NotFound {
		t.Errorf("RemoveIntercept again: got %v, want NotFound", err)
	}

	// Personal intercepts with different headers coexist.
	if err := create(bob, "mine", map[string]string{"x-user": "bob"}); err != nil {
		t.Fatalf("bob personal: %v", err)
	}
	if err := create(carol, "mine", map[string]string{"x-user": "carol"}); err != nil {
		t.Fatalf("carol personal: %v", err)
	}
	// Header names compare case-insensitively.
	wantExists(create(alice, "mine", map[string]string{"X-User": "bob"}), "bob", "desktop", "same headers")
	// A global intercept while personal ones exist.
	wantExists(create(alice, "echo", nil), "bob")
	// The same name with other routing in the same session.
	if err := create(bob, "mine", map[string]string{"x-user": "bobby"}); status.Code(err) != codes.AlreadyExists || !strings.Contains(err.Error(), "you already have") {
		t.Errorf("bob's second intercept named mine: got %v, want AlreadyExists saying so", err)
	}

	resp, err := h.mc.ListWorkloads(h.ctx(), &managerv1.ListWorkloadsRequest{Namespace: "shop"})
	if err != nil {
		t.Fatal(err)
	}
	var owners []string
	for _, ic := range resp.GetWorkloads()[0].GetIntercepts() {
		owners = append(owners, ic.GetOwner().GetUser())
		if ic.GetState() != managerv1.InterceptState_INTERCEPT_STATE_ACTIVE {
			t.Errorf("intercept %s state: got %v, want ACTIVE", ic.GetSpec().GetName(), ic.GetState())
		}
	}
	if want := []string{"bob", "carol"}; !reflect.DeepEqual(owners, want) {
		t.Errorf("intercept owners: got %v, want %v", owners, want)
	}
}

func TestConflicts(t *testing.T) {
	other := workloadRef{Namespace: "shop", Kind: kindDeployment, Name: "other"}
	ic := func(ref workloadRef, port int32, prefix string, headers map[string]string) *intercept {
		return &intercept{Workload: ref, ContainerPort: port, Spec: &managerv1.InterceptSpec{Headers: headers, PathPrefix: prefix}}
	}
	ingest := func(ref workloadRef) *intercept {
		return &intercept{Workload: ref, Spec: &managerv1.InterceptSpec{Ingest: true}}
	}
	bob := map[string]string{"x-user": "bob"}
	tests := []struct {
		name string
		a, b *intercept
		want bool
	}{
		{"global vs global", ic(echoRef, 80, "", nil), ic(echoRef, 80, "", nil), true},
		{"global vs personal", ic(echoRef, 80, "", nil), ic(echoRef, 80, "", bob), true},
		{"personal vs global", ic(echoRef, 80, "", bob), ic(echoRef, 80, "", nil), true},
		{"same headers", ic(echoRef, 80, "", bob), ic(echoRef, 80, "", map[string]string{"X-USER": "bob"}), true},
		{"other header value", ic(echoRef, 80, "", bob), ic(echoRef, 80, "", map[string]string{"x-user": "Bob"}), false},
		{"more headers", ic(echoRef, 80, "", bob), ic(echoRef, 80, "", map[string]string{"x-user": "bob", "x-b": "1"}), false},
		{"other path prefix", ic(echoRef, 80, "/a", bob), ic(echoRef, 80, "/b", bob), false},
		{"other port", ic(echoRef, 80, "", nil), ic(echoRef, 81, "", nil), false},
		{"other workload", ic(echoRef, 80, "", nil), ic(other, 80, "", nil), false},
		{"ingest vs global", ingest(echoRef), ic(echoRef, 0, "", nil), false},
		{"global vs ingest", ic(echoRef, 80, "", nil), ingest(echoRef), false},
		{"ingest vs ingest", ingest(echoRef), ingest(echoRef), false},
	}
	for _, tt := range tests {
		if got := tt.a.conflicts(tt.b); got != tt.want {
			t.Errorf("%s: conflicts got %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestSessionEndRemovesInterceptsAndUpdatesAgents(t *testing.T) {
	h := newHarness(t, echoObjects()...)
	agent := h.arriveAgent(echoRef, "echo-abc", nil, 8080)
	alice := h.arriveClient("tp", "laptop", "alice")
	bob := h.arriveClient("dev", "desktop", "bob")

	ctx, cancel := context.WithCancel(h.ctx())
	defer cancel()
	watch, err := h.agentClient(agent).WatchIntercepts(ctx, &managerv1.SessionRef{SessionId: agent})
	if err != nil {
		t.Fatal(err)
	}
	next := func(want ...string) {
		t.Helper()
		snap, err := watch.Recv()
		if err != nil {
			t.Fatalf("WatchIntercepts: %v", err)
		}
		var got []string
		for _, ic := range snap.GetIntercepts() {
			got = append(got, ic.GetSpec().GetName())
			if ic.GetState() != managerv1.InterceptState_INTERCEPT_STATE_ACTIVE || ic.GetContainerPort() != 8080 {
				t.Errorf("snapshot intercept %v: want ACTIVE on 8080", ic)
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("snapshot: got %v, want %v", got, want)
		}
	}
	next() // the first snapshot comes at once

	h.intercept(alice, "a", map[string]string{"x-user": "alice"})
	next("a")
	h.intercept(bob, "b", map[string]string{"x-user": "bob"})
	next("a", "b")

	// Alice departs.
	if _, err := h.mc.Depart(h.ctx(), &managerv1.SessionRef{SessionId: alice}); err != nil {
		t.Fatal(err)
	}
	next("b")

	// Bob expires: the agent keeps its session alive, bob does not.
	h.clock.advance(testTTL / 2)
	if _, err := h.agentClient(agent).Remain(h.ctx(), &managerv1.SessionRef{SessionId: agent}); err != nil {
		t.Fatal(err)
	}
	h.clock.advance(testTTL/2 + time.Second)
	h.m.expireSessions(context.Background())
	next()
	if _, err := h.mc.Remain(h.ctx(), &managerv1.SessionRef{SessionId: bob}); status.Code(err) != codes.NotFound {
		t.Errorf("Remain of expired bob: got %v, want NotFound", err)
	}

	// The agent's own session expiring ends its watch.
	h.clock.advance(testTTL + time.Second)
	h.m.expireSessions(context.Background())
	if _, err := watch.Recv(); status.Code(err) != codes.NotFound {
		t.Errorf("WatchIntercepts after the agent expired: got %v, want NotFound", err)
	}
}

func TestAgentDepartureMakesInterceptWait(t *testing.T) {
	h := newHarness(t, echoObjects()...)
	agent := h.arriveAgent(echoRef, "echo-abc", nil, 8080)
	alice := h.arriveClient("tp", "laptop", "alice")
	h.intercept(alice, "echo", nil)
	if _, err := h.agentClient(agent).Depart(h.ctx(), &managerv1.SessionRef{SessionId: agent}); err != nil {
		t.Fatal(err)
	}
	resp, err := h.mc.ListWorkloads(h.ctx(), &managerv1.ListWorkloadsRequest{Namespace: "shop"})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetWorkloads()[0].GetIntercepts()[0].GetState(); got != managerv1.InterceptState_INTERCEPT_STATE_WAITING {
		t.Errorf("state without agents: got %v, want WAITING", got)
	}
}

func TestAgentSessionsAreAuthorizedButNotClients(t *testing.T) {
	h := newHarness(t, echoObjects()...)
	agent := h.arriveAgent(echoRef, "echo-abc", nil, 8080)
	if err := h.m.authorize(context.Background(), agent); status.Code(err) != codes.Unauthenticated {
		t.Errorf("client tunnel authorize of an agent session: got %v, want Unauthenticated", err)
	}
	_, err := h.mc.CreateIntercept(h.ctx(), &managerv1.CreateInterceptRequest{SessionId: agent, Spec: &managerv1.InterceptSpec{Workload: "echo", LocalPort: 1}})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("CreateIntercept by an agent: got %v, want PermissionDenied", err)
	}
	resp, err := h.mc.ListSessions(h.ctx(), &managerv1.ListSessionsRequest{})
	if err != nil || len(resp.GetSessions()) != 0 {
		t.Errorf("ListSessions: got %v, %v, want no client sessions", resp, err)
	}
	if _, err := h.agentClient(agent).ArriveAsAgent(h.ctx(), &managerv1.AgentInfo{Workload: "echo", Namespace: "shop", Kind: kindDeployment, ProtocolVersion: 99}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("ArriveAsAgent with another protocol: got %v, want FailedPrecondition", err)
	}
}

func TestUninstallAgentsRestoresTemplate(t *testing.T) {
	d := deployment("shop", "echo", map[string]string{"app": "echo", "tier": "web"},
		corev1.Container{
			Name: "app", Image: "echo:1", Args: []string{"--port", "8080"},
			Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
			Env:            []corev1.EnvVar{{Name: "A", Value: "1"}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromString("http")}}},
		})
	d.Spec.Template.Annotations = map[string]string{"checksum": "abc"}
	d.Annotations = map[string]string{"note": "x"}
	objs := []runtime.Object{d, service("shop", "echo", map[string]string{"app": "echo"}, namedPort("http", 80, intstr.FromString("http")))}
	h := newHarness(t, objs...)
	before := d.Spec.Template.DeepCopy()

	h.arriveAgent(echoRef, "echo-abc", nil, 8080)
	alice := h.arriveClient("tp", "laptop", "alice")
	h.intercept(alice, "echo", nil)
	labelled, err := h.kube.AppsV1().Deployments("shop").Get(context.Background(), "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := labelled.Spec.Template.Labels[agentLabel]; got != agentLabelEnabled {
		t.Fatalf("template label %s: got %q, want %q", agentLabel, got, agentLabelEnabled)
	}

	// The manager restores nothing itself: the user's credentials must.
	if _, err := h.mc.UninstallAgents(h.ctx(), &managerv1.UninstallAgentsRequest{Namespace: "shop", Workloads: []string{"echo"}}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("UninstallAgents of a still labelled workload: got %v, want FailedPrecondition", err)
	}
	if restored, err := kube.RestoreWorkloads(h.ctx(), typed.Workloads(h.kube), "shop", []string{"echo"}); err != nil || !reflect.DeepEqual(restored, []string{"shop/deployment/echo"}) {
		t.Fatalf("RestoreWorkloads: got %v, %v, want [shop/deployment/echo]", restored, err)
	}
	resp, err := h.mc.UninstallAgents(h.ctx(), &managerv1.UninstallAgentsRequest{Namespace: "shop", Workloads: []string{"echo"}})
	if err != nil {
		t.Fatalf("UninstallAgents: %v", err)
	}
	if want := []string{"shop/deployment/echo"}; !reflect.DeepEqual(resp.GetRestored(), want) {
		t.Errorf("restored: got %v, want %v", resp.GetRestored(), want)
	}
	after, err := h.kube.AppsV1().Deployments("shop").Get(context.Background(), "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&after.Spec.Template, before) {
		t.Errorf("template after the round trip:\n got %+v\nwant %+v", after.Spec.Template, *before)
	}
	if ics, _ := h.m.registry.list(context.Background(), nil); len(ics) != 0 {
		t.Errorf("intercepts after uninstall: got %d, want 0", len(ics))
	}

	if _, err := h.mc.UninstallAgents(h.ctx(), &managerv1.UninstallAgentsRequest{Namespace: "shop", Workloads: []string{"nope"}}); status.Code(err) != codes.NotFound {
		t.Errorf("UninstallAgents of a missing workload: got %v, want NotFound", err)
	}
	if _, err := h.mc.UninstallAgents(h.ctx(), &managerv1.UninstallAgentsRequest{Namespace: "shop"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("UninstallAgents of nothing: got %v, want InvalidArgument", err)
	}
	// All: nothing left to restore.
	resp, err = h.mc.UninstallAgents(h.ctx(), &managerv1.UninstallAgentsRequest{All: true})
	if err != nil || len(resp.GetRestored()) != 0 {
		t.Errorf("UninstallAgents all: got %v, %v, want nothing restored", resp, err)
	}
}

func TestSetAgentLabelRoundTrip(t *testing.T) {
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db"},
		Spec: appsv1.StatefulSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "db"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{appContainer(corev1.ContainerPort{ContainerPort: 5432})}},
			},
		},
	}
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "bare"},
		Spec: appsv1.ReplicaSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "bare"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "bare"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{appContainer()}},
			},
		},
	}
	d := deployment("shop", "echo", echoLabels, appContainer())
	h := newHarness(t, sts, rs, d)
	ctx := h.ctx()
	for _, ref := range []workloadRef{
		{Namespace: "shop", Kind: kindStatefulSet, Name: "db"},
		{Namespace: "shop", Kind: kindReplicaSet, Name: "bare"},
		echoRef,
	} {
		w, err := getWorkload(ctx, h.kube, ref.Namespace, ref.Name)
		if err != nil || w.ref != ref {
			t.Fatalf("getWorkload %v: got %v, %v", ref, w, err)
		}
		before := w.template.DeepCopy()
		if err := setAgentLabel(ctx, h.kube, ref, true, "v1"); err != nil {
			t.Fatal(err)
		}
		if w, _ = getWorkload(ctx, h.kube, ref.Namespace, ref.Name); !w.agentEnabled() || w.agentVersion() != "v1" {
			t.Errorf("%v: agent label or version missing after enabling: %v, %v", ref, w.template.Labels, w.template.Annotations)
		}
		if err := setAgentLabel(ctx, h.kube, ref, false, ""); err != nil {
			t.Fatal(err)
		}
		w, _ = getWorkload(ctx, h.kube, ref.Namespace, ref.Name)
		// Semantic: the fake keeps the emptied annotations as {}, which the
		// API server stores as none.
		if !equality.Semantic.DeepEqual(w.template, before) {
			t.Errorf("%v: template after round trip:\n got %+v\nwant %+v", ref, w.template, before)
		}
	}
}

// An intercept of a workload whose agent a manager of another version (or
// one before tp.run/agent-version) enabled sets this manager's version on the
// pod template, so that its controller replaces the pods and they get this
// manager's agent; with this version already there the template is left
// alone, and no pod restarts.
func TestCreateInterceptRollsAgentsOfAnotherVersion(t *testing.T) {
	tests := []struct {
		name        string
		labels      map[string]string
		annotations map[string]string
		wantPatch   bool
	}{
		{"no agent yet", nil, nil, true},
		{"agent of another version", map[string]string{agentLabel: agentLabelEnabled}, map[string]string{agentVersionAnnotation: "v-old"}, true},
		{"agent without a version", map[string]string{agentLabel: agentLabelEnabled}, nil, true},
		{"agent of this version", map[string]string{agentLabel: agentLabelEnabled}, map[string]string{agentVersionAnnotation: "v-test"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			objs := echoObjects()
			d := objs[0].(*appsv1.Deployment)
			maps.Copy(d.Spec.Template.Labels, tc.labels)
			d.Spec.Template.Annotations = tc.annotations
			h := newHarness(t, objs...)
			h.arriveAgent(echoRef, "echo-abc", nil, 8080)
			sess := h.arriveClient("tp", "laptop", "alice")
			h.intercept(sess, "echo", nil)

			got, err := h.kube.AppsV1().Deployments("shop").Get(context.Background(), "echo", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			tmpl := got.Spec.Template
			if tmpl.Labels[agentLabel] != agentLabelEnabled || tmpl.Annotations[agentVersionAnnotation] != "v-test" {
				t.Errorf("pod template: labels %v, annotations %v; want %s=%s and %s=v-test",
					tmpl.Labels, tmpl.Annotations, agentLabel, agentLabelEnabled, agentVersionAnnotation)
			}
			patched := false
			for _, a := range h.kube.Actions() {
				if p, ok := a.(k8stesting.PatchAction); ok && a.GetResource().Resource == "deployments" &&
					strings.Contains(string(p.GetPatch()), agentVersionAnnotation) {
					patched = true
				}
			}
			if patched != tc.wantPatch {
				t.Errorf("pod template patched: got %v, want %v", patched, tc.wantPatch)
			}
		})
	}
}

// An agent of another (older) tp version that speaks the manager's protocol
// is accepted: agents keep working across a manager upgrade until their
// workload is intercepted again (docs/manager.md).
func TestArriveAgentOfAnotherVersion(t *testing.T) {
	h := newHarness(t, echoObjects()...)
	a := &managerv1.AgentInfo{
		Workload: "echo", Namespace: "shop", Kind: kindDeployment, PodName: "echo-old", PodIp: "10.1.0.7", Container: "app",
		Version: "v0.0.1-older", ProtocolVersion: tunnel.ProtocolVersion,
		Ports: []*managerv1.AgentPort{{ContainerPort: 8080, AgentPort: agent.FirstAgentPort, Protocol: "TCP"}},
	}
	cc := h.agentConn(podIdentity(echoRef, "echo-old", 8080))
	info, err := managerv1.NewManagerClient(cc).ArriveAsAgent(h.ctx(), a)
	if err != nil {
		t.Fatalf("ArriveAsAgent of version %s, protocol %d: %v; want it accepted", a.Version, a.ProtocolVersion, err)
	}
	if info.GetManagerVersion() != "v-test" {
		t.Errorf("manager version: got %q, want v-test", info.GetManagerVersion())
	}
}

// TestIngest: an ingest gets the pod's environment once an agent arrived,
// takes no port (it coexists with a global intercept of another session),
// and takes no traffic options.
func TestIngest(t *testing.T) {
	h := newHarness(t, echoObjects()...)
	alice := h.arriveClient("tp", "laptop", "alice")
	bob := h.arriveClient("dev", "desktop", "bob")
	h.arriveAgent(echoRef, "echo-abc", map[string]string{"GREETING": "hi"}, 8080)
	h.authorize(bob, "echo")
	if _, err := h.mc.CreateIntercept(h.ctx(), &managerv1.CreateInterceptRequest{SessionId: bob, Spec: &managerv1.InterceptSpec{
		Workload: "echo", LocalPort: 8000,
	}}); err != nil {
		t.Fatalf("bob's global intercept: %v", err)
	}
	h.authorize(alice, "echo")
	info, err := h.mc.CreateIntercept(h.ctx(), &managerv1.CreateInterceptRequest{SessionId: alice, Spec: &managerv1.InterceptSpec{
		Name: "alice-ingest", Workload: "echo", Ingest: true,
	}})
	if err != nil {
		t.Fatalf("alice's ingest next to bob's global intercept: %v", err)
	}
	if got, want := info.GetEnvironment(), map[string]string{"GREETING": "hi"}; !maps.Equal(got, want) {
		t.Errorf("environment: got %v, want %v", got, want)
	}
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"state", info.GetState(), managerv1.InterceptState_INTERCEPT_STATE_ACTIVE},
		{"pod", info.GetPodName(), "echo-abc"},
		{"container port", info.GetContainerPort(), int32(0)},
		{"service", info.GetServiceName(), ""},
		{"ingest", info.GetSpec().GetIngest(), true},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
		}
	}
	for _, spec := range []*managerv1.InterceptSpec{
		{Workload: "echo", Ingest: true, LocalPort: 8000},
		{Workload: "echo", Ingest: true, Headers: map[string]string{"x-dev": "a"}},
		{Workload: "echo", Ingest: true, ServicePort: "http"},
		{Workload: "echo", Ingest: true, PathPrefix: "/a"},
	} {
		h.authorize(alice, "echo")
		if _, err := h.mc.CreateIntercept(h.ctx(), &managerv1.CreateInterceptRequest{SessionId: alice, Spec: spec}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("ingest %v: got %v, want InvalidArgument", spec, err)
		}
	}
	h.authorize(alice, "echo")
	if _, err := h.mc.CreateIntercept(h.ctx(), &managerv1.CreateInterceptRequest{SessionId: alice, Spec: &managerv1.InterceptSpec{
		Name: "nope", Workload: "echo", Ingest: true, Container: "nope",
	}}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("ingest of a container the workload lacks: got %v, want FailedPrecondition", err)
	}
}
