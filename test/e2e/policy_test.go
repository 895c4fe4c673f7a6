//go:build e2e

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/rand"
)

// TestTunnelPolicy: the traffic-manager is no open proxy. A joined container
// whose routes send the cloud metadata address and the node's kubelet into
// tp (as in clusters whose pod range holds the nodes) gets its connections
// refused at once (a RST, not a timeout), UDP too, and the daemon's log says
// why and which chart value allows them; pods and services still answer.
func TestTunnelPolicy(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "policy")
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	pod := c.runningPod(t, ns, "app=echo")

	nodes, err := c.client.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var nodeIP, nodeName string
	for _, n := range nodes.Items {
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP && nodeIP == "" && !strings.Contains(a.Address, ":") {
				nodeIP, nodeName = a.Address, n.Name
			}
		}
	}
	if nodeIP == "" {
		t.Fatalf("no node with an IPv4 InternalIP among %d nodes", len(nodes.Items))
	}

	conn := connect(t, "pol-"+rand.String(4), "-n", ns)
	// The daemon routes only the pod and service ranges: route the two
	// destinations into its TUN too, so that the manager's policy decides.
	if out, err := probe([]string{"--network", "container:" + conn.container, "--cap-add", "NET_ADMIN"},
		"route", "tp0", "169.254.169.254/32", nodeIP+"/32"); err != nil {
		t.Fatalf("route into tp0: %v\n%s", err, out)
	}

	for _, dst := range []string{"169.254.169.254:80", nodeIP + ":10250"} {
		out, err := conn.probe("tcp", "-timeout", "5s", dst)
		switch {
		case err == nil:
			t.Errorf("joined container connected to %s through the traffic-manager: %s", dst, out)
		case !strings.Contains(out, "connection refused"):
			t.Errorf("connect to %s failed with %q, want connection refused (a RST at once, not a timeout)", dst, strings.TrimSpace(out))
		default:
			t.Logf("joined container to %s: %s", dst, strings.TrimSpace(out))
		}
	}
	if out, err := conn.probe("udp", "-timeout", "5s", "169.254.169.254:9999", "ping"); err == nil {
		t.Errorf("UDP to 169.254.169.254:9999 answered %q, want refused", out)
	} else if !strings.Contains(out, "connection refused") {
		t.Errorf("UDP to 169.254.169.254:9999 failed with %q, want connection refused (ICMP port unreachable)", strings.TrimSpace(out))
	}

	// The user sees why in the daemon's log.
	wants := []string{
		"dial tcp 169.254.169.254:80 refused by the traffic-manager: link-local addresses",
		"dial tcp " + nodeIP + ":10250 refused by the traffic-manager: the address of node " + nodeName,
		"dial udp 169.254.169.254:9999 refused by the traffic-manager",
		"allow it with the chart value tunnel.allowCIDRs",
	}
	logs, err := docker("logs", conn.container)
	if err != nil {
		t.Fatalf("docker logs %s: %v", conn.container, err)
	}
	for _, want := range wants {
		if !strings.Contains(logs, want) {
			t.Errorf("daemon log lacks %q:\n%s", want, lastLines(logs, 30))
		}
	}
	for _, l := range lines(logs) {
		if strings.Contains(l, "refused by the traffic-manager") {
			t.Logf("daemon log: %s", l)
		}
	}

	// Pods, services and the cluster DNS still work.
	for _, url := range []string{"http://echo/", "http://" + pod.Status.PodIP + ":8080/pod-ip"} {
		if out, err := conn.probeEventually("http", url); err != nil {
			t.Errorf("joined container GET %s: %v\n%s", url, err, out)
		}
	}
	if out, err := conn.probe("udp", "echo:9090", "ping"); err != nil || strings.TrimSpace(out) != "cluster:ping" {
		t.Errorf("UDP echo answered %q (%v), want cluster:ping", out, err)
	}
}

// TestTunnelPolicyRefusesHostNetworkIntercept: intercepting a Deployment on
// the node's network fails at once with why and what to do, and leaves the
// Deployment's pod template alone.
func TestTunnelPolicyRefusesHostNetworkIntercept(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "hostnet")
	labels := map[string]string{"app": "hostnet"}
	// No replicas: the manager decides on the pod template, and no pod
	// takes ports of this machine.
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "hostnet"},
		Spec: appsv1.DeploymentSpec{
			Replicas: new(int32),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					HostNetwork: true,
					Containers: []corev1.Container{{Name: "echo", Image: echoImage, ImagePullPolicy: corev1.PullNever, Args: []string{"serve"},
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}},
				},
			},
		},
	}
	ctx := context.Background()
	if _, err := c.client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "hostnet"},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP},
		}},
	}
	if _, err := c.client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	conn := connect(t, "hn-"+rand.String(4), "-n", ns)
	out, err := tp(t, "intercept", "hostnet", "--name", conn.name, "--port", "8080:http")
	if err == nil {
		t.Fatalf("tp intercept of a hostNetwork Deployment succeeded:\n%s", out)
	}
	t.Logf("tp intercept hostnet: %s", strings.TrimSpace(out))
	for _, want := range []string{"hostnet", "hostNetwork: true", "remove hostNetwork"} {
		if !strings.Contains(out, want) {
			t.Errorf("tp intercept output lacks %q:\n%s", want, out)
		}
	}
	got, err := c.client.AppsV1().Deployments(ns).Get(ctx, "hostnet", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := got.Spec.Template.Labels["tp.run/agent"]; ok {
		t.Errorf("pod template labelled tp.run/agent=%s after the refusal, want untouched", v)
	}
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
