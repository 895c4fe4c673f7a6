package manager

// The cluster watcher keeps what daemons route current. Pod CIDRs come from
// the Nodes (watched: a node added later is routed as soon as it has its
// podCIDR), or, when nodes carry none (some CNIs) or may not be read
// (rbac.readNodes=false), from the IPs of the pods the manager may list,
// re-read every Config.NodeRefresh. Service CIDRs come from the ServiceCIDR
// objects (networking.k8s.io/v1, watched) where the cluster serves that API,
// else from the API server's answer to one dry-run probe at start (a
// cluster without the API cannot change its service range without a
// restart of the API server). Every change reaches the dial policy and the
// daemons' WatchCluster streams.

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	coreinformers "k8s.io/client-go/informers/core/v1"
	networkinginformers "k8s.io/client-go/informers/networking/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// clusterState is the ClusterInfo the manager serves (ArriveAsClient,
// ArriveAsAgent, WatchCluster) and a broadcast of its changes.
type clusterState struct {
	mu      sync.Mutex
	info    *managerv1.ClusterInfo
	changed chan struct{} // closed by the next change
}

func newClusterState() *clusterState { return &clusterState{changed: make(chan struct{})} }

// get returns the current info (nil before the first discovery; do not
// modify it) and a channel closed when it changes.
func (s *clusterState) get() (*managerv1.ClusterInfo, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.info, s.changed
}

func (s *clusterState) current() *managerv1.ClusterInfo {
	info, _ := s.get()
	return info
}

// set replaces the info and reports whether it changed.
func (s *clusterState) set(info *managerv1.ClusterInfo) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if proto.Equal(s.info, info) {
		return false
	}
	s.info = info
	close(s.changed)
	s.changed = make(chan struct{})
	return true
}

// clusterWatcher computes the ClusterInfo from the informers' caches (and
// the fallbacks) whenever they change.
type clusterWatcher struct {
	kube    kubernetes.Interface
	d       discovery
	refresh time.Duration
	log     *slog.Logger

	// The informers of each group directly, not client-go's
	// SharedInformerFactory, which links the informers and listers of every
	// API group into the manager's binary (test/bench/README.md, "Memory
	// per role").
	informers map[string]cache.SharedIndexInformer // by resource
	running   sync.WaitGroup                       // the informers' goroutines
	nodes     cache.SharedIndexInformer            // nil with noNodes
	cidrs     cache.SharedIndexInformer            // nil without the ServiceCIDR API
	probed    []netip.Prefix                       // the probe's service CIDRs (no ServiceCIDR API)
	dnsIP     string
	domain    string

	dirty  chan struct{} // an informer saw a change; buffered 1
	cancel context.CancelFunc
}

func newClusterWatcher(kube kubernetes.Interface, d discovery, refresh time.Duration, log *slog.Logger) *clusterWatcher {
	return &clusterWatcher{
		kube: kube, d: d, refresh: refresh, log: log,
		dirty:     make(chan struct{}, 1),
		informers: map[string]cache.SharedIndexInformer{},
		cancel:    func() {},
	}
}

// start discovers the cluster: the DNS from the pod's resolv.conf, the
// informers started and synced (or the probe), and returns the first
// ClusterInfo. Call close when done, also after a failed start.
func (w *clusterWatcher) start(ctx context.Context) (*managerv1.ClusterInfo, error) {
	f, err := os.Open(w.d.resolvConf)
	if err != nil {
		return nil, fmt.Errorf("discover cluster DNS: %w", err)
	}
	w.dnsIP, w.domain = parsePodResolvConf(f)
	f.Close()
	if w.dnsIP == "" {
		return nil, fmt.Errorf("discover cluster DNS: no nameserver in %s", w.d.resolvConf)
	}

	poke := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { w.poke() },
		UpdateFunc: func(any, any) { w.poke() },
		DeleteFunc: func(any) { w.poke() },
	}
	if !w.d.noNodes {
		w.nodes = coreinformers.NewNodeInformer(w.kube, 0, cache.Indexers{})
		w.informers["nodes"] = w.nodes
		// Keep only what is routed: a Node's status (images, conditions) is large.
		if err := w.nodes.SetTransform(stripNode); err != nil {
			return nil, err
		}
		if _, err := w.nodes.AddEventHandler(poke); err != nil {
			return nil, err
		}
	}
	api, err := w.serviceCIDRAPI(ctx)
	if err != nil {
		return nil, err
	}
	if api {
		w.cidrs = networkinginformers.NewServiceCIDRInformer(w.kube, 0, cache.Indexers{})
		w.informers["servicecidrs"] = w.cidrs
		if _, err := w.cidrs.AddEventHandler(poke); err != nil {
			return nil, err
		}
	} else {
		w.probed, err = serviceCIDRs(ctx, w.kube, w.d.namespace, w.d.namespaces)
		if err != nil {
			return nil, fmt.Errorf("discover service CIDRs: %w", err)
		}
	}

	ictx, cancel := context.WithCancel(ctx)
	w.cancel = cancel
	for _, inf := range w.informers {
		w.running.Go(func() { inf.RunWithContext(ictx) })
	}
	sctx, cancelSync := context.WithTimeout(ctx, time.Minute)
	defer cancelSync()
	for resource, inf := range w.informers {
		if !cache.WaitForCacheSync(sctx.Done(), inf.HasSynced) {
			return nil, fmt.Errorf("discover the cluster: the watch of %s did not sync within a minute (RBAC? see the manager's log): %w", resource, sctx.Err())
		}
	}
	return w.compute(ctx)
}

