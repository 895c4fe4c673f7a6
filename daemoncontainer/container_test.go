package daemoncontainer

import (
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"
	"k8s.io/cli-runtime/pkg/genericclioptions"

	"github.com/tp-run/tp/daemoncontainer/wire"
)

func TestContainerName(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "tp"}, {DefaultName, "tp"}, {"a", "tp-a"}, {"dev-2", "tp-dev-2"},
	} {
		if got := ContainerName(tc.in); got != tc.want {
			t.Errorf("ContainerName(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestLabelsRoundTrip: what create writes into labels is what Find reads back.
func TestLabelsRoundTrip(t *testing.T) {
	labels := map[string]string{
		LabelConnection: "a", LabelContext: "ctx", LabelNamespace: "ns",
		LabelManagerNamespace: "tp", LabelVersion: "v1", LabelKubeauthPID: "42", LabelForwardPID: "43", LabelKubeconfig: "/home/u/kc",
		LabelPublish: "127.0.0.1:8080:80,9090:90/udp",
	}
	got := connectionFrom("id1", "/tp-a", labels, "running")
	want := Connection{Name: "a", ContainerName: "tp-a", ContainerID: "id1", Running: true, State: "running",
		Context: "ctx", Namespace: "ns", ManagerNamespace: "tp", Version: "v1", KubeauthPID: "42", ForwardPID: "43", Kubeconfig: "/home/u/kc",
		Publish: []string{"127.0.0.1:8080:80", "9090:90/udp"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("connectionFrom = %+v, want %+v", got, want)
	}
	if c := connectionFrom("id", "tp", labels, "exited"); c.Running {
		t.Errorf("an exited container reads as running")
	}
}

// TestHostConfigHardening: the daemon container may do what the TUN device
// and the DNS server need, and nothing else.
func TestHostConfigHardening(t *testing.T) {
	h := hostConfig(createOptions{DNS: []string{"192.0.2.53"}})
	if !slices.Equal(h.CapDrop, []string{"ALL"}) {
		t.Errorf("CapDrop = %q, want [ALL]", h.CapDrop)
	}
	if !slices.Equal(h.CapAdd, []string{"NET_ADMIN"}) {
		t.Errorf("CapAdd = %q, want exactly [NET_ADMIN]", h.CapAdd)
	}
	if !slices.Contains(h.SecurityOpt, "no-new-privileges") {
		t.Errorf("SecurityOpt = %q, want no-new-privileges", h.SecurityOpt)
	}
	if h.RestartPolicy.Name != RestartPolicy {
		t.Errorf("restart policy %q, want %q (the connection comes back with the engine)", h.RestartPolicy.Name, RestartPolicy)
	}
	if m := hostConfig(createOptions{MemoryOnly: true}); m.RestartPolicy.Name != container.RestartPolicyDisabled {
		t.Errorf("memory-only: restart policy %q, want none (a restart has no kubeconfig)", m.RestartPolicy.Name)
	}
	if got := slices.Collect(maps.Keys(h.Tmpfs)); !slices.Equal(got, []string{RunDir}) {
		t.Errorf("tmpfs mounts at %q, want only %s", got, RunDir)
	}
	if opts := h.Tmpfs[RunDir]; !strings.Contains(opts, "mode=0700") || !strings.Contains(opts, "noexec") {
		t.Errorf("tmpfs %s options %q, want mode=0700 and noexec", RunDir, opts)
	}
	if h.Sysctls["net.ipv4.ip_unprivileged_port_start"] != "0" {
		t.Errorf("sysctls %v, want net.ipv4.ip_unprivileged_port_start=0 (DNS on port 53 without NET_BIND_SERVICE)", h.Sysctls)
	}
	if len(h.Binds) != 0 || len(h.Mounts) != 0 || len(h.VolumesFrom) != 0 {
		t.Errorf("binds %q, mounts %v, volumes-from %q: want none (nothing of the connection on the host or in volumes)", h.Binds, h.Mounts, h.VolumesFrom)
	}
	if h.Privileged {
		t.Error("privileged")
	}
	if len(h.Resources.Devices) != 1 || h.Resources.Devices[0].PathInContainer != "/dev/net/tun" {
		t.Errorf("devices %+v, want only /dev/net/tun", h.Resources.Devices)
	}
	if !slices.Equal(h.DNS, []string{"192.0.2.53"}) {
		t.Errorf("DNS = %q, want the --dns override", h.DNS)
	}
}

// TestContainerConfigKubeconfigOnStdin: the kubeconfig travels on the
// daemon's stdin only, never in the command line, environment or labels.
func TestContainerConfigKubeconfigOnStdin(t *testing.T) {
	secret := "client-key-data: c2VjcmV0"
	o := createOptions{Connection: Connection{Name: "a", Context: "ctx", Namespace: "ns", ManagerNamespace: "tp", Version: "v1", Kubeconfig: "/home/u/kc"},
		Image: "tp:v1", KubeconfigData: []byte(secret), LogLevel: "info"}
	c := containerConfig(o)
	if !c.OpenStdin || !c.StdinOnce || !c.AttachStdin || c.Tty {
		t.Errorf("stdin open %v, once %v, attach %v, tty %v: want an open stdin, closed after the one writer, no TTY",
			c.OpenStdin, c.StdinOnce, c.AttachStdin, c.Tty)
	}
	i := slices.Index(c.Cmd, "--kubeconfig")
	if i < 0 || i+1 >= len(c.Cmd) || c.Cmd[i+1] != wire.KubeconfigFromStdin {
		t.Errorf("command %q, want --kubeconfig %s", c.Cmd, wire.KubeconfigFromStdin)
	}
	everything := strings.Join(c.Cmd, " ") + strings.Join(c.Env, " ") + strings.Join(slices.Collect(maps.Values(c.Labels)), " ")
	if strings.Contains(everything, "c2VjcmV0") {
		t.Errorf("the kubeconfig leaks into the container's configuration: %s", everything)
	}
	if c.Labels[LabelKubeconfig] != "/home/u/kc" || c.Labels[LabelContext] != "ctx" {
		t.Errorf("labels %v, want the kubeconfig path and context of the connection", c.Labels)
	}
	if i := slices.Index(c.Cmd, "--state-dir"); i < 0 || c.Cmd[i+1] != StateDir {
		t.Errorf("command %q, want --state-dir %s (the connection survives a restart)", c.Cmd, StateDir)
	}
	o.MemoryOnly = true
	if c := containerConfig(o); slices.Index(c.Cmd, "--state-dir") < 0 || c.Cmd[slices.Index(c.Cmd, "--state-dir")+1] != "" {
		t.Errorf("memory-only command %q, want --state-dir \"\" (nothing kept)", c.Cmd)
	}
}

func TestResolverWriter(t *testing.T) {
	cfg, host := resolverWriter("tp:v1", "abc", netip.MustParseAddr("127.0.0.1"), "dev", "cluster.local")
	if host.NetworkMode != "container:abc" {
		t.Errorf("network mode %q, want container:abc (the daemon's namespace and resolv.conf)", host.NetworkMode)
	}
	if !slices.Equal(host.CapDrop, []string{"ALL"}) || len(host.CapAdd) != 0 || !slices.Contains(host.SecurityOpt, "no-new-privileges") {
		t.Errorf("writer caps drop %q add %q, security %q: want no capabilities and no new privileges", host.CapDrop, host.CapAdd, host.SecurityOpt)
	}
	want := []string{"daemon", "resolvconf", "--nameserver", "127.0.0.1", "--namespace", "dev", "--cluster-domain", "cluster.local"}
	if !slices.Equal(cfg.Cmd, want) || cfg.Image != "tp:v1" {
		t.Errorf("writer runs %s %q, want tp:v1 %q", cfg.Image, cfg.Cmd, want)
	}
}

func TestKubeconfigPaths(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	abs := filepath.Join(t.TempDir(), "b") // absolute on every OS: /x/b is not on Windows
	t.Setenv("KUBECONFIG", "a"+string(filepath.ListSeparator)+abs)
	if got, want := kubeconfigPaths(genericclioptions.NewConfigFlags(true)), filepath.Join(dir, "a")+string(filepath.ListSeparator)+abs; got != want {
		t.Errorf("from $KUBECONFIG: %q, want %q", got, want)
	}
	f := genericclioptions.NewConfigFlags(true)
	explicit := "kc"
	f.KubeConfig = &explicit
	if got, want := kubeconfigPaths(f), filepath.Join(dir, "kc"); got != want {
		t.Errorf("from --kubeconfig: %q, want %q", got, want)
	}
	t.Setenv("KUBECONFIG", "")
	if got := kubeconfigPaths(genericclioptions.NewConfigFlags(true)); got != "" {
		t.Errorf("default: %q, want empty", got)
	}
}

// TestKubeFlags: commands on a connection use its kubeconfig and context,
// not the host's current context.
func TestKubeFlags(t *testing.T) {
	conn := Connection{Name: "a", Context: "conn-ctx", Kubeconfig: "/home/u/kc"}
	str := func(s string) *string { return &s }
	for _, tc := range []struct {
		name                 string
		kubeconfig, context  *string
		wantKubeconfig, want string
		wantErr              bool
	}{
		{name: "no flags", wantKubeconfig: "/home/u/kc", want: "conn-ctx"},
		{name: "same context", context: str("conn-ctx"), wantKubeconfig: "/home/u/kc", want: "conn-ctx"},
		{name: "other context", context: str("prod"), wantErr: true},
		{name: "explicit kubeconfig", kubeconfig: str("/other"), wantKubeconfig: "/other", want: "conn-ctx"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			user := genericclioptions.NewConfigFlags(true)
			if tc.kubeconfig != nil {
				user.KubeConfig = tc.kubeconfig
			}
			if tc.context != nil {
				user.Context = tc.context
			}
			f, err := conn.KubeFlags(user)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("KubeFlags with --context %s succeeded, want an error (the connection is for %s)", *tc.context, conn.Context)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if *f.KubeConfig != tc.wantKubeconfig || *f.Context != tc.want {
				t.Errorf("kubeconfig %q context %q, want %q %q", *f.KubeConfig, *f.Context, tc.wantKubeconfig, tc.want)
			}
		})
	}
	t.Run("kubeconfig list", func(t *testing.T) {
		t.Setenv("KUBECONFIG", "")
		list := "/a" + string(filepath.ListSeparator) + "/b"
		f, err := Connection{Context: "c", Kubeconfig: list}.KubeFlags(nil)
		if err != nil {
			t.Fatal(err)
		}
		if *f.KubeConfig != "" || os.Getenv("KUBECONFIG") != list {
			t.Errorf("kubeconfig %q, $KUBECONFIG %q: want the list in $KUBECONFIG", *f.KubeConfig, os.Getenv("KUBECONFIG"))
		}
	})
}

// TestKubeFlagsLoadsConnectionContext: the flags really load the
// connection's context, whatever the file's current context is.
func TestKubeFlagsLoadsConnectionContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kubeconfig")
	kc := `apiVersion: v1
kind: Config
current-context: host-current
clusters:
- name: a
  cluster: {server: "https://a.example:6443"}
- name: b
  cluster: {server: "https://b.example:6443"}
users:
- name: u
  user: {token: t}
contexts:
- name: host-current
  context: {cluster: a, user: u}
- name: conn-ctx
  context: {cluster: b, user: u}
`
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := Connection{Name: "x", Context: "conn-ctx", Kubeconfig: path}.KubeFlags(genericclioptions.NewConfigFlags(true))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := f.ToRESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	if rc.Host != "https://b.example:6443" {
		t.Errorf("API server %s, want the connection's https://b.example:6443 (not the current context's)", rc.Host)
	}
}

func TestParsePublish(t *testing.T) {
	got, exposed, bindings, err := ParsePublish([]string{"9090:90/udp", "127.0.0.1:8080:80", "9090:90/udp"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"127.0.0.1:8080:80", "9090:90/udp"}; !reflect.DeepEqual(got, want) {
		t.Errorf("specs %q, want %q (sorted, deduplicated)", got, want)
	}
	if _, ok := exposed["80/tcp"]; !ok || len(exposed) != 2 {
		t.Errorf("exposed %v", exposed)
	}
	if b := bindings["80/tcp"]; len(b) != 1 || b[0].HostIP != "127.0.0.1" || b[0].HostPort != "8080" {
		t.Errorf("bindings of 80/tcp: %+v", b)
	}
	for _, bad := range []string{"x", "8080:y", "1:2:3:4", "80/sctpx", "80,81"} {
		if _, _, _, err := ParsePublish([]string{bad}); err == nil || !strings.Contains(err.Error(), "--publish") {
			t.Errorf("ParsePublish(%q): %v, want an error naming --publish", bad, err)
		}
	}
}

// TestHostConfigExtraHosts: the daemon container resolves the host, and the
// names the kubeconfig rewrite asks for.
func TestHostConfigExtraHosts(t *testing.T) {
	for _, tc := range []struct {
		extra, want []string
	}{
		{nil, []string{"host.docker.internal:host-gateway"}},
		{[]string{"kubernetes.docker.internal:host-gateway"}, []string{"host.docker.internal:host-gateway", "kubernetes.docker.internal:host-gateway"}},
	} {
		if got := hostConfig(createOptions{ExtraHosts: tc.extra}).ExtraHosts; !slices.Equal(got, tc.want) {
			t.Errorf("extra hosts %q: got %q, want %q", tc.extra, got, tc.want)
		}
	}
}

// TestContainerConfigProxyRoutes: tp connect --also-proxy/--never-proxy
// reach the daemon's command line, checked and masked.
func TestContainerConfigProxyRoutes(t *testing.T) {
	also, err := checkCIDRs("--also-proxy", []string{"192.168.100.7/24"})
	if err != nil {
		t.Fatal(err)
	}
	never, err := checkCIDRs("--never-proxy", []string{"10.96.0.10/32", "fd00::/8"})
	if err != nil {
		t.Fatal(err)
	}
	c := containerConfig(createOptions{Connection: Connection{Name: "a"}, AlsoProxy: also, NeverProxy: never})
	want := []string{"--also-proxy", "192.168.100.0/24", "--never-proxy", "10.96.0.10/32", "--never-proxy", "fd00::/8"}
	if got := c.Cmd[len(c.Cmd)-len(want):]; !slices.Equal(got, want) {
		t.Errorf("command ends with %q, want %q", got, want)
	}
	if _, err := checkCIDRs("--never-proxy", []string{"10.0.0.1"}); err == nil || !strings.Contains(err.Error(), "--never-proxy") {
		t.Errorf("a bare address: %v, want an error naming --never-proxy", err)
	}
}

func TestAlsoProxiedFromCommand(t *testing.T) {
	c := containerConfig(createOptions{Connection: Connection{Name: "a"}, AlsoProxy: []string{"198.51.100.0/24"}, NeverProxy: []string{"10.0.0.0/8"}})
	if got, want := alsoProxied(c.Cmd), []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}; !slices.Equal(got, want) {
		t.Errorf("alsoProxied(%q) = %v, want %v", c.Cmd, got, want)
	}
}
