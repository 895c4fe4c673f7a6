package manager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/tp-run/tp/internal/kube"
	"github.com/tp-run/tp/internal/kube/typed"
)

// How the manager knows who asks, and that they may (docs/security.md).
//
// The client API is reachable only through the API server's port-forward,
// so every caller holds pods/portforward in the manager's namespace, but the
// manager does not learn who they are from that. Before a client may act on
// a workload (intercept it, which injects the agent), it writes the
// annotation tp.run/authorize = "<public session id>.<nonce>" on the workload
// with the user's own credentials: the API server authenticates the user and
// checks their RBAC for `patch` on that workload. The manager's validating
// webhook (path /authorize, it never rejects anything) sees that update with
// the user's userInfo and records a grant: this session may act on this
// workload, on behalf of this user. The manager then
//   - honours a grant only for the session it names and only while the
//     annotation with exactly that value is on the workload as the manager
//     reads it through the API server: a forged AdmissionReview posted to the
//     webhook port cannot make an annotation appear on a workload;
//   - keeps the first review of a value only: the nonce is random and secret
//     until the API server has called the webhook (admission runs before the
//     update is stored, so before anyone can read the value), so a forged
//     review that repeats a value later cannot change whose grant it is;
//   - forgets grants after grantTTL and removes the annotation once used.

// authorizeAnnotation carries a client's request to act on a workload.
const authorizeAnnotation = kube.AuthorizeAnnotation

// AuthorizePath is the URL path of the validating webhook that records grants.
const AuthorizePath = "/authorize"

// grantTTL bounds how long a recorded grant may be used.
const grantTTL = 2 * time.Minute

// maxGrants bounds the grants kept at once: reviews posted straight to the
// webhook port by anyone cannot grow the manager's memory without bound (real
// ones come a few a minute).
const maxGrants = 10000

// grant is one recorded authorization: Session (public id) may act on Ref
// for User.
type grant struct {
	Ref      workloadRef
	Session  string
	User     authenticationv1.UserInfo
	Recorded time.Time
}

// grants are the authorizations the webhook recorded, by annotation value.
type grants struct {
	now func() time.Time

	mu      sync.Mutex
	byValue map[string]grant
}

func newGrants(now func() time.Time) *grants {
	return &grants{now: now, byValue: map[string]grant{}}
}

// record keeps g for value unless value was seen before (first review wins)
// or maxGrants are kept already.
func (gs *grants) record(value string, g grant) bool {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	gs.expireLocked()
	if _, seen := gs.byValue[value]; seen || len(gs.byValue) >= maxGrants {
		return false
	}
	g.Recorded = gs.now()
	gs.byValue[value] = g
	return true
}

// lookup returns the grant recorded for value, if it is still valid.
func (gs *grants) lookup(value string) (grant, bool) {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	gs.expireLocked()
	g, ok := gs.byValue[value]
	return g, ok
}

func (gs *grants) expireLocked() {
	deadline := gs.now().Add(-grantTTL)
	for v, g := range gs.byValue {
		if g.Recorded.Before(deadline) {
			delete(gs.byValue, v)
		}
	}
}

// parseAuthorizeValue splits "<public session id>.<nonce>".
func parseAuthorizeValue(v string) (session, nonce string, ok bool) {
	session, nonce, ok = strings.Cut(v, ".")
	if !ok || len(session) != 16 || len(nonce) < 32 {
		return "", "", false
	}
	return session, nonce, true
}

// errNotAuthorized says why a session may not act on a workload. unseen: the
// webhook recorded no grant for the annotation's value (the API server did
// not reach it), which writing the annotation again may cure.
type errNotAuthorized struct {
	reason string
	unseen bool
}

// notAuthorizedStatus is err (from grants.authorized) as the gRPC status
// PermissionDenied with msg, and an ErrorInfo detail when the webhook did not
// see the authorization (kube.ReasonAuthorizationUnseen), so that the daemon
// knows to write it again.
func notAuthorizedStatus(err error, msg string) error {
	st := status.New(codes.PermissionDenied, msg)
	var na *errNotAuthorized
	if errors.As(err, &na) && na.unseen {
		if d, derr := st.WithDetails(&errdetails.ErrorInfo{Domain: kube.ErrorDomain, Reason: kube.ReasonAuthorizationUnseen}); derr == nil {
			st = d
		}
	}
	return st.Err()
}

func (e *errNotAuthorized) Error() string { return e.reason }

