package manager

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DefaultRepairEvery is how often the manager looks for pods that run
// without the agent their template asks for.
const DefaultRepairEvery = 30 * time.Second

// repairDelay is how long after the manager starts the first repair waits:
// the API server must first see the new manager pod ready behind the
// webhook's Service, or the replacement is admitted without the agent again.
const repairDelay = 10 * time.Second

// repairPods replaces the pods that run without the traffic-agent although
// their pod template asks for it (label tp.run/agent: enabled). The
// injection webhook fails open (failurePolicy Ignore, so that a manager that
// is down never blocks a workload), which admits such pods while the manager
// is down or restarting; unrepaired, they would serve the workload's Service
// without ever being intercepted. Once after repairDelay and then every
// interval, a sweep deletes per workload one such pod, and only while all of
// the workload's other pods are ready (the previous replacement is done);
// its controller replaces it through the webhook. Pods the webhook would
// refuse today as well (host network, a port clash) are left alone.
func (m *Manager) repairPods(ctx context.Context, interval time.Duration) {
	timer := time.NewTimer(repairDelay)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		if m.cannotInject() == nil {
			m.repairOnce(ctx)
		}
		timer.Reset(interval)
	}
}

// repairOnce runs one sweep over the namespaces the manager may see.
func (m *Manager) repairOnce(ctx context.Context) {
	log := m.log.With("component", "repair")
	for _, ns := range m.namespacesFor("") {
		pods, err := m.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: agentLabel + "=" + agentLabelEnabled})
		if err != nil {
			log.Warn("list the pods that should have an agent", "namespace", ns, "err", err)
			continue
		}
		for _, pod := range agentlessPods(pods.Items) {
			_, wl, err := m.injector.inject(ctx, pod.Namespace, pod)
			if err != nil {
				log.Debug("pod without agent left alone: the webhook would not inject it either", "pod", pod.Namespace+"/"+pod.Name, "err", err)
				continue
			}
			log.Info("replacing a pod admitted without its agent (the webhook was down)", "workload", wl.String(), "pod", pod.Name)
			err = m.kube.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
				Preconditions: &metav1.Preconditions{UID: &pod.UID},
			})
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
				log.Warn("delete a pod admitted without its agent", "pod", pod.Namespace+"/"+pod.Name, "err", err)
			}
		}
	}
}

// agentlessPods picks from pods (all labelled for the agent) at most one pod
// without the agent per controller, and none of a controller with a pod that
// is not ready or terminating (a replacement still coming up).
func agentlessPods(pods []corev1.Pod) []*corev1.Pod {
	type owner struct{ ns, kind, name string }
	busy := map[owner]bool{}
	pick := map[owner]*corev1.Pod{}
	var order []owner
	for i := range pods {
		p := &pods[i]
		c := metav1.GetControllerOf(p)
		if c == nil {
			continue // the webhook injects only pods of a controller
		}
		o := owner{p.Namespace, c.Kind, c.Name}
		if p.DeletionTimestamp != nil || !podReady(p) {
			busy[o] = true
			continue
		}
		if !hasAgent(p) && pick[o] == nil {
			pick[o] = p
			order = append(order, o)
		}
	}
	var out []*corev1.Pod
	for _, o := range order {
		if !busy[o] {
			out = append(out, pick[o])
		}
	}
	return out
}
