// Package typed adapts client-go's full clientset to what package kube
// takes (kube.Workloads), for the manager and the CLI, which use the
// clientset anyway. Package kube itself must not import the clientset: the
// daemon links kube, and the clientset's init costs it memory (kube.Client).
package typed

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/tp-run/tp/internal/kube"
)

// Workloads is kc's apps/v1 API as kube.Workloads.
func Workloads(kc kubernetes.Interface) kube.Workloads { return workloads{kc} }

type workloads struct{ kc kubernetes.Interface }

func (w workloads) PatchWorkload(ctx context.Context, namespace, kind, name string, pt types.PatchType, patch []byte, fieldManager string) error {
	opts := metav1.PatchOptions{FieldManager: fieldManager}
	var err error
	switch kind {
	case "Deployment":
		_, err = w.kc.AppsV1().Deployments(namespace).Patch(ctx, name, pt, patch, opts)
	case "StatefulSet":
		_, err = w.kc.AppsV1().StatefulSets(namespace).Patch(ctx, name, pt, patch, opts)
	case "ReplicaSet":
		_, err = w.kc.AppsV1().ReplicaSets(namespace).Patch(ctx, name, pt, patch, opts)
	default:
		err = fmt.Errorf("cannot patch a %s", kind)
	}
	return err
}

func (w workloads) ListDeployments(ctx context.Context, namespace string) (*appsv1.DeploymentList, error) {
	return w.kc.AppsV1().Deployments(namespace).List(ctx, metav1.ListOptions{})
}

func (w workloads) ListStatefulSets(ctx context.Context, namespace string) (*appsv1.StatefulSetList, error) {
	return w.kc.AppsV1().StatefulSets(namespace).List(ctx, metav1.ListOptions{})
}

func (w workloads) ListReplicaSets(ctx context.Context, namespace string) (*appsv1.ReplicaSetList, error) {
	return w.kc.AppsV1().ReplicaSets(namespace).List(ctx, metav1.ListOptions{})
}
