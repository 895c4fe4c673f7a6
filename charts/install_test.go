package charts

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chartutil"
	kubefake "helm.sh/helm/v3/pkg/kube/fake"
	"helm.sh/helm/v3/pkg/release"
	"helm.sh/helm/v3/pkg/storage"
	"helm.sh/helm/v3/pkg/storage/driver"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// testClient is a client on in-memory release storage and a kube client that
// applies nothing, sharing storage between calls like a cluster would.
type testClient struct {
	store      *storage.Storage
	namespaces []string // ensureNamespace calls
}

func newTestClient(t testing.TB) *testClient {
	t.Helper()
	mem := driver.NewMemory()
	mem.SetNamespace("tp")
	return &testClient{store: storage.Init(mem)}
}

// client returns a client for opts, namespace tp unless set.
func (tc *testClient) client(t testing.TB, opts Options) *client {
	t.Helper()
	if opts.Namespace == "" {
		opts.Namespace = "tp"
	}
	opts.Log = t.Logf
	opts, err := opts.complete(genericclioptions.NewConfigFlags(false))
	if err != nil {
		t.Fatal(err)
	}
	cfg := &action.Configuration{
		Releases:     tc.store,
		KubeClient:   &kubefake.PrintingKubeClient{Out: io.Discard},
		Capabilities: chartutil.DefaultCapabilities,
		Log:          t.Logf,
	}
	return &client{cfg: cfg, opts: opts, ensureNamespace: func(context.Context) error {
		tc.namespaces = append(tc.namespaces, opts.Namespace)
		return nil
	}}
}

func TestLifecycle(t *testing.T) {
	ctx := t.Context()
	tc := newTestClient(t)

	if rel, err := tc.client(t, Options{}).last(); !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("before install: got %v, %v, want ErrNotInstalled", rel, err)
	}
	if err := tc.client(t, Options{}).uninstall(ctx); !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("uninstall before install: got %v, want ErrNotInstalled", err)
	}

	rel, err := tc.client(t, Options{Version: "v1.0.0", Values: map[string]any{"logLevel": "debug"}}).install(ctx)
	if err != nil {
		t.Fatalf("install: %v", err)
	}
	checkRelease(t, rel, 1, "v1.0.0", release.StatusDeployed)
	if got, want := tc.namespaces, []string{"tp"}; len(got) != 1 || got[0] != want[0] {
		t.Errorf("namespaces ensured: got %v, want %v", got, want)
	}
	if got := rel.Name; got != DefaultReleaseName {
		t.Errorf("release name: got %q, want %q", got, DefaultReleaseName)
	}

	if _, err := tc.client(t, Options{Version: "v1.0.0"}).install(ctx); !errors.Is(err, ErrAlreadyInstalled) {
		t.Fatalf("second install: got %v, want ErrAlreadyInstalled", err)
	}

	last, err := tc.client(t, Options{}).last()
	if err != nil {
		t.Fatalf("installed: %v", err)
	}
	checkRelease(t, last, 1, "v1.0.0", release.StatusDeployed)

	// Upgrade with ReuseValues keeps the user's values and takes new ones.
	rel, err = tc.client(t, Options{Version: "v1.1.0", ReuseValues: true, Values: map[string]any{"session": map[string]any{"ttl": "30s"}}}).upgrade(ctx)
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	checkRelease(t, rel, 2, "v1.1.0", release.StatusDeployed)
	if got := rel.Config["logLevel"]; got != "debug" {
		t.Errorf("reused logLevel: got %v, want debug", got)
	}
	if got := rel.Config["session"]; got == nil {
		t.Errorf("session values: got none, want ttl 30s")
	}

	// Upgrade without ReuseValues starts from the chart's values.
	rel, err = tc.client(t, Options{Version: "v1.2.0"}).upgrade(ctx)
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	checkRelease(t, rel, 3, "v1.2.0", release.StatusDeployed)
	if got := rel.Config["logLevel"]; got != nil {
		t.Errorf("logLevel without reuse: got %v, want none", got)
	}

	if err := tc.client(t, Options{}).uninstall(ctx); err != nil {
		t.Fatalf("uninstall: %v", err)
	}
	if rel, err := tc.client(t, Options{}).last(); !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("after uninstall: got %v, %v, want ErrNotInstalled", rel, err)
	}

	// Upgrade installs a missing release.
	rel, err = tc.client(t, Options{Version: "v2.0.0"}).upgrade(ctx)
	if err != nil {
		t.Fatalf("upgrade of a missing release: %v", err)
	}
	checkRelease(t, rel, 1, "v2.0.0", release.StatusDeployed)
}

