package manager

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"regexp"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// discovery says where discoverClusterInfo may look.
type discovery struct {
	namespace  string   // the manager's: the service CIDR probe
	resolvConf string   // the manager pod's
	noNodes    bool     // Nodes may not be read: pod CIDRs from pod IPs
	namespaces []string // namespaces whose pods and services the manager may list ("" is all)
}

// discoverClusterInfo finds what a daemon must route and resolve: the pod and
// service CIDRs, the cluster DNS server and the cluster domain.
func discoverClusterInfo(ctx context.Context, kube kubernetes.Interface, d discovery) (*managerv1.ClusterInfo, error) {
	pods, err := podCIDRs(ctx, kube, d.noNodes, d.namespaces)
	if err != nil {
		return nil, fmt.Errorf("discover pod CIDRs: %w", err)
	}
	svcs, err := serviceCIDRs(ctx, kube, d.namespace, d.namespaces)
	if err != nil {
		return nil, fmt.Errorf("discover service CIDRs: %w", err)
	}
	f, err := os.Open(d.resolvConf)
	if err != nil {
		return nil, fmt.Errorf("discover cluster DNS: %w", err)
	}
	defer f.Close()
	dnsIP, domain := parsePodResolvConf(f)
	if dnsIP == "" {
		return nil, fmt.Errorf("discover cluster DNS: no nameserver in %s", d.resolvConf)
	}
	return &managerv1.ClusterInfo{
		PodCidrs: prefixStrings(pods), ServiceCidrs: prefixStrings(svcs),
		DnsIp: dnsIP, ClusterDomain: domain,
	}, nil
}

// podCIDRs returns the nodes' pod CIDRs, or, when nodes carry none (some
// CNIs) or may not be read (noNodes), /16s (IPv4) and /64s (IPv6) covering
// the IPs of the pods in namespaces.
func podCIDRs(ctx context.Context, kube kubernetes.Interface, noNodes bool, namespaces []string) ([]netip.Prefix, error) {
	set := map[netip.Prefix]bool{}
	if nodes, err := listNodes(ctx, kube, noNodes); err == nil {
		for _, n := range nodes.Items {
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
	}
	fromNodes := len(set) > 0
	for _, ns := range namespaces {
		if fromNodes {
			break
		}
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
	return sortedPrefixes(set), nil
}

// listNodes lists the nodes, or fails when the manager may not read them.
func listNodes(ctx context.Context, kube kubernetes.Interface, noNodes bool) (*corev1.NodeList, error) {
	if noNodes {
		return nil, errNoNodes
	}
	return kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
}

var errNoNodes = errors.New("the traffic-manager may not read Nodes (rbac.readNodes=false)")

// validRange finds the range in the API server's answer to a service with an
// invalid cluster IP: "... The range of valid IPs is 10.96.0.0/12".
var validRange = regexp.MustCompile(`valid IPs is ([0-9a-fA-F.:/]+)`)

// serviceCIDRs asks the API server: creating a service with a cluster IP out
// of every range fails with a message naming the configured range. Clusters
// with the ServiceCIDR API could be asked directly; this works on all.
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
