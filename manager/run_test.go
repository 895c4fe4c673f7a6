package manager

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// freeAddr returns a loopback address with a port that was free just now.
func freeAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().String()
}

// runManager runs a Manager on a fake cluster until the test ends.
func runManager(t *testing.T, certDir string, setup ...func(*fake.Clientset)) (*Manager, Config) {
	t.Helper()
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 10.96.0.10\nsearch tp.svc.cluster.local svc.cluster.local\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	kube := fake.NewClientset()
	// The API server's answer to the service CIDR probe.
	kube.PrependReactor("create", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewInvalid(schema.GroupKind{Kind: "Service"}, "probe", field.ErrorList{
			field.Invalid(field.NewPath("spec", "clusterIPs"), "1.1.1.1", "The range of valid IPs is 10.96.0.0/12"),
		})
	})
	for _, f := range setup {
		f(kube)
	}
	cfg := Config{
		Namespace: "tp", SessionTTL: testTTL, ListenAddr: freeAddr(t), HealthAddr: freeAddr(t), WebhookAddr: freeAddr(t), AgentAddr: freeAddr(t),
		WebhookCertDir: certDir, AgentImage: "tp:test", ResolvConf: resolv, Log: slog.New(slog.DiscardHandler),
	}
	m, err := New(cfg, kube)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-ran:
			if err != nil {
				t.Errorf("Run: got %v, want nil after cancel", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return within 10s of cancel")
		}
	})
	return m, cfg
}

func TestRunServesWebhook(t *testing.T) {
	dir := t.TempDir()
	writeCert(t, dir, 1)
	_, cfg := runManager(t, dir)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true}}
	eventually(t, "webhook answers over TLS", func() bool {
		resp, err := client.Get("https://" + cfg.WebhookAddr + WebhookPath)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusMethodNotAllowed
	})
}

func TestRunWithoutWebhookCertificate(t *testing.T) {
	m, cfg := runManager(t, t.TempDir())
	eventually(t, "gRPC serving", func() bool {
		c, err := net.Dial("tcp", cfg.ListenAddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if err := m.cannotInject(); err == nil || !strings.Contains(err.Error(), "tp helm upgrade") {
		t.Errorf("cannotInject: got %v, want the missing certificate and what to do", err)
	}
	if c, err := net.Dial("tcp", cfg.WebhookAddr); err == nil {
		c.Close()
		t.Errorf("webhook port %s open without a certificate", cfg.WebhookAddr)
	}
}
