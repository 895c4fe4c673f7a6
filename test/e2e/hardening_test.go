//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// capNetAdmin is CAP_NET_ADMIN's bit (linux/capability.h).
const capNetAdmin = 12

// daemonInspect is what the test reads from `docker inspect` of the daemon
// container.
type daemonInspect struct {
	ID             string
	ResolvConfPath string
	State          struct{ Pid int }
	HostConfig     struct {
		RestartPolicy   struct{ Name string }
		SecurityOpt     []string
		CapAdd, CapDrop []string
		Tmpfs           map[string]string
		Binds           []string
	}
	Mounts      []json.RawMessage
	GraphDriver struct{ Data map[string]string }
}

func inspectDaemon(t *testing.T, container string) daemonInspect {
	t.Helper()
	out, err := docker("inspect", container)
	if err != nil {
		t.Fatalf("docker inspect %s: %v\n%s", container, err, out)
	}
	var list []daemonInspect
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 1 {
		t.Fatalf("decode docker inspect %s: %v\n%s", container, err, out)
	}
	return list[0]
}

// procStatus returns the fields of /proc/PID/status of a process of the
// Docker engine's host (this machine).
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read the daemon's status (the e2e tests run on the Docker engine's host): %v", err)
	}
	fields := map[string]string{}
	for _, l := range lines(string(b)) {
		if k, v, ok := strings.Cut(l, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	return fields
}

// kubeconfigSecrets returns strings of the credentials of the kubeconfig's
// current user as they would appear in a kubeconfig tp hands to the daemon
// (base64 in YAML) or in a file holding the key itself.
func kubeconfigSecrets(t *testing.T, path string) []string {
	t.Helper()
	raw, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := clientcmdapi.FlattenConfig(raw); err != nil {
		t.Fatal(err)
	}
	u := raw.AuthInfos[raw.Contexts[raw.CurrentContext].AuthInfo]
	var secrets []string
	if len(u.ClientKeyData) > 0 {
		secrets = append(secrets, base64.StdEncoding.EncodeToString(u.ClientKeyData))
		// A line of the PEM body: the key itself, in whatever file.
		for _, l := range lines(string(u.ClientKeyData)) {
			if !strings.HasPrefix(l, "-----") && len(l) >= 40 {
				secrets = append(secrets, l)
				break
			}
		}
	}
	if u.Token != "" {
		secrets = append(secrets, u.Token)
	}
	if len(secrets) == 0 {
		t.Fatalf("the kubeconfig's user has neither a client key nor a token to look for")
	}
	return secrets
}

// findSecrets names the files under dir whose content holds one of secrets
// or whose name says kubeconfig.
func findSecrets(t *testing.T, dir string, secrets []string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.Contains(strings.ToLower(d.Name()), "kubeconfig") {
			found = append(found, path)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if containsAny(b, secrets) {
			found = append(found, path)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("search %s: %v", dir, err)
	}
	return found
}

func containsAny(b []byte, secrets []string) bool {
	for _, s := range secrets {
		if bytes.Contains(b, []byte(s)) {
			return true
		}
	}
	return false
}

// TestDaemonContainerHardening: the daemon container runs with NET_ADMIN as
// its only capability and no new privileges, and still connects (a joined
// container reaches the cluster by name, so the TUN device, the DNS server
// on port 53 and the shared resolv.conf work). Connected with
// --keep-kubeconfig=false, after the container is killed no trace of the
// kubeconfig's credentials is on disk: not in its writable layer, not in its
// exported filesystem, not in the engine's files of the container. (By
// default the daemon keeps it in its state dir, to come back after a Docker
// restart: TestDaemonStateFiles, TestFaultDockerRestarted.)
func TestDaemonContainerHardening(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "hardening")
	c.apply(t, ns, "examples/echo/k8s/echo.yaml")
	c.waitDeployment(t, ns, "echo", 2*time.Minute)
	conn := connect(t, "hard-"+rand.String(4), "-n", ns, "--keep-kubeconfig=false")
	if out, err := conn.probeEventually("http", "http://echo/"); err != nil {
		t.Fatalf("joined container never reached the echo service: %v\n%s", err, out)
	}
	if out, err := conn.probe("http", "http://echo."+ns+".svc.cluster.local/fqdn"); err != nil {
		t.Errorf("joined container GET by FQDN: %v\n%s", err, out)
	}

	info := inspectDaemon(t, conn.container)
	hc := info.HostConfig
	if hc.RestartPolicy.Name != "no" && hc.RestartPolicy.Name != "" {
		t.Errorf("restart policy %q with --keep-kubeconfig=false, want none (a restarted daemon would have no kubeconfig)", hc.RestartPolicy.Name)
	}
	if !slices.Contains(hc.SecurityOpt, "no-new-privileges") && !slices.Contains(hc.SecurityOpt, "no-new-privileges:true") {
		t.Errorf("SecurityOpt = %q, want no-new-privileges", hc.SecurityOpt)
	}
	if !slices.Equal(hc.CapDrop, []string{"ALL"}) {
		t.Errorf("CapDrop = %q, want [ALL]", hc.CapDrop)
	}
	if len(info.Mounts) != 0 || len(hc.Binds) != 0 {
		t.Errorf("mounts %s, binds %q: want no volume or host file in the daemon container", info.Mounts, hc.Binds)
	}
	if _, ok := hc.Tmpfs["/run/tp"]; !ok || len(hc.Tmpfs) != 1 {
		t.Errorf("tmpfs %v, want only /run/tp", hc.Tmpfs)
	}

	// What the kernel enforces, read from the daemon process itself.
	st := procStatus(t, info.State.Pid)
	want := strconv.FormatUint(1<<capNetAdmin, 16)
	for _, set := range []string{"CapEff", "CapPrm", "CapBnd"} {
		v, err := strconv.ParseUint(st[set], 16, 64)
		if err != nil || v != 1<<capNetAdmin {
			t.Errorf("%s = %s, want %016s (CAP_NET_ADMIN only)", set, st[set], want)
		}
	}
	for _, set := range []string{"CapInh", "CapAmb"} {
		if v, err := strconv.ParseUint(st[set], 16, 64); err != nil || v != 0 {
			t.Errorf("%s = %s, want 0", set, st[set])
		}
	}
	if st["NoNewPrivs"] != "1" {
		t.Errorf("NoNewPrivs = %q, want 1", st["NoNewPrivs"])
	}
	// No kubeconfig file in the container while it runs either.
	for _, f := range []string{"/etc/tp/kubeconfig", "/var/lib/tp/kubeconfig"} {
		if out, err := docker("cp", conn.container+":"+f, "-"); err == nil {
			t.Errorf("the daemon container has a kubeconfig file %s:\n%.200s", f, out)
		}
	}

	// Crash: the kubeconfig must not survive on disk.
	secrets := kubeconfigSecrets(t, c.kubeconfig)
	if out, err := docker("kill", conn.container); err != nil {
		t.Fatalf("docker kill: %v\n%s", err, out)
	}
	if out, err := docker("wait", conn.container); err != nil {
		t.Fatalf("docker wait: %v\n%s", err, out)
	}
	upper := info.GraphDriver.Data["UpperDir"]
	if upper == "" {
		t.Fatalf("docker inspect names no UpperDir of the container's writable layer (storage driver %v)", info.GraphDriver.Data)
	}
	if found := findSecrets(t, upper, secrets); len(found) > 0 {
		t.Errorf("the killed daemon container's writable layer holds the kubeconfig or its credentials: %q", found)
	}
	// The engine's own files of the container: config, logs, resolv.conf, hosts.
	if found := findSecrets(t, filepath.Dir(info.ResolvConfPath), secrets); len(found) > 0 {
		t.Errorf("Docker's files of the killed daemon container hold the kubeconfig's credentials: %q", found)
	}
	cmd := exec.Command("docker", "export", conn.container)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(stdout)
	files := 0
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read docker export: %v", err)
		}
		files++
		if strings.Contains(strings.ToLower(h.Name), "kubeconfig") {
			t.Errorf("docker export of the killed daemon container has %s", h.Name)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("read docker export: %v", err)
		}
		if containsAny(b, secrets) {
			t.Errorf("docker export of the killed daemon container: %s holds the kubeconfig's credentials", h.Name)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("docker export: %v", err)
	}
	if files == 0 {
		t.Fatal("docker export of the daemon container is empty, want its filesystem (/tp at least)")
	}
}