func TestInstallInvalidValues(t *testing.T) {
	tc := newTestClient(t)
	_, err := tc.client(t, Options{Version: "v1.0.0", Values: map[string]any{"logLevel": "loud"}}).install(t.Context())
	if err == nil {
		t.Fatal("install with logLevel loud: got no error, want one")
	}
	if len(tc.namespaces) != 0 {
		t.Errorf("namespaces ensured: got %v, want none for invalid values", tc.namespaces)
	}
}

func TestReleaseName(t *testing.T) {
	ctx := t.Context()
	tc := newTestClient(t)
	if _, err := tc.client(t, Options{ReleaseName: "tm2", Version: "v1.0.0"}).install(ctx); err != nil {
		t.Fatalf("install: %v", err)
	}
	if _, err := tc.client(t, Options{}).last(); !errors.Is(err, ErrNotInstalled) {
		t.Errorf("default release: got %v, want ErrNotInstalled", err)
	}
	if rel, err := tc.client(t, Options{ReleaseName: "tm2"}).last(); err != nil || rel.Name != "tm2" {
		t.Errorf("release tm2: got %v, %v, want it", rel, err)
	}
}

func TestUpgradePending(t *testing.T) {
	tc := newTestClient(t)
	rel, err := tc.client(t, Options{Version: "v1.0.0"}).install(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	rel.Info.Status = release.StatusPendingUpgrade
	if err := tc.store.Update(rel); err != nil {
		t.Fatal(err)
	}
	if _, err := tc.client(t, Options{Version: "v1.1.0"}).upgrade(t.Context()); err == nil {
		t.Error("upgrade of a pending release: got no error, want one")
	}
}

func TestInstallCanceled(t *testing.T) {
	tc := newTestClient(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := tc.client(t, Options{Version: "v1.0.0"}).install(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("install with a canceled context: got %v, want context.Canceled", err)
	}
	if _, err := tc.client(t, Options{Version: "v1.0.0"}).upgrade(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("upgrade with a canceled context: got %v, want context.Canceled", err)
	}
	if rel, err := tc.client(t, Options{}).last(); !errors.Is(err, ErrNotInstalled) {
		t.Errorf("after canceled install: got %v, %v, want ErrNotInstalled", rel, err)
	}
	if err := tc.client(t, Options{}).uninstall(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("uninstall with a canceled context: got %v, want context.Canceled", err)
	}
}

func TestTimeout(t *testing.T) {
	tc := newTestClient(t)
	c := tc.client(t, Options{Timeout: time.Hour})
	if got, err := c.timeout(t.Context()); err != nil || got != time.Hour {
		t.Errorf("without deadline: got %v, %v, want 1h", got, err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if got, err := c.timeout(ctx); err != nil || got > time.Minute || got < 30*time.Second {
		t.Errorf("with a deadline in 1m: got %v, %v, want about 1m", got, err)
	}
	if got := tc.client(t, Options{}).opts.Timeout; got != DefaultTimeout {
		t.Errorf("default: got %v, want %v", got, DefaultTimeout)
	}
	ctx, cancel = context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
	defer cancel()
	if _, err := c.timeout(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("past deadline: got %v, want context.DeadlineExceeded", err)
	}
}

func checkRelease(t testing.TB, rel *release.Release, revision int, appVersion string, status release.Status) {
	t.Helper()
	if rel.Version != revision {
		t.Errorf("revision: got %d, want %d", rel.Version, revision)
	}
	if got := rel.Chart.Metadata.AppVersion; got != appVersion {
		t.Errorf("appVersion: got %q, want %q", got, appVersion)
	}
	if rel.Info.Status != status {
		t.Errorf("status: got %q, want %q", rel.Info.Status, status)
	}
	if rel.Namespace != "tp" {
		t.Errorf("namespace: got %q, want tp", rel.Namespace)
	}
}

func TestNotInstalledError(t *testing.T) {
	for _, name := range []string{DefaultReleaseName, "other"} {
		err := notInstalled("team-a", name)
		if !errors.Is(err, ErrNotInstalled) {
			t.Errorf("notInstalled(%q): got %v, want ErrNotInstalled", name, err)
		}
	}
}

func TestEnsureNamespace(t *testing.T) {
	ctx := t.Context()
	existing := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "exists"}}
	nsResource := schema.GroupResource{Resource: "namespaces"}
	tests := []struct {
		name       string
		namespace  string
		reactor    k8stesting.ReactionFunc
		verb       string
		wantErr    bool
		wantCreate bool
	}{
		{name: "exists", namespace: "exists"},
		{name: "missing", namespace: "new", wantCreate: true},
		{
			name: "get forbidden", namespace: "secret", verb: "get",
			reactor: func(k8stesting.Action) (bool, runtime.Object, error) {
				return true, nil, apierrors.NewForbidden(nsResource, "secret", errors.New("no"))
			},
		},
		{
			name: "create forbidden", namespace: "new", verb: "create", wantErr: true,
			reactor: func(k8stesting.Action) (bool, runtime.Object, error) {
				return true, nil, apierrors.NewForbidden(nsResource, "new", errors.New("no"))
			},
		},
		{
			name: "created meanwhile", namespace: "new", verb: "create",
			reactor: func(k8stesting.Action) (bool, runtime.Object, error) {
				return true, nil, apierrors.NewAlreadyExists(nsResource, "new")
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := fake.NewClientset(existing)
			if tt.reactor != nil {
				cs.PrependReactor(tt.verb, "namespaces", tt.reactor)
			}
			err := ensureNamespace(ctx, cs, tt.namespace, t.Logf)
			if (err != nil) != tt.wantErr {
				t.Fatalf("got %v, want error %v", err, tt.wantErr)
			}
			var created bool
			for _, a := range cs.Actions() {
				created = created || a.GetVerb() == "create"
			}
			_, getErr := cs.CoreV1().Namespaces().Get(ctx, tt.namespace, metav1.GetOptions{})
			if tt.wantCreate && getErr != nil {
				t.Errorf("namespace %s after ensureNamespace: %v", tt.namespace, getErr)
			}
			if !tt.wantCreate && tt.reactor == nil && created {
				t.Errorf("created %s, want no create", tt.namespace)
			}
		})
	}
}

func TestActionError(t *testing.T) {
	tc := newTestClient(t)
	helmErr := fmt.Errorf("2 errors occurred:\n\t* %w\n\t* b\n\n", context.DeadlineExceeded)
	for _, wait := range []bool{false, true} {
		err := tc.client(t, Options{Wait: wait}).actionError("install traffic-manager", helmErr, time.Minute)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("wait %v: got %v, want it to wrap context.DeadlineExceeded", wait, err)
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("wait %v: got %q, want one line", wait, err)
		}
		if got := strings.Contains(err.Error(), "not ready within 1m0s"); got != wait {
			t.Errorf("wait %v: got %q, want readiness hint %v", wait, err, wait)
		}
	}
}
