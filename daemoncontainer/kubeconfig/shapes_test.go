package kubeconfig_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/tp-run/tp/daemoncontainer/kubeconfig"
)

// engine is what the host knows about the local Docker engine and the
// containers on it, for one shape (what tp connect asks Docker and the
// host's resolver).
type engine struct {
	// published: host port -> node container (network, ip, container port).
	published map[int]struct {
		network, ip string
		port        int
	}
	// containers: IP -> network of a container that has it.
	containers map[string]string
	// hosts: the host's resolver (/etc/hosts).
	hosts map[string][]string
	// dockerDesktop: the engine resolves Docker Desktop's names itself.
	dockerDesktop bool
	// forwarded: host port -> port of the host forwarder (the API server
	// listens on the host's 127.0.0.1 only).
	forwarded map[int]int
}

func (e engine) options() kubeconfig.Options {
	o := kubeconfig.Options{
		PublishedBy: func(hostPort int) (string, string, int, bool) {
			p, ok := e.published[hostPort]
			return p.network, p.ip, p.port, ok
		},
		NetworkOf: func(ip string) (string, bool) {
			n, ok := e.containers[ip]
			return n, ok
		},
		LookupHost: func(host string) ([]string, error) {
			if a, ok := e.hosts[host]; ok {
				return a, nil
			}
			return nil, os.ErrNotExist
		},
		ForwardLoopback: func(_ string, hostPort int) (int, error) {
			if p, ok := e.forwarded[hostPort]; ok {
				return p, nil
			}
			return hostPort, nil
		},
		Kubeauth: &kubeconfig.KubeauthRelay{URL: "http://host.docker.internal:41234", Secret: "s"},
	}
	if e.dockerDesktop {
		o.EngineHosts = kubeconfig.DockerDesktopHosts
	}
	return o
}

// node is a published port of a node container.
func node(hostPort int, network, ip string, port int) map[int]struct {
	network, ip string
	port        int
} {
	return map[int]struct {
		network, ip string
		port        int
	}{hostPort: {network, ip, port}}
}

