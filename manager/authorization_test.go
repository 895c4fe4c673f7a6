package manager

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	appsv1client "k8s.io/client-go/kubernetes/typed/apps/v1"
	k8stesting "k8s.io/client-go/testing"

	"github.com/tp-run/tp/internal/kube"
	"github.com/tp-run/tp/internal/sessionid"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

const (
	testSession = "0123456789abcdef"
	testNonce   = "00112233445566778899aabbccddeeff"
	testValue   = testSession + "." + testNonce
)

func TestGrantsFirstReviewWinsAndExpire(t *testing.T) {
	clk := &clock{t: time.Now()}
	gs := newGrants(clk.now)
	alice := grant{Ref: echoRef, Session: testSession, User: authenticationv1.UserInfo{Username: "alice"}}
	if !gs.record(testValue, alice) {
		t.Fatal("first review not recorded")
	}
	forged := alice
	forged.User.Username = "mallory"
	if gs.record(testValue, forged) {
		t.Error("a second review of the same value was recorded")
	}
	if g, ok := gs.lookup(testValue); !ok || g.User.Username != "alice" {
		t.Errorf("lookup: got %+v, %v, want alice's grant", g, ok)
	}
	clk.advance(grantTTL + time.Second)
	if _, ok := gs.lookup(testValue); ok {
		t.Error("grant still valid after its TTL")
	}
}

func TestGrantsAuthorized(t *testing.T) {
	gs := newGrants(time.Now)
	gs.record(testValue, grant{Ref: echoRef, Session: testSession, User: authenticationv1.UserInfo{Username: "alice"}})
	w := func(value string, ref workloadRef) *workload {
		return &workload{ref: ref, annotations: map[string]string{authorizeAnnotation: value}}
	}
	other := echoRef
	other.Namespace = "other"
	for _, tt := range []struct {
		name    string
		w       *workload
		session string
		ok      bool
	}{
		{"the annotation on the workload, the session it names", w(testValue, echoRef), testSession, true},
		{"no annotation", &workload{ref: echoRef}, testSession, false},
		{"another session", w(testValue, echoRef), "fedcba9876543210", false},
		{"a value the webhook never saw (forged or missed)", w(testSession+".ffffffffffffffffffffffffffffffff", echoRef), testSession, false},
		{"a grant for another workload", w(testValue, other), testSession, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			user, err := gs.authorized(tt.w, tt.session)
			if (err == nil) != tt.ok {
				t.Fatalf("got %v, want ok=%v", err, tt.ok)
			}
			if tt.ok && user.Username != "alice" {
				t.Errorf("user: got %q, want alice", user.Username)
			}
		})
	}
}

func TestAuthorizerReview(t *testing.T) {
	raw := func(annotations map[string]string) runtime.RawExtension {
		b, _ := json.Marshal(map[string]any{"metadata": metav1.ObjectMeta{Annotations: annotations}})
		return runtime.RawExtension{Raw: b}
	}
	yes := true
	base := admissionv1.AdmissionRequest{
		Kind: metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}, Operation: admissionv1.Update,
		Namespace: "shop", Name: "echo", UserInfo: authenticationv1.UserInfo{Username: "alice"},
		Object: raw(map[string]string{authorizeAnnotation: testValue}), OldObject: raw(nil),
	}
	for _, tt := range []struct {
		name   string
		modify func(*admissionv1.AdmissionRequest)
		record bool
	}{
		{"a new value", func(*admissionv1.AdmissionRequest) {}, true},
		{"unchanged value (another update)", func(r *admissionv1.AdmissionRequest) {
			r.OldObject = raw(map[string]string{authorizeAnnotation: testValue})
		}, false},
		{"dry run", func(r *admissionv1.AdmissionRequest) { r.DryRun = &yes }, false},
		{"a pod", func(r *admissionv1.AdmissionRequest) { r.Kind.Kind = "Pod" }, false},
		{"a status update", func(r *admissionv1.AdmissionRequest) { r.SubResource = "status" }, false},
		{"malformed", func(r *admissionv1.AdmissionRequest) {
			r.Object = raw(map[string]string{authorizeAnnotation: "alice please"})
		}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := &authorizer{grants: newGrants(time.Now), log: slog.New(slog.DiscardHandler)}
			req := base
			tt.modify(&req)
			if resp := a.review(context.Background(), &req); !resp.Allowed {
				t.Errorf("review denied the update; it must never deny")
			}
			g, ok := a.grants.lookup(testValue)
			if ok != tt.record {
				t.Fatalf("recorded: got %v, want %v", ok, tt.record)
			}
			if ok && (g.User.Username != "alice" || g.Ref != echoRef || g.Session != testSession) {
				t.Errorf("grant: got %+v", g)
			}
		})
	}
}

