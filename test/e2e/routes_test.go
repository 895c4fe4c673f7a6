//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
)

// waitStatus polls `tp status -o json` until cond holds, for up to a minute.
func (c connection) waitStatus(t *testing.T, what string, cond func(statusOut) bool) statusOut {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		st := c.status(t)
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within a minute; status: routedSubnets %v, tunRoutes %v", what, st.RoutedSubnets, st.TUNRoutes)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestRoutesFollowNodes proves that the routes follow the cluster's nodes: a
// node added while tp is connected gets its pod CIDR routed into the TUN, and
// the route goes when the node does; and that `tp status` shows the routes
// the kernel really has on the TUN, not the ones asked for.
func TestRoutesFollowNodes(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "routes")
	conn := connect(t, "routes-"+rand.String(4), "-n", ns)
	st := conn.waitStatus(t, "TUN routes of the cluster ranges", func(s statusOut) bool { return len(s.TUNRoutes) > 0 })

	// An unused pod range: no node carries it yet.
	const podCIDR = "10.244.213.0/24"
	if slices.Contains(st.RoutedSubnets, podCIDR) || slices.Contains(st.TUNRoutes, podCIDR) {
		t.Fatalf("%s routed before its node exists: routedSubnets %v, tunRoutes %v", podCIDR, st.RoutedSubnets, st.TUNRoutes)
	}

	// A Node object without a kubelet: what a node joining the cluster looks
	// like to the API once its pod CIDR is allocated.
	ctx := context.Background()
	name := "tp-e2e-fake-" + rand.String(5)
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"tp.run/e2e": "fake-node"}},
		Spec: corev1.NodeSpec{
			PodCIDR: podCIDR, PodCIDRs: []string{podCIDR},
			// Nothing is scheduled onto it.
			Taints: []corev1.Taint{{Key: "tp.run/fake-node", Effect: corev1.TaintEffectNoSchedule}},
		},
	}
	if _, err := c.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create node %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := c.client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete node %s: %v", name, err)
		}
	})
	st = conn.waitStatus(t, "route of the new node's pod CIDR on the TUN", func(s statusOut) bool {
		return slices.Contains(s.TUNRoutes, podCIDR)
	})
	if !slices.Contains(st.RoutedSubnets, podCIDR) {
		t.Errorf("routedSubnets %v lack %s although the TUN routes it", st.RoutedSubnets, podCIDR)
	}
	t.Logf("node %s added: tunRoutes %v", name, st.TUNRoutes)

	// The status reads the kernel: a route added by hand in the daemon's
	// network namespace shows as a TUN route, not as a cluster subnet.
	const byHand = "10.77.0.0/16"
	if out, err := probe([]string{"--network", "container:" + conn.container, "--cap-add", "NET_ADMIN"}, "route", "tp0", byHand); err != nil {
		t.Fatalf("route %s into tp0: %v\n%s", byHand, err, out)
	}
	st = conn.waitStatus(t, "the route added by hand on the TUN", func(s statusOut) bool { return slices.Contains(s.TUNRoutes, byHand) })
	if slices.Contains(st.RoutedSubnets, byHand) {
		t.Errorf("routedSubnets %v hold %s, which only the kernel has", st.RoutedSubnets, byHand)
	}

	if err := c.client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete node %s: %v", name, err)
	}
	st = conn.waitStatus(t, "route of the deleted node's pod CIDR gone from the TUN", func(s statusOut) bool {
		return !slices.Contains(s.TUNRoutes, podCIDR)
	})
	if slices.Contains(st.RoutedSubnets, podCIDR) {
		t.Errorf("routedSubnets %v still hold %s after its node was deleted", st.RoutedSubnets, podCIDR)
	}
}

// hasServiceCIDRAPI reports whether the cluster serves networking.k8s.io/v1 ServiceCIDRs.
func (c *cluster) hasServiceCIDRAPI(t testing.TB) bool {
	t.Helper()
	list, err := c.client.Discovery().ServerResourcesForGroupVersion(networkingv1.SchemeGroupVersion.String())
	if err != nil {
		if apierrors.IsNotFound(err) {
			return false
		}
		t.Fatalf("discover %s: %v", networkingv1.SchemeGroupVersion, err)
	}
	return slices.ContainsFunc(list.APIResources, func(r metav1.APIResource) bool { return r.Name == "servicecidrs" })
}

// TestRoutesFollowServiceCIDRs proves that a service range added to the
// cluster (a ServiceCIDR) is routed while tp is connected: a joined
// container reaches a Service whose cluster IP comes from it.
func TestRoutesFollowServiceCIDRs(t *testing.T) {
	c := newCluster(t)
	if !c.hasServiceCIDRAPI(t) {
		t.Skip("the cluster does not serve networking.k8s.io/v1 ServiceCIDRs (Kubernetes 1.33 and later); the manager probes the service range once")
	}
	ns := c.echoNamespace(t, "svccidr")
	conn := connect(t, "svccidr-"+rand.String(4), "-n", ns)
	conn.waitStatus(t, "TUN routes of the cluster ranges", func(s statusOut) bool { return len(s.TUNRoutes) > 0 })

	ctx := context.Background()
	const cidr, clusterIP = "10.123.0.0/24", "10.123.0.10"
	name := "tp-e2e-" + rand.String(5)
	sc := &networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: networkingv1.ServiceCIDRSpec{CIDRs: []string{cidr}}}
	if _, err := c.client.NetworkingV1().ServiceCIDRs().Create(ctx, sc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create ServiceCIDR %s: %v", cidr, err)
	}
	// Runs after the Service's cleanup below: a ServiceCIDR goes once no
	// Service holds an IP of it.
	t.Cleanup(func() {
		if err := c.client.NetworkingV1().ServiceCIDRs().Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete ServiceCIDR %s: %v", name, err)
		}
	})
	deadline := time.Now().Add(time.Minute)
	for ready := false; !ready; {
		got, err := c.client.NetworkingV1().ServiceCIDRs().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ready = slices.ContainsFunc(got.Status.Conditions, func(c metav1.Condition) bool {
			return c.Type == networkingv1.ServiceCIDRConditionReady && c.Status == metav1.ConditionTrue
		})
		if !ready && time.Now().After(deadline) {
			t.Fatalf("ServiceCIDR %s not Ready within a minute: %+v", cidr, got.Status.Conditions)
		}
		time.Sleep(250 * time.Millisecond)
	}

	echo, err := c.client.CoreV1().Services(ns).Get(ctx, "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo-extra-range"},
		Spec:       corev1.ServiceSpec{ClusterIP: clusterIP, Selector: echo.Spec.Selector, Ports: echo.Spec.Ports},
	}
	if _, err := c.client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create Service with cluster IP %s: %v", clusterIP, err)
	}
	t.Cleanup(func() {
		_ = c.client.CoreV1().Services(ns).Delete(context.Background(), svc.Name, metav1.DeleteOptions{})
	})

	conn.waitStatus(t, "route of the new ServiceCIDR on the TUN", func(s statusOut) bool { return slices.Contains(s.TUNRoutes, cidr) })
	out, err := conn.probeEventually("http", fmt.Sprintf("http://%s/hello", clusterIP))
	if err != nil {
		t.Fatalf("joined container GET http://%s/hello (Service from the new ServiceCIDR): %v\n%s", clusterIP, err, out)
	}
	if r := decodeEcho(t, out); r.Pod == "" {
		t.Errorf("reply from %s: %+v, want one of echo's pods", clusterIP, r)
	}
}