// TestUninstallEverythingUsesConnectionContext: `tp uninstall --everything`
// acts on the connection's cluster even when the kubeconfig's current context
// points elsewhere (here: an unreachable decoy), and refuses a --context
// other than the connection's. It uninstalls the shared traffic-manager, so it
// installs it again at the end, as TestMain does.
func TestUninstallEverythingUsesConnectionContext(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "unctx")
	raw, err := clientcmd.LoadFromFile(c.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	real := raw.CurrentContext
	raw.Clusters["decoy"] = &clientcmdapi.Cluster{Server: "https://127.0.0.1:1"} // nothing listens
	raw.Contexts["decoy"] = &clientcmdapi.Context{Cluster: "decoy", AuthInfo: raw.Contexts[real].AuthInfo, Namespace: "default"}
	raw.CurrentContext = "decoy"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*raw, path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if out, err := tp(t, "helm", "upgrade", "--namespace", "tp"); err != nil {
			t.Errorf("reinstall the traffic-manager: %v\n%s", err, out)
		}
	})

	name := "unctx-" + rand.String(4)
	if out, err := tpWithKubeconfig(t, path, "connect", "--name", name, "--context", real, "-n", ns); err != nil {
		t.Fatalf("tp connect --context %s: %v\n%s", real, err, out)
	}
	t.Cleanup(func() { _, _ = tp(t, "quit", "--name", name) })

	out, err := tpWithKubeconfig(t, path, "uninstall", "--everything", "--name", name, "--context", "decoy")
	if err == nil || !strings.Contains(out, "is for context "+real) {
		t.Errorf("tp uninstall --everything --context decoy on a connection of %s: %v\n%s\nwant a refusal naming the connection's context", real, err, out)
	}
	out, err = tpWithKubeconfig(t, path, "uninstall", "--everything", "--name", name)
	if err != nil {
		t.Fatalf("tp uninstall --everything with the current context on a decoy: %v\n%s", err, out)
	}
	if !strings.Contains(out, "Traffic-manager uninstalled from namespace tp") {
		t.Errorf("tp uninstall --everything said:\n%s", out)
	}
	if _, err := c.client.AppsV1().Deployments("tp").Get(context.Background(), "traffic-manager", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("traffic-manager deployment after tp uninstall --everything: %v, want not found", err)
	}
	if out, err := docker("inspect", "tp-"+name); err == nil {
		t.Errorf("daemon container tp-%s still exists after tp uninstall --everything:\n%.300s", name, out)
	}
}
