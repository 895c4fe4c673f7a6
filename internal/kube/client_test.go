package kube

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
)

// apiRequest is what the fake API server saw.
type apiRequest struct {
	method, path, query, contentType, body string
}

// fakeAPI answers each request with the JSON of answer(path), or 404 when nil.
func fakeAPI(t *testing.T, answer func(r *http.Request) any) (*rest.Config, *[]apiRequest) {
	t.Helper()
	var seen []apiRequest
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		seen = append(seen, apiRequest{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Content-Type"), string(body)})
		a := answer(r)
		w.Header().Set("Content-Type", "application/json")
		if a == nil {
			w.WriteHeader(http.StatusNotFound)
			a = &metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure, Reason: metav1.StatusReasonNotFound, Code: 404}
		}
		_ = json.NewEncoder(w).Encode(a)
	}))
	t.Cleanup(srv.Close)
	return &rest.Config{Host: srv.URL}, &seen
}

// TestClientSpeaksTheAPI: the daemon's Client (no clientset) sends the
// requests client-go's typed clients send, and decodes the answers.
func TestClientSpeaksTheAPI(t *testing.T) {
	cfg, seen := fakeAPI(t, func(r *http.Request) any {
		switch r.Method + " " + r.URL.Path {
		case "GET /api/v1/namespaces/tp/pods":
			return &corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"},
				Items: []corev1.Pod{{ObjectMeta: metav1.ObjectMeta{Name: "traffic-manager-1"}}}}
		case "POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews":
			return &authorizationv1.SelfSubjectAccessReview{TypeMeta: metav1.TypeMeta{Kind: "SelfSubjectAccessReview", APIVersion: "authorization.k8s.io/v1"},
				Status: authorizationv1.SubjectAccessReviewStatus{Allowed: true}}
		case "GET /apis/apps/v1/deployments":
			return &appsv1.DeploymentList{TypeMeta: metav1.TypeMeta{Kind: "DeploymentList", APIVersion: "apps/v1"},
				Items: []appsv1.Deployment{{ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "shop"}}}}
		case "PATCH /apis/apps/v1/namespaces/shop/statefulsets/db":
			return &appsv1.StatefulSet{TypeMeta: metav1.TypeMeta{Kind: "StatefulSet", APIVersion: "apps/v1"}}
		}
		return nil
	})
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	pods, err := c.ListPods(ctx, "tp", "app=traffic-manager")
	if err != nil || len(pods.Items) != 1 || pods.Items[0].Name != "traffic-manager-1" {
		t.Errorf("ListPods: %v, %v", pods, err)
	}
	if got := (*seen)[0].query; got != "labelSelector=app%3Dtraffic-manager" {
		t.Errorf("ListPods query %q, want the label selector", got)
	}

	review, err := c.CreateSelfSubjectAccessReview(ctx, &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
		ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: "tp", Verb: "create", Resource: "pods", Subresource: "portforward"},
	}})
	if err != nil || !review.Status.Allowed {
		t.Errorf("CreateSelfSubjectAccessReview: %v, %v", review, err)
	}
	var sent authorizationv1.SelfSubjectAccessReview
	if err := json.Unmarshal([]byte((*seen)[1].body), &sent); err != nil || sent.Spec.ResourceAttributes == nil || sent.Spec.ResourceAttributes.Subresource != "portforward" {
		t.Errorf("CreateSelfSubjectAccessReview sent %q (%v)", (*seen)[1].body, err)
	}

	ds, err := c.ListDeployments(ctx, "")
	if err != nil || len(ds.Items) != 1 || ds.Items[0].Namespace != "shop" {
		t.Errorf("ListDeployments of every namespace: %v, %v", ds, err)
	}

	if err := c.PatchWorkload(ctx, "shop", "StatefulSet", "db", "application/merge-patch+json", []byte(`{"metadata":{}}`), "tp"); err != nil {
		t.Errorf("PatchWorkload: %v", err)
	}
	if p := (*seen)[3]; p.query != "fieldManager=tp" || p.contentType != "application/merge-patch+json" || p.body != `{"metadata":{}}` {
		t.Errorf("PatchWorkload sent %+v", p)
	}

	// Authorize looks the kinds up in order: not found is no error of its own.
	if kind, err := Authorize(ctx, c, "shop", "db", "s"); err != nil || kind != "StatefulSet" {
		t.Errorf("Authorize: %q, %v; want StatefulSet", kind, err)
	}
	if _, err := Authorize(ctx, c, "shop", "nope", "s"); !errors.Is(err, ErrNoWorkload) {
		t.Errorf("Authorize of a missing workload: %v, want ErrNoWorkload", err)
	}
	if _, err := c.ListReplicaSets(ctx, "shop"); !apierrors.IsNotFound(err) {
		t.Errorf("ListReplicaSets on a 404: %v, want a NotFound API error", err)
	}
	if err := c.PatchWorkload(ctx, "shop", "DaemonSet", "x", "application/merge-patch+json", nil, "tp"); err == nil {
		t.Error("PatchWorkload of a DaemonSet: no error")
	}

	u, err := portForwardURL(cfg, "tp", "traffic-manager-1")
	if err != nil || u.Path != "/api/v1/namespaces/tp/pods/traffic-manager-1/portforward" {
		t.Errorf("portForwardURL: %v, %v", u, err)
	}
}