// serviceCIDRAPI reports whether the manager can watch ServiceCIDRs: the
// cluster serves networking.k8s.io/v1 servicecidrs and the manager may list
// them (a chart older than the manager may not grant it).
func (w *clusterWatcher) serviceCIDRAPI(ctx context.Context) (bool, error) {
	list, err := w.kube.Discovery().ServerResourcesForGroupVersion(networkingv1.SchemeGroupVersion.String())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("discover the ServiceCIDR API: %w", err)
	}
	if !slices.ContainsFunc(list.APIResources, func(r metav1.APIResource) bool { return r.Name == "servicecidrs" }) {
		return false, nil
	}
	_, err = w.kube.NetworkingV1().ServiceCIDRs().List(ctx, metav1.ListOptions{Limit: 1})
	if apierrors.IsForbidden(err) {
		w.log.Warn("the cluster has the ServiceCIDR API but the traffic-manager may not list servicecidrs; "+
			"service ranges are probed once (run `tp helm upgrade` to grant it)", "err", err)
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("list ServiceCIDRs: %w", err)
	}
	return true, nil
}

// stripNode keeps the fields the watcher reads.
func stripNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil // a tombstone
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion},
		Spec:       corev1.NodeSpec{PodCIDR: n.Spec.PodCIDR, PodCIDRs: n.Spec.PodCIDRs},
	}, nil
}

func (w *clusterWatcher) poke() {
	select {
	case w.dirty <- struct{}{}:
	default:
	}
}

// compute builds the ClusterInfo from the caches and fallbacks.
func (w *clusterWatcher) compute(ctx context.Context) (*managerv1.ClusterInfo, error) {
	pods := map[netip.Prefix]bool{}
	if w.nodes != nil {
		nodes, err := cached(w.nodes, (*corev1.Node)(nil))
		if err != nil {
			return nil, err
		}
		pods = nodePodCIDRs(nodes)
	}
	if len(pods) == 0 {
		var err error
		if pods, err = podIPRanges(ctx, w.kube, w.d.namespaces); err != nil {
			return nil, fmt.Errorf("discover pod CIDRs from the pods: %w", err)
		}
	}
	svcs := w.probed
	if w.cidrs != nil {
		objs, err := cached(w.cidrs, (*networkingv1.ServiceCIDR)(nil))
		if err != nil {
			return nil, err
		}
		svcs = sortedPrefixes(serviceCIDRObjects(objs))
	}
	return &managerv1.ClusterInfo{
		PodCidrs: prefixStrings(sortedPrefixes(pods)), ServiceCidrs: prefixStrings(svcs),
		DnsIp: w.dnsIP, ClusterDomain: w.domain,
	}, nil
}

// cached returns the objects of type T in the informer's cache.
func cached[T any](inf cache.SharedIndexInformer, _ *T) ([]*T, error) {
	var out []*T
	err := cache.ListAll(inf.GetStore(), labels.Everything(), func(obj any) {
		if o, ok := obj.(*T); ok {
			out = append(out, o)
		}
	})
	return out, err
}

// run recomputes the ClusterInfo on every change the informers see, and
// every refresh for the pod-IP fallback, and hands it to update, until ctx
// ends. A failed recomputation keeps the previous info.
func (w *clusterWatcher) run(ctx context.Context, update func(*managerv1.ClusterInfo)) {
	tick := time.NewTicker(w.refresh)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.dirty:
		case <-tick.C:
		}
		info, err := w.compute(ctx)
		if err != nil {
			if ctx.Err() == nil {
				w.log.Warn("recomputing the cluster's pod and service ranges failed; keeping the previous ones", "err", err)
			}
			continue
		}
		update(info)
	}
}

// close stops the informers and waits for them.
func (w *clusterWatcher) close() {
	w.cancel()
	w.running.Wait()
}

// setCluster publishes a new ClusterInfo to the dial policy and the
// WatchCluster streams.
func (m *Manager) setCluster(info *managerv1.ClusterInfo) {
	old := m.cluster.current()
	if !m.cluster.set(info) {
		return
	}
	if p := m.policy.Load(); p != nil {
		if err := p.setRanges(info); err != nil {
			m.log.Error("dial policy: keeping the previous cluster ranges", "err", err)
		}
	}
	m.log.Info("cluster ranges changed",
		"podCIDRs", info.GetPodCidrs(), "serviceCIDRs", info.GetServiceCidrs(),
		"added", changed(info, old), "removed", changed(old, info))
}

// changed lists the ranges of a that b lacks.
func changed(a, b *managerv1.ClusterInfo) []string {
	var out []string
	for _, r := range slices.Concat(a.GetPodCidrs(), a.GetServiceCidrs()) {
		if !slices.Contains(b.GetPodCidrs(), r) && !slices.Contains(b.GetServiceCidrs(), r) {
			out = append(out, r)
		}
	}
	return out
}

// WatchCluster implements managerv1.ManagerServer: the current ClusterInfo,
// then every change, until the client goes or its session ends.
func (m *Manager) WatchCluster(ref *managerv1.SessionRef, stream grpc.ServerStreamingServer[managerv1.ClusterInfo]) error {
	if _, err := m.clientSession(ref.GetSessionId()); err != nil {
		return err
	}
	ctx := stream.Context()
	for {
		info, changed := m.cluster.get()
		if info == nil {
			return status.Error(codes.Unavailable, "the traffic-manager has not discovered the cluster yet; retry")
		}
		if err := stream.Send(info); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-changed:
		}
		if _, ok := m.sessions.get(ref.GetSessionId()); !ok {
			return status.Error(codes.NotFound, "the session ended")
		}
	}
}
