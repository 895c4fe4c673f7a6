package manager

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

var bareLabels = map[string]string{"app": "bare"}

func bareReplicaSet() *appsv1.ReplicaSet {
	return &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "bare", UID: "rs-uid"},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: ptr(int32(2)),
			Selector: &metav1.LabelSelector{MatchLabels: bareLabels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: bareLabels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{appContainer()}},
			},
		},
	}
}

// barePod is a ready pod of the bare ReplicaSet, with the agent of
// agentVersion (as its ReplicaSet's template said when it was created) or
// without the agent ("").
func barePod(name string, agentVersion string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "shop", Name: name, UID: types.UID(name + "-uid"), Labels: bareLabels,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kindReplicaSet, Name: "bare", Controller: ptr(true)}},
		},
		Spec:   corev1.PodSpec{Containers: []corev1.Container{appContainer()}},
		Status: corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
	if agentVersion != "" {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: agentContainerName})
		p.Annotations = map[string]string{agentVersionAnnotation: agentVersion}
	}
	return p
}

func TestRolloutReplacesBareReplicaSetPodsOneByOne(t *testing.T) {
	kube := fake.NewClientset(bareReplicaSet(), barePod("bare-1", ""), barePod("bare-2", ""))
	ref := workloadRef{Namespace: "shop", Kind: kindReplicaSet, Name: "bare"}
	ctx, cancel := context.WithCancel(context.Background())
	r := newRollouts(kube, slog.New(slog.DiscardHandler))
	r.poll = 10 * time.Millisecond
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		r.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-ran })

	exists := func(name string) bool {
		_, err := kube.CoreV1().Pods("shop").Get(context.Background(), name, metav1.GetOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
		return err == nil
	}
	replace := func(gone, replacement, agentVersion string) {
		t.Helper()
		eventually(t, gone+" deleted", func() bool { return !exists(gone) })
		if _, err := kube.CoreV1().Pods("shop").Create(context.Background(), barePod(replacement, agentVersion), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	if err := setAgentLabel(ctx, kube, ref, true, "v1"); err != nil {
		t.Fatal(err)
	}
	r.enqueue(ref)
	replace("bare-1", "bare-3", "v1")
	replace("bare-2", "bare-4", "v1")

	// A manager of another version rolls the pods to its agent.
	if err := setAgentLabel(ctx, kube, ref, true, "v2"); err != nil {
		t.Fatal(err)
	}
	r.enqueue(ref)
	replace("bare-3", "bare-5", "v2")
	replace("bare-4", "bare-6", "v2")

	// Uninstalling rolls the pods back to no agent.
	if err := setAgentLabel(ctx, kube, ref, false, ""); err != nil {
		t.Fatal(err)
	}
	r.enqueue(ref)
	replace("bare-5", "bare-7", "")
	replace("bare-6", "bare-8", "")

	// One at a time: each deletion waits for the previous replacement.
	var got []string
	for _, a := range kube.Actions() {
		if a.GetResource().Resource != "pods" {
			continue
		}
		switch a := a.(type) {
		case k8stesting.DeleteAction:
			got = append(got, "delete "+a.GetName())
		case k8stesting.CreateAction:
			got = append(got, "create "+a.GetObject().(*corev1.Pod).Name)
		}
	}
	want := []string{"delete bare-1", "create bare-3", "delete bare-2", "create bare-4",
		"delete bare-3", "create bare-5", "delete bare-4", "create bare-6",
		"delete bare-5", "create bare-7", "delete bare-6", "create bare-8"}
	if !slices.Equal(got, want) {
		t.Errorf("pod actions: got %v, want %v", got, want)
	}
}

func TestCreateInterceptOfBareReplicaSetRollsPods(t *testing.T) {
	h := newHarness(t, bareReplicaSet(), barePod("bare-1", ""), service("shop", "bare", bareLabels, namedPort("", 80, intstr.FromInt32(8080))))
	h.m.rollouts.poll = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		h.m.rollouts.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-ran })

	ref := workloadRef{Namespace: "shop", Kind: kindReplicaSet, Name: "bare"}
	alice := h.arriveClient("tp", "laptop", "alice")
	h.authorize(alice, "bare")
	done := make(chan error, 1)
	go func() {
		_, err := h.mc.CreateIntercept(h.ctx(), &managerv1.CreateInterceptRequest{SessionId: alice, Spec: &managerv1.InterceptSpec{
			Workload: "bare", Namespace: "shop", LocalPort: 8000,
		}})
		done <- err
	}()
	eventually(t, "bare-1 deleted", func() bool {
		_, err := h.kube.CoreV1().Pods("shop").Get(context.Background(), "bare-1", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
	h.arriveAgent(ref, "bare-2", nil, 8080)
	if err := <-done; err != nil {
		t.Fatalf("CreateIntercept: %v", err)
	}
}