// TestCreateInterceptNeedsAuthorization: without the user's own patch of the
// workload (or with only a forged review) nothing is intercepted or injected.
func TestCreateInterceptNeedsAuthorization(t *testing.T) {
	d := deployment("shop", "echo", echoLabels, appContainer(corev1.ContainerPort{Name: "http", ContainerPort: 8080}))
	h := newHarness(t, d, service("shop", "echo", echoLabels, namedPort("http", 80, intstr.FromString("http"))))
	mallory := h.arriveClient("tp", "laptop", "mallory")
	req := &managerv1.CreateInterceptRequest{SessionId: mallory, Spec: &managerv1.InterceptSpec{Workload: "echo", Namespace: "shop", LocalPort: 8000}}

	_, err := h.mc.CreateIntercept(h.ctx(), req)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("without authorization: got %v, want PermissionDenied", err)
	}
	// A review posted straight to the webhook port, for an annotation that
	// the API server never stored.
	h.m.grants.record(sessionid.Public(mallory)+"."+testNonce, grant{Ref: echoRef, Session: sessionid.Public(mallory),
		User: authenticationv1.UserInfo{Username: "admin"}})
	if _, err := h.mc.CreateIntercept(h.ctx(), req); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("with a forged review: got %v, want PermissionDenied", err)
	}
	got, err := h.kube.AppsV1().Deployments("shop").Get(context.Background(), "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := got.Spec.Template.Labels[agentLabel]; ok {
		t.Error("a refused intercept labelled the pod template for injection")
	}
	if ics, _ := h.m.registry.list(context.Background(), nil); len(ics) != 0 {
		t.Errorf("intercepts after refusals: got %d, want 0", len(ics))
	}
}

// TestRemoveInterceptByForce: a teammate's intercept ends by force only for
// a caller who authorized on the workload with their own credentials.
func TestRemoveInterceptByForce(t *testing.T) {
	d := deployment("shop", "echo", echoLabels, appContainer(corev1.ContainerPort{Name: "http", ContainerPort: 8080}))
	h := newHarness(t, d, service("shop", "echo", echoLabels, namedPort("http", 80, intstr.FromString("http"))))
	h.arriveAgent(echoRef, "echo-abc", nil, 8080)
	alice := h.arriveClient("tp", "laptop", "alice")
	h.intercept(alice, "echo", nil)
	bob := h.arriveClient("tp", "desktop", "bob")
	force := &managerv1.RemoveInterceptRequest{SessionId: bob, Name: "echo", Namespace: "shop", Force: true}

	if _, err := h.mc.RemoveIntercept(h.ctx(), force); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("force without authorization: got %v, want PermissionDenied", err)
	}
	if _, err := h.mc.RemoveIntercept(h.ctx(), &managerv1.RemoveInterceptRequest{SessionId: bob, Name: "echo", Namespace: "shop"}); status.Code(err) != codes.NotFound {
		t.Errorf("leave without force of another's intercept: got %v, want NotFound", err)
	}
	if ics, _ := h.m.registry.list(context.Background(), nil); len(ics) != 1 {
		t.Fatalf("intercepts after refusals: got %d, want alice's", len(ics))
	}
	h.authorize(bob, "echo")
	if _, err := h.mc.RemoveIntercept(h.ctx(), force); err != nil {
		t.Fatalf("force with authorization: %v", err)
	}
	if ics, _ := h.m.registry.list(context.Background(), nil); len(ics) != 0 {
		t.Errorf("intercepts after force: got %d, want 0", len(ics))
	}
	if _, err := h.mc.RemoveIntercept(h.ctx(), force); status.Code(err) != codes.NotFound {
		t.Errorf("force of a gone intercept: got %v, want NotFound", err)
	}
}

func TestGrantsBounded(t *testing.T) {
	gs := newGrants(time.Now)
	for i := range maxGrants {
		gs.record(fmt.Sprintf("%s.%032x", testSession, i), grant{Ref: echoRef, Session: testSession})
	}
	if gs.record(testValue, grant{Ref: echoRef, Session: testSession}) {
		t.Errorf("recorded grant %d, want at most %d kept", maxGrants+1, maxGrants)
	}
}

