package manager

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	tunnelv1 "github.com/tp-run/tp/rpc/tunnel/v1"
	"github.com/tp-run/tp/tunnel"
)

var testCluster = &managerv1.ClusterInfo{
	PodCidrs: []string{"10.244.0.0/16", "fd00:10:244::/56"}, ServiceCidrs: []string{"10.96.0.0/12"},
	DnsIp: "10.96.0.10", ClusterDomain: "cluster.local",
}

func TestDialPolicy(t *testing.T) {
	nodes := map[netip.Addr]string{
		netip.MustParseAddr("192.168.1.10"): "node-a",
		netip.MustParseAddr("10.244.7.1"):   "node-b", // inside the pod range
	}
	tests := []struct {
		name    string
		allow   []string
		dst     string
		allowed bool
		reason  string // part of the refusal
		hint    bool   // the refusal names tunnel.allowCIDRs
	}{
		{name: "pod IP", dst: "10.244.0.12:8080", allowed: true},
		{name: "pod IPv6", dst: "[fd00:10:244::12]:8080", allowed: true},
		{name: "service IP", dst: "10.96.12.1:80", allowed: true},
		{name: "cluster DNS", dst: "10.96.0.10:53", allowed: true},
		{name: "4in6 pod IP", dst: "[::ffff:10.244.0.12]:8080", allowed: true},
		{name: "cloud metadata", dst: "169.254.169.254:80", reason: "link-local", hint: true},
		{name: "4in6 cloud metadata", dst: "[::ffff:169.254.169.254]:80", reason: "link-local", hint: true},
		{name: "IPv6 link-local", dst: "[fe80::1]:80", reason: "link-local", hint: true},
		{name: "node InternalIP kubelet", dst: "192.168.1.10:10250", reason: "node node-a", hint: true},
		{name: "node IP inside the pod range", dst: "10.244.7.1:10250", reason: "node node-b", hint: true},
		{name: "manager loopback", dst: "127.0.0.1:8081", reason: "loopback"},
		{name: "IPv6 loopback", dst: "[::1]:8081", reason: "loopback"},
		{name: "unspecified", dst: "0.0.0.0:80", reason: "unspecified"},
		{name: "multicast", dst: "224.0.0.251:5353", reason: "multicast"},
		{name: "internet", dst: "203.0.113.7:443", reason: "not in the cluster's pod or service ranges", hint: true},
		{name: "allowed range", allow: []string{"203.0.113.0/24"}, dst: "203.0.113.7:443", allowed: true},
		{name: "allowed node", allow: []string{"192.168.1.10/32"}, dst: "192.168.1.10:10250", allowed: true},
		{name: "allowed metadata", allow: []string{"169.254.169.254/32"}, dst: "169.254.169.254:80", allowed: true},
		{name: "allow does not open loopback", allow: []string{"127.0.0.0/8"}, dst: "127.0.0.1:8081", reason: "loopback"},
		{name: "allow elsewhere", allow: []string{"198.51.100.0/24"}, dst: "203.0.113.7:443", reason: "not in the cluster's", hint: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			allow, err := ParseCIDRs(strings.Join(tt.allow, ","))
			if err != nil {
				t.Fatal(err)
			}
			p, err := newDialPolicy(testCluster, allow)
			if err != nil {
				t.Fatal(err)
			}
			p.setNodes(nodes)
			err = p.check("tcp", netip.MustParseAddrPort(tt.dst))
			if tt.allowed {
				if err != nil {
					t.Fatalf("check %s: got %v, want allowed", tt.dst, err)
				}
				return
			}
			var denied *dialDeniedError
			if !errors.As(err, &denied) {
				t.Fatalf("check %s: got %v, want a *dialDeniedError", tt.dst, err)
			}
			if !errors.Is(err, syscall.EACCES) {
				t.Errorf("check %s: got %v, want errors.Is EACCES", tt.dst, err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.reason) || !strings.Contains(msg, "refused by the traffic-manager") {
				t.Errorf("check %s: got %q, want the reason %q", tt.dst, msg, tt.reason)
			}
			if got := strings.Contains(msg, AllowCIDRsValue); got != tt.hint {
				t.Errorf("check %s: got %q, names %s: %v, want %v", tt.dst, msg, AllowCIDRsValue, got, tt.hint)
			}
		})
	}
}

