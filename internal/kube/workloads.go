package kube

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// What a client does to workloads with the user's own credentials, so that
// the API server, not the traffic-manager, decides whether the user may
// (docs/security.md).
const (
	// AgentLabel on a workload's pod template asks the traffic-manager's
	// webhook to inject the traffic-agent.
	AgentLabel = "tp.run/agent"
	// AgentVersionAnnotation on a workload's pod template, next to
	// AgentLabel, is the version of the traffic-manager that enabled the
	// agent (the agent runs the manager's image). A newer manager that
	// intercepts the workload changes it, which replaces the pods and so
	// their agents (docs/manager.md, "Upgrades").
	AgentVersionAnnotation = "tp.run/agent-version"
	// AuthorizeAnnotation on a workload asks the traffic-manager to act on it
	// for the session it names ("<public session id>.<nonce>").
	AuthorizeAnnotation = "tp.run/authorize"
)

// An ErrorInfo detail with ErrorDomain and ReasonAuthorizationUnseen on the
// traffic-manager's PermissionDenied says its webhook recorded no review of
// the AuthorizeAnnotation value on the workload: the API server did not reach
// it (a manager just installed or restarted, whose webhook endpoint or
// certificate the API server does not use yet; a missing webhook
// configuration). Writing the annotation again may succeed.
const (
	ErrorDomain               = "tp.run"
	ReasonAuthorizationUnseen = "AUTHORIZATION_UNSEEN"
)

// clientFieldManager names tp's clients in the workloads' managed fields.
const clientFieldManager = "tp"

// Workload kinds tp intercepts, in the order a name is looked up.
var workloadKinds = []string{"Deployment", "StatefulSet", "ReplicaSet"}

// Workloads is the part of the apps/v1 API that Authorize, RestoreWorkloads
// and PatchWorkload use: the daemon's Client, or a client-go clientset
// through typed.Workloads (the manager, the CLI).
type Workloads interface {
	PatchWorkload(ctx context.Context, namespace, kind, name string, pt types.PatchType, patch []byte, fieldManager string) error
	ListDeployments(ctx context.Context, namespace string) (*appsv1.DeploymentList, error)
	ListStatefulSets(ctx context.Context, namespace string) (*appsv1.StatefulSetList, error)
	ListReplicaSets(ctx context.Context, namespace string) (*appsv1.ReplicaSetList, error)
}

// ErrNoWorkload says no Deployment, StatefulSet or ReplicaSet has the name.
var ErrNoWorkload = errors.New("no such workload")

// Authorize writes AuthorizeAnnotation for the session with public id
// session on the workload name in namespace, with kc's (the user's)
// credentials; the API server checks that the user may patch it. It returns
// the workload's kind. The annotation changes no pod.
func Authorize(ctx context.Context, kc Workloads, namespace, name, session string) (string, error) {
	nonce := make([]byte, 16)
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"annotations": map[string]string{AuthorizeAnnotation: session + "." + hex.EncodeToString(nonce)},
	}})
	if err != nil {
		return "", err
	}
	var forbidden error
	for _, kind := range workloadKinds {
		err := PatchWorkload(ctx, kc, namespace, kind, name, types.MergePatchType, patch, clientFieldManager)
		switch {
		case err == nil:
			return kind, nil
		case apierrors.IsNotFound(err):
			continue
		case apierrors.IsForbidden(err):
			// The user may lack rights on this kind only; try the others.
			if forbidden == nil {
				forbidden = err
			}
			continue
		default:
			return "", fmt.Errorf("authorize on %s %s in namespace %s: %w", strings.ToLower(kind), name, namespace, err)
		}
	}
	if forbidden != nil {
		return "", fmt.Errorf("you may not change workload %s in namespace %s, which intercepting it needs: %w", name, namespace, forbidden)
	}
	return "", fmt.Errorf("no Deployment, StatefulSet or ReplicaSet %s in namespace %s: %w", name, namespace, ErrNoWorkload)
}

// RestoreWorkloads removes AgentLabel (and AgentVersionAnnotation) from the pod templates of the
// workloads in namespace (every namespace when empty) that carry it, with
// kc's (the user's) credentials: all of them, or those named. That restores
// each template exactly; the traffic-manager then ends their intercepts and
// replaces the pods that a controller does not. It returns the restored
// workloads as "<namespace>/<kind>/<name>" (kind in lower case).
func RestoreWorkloads(ctx context.Context, kc Workloads, namespace string, names []string) ([]string, error) {
	type target struct{ namespace, kind, name string }
	var targets []target
	found := map[string]bool{}
	add := func(ns, kind, name string, labels map[string]string, controlled bool) {
		if controlled || (len(names) > 0 && !slices.Contains(names, name)) {
			return
		}
		found[name] = true
		if _, ok := labels[AgentLabel]; ok {
			targets = append(targets, target{ns, kind, name})
		}
	}
	ds, err := kc.ListDeployments(ctx, namespace)
	if err != nil {
		return nil, fmt.Errorf("list deployments: %w", err)
	}
	for _, d := range ds.Items {
		add(d.Namespace, "Deployment", d.Name, d.Spec.Template.Labels, false)
	}
	ss, err := kc.ListStatefulSets(ctx, namespace)
	if err != nil {
		return nil, fmt.Errorf("list statefulsets: %w", err)
	}
	for _, s := range ss.Items {
		add(s.Namespace, "StatefulSet", s.Name, s.Spec.Template.Labels, false)
	}
	rs, err := kc.ListReplicaSets(ctx, namespace)
	if err != nil {
		return nil, fmt.Errorf("list replicasets: %w", err)
	}
	for _, r := range rs.Items {
		add(r.Namespace, "ReplicaSet", r.Name, r.Spec.Template.Labels, metav1.GetControllerOf(&r) != nil)
	}
	var missing []string
	for _, n := range names {
		if !found[n] {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("no Deployment, StatefulSet or ReplicaSet %s in namespace %s: %w", strings.Join(missing, ", "), namespace, ErrNoWorkload)
	}
	// null removes the key and touches nothing else of the template.
	patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"template": map[string]any{
		"metadata": map[string]any{
			"labels":      map[string]any{AgentLabel: nil},
			"annotations": map[string]any{AgentVersionAnnotation: nil},
		},
	}}})
	var restored []string
	for _, t := range targets {
		if err := PatchWorkload(ctx, kc, t.namespace, t.kind, t.name, types.MergePatchType, patch, clientFieldManager); err != nil {
			return restored, fmt.Errorf("restore %s %s in namespace %s: %w", strings.ToLower(t.kind), t.name, t.namespace, err)
		}
		restored = append(restored, fmt.Sprintf("%s/%s/%s", t.namespace, strings.ToLower(t.kind), t.name))
	}
	return restored, nil
}

// PatchWorkload patches the Deployment, StatefulSet or ReplicaSet (kind)
// name in namespace as fieldManager.
func PatchWorkload(ctx context.Context, kc Workloads, namespace, kind, name string, pt types.PatchType, patch []byte, fieldManager string) error {
	return kc.PatchWorkload(ctx, namespace, kind, name, pt, patch, fieldManager)
}
