package manager

import (
	"context"
	"log/slog"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// repairPod is a pod of echoReplicaSet named name, ready or not, with or
// without the agent.
func repairPod(name string, ready, agent bool) *corev1.Pod {
	p := echoPod(appContainer(corev1.ContainerPort{Name: "http", ContainerPort: 8080}))
	p.Name, p.GenerateName, p.UID = name, "", types.UID("uid-"+name)
	if agent {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: agentContainerName})
	}
	cond := corev1.ConditionFalse
	if ready {
		cond = corev1.ConditionTrue
	}
	p.Status.Phase = corev1.PodRunning
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: cond}}
	return p
}

func TestAgentlessPods(t *testing.T) {
	names := func(ps []*corev1.Pod) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Name)
		}
		return out
	}
	other := repairPod("other-1", true, false)
	other.OwnerReferences[0].Name = "other-77f"
	bare := repairPod("bare", true, false)
	bare.OwnerReferences = nil
	for _, tc := range []struct {
		name string
		pods []*corev1.Pod
		want []string
	}{
		{"all have the agent", []*corev1.Pod{repairPod("a", true, true), repairPod("b", true, true)}, nil},
		{"one per controller", []*corev1.Pod{repairPod("a", true, false), repairPod("b", true, false), other}, []string{"a", "other-1"}},
		{"a replacement still coming up", []*corev1.Pod{repairPod("a", true, false), repairPod("new", false, true)}, nil},
		{"no controller", []*corev1.Pod{bare}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var pods []corev1.Pod
			for _, p := range tc.pods {
				pods = append(pods, *p)
			}
			if got := names(agentlessPods(pods)); !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestRepairReplacesAgentlessPods: a sweep deletes the pod admitted without
// its agent and leaves the one the webhook would refuse (host network).
func TestRepairReplacesAgentlessPods(t *testing.T) {
	missed := repairPod("missed", true, false)
	refused := repairPod("refused", true, false)
	refused.OwnerReferences[0].Name = "hostnet-1"
	refused.Spec.HostNetwork = true
	hostnetRS := echoReplicaSet()
	hostnetRS.Name = "hostnet-1"
	objs := []runtime.Object{echoReplicaSet(), hostnetRS, missed, refused, repairPod("fine", true, true),
		service("shop", "echo", echoLabels, namedPort("http", 80, intstr.FromString("http")))}
	in := newInjector(objs...)
	m := &Manager{kube: in.kube, injector: in, log: slog.New(slog.DiscardHandler)}

	m.repairOnce(context.Background())

	pods, err := m.kube.CoreV1().Pods("shop").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, p := range pods.Items {
		left = append(left, p.Name)
	}
	slices.Sort(left)
	if want := []string{"fine", "refused"}; !slices.Equal(left, want) {
		t.Errorf("pods after the repair: got %v, want %v", left, want)
	}
}