func TestDialPolicyMessage(t *testing.T) {
	p, err := newDialPolicy(testCluster, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := p.check("tcp", netip.MustParseAddrPort("8.8.8.8:80")).Error()
	want := "dial tcp 8.8.8.8:80 refused by the traffic-manager: not in the cluster's pod or service ranges; allow it with the chart value tunnel.allowCIDRs"
	if got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestParseCIDRs(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{in: "", want: nil},
		{in: "10.0.0.0/8", want: []string{"10.0.0.0/8"}},
		{in: " 10.1.2.3/8 , 192.0.2.1,fd00::/8", want: []string{"10.0.0.0/8", "192.0.2.1/32", "fd00::/8"}},
		{in: "10.0.0.0/8,nonsense", wantErr: true},
		{in: "10.0.0.0/33", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseCIDRs(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseCIDRs(%q): got error %v, want error %v", tt.in, err, tt.wantErr)
			continue
		}
		var gotS []string
		for _, p := range got {
			gotS = append(gotS, p.String())
		}
		if strings.Join(gotS, " ") != strings.Join(tt.want, " ") {
			t.Errorf("ParseCIDRs(%q): got %v, want %v", tt.in, gotS, tt.want)
		}
	}
}

func TestNodeAddresses(t *testing.T) {
	kube := fake.NewClientset(
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "192.168.1.10"},
			{Type: corev1.NodeExternalIP, Address: "203.0.113.10"},
			{Type: corev1.NodeHostName, Address: "n1"},
		}}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "shop"}, Spec: corev1.PodSpec{NodeName: "n2"},
			Status: corev1.PodStatus{HostIP: "192.168.1.11", HostIPs: []corev1.HostIP{{IP: "192.168.1.11"}}}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "q", Namespace: "other"}, Spec: corev1.PodSpec{NodeName: "n3"},
			Status: corev1.PodStatus{HostIP: "192.168.1.12"}},
	)
	tests := []struct {
		name string
		src  nodeAddresses
		want []string
	}{
		{name: "nodes", src: nodeAddresses{kube: kube}, want: []string{"192.168.1.10", "203.0.113.10"}},
		{name: "nodes and own host", src: nodeAddresses{kube: kube, hostIP: netip.MustParseAddr("192.168.1.9")},
			want: []string{"192.168.1.10", "192.168.1.9", "203.0.113.10"}},
		{name: "no nodes: pods of the managed namespaces", src: nodeAddresses{kube: kube, noNodes: true, namespaces: []string{"shop"},
			hostIP: netip.MustParseAddr("192.168.1.9")}, want: []string{"192.168.1.11", "192.168.1.9"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.src.list(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if g := strings.Join(addrList(got), " "); g != strings.Join(tt.want, " ") {
				t.Errorf("got %s, want %s", g, strings.Join(tt.want, " "))
			}
		})
	}
	for _, a := range kube.Actions() {
		if a.GetResource().Resource == "nodes" && a.GetVerb() != "list" {
			t.Errorf("node access %s, want list only", a.GetVerb())
		}
	}
}

// TestManagerDialRefusesOutsideCluster: a dial before the cluster is known is
// refused, not sent anywhere; then the policy decides.
func TestManagerDialRefusesOutsideCluster(t *testing.T) {
	h := newHarness(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	_, err = h.m.dial(context.Background(), "tcp", lis.Addr().String())
	if !errors.Is(err, syscall.EACCES) {
		t.Fatalf("dial %s: got %v, want EACCES", lis.Addr(), err)
	}
	p, err := newDialPolicy(testCluster, nil)
	if err != nil {
		t.Fatal(err)
	}
	h.m.policy.Store(p)
	if _, err = h.m.dial(context.Background(), "tcp", "169.254.169.254:80"); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("dial 169.254.169.254:80: got %v, want EACCES", err)
	}
}

// TestTunnelDialDenied: a client's flow to a refused destination fails at
// once with ERROR_CODE_DENIED and the policy's message.
func TestTunnelDialDenied(t *testing.T) {
	h := newHarness(t)
	p, err := newDialPolicy(testCluster, nil)
	if err != nil {
		t.Fatal(err)
	}
	h.m.policy.Store(p)
	sid := h.arriveClient("c", "host", "user")
	d := tunnel.NewDialer(h.cc, sid, nil)

	_, err = d.Dial(h.ctx(), "tcp", netip.MustParseAddrPort("169.254.169.254:80"))
	var re *tunnel.RemoteError
	if !errors.As(err, &re) || re.Code != tunnelv1.ErrorCode_ERROR_CODE_DENIED {
		t.Fatalf("Dial 169.254.169.254:80: got %v, want a remote ERROR_CODE_DENIED", err)
	}
	if !errors.Is(err, syscall.EACCES) || !strings.Contains(re.Message, AllowCIDRsValue) {
		t.Errorf("Dial 169.254.169.254:80: got %v, want EACCES with a message naming %s", err, AllowCIDRsValue)
	}
}
