package manager

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apimachinery/pkg/watch"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

func podCIDRNode(name string, cidrs ...string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDRs: cidrs}}
	if len(cidrs) > 0 {
		n.Spec.PodCIDR = cidrs[0]
	}
	return n
}

func serviceCIDR(name string, cidrs ...string) *networkingv1.ServiceCIDR {
	return &networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: networkingv1.ServiceCIDRSpec{CIDRs: cidrs}}
}

// watchedCluster runs a cluster watcher on kube until the test ends and
// returns the state it updates. The watches are established before it
// returns (a fake clientset drops the events between an informer's list and
// its watch).
func watchedCluster(t *testing.T, kube *fake.Clientset, d discovery, watches int) *clusterState {
	t.Helper()
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 10.96.0.10\nsearch tp.svc.cluster.local svc.cluster.local\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d.resolvConf = resolv
	started := make(chan string, 10)
	kube.PrependWatchReactor("*", func(a k8stesting.Action) (bool, watch.Interface, error) {
		select {
		case started <- a.GetResource().Resource:
		default:
		}
		return false, nil, nil
	})
	w := newClusterWatcher(kube, d, 20*time.Millisecond, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	info, err := w.start(ctx)
	if err != nil {
		cancel()
		w.close()
		t.Fatalf("start: %v", err)
	}
	for range watches {
		select {
		case <-started:
		case <-time.After(10 * time.Second):
			t.Fatal("the informers' watches did not start")
		}
	}
	state := newClusterState()
	state.set(info)
	done := make(chan struct{})
	go func() { defer close(done); w.run(ctx, func(i *managerv1.ClusterInfo) { state.set(i) }) }()
	t.Cleanup(func() { cancel(); <-done; w.close() })
	return state
}

// waitCluster waits until the state's pod and service CIDRs are the wanted ones.
func waitCluster(t *testing.T, state *clusterState, what string, pods, svcs []string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		info, changed := state.get()
		if slices.Equal(info.GetPodCidrs(), pods) && slices.Equal(info.GetServiceCidrs(), svcs) {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("%s: got pods %v services %v, want %v %v", what, info.GetPodCidrs(), info.GetServiceCidrs(), pods, svcs)
		}
	}
}

// withServiceCIDRAPI makes the fake cluster serve networking.k8s.io/v1 servicecidrs.
func withServiceCIDRAPI(kube *fake.Clientset) {
	kube.Discovery().(*fakediscovery.FakeDiscovery).Resources = []*metav1.APIResourceList{{
		GroupVersion: "networking.k8s.io/v1",
		APIResources: []metav1.APIResource{{Name: "servicecidrs", Kind: "ServiceCIDR", Verbs: []string{"list", "watch"}}},
	}}
}

