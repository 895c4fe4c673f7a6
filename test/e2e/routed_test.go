//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/rand"
)

// TestInterceptedMeansRouted: on a 2-replica Deployment's first injection,
// `tp intercept --docker-run` says "Intercepted" only once every ready
// endpoint of the service routes to the intercept, so that the in-cluster
// requests right after it all reach the local copy, none the cluster's.
func TestInterceptedMeansRouted(t *testing.T) {
	c := newCluster(t)
	ns := c.echoNamespace(t, "routed")
	ctx := context.Background()
	if _, err := c.client.AppsV1().Deployments(ns).Patch(ctx, "echo", types.MergePatchType,
		[]byte(`{"spec":{"replicas":2}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	conn := connect(t, "routed-"+rand.String(4), "-n", ns)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	run := exec.CommandContext(ctx, tpBin(t), "intercept", "echo", "--name", conn.name, "--service", "echo", "--port", "8080:http",
		"--docker-run", "--", "-e", "ECHO_COPY=local", echoImage, "serve")
	run.Cancel = func() error { return run.Process.Signal(os.Interrupt) }
	var out syncBuffer
	run.Stdout, run.Stderr = &out, &out
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- run.Wait() }()
	t.Cleanup(func() {
		cancel()
		<-done
		for _, id := range interceptContainers(t, conn, "echo") {
			_, _ = docker("rm", "-f", id)
		}
	})

	// "Intercepted", as a user sees it.
	deadline := time.Now().Add(3 * time.Minute)
	for !strings.Contains(out.String(), "Intercepted ") {
		select {
		case err := <-done:
			t.Fatalf("tp intercept --docker-run ended before it intercepted: %v\n%s", err, out.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("tp intercept --docker-run did not intercept within 3m:\n%s", out.String())
		}
	}
	// The local copy starts after "Intercepted": wait until it listens
	// (in the connection's network, not through the cluster).
	deadline = time.Now().Add(30 * time.Second)
	for {
		if _, err := probe([]string{"--network", "container:" + conn.container}, "http", "http://127.0.0.1:8080/healthz"); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the local copy does not answer within 30s: %v\n%s", err, out.String())
		}
		time.Sleep(200 * time.Millisecond)
	}

	// 20 requests from a pod in the cluster, each on a new connection.
	const n = 20
	replies, err := c.runPod(ns, probeImage, "http", "-timeout", "60s", "-n", strconv.Itoa(n), "http://echo."+ns+"/routed")
	if err != nil {
		t.Fatalf("in-cluster requests: %v", err)
	}
	local := 0
	for _, l := range lines(replies) {
		var r echoReply
		if json.Unmarshal([]byte(l), &r) == nil && r.Copy == "local" {
			local++
		}
	}
	if local != n {
		t.Errorf("requests right after Intercepted: %d of %d reached the local copy, want all; answers:\n%s\ntp intercept:\n%s",
			local, n, replies, out.String())
	}
	if want := "Intercepted: 2 of 2 ready endpoints of service echo route to you"; !strings.Contains(out.String(), want) {
		t.Errorf("tp intercept output does not say %q:\n%s", want, out.String())
	}
}
