package cli

import (
	"context"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"

	"github.com/tp-run/tp/internal/kube"
	"github.com/tp-run/tp/internal/kube/typed"
	"github.com/tp-run/tp/manager"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// restoreAllWorkloads restores the pod template of every workload with an
// agent, with the user's own credentials, then asks the traffic-manager in
// ns, through a port-forward from this host (no connection needed), to end
// their intercepts and replace the pods no controller replaces.
func restoreAllWorkloads(ctx context.Context, getter genericclioptions.RESTClientGetter, ns string) ([]string, error) {
	rc, err := getter.ToRESTConfig()
	if err != nil {
		return nil, err
	}
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	restored, err := kube.RestoreWorkloads(ctx, typed.Workloads(kc), metav1.NamespaceAll, nil)
	if err != nil {
		return restored, fmt.Errorf("restore the workloads before uninstalling: %w", err)
	}
	pods, err := kc.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=traffic-manager"})
	if err != nil {
		return nil, fmt.Errorf("find the traffic-manager in %s: %w", ns, err)
	}
	var pod string
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
			pod = p.Name
		}
	}
	if pod == "" {
		return restored, nil
	}
	pf, err := kube.NewPortForwarder(ctx, rc, ns, pod)
	if err != nil {
		return nil, err
	}
	defer pf.Close()
	cc, err := pf.DialGRPC(manager.Port)
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	resp, err := managerv1.NewManagerClient(cc).UninstallAgents(ctx, &managerv1.UninstallAgentsRequest{All: true})
	if err != nil {
		return restored, fmt.Errorf("restore the workloads before uninstalling: %w", grpcMessage(err))
	}
	for _, r := range resp.GetRestored() {
		if !slices.Contains(restored, r) {
			restored = append(restored, r)
		}
	}
	return restored, nil
}
