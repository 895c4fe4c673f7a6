package manager

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// discovery says where the cluster watcher may look.
type discovery struct {
	namespace  string   // the manager's: the service CIDR probe
	resolvConf string   // the manager pod's
	noNodes    bool     // Nodes may not be read: pod CIDRs from pod IPs
	namespaces []string // namespaces whose pods and services the manager may list ("" is all)
}

// nodePodCIDRs returns the pod CIDRs the nodes carry (none with some CNIs).
func nodePodCIDRs(nodes []*corev1.Node) map[netip.Prefix]bool {
	set := map[netip.Prefix]bool{}
	for _, n := range nodes {
		cidrs := n.Spec.PodCIDRs
		if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
			cidrs = []string{n.Spec.PodCIDR}
		}
		for _, c := range cidrs {
			if p, err := netip.ParsePrefix(c); err == nil {
				set[p.Masked()] = true
			}
		}
	}
	return set
}

// podIPRanges returns /16s (IPv4) and /64s (IPv6) covering the IPs of the
// pods in namespaces: the pod CIDRs when nodes carry none or may not be read.
func podIPRanges(ctx context.Context, kube kubernetes.Interface, namespaces []string) (map[netip.Prefix]bool, error) {
	set := map[netip.Prefix]bool{}
	for _, ns := range namespaces {
		pods, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, err
		}
		for _, p := range pods.Items {
			if p.Spec.HostNetwork {
				continue
			}
			for _, ip := range p.Status.PodIPs {
				if a, err := netip.ParseAddr(ip.IP); err == nil {
					bits := 16
					if a.Is6() {
						bits = 64
					}
					set[netip.PrefixFrom(a, bits).Masked()] = true
				}
			}
		}
	}
	return set, nil
}

// serviceCIDRObjects returns the ranges of the cluster's ServiceCIDR objects.
func serviceCIDRObjects(objs []*networkingv1.ServiceCIDR) map[netip.Prefix]bool {
	set := map[netip.Prefix]bool{}
	for _, o := range objs {
		for _, c := range o.Spec.CIDRs {
			if p, err := netip.ParsePrefix(c); err == nil {
				set[p.Masked()] = true
			}
		}
	}
	return set
}

// validRange finds the range in the API server's answer to a service with an
// invalid cluster IP: "... The range of valid IPs is 10.96.0.0/12".
var validRange = regexp.MustCompile(`valid IPs is ([0-9a-fA-F.:/]+)`)

// serviceCIDRs asks the API server: creating a service with a cluster IP out
// of every range fails with a message naming the configured range. It works
// on every cluster; where the ServiceCIDR API is served, the cluster watcher
// reads (and watches) the ServiceCIDR objects instead.
func serviceCIDRs(ctx context.Context, kube kubernetes.Interface, namespace string, namespaces []string) ([]netip.Prefix, error) {
	set := map[netip.Prefix]bool{}
	for _, probe := range []string{"1.1.1.1", "::1"} {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "tp-cidr-probe-"},
			Spec: corev1.ServiceSpec{
				ClusterIP: probe,
				Ports:     []corev1.ServicePort{{Port: 443}},
			},
		}
		created, err := kube.CoreV1().Services(namespace).Create(ctx, svc, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err == nil {
			_ = created // a dry run creates nothing
			continue
		}
		if !apierrors.IsInvalid(err) {
			return nil, err
		}
		for _, m := range validRange.FindAllStringSubmatch(err.Error(), -1) {
			if p, err := netip.ParsePrefix(m[1]); err == nil {
				set[p.Masked()] = true
			}
		}
	}
	fromAPIServer := len(set) > 0
	for _, ns := range namespaces {
		if fromAPIServer {
			break
		}
		// Fall back to the service IPs in use, widened to /16.
		list, err := kube.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, err
		}
		for _, s := range list.Items {
			if a, err := netip.ParseAddr(s.Spec.ClusterIP); err == nil {
				bits := 16
				if a.Is6() {
					bits = 112
				}
				set[netip.PrefixFrom(a, bits).Masked()] = true
			}
		}
	}
	if len(set) == 0 {
		return nil, fmt.Errorf("the API server named no service range and no service has a cluster IP")
	}
	return sortedPrefixes(set), nil
}

// parsePodResolvConf reads a ClusterFirst pod's resolv.conf: the nameserver is
// the cluster DNS, and the "svc.<domain>" search entry gives the domain.
func parsePodResolvConf(r io.Reader) (nameserver, domain string) {
	domain = "cluster.local"
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		switch fields[0] {
		case "nameserver":
			if nameserver == "" {
				nameserver = fields[1]
			}
		case "search":
			for _, s := range fields[1:] {
				if rest, ok := strings.CutPrefix(s, "svc."); ok {
					domain = rest
					break
				}
			}
		}
	}
	return nameserver, domain
}

func sortedPrefixes(set map[netip.Prefix]bool) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}
