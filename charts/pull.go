package charts

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
)

// managerSelector selects the traffic-manager's pods (tp.selectorLabels).
const managerSelector = "app=traffic-manager,app.kubernetes.io/instance=" + DefaultReleaseName

// pullFailures are the waiting reasons of a container whose image the node
// cannot get: they do not heal by waiting.
var pullFailures = map[string]bool{
	"ErrImagePull": true, "ImagePullBackOff": true, "ErrImageNeverPull": true, "InvalidImageName": true,
}

// ImagePullError says that the cluster cannot pull the traffic-manager's
// image.
type ImagePullError struct {
	Namespace, Pod, Image string
	// Reason and Message are the container's waiting state (ErrImagePull...).
	Reason, Message string
}

func (e *ImagePullError) Error() string {
	return fmt.Sprintf("the cluster cannot pull the traffic-manager image %s (pod %s/%s: %s: %s): "+
		"push tp's image to a registry the cluster pulls from and name it with `tp connect --image-registry REGISTRY` "+
		"(--image-tag TAG, --image-pull-secret NAME for a private registry), or for an installed manager "+
		"`tp helm upgrade --namespace %s --image-registry REGISTRY`",
		e.Image, e.Namespace, e.Pod, e.Reason, e.Message, e.Namespace)
}

// ImageValues are the chart values for the image flags of `tp connect` and
// `tp helm` (empty ones are left out).
func ImageValues(registry, tag string, pullSecrets []string) map[string]any {
	vals := map[string]any{}
	image := map[string]any{}
	if registry != "" {
		image["registry"] = registry
	}
	if tag != "" {
		image["tag"] = tag
	}
	if len(image) > 0 {
		vals["image"] = image
	}
	if len(pullSecrets) > 0 {
		var secrets []any
		for _, s := range pullSecrets {
			secrets = append(secrets, map[string]any{"name": s})
		}
		vals["imagePullSecrets"] = secrets
	}
	return vals
}

// WaitManager waits until a traffic-manager pod in namespace is ready, and
// fails at once, with an ImagePullError, when none is and one cannot pull
// its image. A user who may not list pods there gets nil at once: the daemon
// finds out itself.
func WaitManager(ctx context.Context, getter genericclioptions.RESTClientGetter, namespace string, timeout time.Duration) error {
	rc, err := getter.ToRESTConfig()
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		pods, err := cs.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: managerSelector})
		switch {
		case apierrors.IsForbidden(err):
			return nil
		case err == nil:
			if done, err := managerState(namespace, pods.Items); done {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the traffic-manager in namespace %s is not ready after %v: see `kubectl --namespace %s describe pods -l app=traffic-manager`",
				namespace, timeout.Round(time.Second), namespace)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// managerState says whether waiting is over: a pod is ready (nil), or none
// is and one cannot pull its image (an ImagePullError).
func managerState(namespace string, pods []corev1.Pod) (bool, error) {
	var pullErr *ImagePullError
	for _, p := range pods {
		if p.DeletionTimestamp != nil {
			continue
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		specs := map[string]string{} // container name: the image asked for
		for _, c := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
			specs[c.Name] = c.Image
		}
		statuses := append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...)
		for _, s := range statuses {
			if w := s.State.Waiting; w != nil && pullFailures[w.Reason] && pullErr == nil {
				image := specs[s.Name]
				if image == "" {
					image = s.Image
				}
				pullErr = &ImagePullError{Namespace: namespace, Pod: p.Name, Image: image, Reason: w.Reason, Message: w.Message}
			}
		}
	}
	if pullErr != nil {
		return true, pullErr
	}
	return false, nil
}