// authorized checks that the session with public id session may act on the
// workload w (as just read from the API server) and returns the user the API
// server authenticated for it.
func (gs *grants) authorized(w *workload, session string) (authenticationv1.UserInfo, error) {
	value := w.annotations[authorizeAnnotation]
	if value == "" {
		return authenticationv1.UserInfo{}, &errNotAuthorized{reason: fmt.Sprintf(
			"%s carries no %s annotation: tp writes it with your own credentials before it intercepts, "+
				"so you need `patch` on %ss in namespace %s", w.ref, authorizeAnnotation, strings.ToLower(w.ref.Kind), w.ref.Namespace)}
	}
	g, ok := gs.lookup(value)
	switch {
	case !ok:
		return authenticationv1.UserInfo{}, &errNotAuthorized{reason: fmt.Sprintf(
			"the traffic-manager's webhook did not see the %s annotation on %s being written "+
				"(webhook configuration missing or the manager restarted meanwhile): run `tp helm upgrade`, then try again",
			authorizeAnnotation, w.ref), unseen: true}
	case g.Session != session || g.Ref != w.ref:
		return authenticationv1.UserInfo{}, &errNotAuthorized{reason: fmt.Sprintf(
			"the %s annotation on %s names another session (someone else is intercepting it right now): try again",
			authorizeAnnotation, w.ref)}
	}
	return g.User, nil
}

// authorizer is the validating webhook that records grants. It always admits.
type authorizer struct {
	grants *grants
	log    *slog.Logger
}

func (a *authorizer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	serveAdmission(w, r, a.review)
}

// objectMeta is what the authorizer reads of a workload.
type objectMeta struct {
	Metadata metav1.ObjectMeta `json:"metadata"`
}

func (a *authorizer) review(_ context.Context, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	allow := &admissionv1.AdmissionResponse{Allowed: true}
	switch req.Kind.Kind {
	case "Deployment", "StatefulSet", "ReplicaSet":
	default:
		return allow
	}
	if req.Operation != admissionv1.Update || req.SubResource != "" || (req.DryRun != nil && *req.DryRun) {
		return allow
	}
	var obj, old objectMeta
	if err := json.Unmarshal(req.Object.Raw, &obj); err != nil {
		a.log.Warn("authorize: decode object", "kind", req.Kind.Kind, "namespace", req.Namespace, "name", req.Name, "err", err)
		return allow
	}
	_ = json.Unmarshal(req.OldObject.Raw, &old)
	value := obj.Metadata.Annotations[authorizeAnnotation]
	if value == "" || value == old.Metadata.Annotations[authorizeAnnotation] {
		return allow // not a new request to act on this workload
	}
	session, _, ok := parseAuthorizeValue(value)
	if !ok {
		a.log.Warn("authorize: malformed annotation", "kind", req.Kind.Kind, "namespace", req.Namespace, "name", req.Name,
			"user", req.UserInfo.Username)
		return allow
	}
	ref := workloadRef{Namespace: req.Namespace, Kind: req.Kind.Kind, Name: req.Name}
	if a.grants.record(value, grant{Ref: ref, Session: session, User: req.UserInfo}) {
		a.log.Info("authorization recorded", "workload", ref.String(), "session", session, "user", req.UserInfo.Username)
	} else {
		// The Deployment controller copies the annotation to the
		// ReplicaSet; a forged review repeats a value too. Neither counts.
		a.log.Debug("authorize annotation seen again (ignored)", "workload", ref.String(), "session", session, "user", req.UserInfo.Username)
	}
	return allow
}

// serveAdmission decodes an AdmissionReview, answers it with review and
// writes the response.
func serveAdmission(w http.ResponseWriter, r *http.Request, review func(context.Context, *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 8<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var in admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &in); err != nil || in.Request == nil {
		http.Error(w, fmt.Sprintf("not an AdmissionReview with a request: %v", err), http.StatusBadRequest)
		return
	}
	resp := review(r.Context(), in.Request)
	resp.UID = in.Request.UID
	out, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "AdmissionReview"},
		Response: resp,
	})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)
}

// clearAuthorization removes a used authorize annotation (best effort: a
// leftover one authorizes nothing once its grant expires).
func clearAuthorization(ctx context.Context, kc kubernetes.Interface, ref workloadRef, value string, log *slog.Logger) {
	// The test guards against removing a newer request written meanwhile.
	patch, _ := json.Marshal([]map[string]any{
		{"op": "test", "path": "/metadata/annotations/" + jsonPointerEscape(authorizeAnnotation), "value": value},
		{"op": "remove", "path": "/metadata/annotations/" + jsonPointerEscape(authorizeAnnotation)},
	})
	err := kube.PatchWorkload(ctx, typed.Workloads(kc), ref.Namespace, ref.Kind, ref.Name, types.JSONPatchType, patch, managerFieldManager)
	if err != nil {
		log.Debug("authorize annotation left in place", "workload", ref.String(), "err", err)
	}
}

func jsonPointerEscape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}
