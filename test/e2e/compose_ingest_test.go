//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/rand"
)

// TestComposeIngest: a compose service with x-tp ingest of the cluster's
// echo gets the pod's environment (GREETING, from its ConfigMap) and its
// volumes at their paths (the Secret's file), and `tp list` shows the
// ingest as "ingest (no traffic)"; meanwhile the cluster's callers of echo
// are still answered by the cluster's copy (although the compose service
// serves echo on the same port in the daemon's network). `tp compose down`
// ends the ingest and removes tp's volumes.
func TestComposeIngest(t *testing.T) {
	c := newCluster(t)
	ns := c.echoNamespace(t, "ingest")
	conn := "ing-" + rand.String(4)
	project := "tpe2e" + rand.String(4)

	dir := t.TempDir()
	file := filepath.Join(dir, "compose.yaml")
	yaml := fmt.Sprintf(`name: %s
x-tp:
  connection: {name: %s, namespace: %s}
services:
  tools:
    image: %s
    command: ["serve"]
    environment: {ECHO_COPY: compose}
    x-tp:
      ingest: {workload: echo}
`, project, conn, ns, echoImage)
	if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	composeTP := composeWith(t, file)
	t.Cleanup(func() {
		if out, err := composeTP("down"); err != nil {
			t.Logf("tp compose down (cleanup): %v\n%s", err, out)
		}
		_, _ = tp(t, "quit", "--name", conn)
	})

	out, err := composeTP("up", "-d")
	if err != nil {
		t.Fatalf("tp compose up -d: %v\n%s", err, out)
	}
	t.Logf("tp compose up -d:\n%s", out)
	container := project + "-tools-1"

	// The service has the pod's environment (its own ECHO_COPY wins) and its Secret's file.
	var env string
	deadline := time.Now().Add(30 * time.Second)
	for {
		env, err = docker("exec", container, "/echo", "get", "http://127.0.0.1:8080/env?keys=GREETING,ECHO_COPY,TP_INTERCEPT_NAME")
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	for _, want := range []string{`"GREETING":"hello-from-configmap"`, `"ECHO_COPY":"compose"`, `"TP_INTERCEPT_NAME":"` + project + `-tools"`} {
		if !strings.Contains(env, want) {
			t.Errorf("the ingesting service's environment %q (%v) lacks %s", env, err, want)
		}
	}
	if got, err := docker("exec", container, "/echo", "cat", "/etc/echo/secret/API_TOKEN"); err != nil || strings.TrimSpace(got) != "s3cr3t-from-secret" {
		t.Errorf("the ingesting service reads the pod's Secret at /etc/echo/secret/API_TOKEN: %v %q, want s3cr3t-from-secret", err, got)
	}
	projectVolumes := func() string {
		out, _ := docker("volume", "ls", "-q", "--filter", "label=tp.run/compose-project="+project)
		return strings.TrimSpace(out)
	}
	if projectVolumes() == "" {
		t.Errorf("no tp volume of project %s while it runs", project)
	}
	if list, err := tp(t, "list", "--name", conn, "-n", ns); err != nil || !strings.Contains(list, project+"-tools [active, ingest (no traffic)]") {
		t.Errorf("tp list: %v, want the ingest %s-tools marked active, ingest (no traffic):\n%s", err, project, list)
	}

	// No traffic is diverted: every request of the cluster's callers gets the cluster's copy.
	// (The first waits out the rollout that injected the agent.)
	c.waitCopy(t, ns, "http://echo."+ns+"/during-ingest", "cluster", 60*time.Second)
	answered := 0
	for i := range 5 {
		out, err := c.runPod(ns, probeImage, "http", fmt.Sprintf("http://echo.%s/during-ingest-%d", ns, i))
		if err != nil {
			t.Logf("request %d to echo during the ingest: %v", i, err)
			continue
		}
		var got echoReply
		if err := json.Unmarshal([]byte(out), &got); err != nil || got.Copy != "cluster" {
			t.Errorf("request %d to echo during the ingest: %s, want the cluster's copy", i, out)
		}
		answered++
	}
	if answered == 0 {
		t.Errorf("no request to echo during the ingest was answered")
	}

	if out, err := composeTP("down"); err != nil {
		t.Fatalf("tp compose down: %v\n%s", err, out)
	}
	for _, w := range listWorkloads(t, c, ns) {
		for _, ic := range w.GetIntercepts() {
			if ic.GetSpec().GetName() == project+"-tools" {
				t.Errorf("the ingest %s is still listed after down: %v", ic.GetSpec().GetName(), ic)
			}
		}
	}
	if vols := projectVolumes(); vols != "" {
		t.Errorf("tp volumes of the project left after down: %s", vols)
	}
	if ps, _ := docker("ps", "-a", "--filter", "label=com.docker.compose.project="+project, "--format", "{{.Names}}"); strings.TrimSpace(ps) != "" {
		t.Errorf("containers left after down: %s", ps)
	}
}
