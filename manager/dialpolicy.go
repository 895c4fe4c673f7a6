package manager

// The dial policy: the tunnel is not an open proxy. The traffic-manager dials
// a client's flow with its own network identity, from inside the cluster, so
// an unrestricted dial would let anyone who may port-forward to the manager
// reach what the manager pod can reach: the cloud's metadata service
// (169.254.169.254, credentials of the node), the kubelets (:10250) and other
// host services on the nodes' addresses, and the manager pod's own loopback
// (its client API). The policy admits only what tp is for, the cluster's
// workloads:
//
//   - never: loopback, unspecified and multicast addresses;
//   - allowed: the prefixes of the chart value tunnel.allowCIDRs
//     (TP_TUNNEL_ALLOW_CIDRS), which win over every rule below;
//   - refused: link-local addresses (169.254.0.0/16, fe80::/10) and the
//     nodes' addresses (InternalIP, ExternalIP; refreshed while the manager
//     runs), even when a pod range contains them (hostNetwork pods, CNIs that
//     give pods and nodes one range);
//   - allowed: the cluster's pod and service ranges and the cluster DNS (the
//     ClusterInfo the daemons route; it follows new nodes and ServiceCIDRs,
//     clusterwatch.go);
//   - refused: everything else.
//
// A refusal is a *dialDeniedError: it unwraps to syscall.EACCES, which the
// tunnel sends as ERROR_CODE_DENIED with the message, and the daemon answers
// the joined container's SYN with a RST (UDP: ICMP port unreachable) and logs
// the message, which names the chart value that allows the destination.

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// AllowCIDRsValue is the chart value that widens the dial policy.
const AllowCIDRsValue = "tunnel.allowCIDRs"

// DefaultNodeRefresh is how often the manager re-reads the nodes' addresses.
const DefaultNodeRefresh = 30 * time.Second

var (
	linkLocal4 = netip.MustParsePrefix("169.254.0.0/16")
	linkLocal6 = netip.MustParsePrefix("fe80::/10")
)

// dialDeniedError is the dial policy's refusal of one destination.
type dialDeniedError struct {
	network string
	dst     netip.AddrPort
	reason  string
	// allowable: tunnel.allowCIDRs would admit the destination.
	allowable bool
}

func (e *dialDeniedError) Error() string {
	msg := fmt.Sprintf("dial %s %s refused by the traffic-manager: %s", e.network, e.dst, e.reason)
	if e.allowable {
		msg += "; allow it with the chart value " + AllowCIDRsValue
	}
	return msg
}

// Unwrap makes the refusal a permission error: the tunnel maps EACCES to
// ERROR_CODE_DENIED.
func (e *dialDeniedError) Unwrap() error { return syscall.EACCES }

// dialPolicy decides which destinations the tunnel dials. The cluster's
// ranges change with setRanges, the node addresses with setNodes.
type dialPolicy struct {
	dns     netip.Addr     // cluster DNS (usually inside a service range)
	allowed []netip.Prefix // tunnel.allowCIDRs

	mu     sync.RWMutex
	ranges []netip.Prefix        // pod and service CIDRs
	nodes  map[netip.Addr]string // node address -> node name
}

// newDialPolicy builds the policy from the discovered cluster and the
// explicitly allowed prefixes.
func newDialPolicy(info *managerv1.ClusterInfo, allowed []netip.Prefix) (*dialPolicy, error) {
	p := &dialPolicy{nodes: map[netip.Addr]string{}}
	if err := p.setRanges(info); err != nil {
		return nil, err
	}
	if s := info.GetDnsIp(); s != "" {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("dial policy: cluster DNS %q: %w", s, err)
		}
		p.dns = a.Unmap()
	}
	for _, pr := range allowed {
		if pr.Addr().Is4In6() && pr.Bits() >= 96 { // ::ffff:a.b.c.d/n: destinations are unmapped
			pr = netip.PrefixFrom(pr.Addr().Unmap(), pr.Bits()-96)
		}
		p.allowed = append(p.allowed, pr.Masked())
	}
	return p, nil
}

// setRanges replaces the cluster's pod and service ranges with info's; on
// an error it keeps the previous ones.
func (p *dialPolicy) setRanges(info *managerv1.ClusterInfo) error {
	var ranges []netip.Prefix
	for _, s := range slices.Concat(info.GetPodCidrs(), info.GetServiceCidrs()) {
		pr, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("dial policy: cluster range %q: %w", s, err)
		}
		ranges = append(ranges, pr.Masked())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ranges = ranges
	return nil
}

