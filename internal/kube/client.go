package kube

import (
	"context"
	"fmt"
	"net/url"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
)

// Client is the daemon's Kubernetes client: REST clients of the three API
// groups it uses (core/v1: pods and their port-forward; apps/v1: the
// workloads it authorizes and restores; authorization/v1: its own access
// reviews), with a scheme of those alone. client-go's full clientset
// (k8s.io/client-go/kubernetes) registers the types of every API group at
// init, which cost the daemon about 9 MB of RSS at start
// (test/bench/README.md, "Memory per role"); package kube therefore must
// not import it (internal/kube/typed adapts a clientset to Workloads for the
// manager and the CLI).
type Client struct {
	core, apps, authorization rest.Interface
}

// scheme knows the types of the API groups Client uses.
var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, authorizationv1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err) // a bug of the generated registration, caught by any test
		}
	}
	return s
}()

var codecs = serializer.NewCodecFactory(scheme)

// restClientFor is a REST client of config for the API group version gv.
func restClientFor(config *rest.Config, gv schema.GroupVersion) (*rest.RESTClient, error) {
	c := rest.CopyConfig(config)
	c.GroupVersion = &gv
	c.APIPath = "/apis"
	if gv.Group == "" {
		c.APIPath = "/api"
	}
	c.NegotiatedSerializer = codecs.WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	return rest.RESTClientFor(c)
}

// NewClient returns a Client of config.
func NewClient(config *rest.Config) (*Client, error) {
	var c Client
	for _, g := range []struct {
		gv  schema.GroupVersion
		dst *rest.Interface
	}{
		{corev1.SchemeGroupVersion, &c.core},
		{appsv1.SchemeGroupVersion, &c.apps},
		{authorizationv1.SchemeGroupVersion, &c.authorization},
	} {
		rc, err := restClientFor(config, g.gv)
		if err != nil {
			return nil, fmt.Errorf("kubernetes client for %s: %w", g.gv, err)
		}
		*g.dst = rc
	}
	return &c, nil
}

// ListPods lists the pods in namespace that match the label selector.
func (c *Client) ListPods(ctx context.Context, namespace, selector string) (*corev1.PodList, error) {
	var pods corev1.PodList
	err := c.core.Get().Namespace(namespace).Resource("pods").Param("labelSelector", selector).Do(ctx).Into(&pods)
	return &pods, err
}

// CreateSelfSubjectAccessReview asks the API server what the user may do.
func (c *Client) CreateSelfSubjectAccessReview(ctx context.Context, review *authorizationv1.SelfSubjectAccessReview) (*authorizationv1.SelfSubjectAccessReview, error) {
	var out authorizationv1.SelfSubjectAccessReview
	err := c.authorization.Post().Resource("selfsubjectaccessreviews").Body(review).Do(ctx).Into(&out)
	return &out, err
}

// workloadResources are the apps/v1 resources of the workload kinds.
var workloadResources = map[string]string{"Deployment": "deployments", "StatefulSet": "statefulsets", "ReplicaSet": "replicasets"}

// PatchWorkload patches the Deployment, StatefulSet or ReplicaSet (kind) name
// in namespace as fieldManager.
func (c *Client) PatchWorkload(ctx context.Context, namespace, kind, name string, pt types.PatchType, patch []byte, fieldManager string) error {
	resource, ok := workloadResources[kind]
	if !ok {
		return fmt.Errorf("cannot patch a %s", kind)
	}
	return c.apps.Patch(pt).Namespace(namespace).Resource(resource).Name(name).
		Param("fieldManager", fieldManager).Body(patch).Do(ctx).Error()
}

// ListDeployments lists the Deployments in namespace (every namespace when empty).
func (c *Client) ListDeployments(ctx context.Context, namespace string) (*appsv1.DeploymentList, error) {
	var l appsv1.DeploymentList
	return &l, c.apps.Get().Namespace(namespace).Resource("deployments").Do(ctx).Into(&l)
}

// ListStatefulSets lists the StatefulSets in namespace (every namespace when empty).
func (c *Client) ListStatefulSets(ctx context.Context, namespace string) (*appsv1.StatefulSetList, error) {
	var l appsv1.StatefulSetList
	return &l, c.apps.Get().Namespace(namespace).Resource("statefulsets").Do(ctx).Into(&l)
}

// ListReplicaSets lists the ReplicaSets in namespace (every namespace when empty).
func (c *Client) ListReplicaSets(ctx context.Context, namespace string) (*appsv1.ReplicaSetList, error) {
	var l appsv1.ReplicaSetList
	return &l, c.apps.Get().Namespace(namespace).Resource("replicasets").Do(ctx).Into(&l)
}

// portForwardURL is the URL of namespace/pod's port-forward subresource.
func portForwardURL(config *rest.Config, namespace, pod string) (*url.URL, error) {
	core, err := restClientFor(config, corev1.SchemeGroupVersion)
	if err != nil {
		return nil, err
	}
	return core.Post().Resource("pods").Namespace(namespace).Name(pod).SubResource("portforward").URL(), nil
}
