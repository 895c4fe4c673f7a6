package manager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	tpkube "github.com/tp-run/tp/internal/kube"
	"github.com/tp-run/tp/internal/kube/typed"
)

// Workload kinds as in TP_AGENT_KIND and WorkloadInfo.kind.
const (
	kindDeployment  = "Deployment"
	kindStatefulSet = "StatefulSet"
	kindReplicaSet  = "ReplicaSet"

	// managerFieldManager names the manager in the workloads' managed fields.
	managerFieldManager = "tp-traffic-manager"
)

// workload is a Deployment, StatefulSet or ReplicaSet as far as intercepts
// care.
type workload struct {
	ref         workloadRef
	annotations map[string]string
	template    *corev1.PodTemplateSpec
	selector    *metav1.LabelSelector
	// controller names the Deployment owning a ReplicaSet ("" if none).
	controller string
	// manualRoll: changing the template does not replace the pods (a bare
	// ReplicaSet or a StatefulSet with the OnDelete strategy).
	manualRoll bool
}

func (w *workload) optedOut() bool { return w.annotations[injectAnnotation] == "false" }

func (w *workload) agentEnabled() bool { return w.template.Labels[agentLabel] == agentLabelEnabled }

// agentVersion is the version of the manager that enabled the agent.
func (w *workload) agentVersion() string { return w.template.Annotations[agentVersionAnnotation] }

func fromDeployment(d *appsv1.Deployment) *workload {
	return &workload{
		ref:         workloadRef{Namespace: d.Namespace, Kind: kindDeployment, Name: d.Name},
		annotations: d.Annotations, template: &d.Spec.Template, selector: d.Spec.Selector,
	}
}

func fromStatefulSet(s *appsv1.StatefulSet) *workload {
	return &workload{
		ref:         workloadRef{Namespace: s.Namespace, Kind: kindStatefulSet, Name: s.Name},
		annotations: s.Annotations, template: &s.Spec.Template, selector: s.Spec.Selector,
		manualRoll: s.Spec.UpdateStrategy.Type == appsv1.OnDeleteStatefulSetStrategyType,
	}
}

func fromReplicaSet(rs *appsv1.ReplicaSet) *workload {
	w := &workload{
		ref:         workloadRef{Namespace: rs.Namespace, Kind: kindReplicaSet, Name: rs.Name},
		annotations: rs.Annotations, template: &rs.Spec.Template, selector: rs.Spec.Selector,
		manualRoll: true,
	}
	if o := metav1.GetControllerOf(rs); o != nil && o.Kind == kindDeployment {
		w.controller, w.manualRoll = o.Name, false
	}
	return w
}

// errNoWorkload: no Deployment, StatefulSet or ReplicaSet of that name.
var errNoWorkload = errors.New("no such workload")

// getWorkload finds the Deployment, else the StatefulSet, else the
// ReplicaSet called name.
func getWorkload(ctx context.Context, kube kubernetes.Interface, namespace, name string) (*workload, error) {
	apps := kube.AppsV1()
	d, err := apps.Deployments(namespace).Get(ctx, name, metav1.GetOptions{})
	if err == nil {
		return fromDeployment(d), nil
	} else if !apierrors.IsNotFound(err) {
		return nil, err
	}
	s, err := apps.StatefulSets(namespace).Get(ctx, name, metav1.GetOptions{})
	if err == nil {
		return fromStatefulSet(s), nil
	} else if !apierrors.IsNotFound(err) {
		return nil, err
	}
	rs, err := apps.ReplicaSets(namespace).Get(ctx, name, metav1.GetOptions{})
	if err == nil {
		return fromReplicaSet(rs), nil
	} else if !apierrors.IsNotFound(err) {
		return nil, err
	}
	return nil, fmt.Errorf("no Deployment, StatefulSet or ReplicaSet %q in namespace %s: %w", name, namespace, errNoWorkload)
}