func (p *dialPolicy) inRanges(a netip.Addr) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return containsAddr(p.ranges, a)
}

// setNodes replaces the known node addresses.
func (p *dialPolicy) setNodes(nodes map[netip.Addr]string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.nodes = nodes
}

func (p *dialPolicy) node(a netip.Addr) (string, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	name, ok := p.nodes[a]
	return name, ok
}

// check returns nil when the tunnel may dial dst, else a *dialDeniedError.
func (p *dialPolicy) check(network string, dst netip.AddrPort) error {
	a := dst.Addr().Unmap()
	deny := func(reason string, allowable bool) error {
		return &dialDeniedError{network: network, dst: netip.AddrPortFrom(a, dst.Port()), reason: reason, allowable: allowable}
	}
	switch {
	case !a.IsValid():
		return deny("no destination address", false)
	case a.IsLoopback():
		return deny("a loopback address is the traffic-manager pod's own", false)
	case a.IsUnspecified():
		return deny("the unspecified address is no destination", false)
	case a.IsMulticast():
		return deny("multicast destinations are not tunnelled", false)
	}
	if containsAddr(p.allowed, a) {
		return nil
	}
	if linkLocal4.Contains(a) || linkLocal6.Contains(a) {
		return deny("link-local addresses (cloud metadata, node-local services) are not the cluster's workloads", true)
	}
	if name, ok := p.node(a); ok {
		return deny(fmt.Sprintf("the address of node %s (kubelet, host services) is not a workload", name), true)
	}
	if a == p.dns || p.inRanges(a) {
		return nil
	}
	return deny("not in the cluster's pod or service ranges", true)
}

func containsAddr(ps []netip.Prefix, a netip.Addr) bool {
	return slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Contains(a) })
}

// ParseCIDRs parses a comma-separated list of prefixes (TP_TUNNEL_ALLOW_CIDRS);
// a bare address is its own /32 or /128.
func ParseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if p, err := netip.ParsePrefix(f); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, fmt.Errorf("%q is neither a CIDR nor an IP address", f)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// nodeAddresses finds the nodes' addresses. With node access it reads the
// Nodes (InternalIP and ExternalIP); without (rbac.readNodes=false) it takes
// the host IPs of the pods in the namespaces it may list, plus hostIP, the
// manager's own node.
type nodeAddresses struct {
	kube       kubernetes.Interface
	noNodes    bool
	namespaces []string // for the pod fallback; "" is all
	hostIP     netip.Addr
}

func (n *nodeAddresses) list(ctx context.Context) (map[netip.Addr]string, error) {
	out := map[netip.Addr]string{}
	if n.hostIP.IsValid() {
		out[n.hostIP.Unmap()] = "hosting the traffic-manager"
	}
	if !n.noNodes {
		nodes, err := n.kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("list nodes: %w", err)
		}
		for _, node := range nodes.Items {
			for _, addr := range node.Status.Addresses {
				if addr.Type != corev1.NodeInternalIP && addr.Type != corev1.NodeExternalIP {
					continue
				}
				if a, err := netip.ParseAddr(addr.Address); err == nil {
					out[a.Unmap()] = node.Name
				}
			}
		}
		return out, nil
	}
	for _, ns := range n.namespaces {
		pods, err := n.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("list pods in %q for their host IPs: %w", ns, err)
		}
		for _, pod := range pods.Items {
			ips := pod.Status.HostIPs
			if len(ips) == 0 && pod.Status.HostIP != "" {
				ips = []corev1.HostIP{{IP: pod.Status.HostIP}}
			}
			for _, ip := range ips {
				if a, err := netip.ParseAddr(ip.IP); err == nil {
					name := pod.Spec.NodeName
					if name == "" {
						name = a.String()
					}
					out[a.Unmap()] = name
				}
			}
		}
	}
	return out, nil
}

// refreshNodes keeps the policy's node addresses current until ctx ends. A
// failed refresh keeps the previous addresses.
func (m *Manager) refreshNodes(ctx context.Context, src *nodeAddresses, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		nodes, err := src.list(ctx)
		if err != nil {
			if ctx.Err() == nil {
				m.log.Warn("refreshing the node addresses of the dial policy failed", "err", err)
			}
			continue
		}
		m.policy.Load().setNodes(nodes)
	}
}

func addrList(nodes map[netip.Addr]string) []string {
	out := make([]string, 0, len(nodes))
	for a := range nodes {
		out = append(out, a.String())
	}
	sort.Strings(out)
	return out
}