// loadShape loads testdata/shapes/file as clientcmd does. The minikube
// files name certificate files under the user's home, as minikube writes
// them: they are created under a temporary home that replaces it.
func loadShape(t *testing.T, file string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "shapes", file))
	if err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	text := string(data)
	for _, h := range []string{"/Users/dev", "/home/dev"} {
		text = strings.ReplaceAll(text, h, home)
	}
	for _, f := range []string{".minikube/ca.crt", ".minikube/profiles/minikube/client.crt", ".minikube/profiles/minikube/client.key"} {
		path := filepath.Join(home, filepath.FromSlash(f))
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte("PEM of "+f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(home, "config")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestForContainerShapes: the kubeconfigs that local cluster tools and
// cloud CLIs really write, each against the engine it runs with, give the
// daemon container a server it reaches and a TLS name the certificate
// carries.
func TestForContainerShapes(t *testing.T) {
	linux := engine{}
	tests := []struct {
		name, file     string
		engine         engine
		wantServer     string
		wantTLSName    string
		wantNetworks   []string
		wantExtraHosts []string
		wantExecUsers  []string
		wantDirect     []string // hosts the container reaches without a proxy
	}{
		{name: "kind: node container publishes 127.0.0.1:41727 -> 6443", file: "kind.yaml",
			engine:     engine{published: node(41727, "kind", "172.18.0.2", 6443)},
			wantServer: "https://172.18.0.2:6443", wantTLSName: "127.0.0.1", wantNetworks: []string{"kind"}, wantDirect: []string{"172.18.0.2"}},
		{name: "minikube docker driver on macOS", file: "minikube-docker-macos.yaml",
			engine:     engine{dockerDesktop: true, published: node(55031, "minikube", "192.168.49.2", 8443)},
			wantServer: "https://192.168.49.2:8443", wantTLSName: "127.0.0.1", wantNetworks: []string{"minikube"}, wantDirect: []string{"192.168.49.2"}},
		{name: "minikube docker driver on Linux: the node's address", file: "minikube-docker-linux.yaml",
			engine:     engine{containers: map[string]string{"192.168.49.2": "minikube"}},
			wantServer: "https://192.168.49.2:8443", wantNetworks: []string{"minikube"}, wantDirect: []string{"192.168.49.2"}},
		{name: "k3d: serverlb publishes 0.0.0.0:38313 -> 6443", file: "k3d.yaml",
			engine:     engine{published: node(38313, "k3d-dev", "172.19.0.3", 6443)},
			wantServer: "https://172.19.0.3:6443", wantTLSName: "0.0.0.0", wantNetworks: []string{"k3d-dev"}, wantDirect: []string{"172.19.0.3"}},
		{name: "k3d without its load balancer container running", file: "k3d.yaml", engine: linux,
			wantServer: "https://host.docker.internal:38313", wantTLSName: "0.0.0.0", wantDirect: []string{"host.docker.internal"}},
		{name: "Docker Desktop's Kubernetes on Docker Desktop", file: "docker-desktop.yaml",
			engine:     engine{dockerDesktop: true, hosts: map[string][]string{"kubernetes.docker.internal": {"127.0.0.1"}}},
			wantServer: "https://kubernetes.docker.internal:6443"},
		{name: "kubernetes.docker.internal on another engine", file: "docker-desktop.yaml",
			engine:         engine{hosts: map[string][]string{"kubernetes.docker.internal": {"127.0.0.1"}}},
			wantServer:     "https://kubernetes.docker.internal:6443",
			wantExtraHosts: []string{"kubernetes.docker.internal:host-gateway"}, wantDirect: []string{"kubernetes.docker.internal"}},
		{name: "kubernetes.docker.internal on another engine, loopback only", file: "docker-desktop.yaml",
			engine:     engine{hosts: map[string][]string{"kubernetes.docker.internal": {"127.0.0.1", "::1"}}, forwarded: map[int]int{6443: 45002}},
			wantServer: "https://host.docker.internal:45002", wantTLSName: "kubernetes.docker.internal", wantDirect: []string{"host.docker.internal"}},
		{name: "Rancher Desktop: k3s in the engine's VM", file: "rancher-desktop.yaml", engine: linux,
			wantServer: "https://host.docker.internal:6443", wantTLSName: "127.0.0.1", wantDirect: []string{"host.docker.internal"}},
		{name: "127.0.0.1, API server on every interface", file: "plain-loopback.yaml", engine: linux,
			wantServer: "https://host.docker.internal:6443", wantTLSName: "127.0.0.1", wantDirect: []string{"host.docker.internal"}},
		{name: "127.0.0.1, API server on the host's loopback only", file: "plain-loopback.yaml",
			engine:     engine{forwarded: map[int]int{6443: 45001}},
			wantServer: "https://host.docker.internal:45001", wantTLSName: "127.0.0.1", wantDirect: []string{"host.docker.internal"}},
		{name: "EKS with the aws exec plugin", file: "eks.yaml", engine: linux,
			wantServer:    "https://A1B2C3D4E5F60718293A4B5C6D7E8F90.gr7.eu-west-1.eks.amazonaws.com",
			wantExecUsers: []string{"arn:aws:eks:eu-west-1:123456789012:cluster/prod"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, err := clientcmd.LoadFromFile(loadShape(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			res, err := kubeconfig.ForContainer(*raw, "", tt.engine.options())
			if err != nil {
				t.Fatalf("ForContainer: %v", err)
			}
			got := load(t, res)
			kctx := got.Contexts[got.CurrentContext]
			if kctx == nil || got.CurrentContext != raw.CurrentContext {
				t.Fatalf("current-context: got %q, want %q", got.CurrentContext, raw.CurrentContext)
			}
			c := got.Clusters[kctx.Cluster]
			if c.Server != tt.wantServer {
				t.Errorf("server: got %v, want %v", c.Server, tt.wantServer)
			}
			if c.TLSServerName != tt.wantTLSName {
				t.Errorf("tls-server-name: got %q, want %q", c.TLSServerName, tt.wantTLSName)
			}
			if len(c.CertificateAuthorityData) == 0 || c.CertificateAuthority != "" {
				t.Errorf("certificate-authority: got data %q, file %q, want the CA embedded", c.CertificateAuthorityData, c.CertificateAuthority)
			}
			if !slices.Equal(res.Networks, tt.wantNetworks) {
				t.Errorf("networks: got %v, want %v", res.Networks, tt.wantNetworks)
			}
			if !slices.Equal(res.ExtraHosts, tt.wantExtraHosts) {
				t.Errorf("extra hosts: got %v, want %v", res.ExtraHosts, tt.wantExtraHosts)
			}
			if !slices.Equal(res.Direct, tt.wantDirect) {
				t.Errorf("direct hosts: got %v, want %v", res.Direct, tt.wantDirect)
			}
			if !slices.Equal(res.ExecUsers, tt.wantExecUsers) {
				t.Errorf("exec users: got %v, want %v", res.ExecUsers, tt.wantExecUsers)
			}
			u := got.AuthInfos[kctx.AuthInfo]
			if len(tt.wantExecUsers) == 0 && (len(u.ClientCertificateData) == 0 || len(u.ClientKeyData) == 0 || u.ClientCertificate != "" || u.ClientKey != "") {
				t.Errorf("client certificate: got data %d/%d bytes, files %q %q, want both embedded",
					len(u.ClientCertificateData), len(u.ClientKeyData), u.ClientCertificate, u.ClientKey)
			}
		})
	}
}
