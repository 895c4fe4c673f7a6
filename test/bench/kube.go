package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/wait"
	yamlutil "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
)

// kube is the bench's handle on the cluster.
type kube struct {
	client  kubernetes.Interface
	dynamic dynamic.Interface
	mapper  *restmapper.DeferredDiscoveryRESTMapper
}

func newKube(kubeconfig string) (*kube, error) {
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s (run `make cluster-up`): %w", kubeconfig, err)
	}
	config.QPS, config.Burst = 50, 100
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(config)
	if err != nil {
		return nil, err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(client.Discovery()))
	return &kube{client: client, dynamic: dyn, mapper: mapper}, nil
}

func (k *kube) createNamespace(ctx context.Context, prefix string) (string, error) {
	ns := prefix + "-" + rand.String(5)
	_, err := k.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("create namespace %s: %w", ns, err)
	}
	return ns, nil
}

// deleteNamespace deletes ns and waits a while for it to go.
func (k *kube) deleteNamespace(ctx context.Context, ns string) error {
	err := k.client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete namespace %s: %w", ns, err)
	}
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 45*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := k.client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		return fmt.Errorf("namespace %s still terminating (it goes by itself): %w", ns, err)
	}
	return nil
}

// apply creates every object of a multi-document YAML file in ns.
func (k *kube) apply(ctx context.Context, ns, file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("read manifest (run from the repository root or pass -manifest): %w", err)
	}
	dec := yamlutil.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var obj unstructured.Unstructured
		if err := dec.Decode(&obj.Object); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("decode %s: %w", file, err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		gvk := obj.GroupVersionKind()
		mapping, err := k.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return fmt.Errorf("map %s: %w", gvk, err)
		}
		if _, err := k.dynamic.Resource(mapping.Resource).Namespace(ns).Create(ctx, &obj, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create %s %s in %s: %w", gvk.Kind, obj.GetName(), ns, err)
		}
	}
}

// waitDeployment waits until the deployment's rollout is complete.
func (k *kube) waitDeployment(ctx context.Context, ns, name string, timeout time.Duration) error {
	var last error
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		last = k.deploymentReady(ctx, ns, name)
		return last == nil, nil
	})
	if err != nil {
		return fmt.Errorf("deployment %s/%s not ready within %s (its image loaded into the cluster? hack/cluster/load.sh): %w", ns, name, timeout, errors.Join(err, last))
	}
	return nil
}

// deploymentReady returns nil when all the deployment's replicas are updated
// and ready and no old pod is left.
func (k *kube) deploymentReady(ctx context.Context, ns, name string) error {
	d, err := k.client.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	if d.Status.ObservedGeneration < d.Generation || d.Status.UpdatedReplicas != want ||
		d.Status.ReadyReplicas != want || d.Status.Replicas != want {
		return fmt.Errorf("deployment %s/%s rolling out: status %+v", ns, name, d.Status)
	}
	pods, err := k.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: metav1.FormatLabelSelector(d.Spec.Selector)})
	if err != nil {
		return err
	}
	if len(pods.Items) != int(want) {
		return fmt.Errorf("deployment %s/%s: %d pods, want %d (old ones terminating)", ns, name, len(pods.Items), want)
	}
	return nil
}

// runningPod returns a running pod with the label selector.
func (k *kube) runningPod(ctx context.Context, ns, selector string) (*corev1.Pod, error) {
	pods, err := k.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, err
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil && p.Status.PodIP != "" {
			return p, nil
		}
	}
	return nil, fmt.Errorf("no running pod for %q in %s", selector, ns)
}

// startProbePod starts a one-shot pod of image with args and returns its name.
func (k *kube) startProbePod(ctx context.Context, ns, image string, args ...string) (string, error) {
	name := "probe-" + rand.String(5)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "bench-probe"}},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{
				Name: "probe", Image: image, Args: args, ImagePullPolicy: corev1.PullNever,
			}},
		},
	}
	if _, err := k.client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return "", fmt.Errorf("create probe pod: %w", err)
	}
	return name, nil
}

func (k *kube) waitPodRunning(ctx context.Context, ns, name string, timeout time.Duration) error {
	var phase corev1.PodPhase
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		p, err := k.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		phase = p.Status.Phase
		return phase != corev1.PodPending, nil
	})
	if err != nil {
		return fmt.Errorf("pod %s not running within %s (phase %s): %w", name, timeout, phase, err)
	}
	return nil
}

// probePodResult waits for the probe pod to end, decodes its result and
// deletes it.
func (k *kube) probePodResult(ctx context.Context, ns, name string, timeout time.Duration) (*probeResult, error) {
	defer func() {
		_ = k.client.CoreV1().Pods(ns).Delete(context.WithoutCancel(ctx), name, metav1.DeleteOptions{})
	}()
	var phase corev1.PodPhase
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		p, err := k.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		phase = p.Status.Phase
		return phase == corev1.PodSucceeded || phase == corev1.PodFailed, nil
	})
	logs, _ := k.client.CoreV1().Pods(ns).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(context.WithoutCancel(ctx))
	if err != nil || phase != corev1.PodSucceeded {
		return nil, fmt.Errorf("probe pod %s: phase %s, err %v, logs:\n%s", name, phase, err, tail(string(logs), 800))
	}
	return decodeProbe(string(logs))
}

// podsWithContainer counts the live pods of selector, and those of them with
// the named container.
func (k *kube) podsWithContainer(ctx context.Context, ns, selector, container string) (with, all int) {
	pods, err := k.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return 0, 0
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		all++
		if slices.ContainsFunc(p.Spec.Containers, func(c corev1.Container) bool { return c.Name == container }) {
			with++
		}
	}
	return with, all
}
