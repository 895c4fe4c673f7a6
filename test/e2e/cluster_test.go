//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tp-run/tp/internal/kube"
)

type echoReply struct {
	Service string `json:"service"`
	Copy    string `json:"copy"`
	Pod     string `json:"pod"`
}

// TestClusterSmoke proves the test bed: the example deploys and is reachable
// in the cluster through its service and from the host through a client-go
// port-forward, while a plain Docker container reaches the API server but
// nothing else of the cluster (as on a laptop).
func TestClusterSmoke(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "smoke")
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	pod := c.runningPod(t, ns, "app=echo")

	t.Run("through the service in the cluster", func(t *testing.T) {
		out := c.podOutput(t, ns, probeImage, "http", "http://echo."+ns+"/hello")
		var r echoReply
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("decode %q: %v", out, err)
		}
		if r.Service != "echo" || r.Copy != "cluster" || r.Pod != pod.Name {
			t.Errorf("got %+v, want service echo, copy cluster, pod %s", r, pod.Name)
		}
	})

	t.Run("through a client-go port-forward", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		pf, err := kube.NewPortForwarder(ctx, c.config, ns, pod.Name)
		if err != nil {
			t.Fatal(err)
		}
		defer pf.Close()
		client := &http.Client{Transport: &http.Transport{
			DialContext: func(context.Context, string, string) (net.Conn, error) { return pf.DialPort(8080) },
		}}
		resp, err := client.Get("http://echo/hello")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var r echoReply
		if err := json.Unmarshal(body, &r); err != nil {
			t.Fatalf("decode %q: %v", body, err)
		}
		if r.Pod != pod.Name || r.Copy != "cluster" {
			t.Errorf("got %+v, want pod %s, copy cluster", r, pod.Name)
		}
	})

	t.Run("a plain container reaches the API server but not pods or services", func(t *testing.T) {
		svc, err := c.client.CoreV1().Services(ns).Get(context.Background(), "echo", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, target := range []string{
			fmt.Sprintf("%s:8080", pod.Status.PodIP),
			fmt.Sprintf("%s:80", svc.Spec.ClusterIP),
			"10.96.0.10:53",
		} {
			if out, err := probe(nil, "tcp", "-timeout", "3s", target); err == nil {
				t.Errorf("plain container reached %s without tp (%s): the test bed must block Docker's networks from the cluster", target, strings.TrimSpace(out))
			}
		}
		if out, err := probe([]string{"--add-host", "host.docker.internal:host-gateway"}, "tcp", "host.docker.internal:6443"); err != nil {
			t.Errorf("plain container cannot reach the API server at host.docker.internal:6443: %v\n%s", err, out)
		}
	})
}