// listWorkloads lists the Deployments, StatefulSets and ReplicaSets that no
// Deployment owns, sorted by name and kind.
func listWorkloads(ctx context.Context, kube kubernetes.Interface, namespace string) ([]*workload, error) {
	apps := kube.AppsV1()
	var out []*workload
	ds, err := apps.Deployments(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for i := range ds.Items {
		out = append(out, fromDeployment(&ds.Items[i]))
	}
	ss, err := apps.StatefulSets(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for i := range ss.Items {
		out = append(out, fromStatefulSet(&ss.Items[i]))
	}
	rss, err := apps.ReplicaSets(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for i := range rss.Items {
		if w := fromReplicaSet(&rss.Items[i]); w.controller == "" {
			out = append(out, w)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].ref, out[j].ref
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return a.Kind < b.Kind
	})
	return out, nil
}

// setAgentLabel adds (enabled) or removes the label tp.run/agent on the
// workload's pod template, and with it the annotation tp.run/agent-version
// (version: the manager's), with a JSON merge patch that touches nothing
// else, so that removing them restores the template exactly. A new version
// changes the template, so its controller replaces the pods and the webhook
// gives them the manager's agent.
func setAgentLabel(ctx context.Context, kube kubernetes.Interface, ref workloadRef, enabled bool, version string) error {
	var label, annotation any // null removes the key
	if enabled {
		label, annotation = agentLabelEnabled, version
	}
	patch, err := json.Marshal(map[string]any{
		"spec": map[string]any{"template": map[string]any{"metadata": map[string]any{
			"labels":      map[string]any{agentLabel: label},
			"annotations": map[string]any{agentVersionAnnotation: annotation},
		}}},
	})
	if err != nil {
		return err
	}
	err = tpkube.PatchWorkload(ctx, typed.Workloads(kube), ref.Namespace, ref.Kind, ref.Name, types.MergePatchType, patch, managerFieldManager)
	if err != nil {
		return fmt.Errorf("label the pod template of %s: %w", ref, err)
	}
	return nil
}

// hasAgent reports whether the pod runs the traffic-agent.
func hasAgent(pod *corev1.Pod) bool {
	for _, c := range pod.Spec.Containers {
		if c.Name == agentContainerName {
			return true
		}
	}
	return false
}

// rollouts replaces, one at a time, the pods of workloads whose controller
// does not do it when the pod template changes (bare ReplicaSets, OnDelete
// StatefulSets), so that they gain or lose the agent. It deletes a pod, waits
// until as many pods are ready as the workload wants again, and goes on with
// the next; it stops a workload when its new pods do not become ready.
type rollouts struct {
	kube     kubernetes.Interface
	log      *slog.Logger
	poll     time.Duration
	podReady time.Duration // how long a replacement may take to get ready

	queue   chan workloadRef
	mu      sync.Mutex
	pending map[workloadRef]bool
}

func newRollouts(kube kubernetes.Interface, log *slog.Logger) *rollouts {
	return &rollouts{
		kube: kube, log: log, poll: time.Second, podReady: 3 * time.Minute,
		queue: make(chan workloadRef, 256), pending: map[workloadRef]bool{},
	}
}

// enqueue asks for a rollout of ref; a rollout already queued covers it.
func (r *rollouts) enqueue(ref workloadRef) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending[ref] {
		return
	}
	select {
	case r.queue <- ref:
		r.pending[ref] = true
	default:
		r.log.Warn("rollout queue full; replace the pods by hand", "workload", ref.String())
	}
}

// Run works the queue until ctx ends.
func (r *rollouts) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case ref := <-r.queue:
			r.mu.Lock()
			delete(r.pending, ref)
			r.mu.Unlock()
			if err := r.roll(ctx, ref); err != nil && ctx.Err() == nil {
				r.log.Warn("replacing pods failed", "workload", ref.String(), "err", err)
			}
		}
	}
}

// roll replaces the pods of ref whose agent does not match the template:
// with the agent when it asks for none or the other way round, or an agent of
// another version (tp.run/agent-version) than it asks for.
func (r *rollouts) roll(ctx context.Context, ref workloadRef) error {
	w, err := getWorkload(ctx, r.kube, ref.Namespace, ref.Name)
	if err != nil {
		return err
	}
	if w.ref != ref {
		return fmt.Errorf("%s is a %s now", ref.Name, w.ref.Kind)
	}
	want := w.agentEnabled()
	pods, err := r.pods(ctx, w)
	if err != nil {
		return err
	}
	ready := 0
	for _, p := range pods {
		if p.DeletionTimestamp == nil && podReady(&p) {
			ready++
		}
	}
	for _, pod := range pods {
		stale := hasAgent(&pod) != want || want && pod.Annotations[agentVersionAnnotation] != w.agentVersion()
		if pod.DeletionTimestamp != nil || !stale {
			continue
		}
		r.log.Info("replacing pod", "workload", ref.String(), "pod", pod.Name, "agent", want)
		err := r.kube.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
			Preconditions: &metav1.Preconditions{UID: &pod.UID},
		})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("delete pod %s: %w", pod.Name, err)
		}
		if err := r.waitReady(ctx, w, ready); err != nil {
			return fmt.Errorf("after deleting pod %s: %w", pod.Name, err)
		}
	}
	return nil
}

// waitReady waits until at least n pods of w that are not terminating are ready.
func (r *rollouts) waitReady(ctx context.Context, w *workload, n int) error {
	ctx, cancel := context.WithTimeout(ctx, r.podReady)
	defer cancel()
	tick := time.NewTicker(r.poll)
	defer tick.Stop()
	for {
		pods, err := r.pods(ctx, w)
		if err == nil {
			ready := 0
			for _, p := range pods {
				if p.DeletionTimestamp == nil && podReady(&p) {
					ready++
				}
			}
			if ready >= n {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("fewer than %d pods ready after %s: %w", n, r.podReady, ctx.Err())
		case <-tick.C:
		}
	}
}

func (r *rollouts) pods(ctx context.Context, w *workload) ([]corev1.Pod, error) {
	sel, err := metav1.LabelSelectorAsSelector(w.selector)
	if err != nil {
		return nil, err
	}
	list, err := r.kube.CoreV1().Pods(w.ref.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, err
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if o := metav1.GetControllerOf(&p); o != nil && o.Kind == w.ref.Kind && o.Name == w.ref.Name {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// kubeStatus turns an error of the Kubernetes API into a gRPC status.
func kubeStatus(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case apierrors.IsForbidden(err):
		return status.Errorf(codes.PermissionDenied, "the traffic-manager lacks a permission (run `tp helm upgrade` to update its RBAC): %v", err)
	case apierrors.IsNotFound(err):
		return status.Error(codes.NotFound, err.Error())
	case apierrors.IsConflict(err):
		return status.Error(codes.Aborted, err.Error())
	case apierrors.IsInvalid(err), apierrors.IsBadRequest(err):
		return status.Error(codes.FailedPrecondition, err.Error())
	case apierrors.IsTimeout(err), apierrors.IsServerTimeout(err), apierrors.IsTooManyRequests(err), apierrors.IsServiceUnavailable(err):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return status.FromContextError(err).Err()
	default:
		return status.Error(codes.Internal, err.Error())
	}
}