// TestCreateInterceptClearsAuthorizationAlongside: the used authorize
// annotation is removed while the rest of CreateIntercept runs (its patch
// does not delay the answer by an API round trip), and is gone when
// CreateIntercept answers.
func TestCreateInterceptClearsAuthorizationAlongside(t *testing.T) {
	kube := fake.NewClientset(echoObjects()...)
	listed := make(chan struct{})
	var once sync.Once
	kube.PrependReactor("list", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		once.Do(func() { close(listed) })
		return false, nil, nil
	})
	clearing := &clearingWaits{listed: listed, overlapped: make(chan bool, 16)}
	h := newHarnessWrapped(t, kube, func(kc kubernetes.Interface) kubernetes.Interface { clearing.Interface = kc; return clearing })
	h.arriveAgent(echoRef, "echo-abc", nil, 8080)
	alice := h.arriveClient("tp", "laptop", "alice")
	h.intercept(alice, "echo", nil)

	select {
	case ok := <-clearing.overlapped:
		if !ok {
			t.Error("the authorize annotation was cleared before CreateIntercept went on: want the patch alongside")
		}
	default:
		t.Fatal("CreateIntercept answered before clearing the authorize annotation")
	}
	got, err := kube.AppsV1().Deployments("shop").Get(context.Background(), "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := got.Annotations[authorizeAnnotation]; ok {
		t.Errorf("authorize annotation after CreateIntercept: got %q, want none", v)
	}
}

// clearingWaits holds each JSON patch of a Deployment (the clearing of the
// authorize annotation) until listed is closed, for at most 5 s, and says on
// overlapped whether listed came first.
type clearingWaits struct {
	kubernetes.Interface
	listed     <-chan struct{}
	overlapped chan bool
}

func (k *clearingWaits) AppsV1() appsv1client.AppsV1Interface {
	return clearingApps{AppsV1Interface: k.Interface.AppsV1(), k: k}
}

type clearingApps struct {
	appsv1client.AppsV1Interface
	k *clearingWaits
}

func (a clearingApps) Deployments(ns string) appsv1client.DeploymentInterface {
	return clearingDeployments{DeploymentInterface: a.AppsV1Interface.Deployments(ns), k: a.k}
}

type clearingDeployments struct {
	appsv1client.DeploymentInterface
	k *clearingWaits
}

func (d clearingDeployments) Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, sub ...string) (*appsv1.Deployment, error) {
	if pt == types.JSONPatchType {
		ok := true
		select {
		case <-d.k.listed:
		case <-time.After(5 * time.Second):
			ok = false
		}
		select {
		case d.k.overlapped <- ok:
		default:
		}
	}
	return d.DeploymentInterface.Patch(ctx, name, pt, data, opts, sub...)
}

func TestNotAuthorizedStatusMarksUnseen(t *testing.T) {
	gs := newGrants(time.Now)
	w := &workload{ref: workloadRef{Namespace: "ns", Kind: "Deployment", Name: "echo"},
		annotations: map[string]string{authorizeAnnotation: testValue}}
	_, err := gs.authorized(w, testSession)
	if err == nil {
		t.Fatal("authorized without a recorded grant")
	}
	st := status.Convert(notAuthorizedStatus(err, "intercept x: "+err.Error()))
	if st.Code() != codes.PermissionDenied || len(st.Details()) != 1 {
		t.Fatalf("unseen: got %v with details %v; want PermissionDenied with one ErrorInfo", st.Code(), st.Details())
	}
	if info, ok := st.Details()[0].(*errdetails.ErrorInfo); !ok || info.GetReason() != kube.ReasonAuthorizationUnseen || info.GetDomain() != kube.ErrorDomain {
		t.Errorf("detail %v; want ErrorInfo %s/%s", st.Details()[0], kube.ErrorDomain, kube.ReasonAuthorizationUnseen)
	}

	delete(w.annotations, authorizeAnnotation)
	_, err = gs.authorized(w, testSession)
	if st := status.Convert(notAuthorizedStatus(err, err.Error())); st.Code() != codes.PermissionDenied || len(st.Details()) != 0 {
		t.Errorf("no annotation: got %v with details %v; want PermissionDenied without details", st.Code(), st.Details())
	}
}