// TestClusterWatcherFollowsNodesAndServiceCIDRs: a node added later and a
// new ServiceCIDR are routed, a deleted node is not.
func TestClusterWatcherFollowsNodesAndServiceCIDRs(t *testing.T) {
	kube := fake.NewClientset(podCIDRNode("node-1", "10.244.0.0/24", "fd00:10:244::/64"), serviceCIDR("kubernetes", "10.96.0.0/12"))
	withServiceCIDRAPI(kube)
	kube.PrependReactor("create", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		t.Error("the service range was probed although the cluster serves ServiceCIDRs")
		return true, nil, apierrors.NewBadRequest("no probe expected")
	})
	state := watchedCluster(t, kube, discovery{namespace: "tp", namespaces: []string{""}}, 2)
	waitCluster(t, state, "at start", []string{"10.244.0.0/24", "fd00:10:244::/64"}, []string{"10.96.0.0/12"})
	if info := state.current(); info.GetDnsIp() != "10.96.0.10" || info.GetClusterDomain() != "cluster.local" {
		t.Errorf("DNS: got %s %s, want 10.96.0.10 cluster.local", info.GetDnsIp(), info.GetClusterDomain())
	}

	ctx := context.Background()
	if _, err := kube.CoreV1().Nodes().Create(ctx, podCIDRNode("node-2", "10.244.7.0/24"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitCluster(t, state, "node-2 added", []string{"10.244.0.0/24", "10.244.7.0/24", "fd00:10:244::/64"}, []string{"10.96.0.0/12"})

	if _, err := kube.NetworkingV1().ServiceCIDRs().Create(ctx, serviceCIDR("extra", "10.100.0.0/16"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitCluster(t, state, "ServiceCIDR added", []string{"10.244.0.0/24", "10.244.7.0/24", "fd00:10:244::/64"}, []string{"10.100.0.0/16", "10.96.0.0/12"})

	if err := kube.CoreV1().Nodes().Delete(ctx, "node-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := kube.NetworkingV1().ServiceCIDRs().Delete(ctx, "extra", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitCluster(t, state, "node-1 and ServiceCIDR deleted", []string{"10.244.7.0/24"}, []string{"10.96.0.0/12"})
}

// TestClusterWatcherWithoutNodes: with rbac.readNodes=false the pod CIDRs
// come from the pods' IPs and follow new pods; without the ServiceCIDR API
// the service range is the probe's.
func TestClusterWatcherWithoutNodes(t *testing.T) {
	pod := func(name, ip string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"}, Status: corev1.PodStatus{PodIPs: []corev1.PodIP{{IP: ip}}}}
	}
	kube := fake.NewClientset(pod("a", "10.1.2.3"))
	kube.PrependReactor("list", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
		t.Error("nodes listed with rbac.readNodes=false")
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "nodes"}, "", nil)
	})
	kube.PrependReactor("create", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewInvalid(schema.GroupKind{Kind: "Service"}, "probe", field.ErrorList{
			field.Invalid(field.NewPath("spec", "clusterIPs"), "1.1.1.1", "The range of valid IPs is 10.96.0.0/12"),
		})
	})
	state := watchedCluster(t, kube, discovery{namespace: "tp", noNodes: true, namespaces: []string{"shop"}}, 0)
	waitCluster(t, state, "at start", []string{"10.1.0.0/16"}, []string{"10.96.0.0/12"})
	if _, err := kube.CoreV1().Pods("shop").Create(context.Background(), pod("b", "10.2.0.9"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitCluster(t, state, "pod b added", []string{"10.1.0.0/16", "10.2.0.0/16"}, []string{"10.96.0.0/12"})
}

// TestClusterWatcherServiceCIDRsForbidden: a chart that does not grant
// servicecidrs (older than the manager) falls back to the probe.
func TestClusterWatcherServiceCIDRsForbidden(t *testing.T) {
	kube := fake.NewClientset(podCIDRNode("node-1", "10.244.0.0/24"))
	withServiceCIDRAPI(kube)
	kube.PrependReactor("list", "servicecidrs", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "networking.k8s.io", Resource: "servicecidrs"}, "", nil)
	})
	kube.PrependReactor("create", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewInvalid(schema.GroupKind{Kind: "Service"}, "probe", field.ErrorList{
			field.Invalid(field.NewPath("spec", "clusterIPs"), "1.1.1.1", "The range of valid IPs is 10.96.0.0/12"),
		})
	})
	state := watchedCluster(t, kube, discovery{namespace: "tp", namespaces: []string{""}}, 1)
	waitCluster(t, state, "at start", []string{"10.244.0.0/24"}, []string{"10.96.0.0/12"})
}

// TestWatchClusterStreamsChanges: a client's WatchCluster gets the current
// ClusterInfo, then each change; the dial policy follows the same ranges.
func TestWatchClusterStreamsChanges(t *testing.T) {
	h := newHarness(t)
	if err := func() error {
		stream, err := h.mc.WatchCluster(h.ctx(), &managerv1.SessionRef{SessionId: "nobody"})
		if err != nil {
			return err
		}
		_, err = stream.Recv()
		return err
	}(); status.Code(err) != codes.NotFound {
		t.Errorf("WatchCluster of an unknown session: got %v, want NotFound", err)
	}

	p, err := newDialPolicy(testCluster, nil)
	if err != nil {
		t.Fatal(err)
	}
	h.m.policy.Store(p)
	h.m.setCluster(testCluster)
	sess := h.arriveClient("tp", "laptop", "alice")
	stream, err := h.mc.WatchCluster(h.ctx(), &managerv1.SessionRef{SessionId: sess})
	if err != nil {
		t.Fatal(err)
	}
	got, err := stream.Recv()
	if err != nil || !proto.Equal(got, testCluster) {
		t.Fatalf("first ClusterInfo: got %v, %v, want %v", got, err, testCluster)
	}

	next := proto.CloneOf(testCluster)
	next.PodCidrs = append(next.PodCidrs, "10.250.0.0/24")
	newPod := netip.MustParseAddrPort("10.250.0.7:80")
	if err := p.check("tcp", newPod); err == nil {
		t.Fatalf("dial %v before the change: allowed, want refused", newPod)
	}
	h.m.setCluster(next)
	got, err = stream.Recv()
	if err != nil || !proto.Equal(got, next) {
		t.Fatalf("ClusterInfo after the change: got %v, %v, want %v", got, err, next)
	}
	if err := p.check("tcp", newPod); err != nil {
		t.Errorf("dial %v after the change: %v, want allowed", newPod, err)
	}
}
