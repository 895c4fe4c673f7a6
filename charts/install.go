package charts

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/kube"
	"helm.sh/helm/v3/pkg/release"
	"helm.sh/helm/v3/pkg/releaseutil"
	"helm.sh/helm/v3/pkg/storage/driver"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
)

const (
	// DefaultReleaseName is the Helm release name used when Options.ReleaseName
	// is empty.
	DefaultReleaseName = "traffic-manager"
	// DefaultTimeout bounds waiting (Options.Wait) when Options.Timeout is
	// zero; the helm CLI's default.
	DefaultTimeout = 5 * time.Minute
	// storageDriver stores releases in Secrets of the release namespace, as
	// the helm CLI does by default, so `helm list -n <ns>` shows them.
	storageDriver = "secret"
	// maxHistory is the number of release revisions an upgrade keeps.
	maxHistory = 10
)

var (
	// ErrNotInstalled is returned (wrapped) by Installed and Uninstall when
	// the namespace holds no traffic-manager release (or only an uninstalled
	// one).
	ErrNotInstalled = errors.New("traffic-manager not installed")
	// ErrAlreadyInstalled is returned (wrapped) by Install when the release
	// exists; Upgrade replaces it.
	ErrAlreadyInstalled = errors.New("traffic-manager already installed")
)

// Options configure Install, Upgrade and Uninstall.
type Options struct {
	// Namespace of the release and the manager. Empty uses the namespace of
	// the RESTClientGetter (--namespace, else the kubeconfig context's).
	Namespace string
	// ReleaseName defaults to DefaultReleaseName.
	ReleaseName string
	// Values override the chart's values.yaml, e.g. from MergeValues.
	Values map[string]any
	// Version stamps the chart (see Load): normally the CLI's version, which
	// makes the image tag default to it.
	Version string
	// ReuseValues makes Upgrade start from the values the installed release
	// was given and merge Values over them (helm's --reset-then-reuse-values:
	// the new chart's defaults still apply). Otherwise Upgrade uses only
	// Values, even when it is empty (helm's --reset-values).
	ReuseValues bool
	// Wait for the Deployment to be ready (Install, Upgrade) or the objects
	// to be deleted (Uninstall), at most Timeout.
	Wait bool
	// Timeout of waiting; zero means DefaultTimeout.
	Timeout time.Duration
	// Log receives Helm's debug messages; nil discards them.
	Log func(format string, v ...any)
}

// complete fills in the defaults.
func (o Options) complete(getter genericclioptions.RESTClientGetter) (Options, error) {
	if getter == nil {
		return o, errors.New("charts: nil RESTClientGetter")
	}
	if o.Namespace == "" {
		ns, _, err := getter.ToRawKubeConfigLoader().Namespace()
		if err != nil {
			return o, fmt.Errorf("namespace from kubeconfig: %w", err)
		}
		o.Namespace = ns
	}
	if o.ReleaseName == "" {
		o.ReleaseName = DefaultReleaseName
	}
	if o.Values == nil {
		o.Values = map[string]any{}
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
	return o, nil
}

// Install installs the chart as release opts.ReleaseName in opts.Namespace,
// creating the namespace if it is missing. It fails with ErrAlreadyInstalled
// if the release exists (in any state).
func Install(ctx context.Context, getter genericclioptions.RESTClientGetter, opts Options) (*release.Release, error) {
	c, err := newClient(getter, opts)
	if err != nil {
		return nil, err
	}
	return c.install(ctx)
}

// Upgrade upgrades the release to the chart of opts.Version with opts.Values,
// or installs it (see Install) if it is missing.
func Upgrade(ctx context.Context, getter genericclioptions.RESTClientGetter, opts Options) (*release.Release, error) {
	c, err := newClient(getter, opts)
	if err != nil {
		return nil, err
	}
	return c.upgrade(ctx)
}

// Uninstall deletes the release and the objects it created, except the
// namespace. It fails with ErrNotInstalled if the release is missing.
func Uninstall(ctx context.Context, getter genericclioptions.RESTClientGetter, opts Options) error {
	c, err := newClient(getter, opts)
	if err != nil {
		return err
	}
	return c.uninstall(ctx)
}

// Installed returns the latest revision of the release in namespace (empty:
// the getter's namespace); releaseName empty means DefaultReleaseName. Its
// Info.Status tells whether it is deployed, failed or pending. When the
// release is missing or uninstalled, Installed returns an error satisfying
// errors.Is(err, ErrNotInstalled).
func Installed(ctx context.Context, getter genericclioptions.RESTClientGetter, namespace, releaseName string) (*release.Release, error) {
	c, err := newClient(getter, Options{Namespace: namespace, ReleaseName: releaseName})
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return c.last()
}

// client runs Helm actions on one release.
type client struct {
	cfg  *action.Configuration
	opts Options // complete
	// ensureNamespace creates opts.Namespace if it is missing.
	ensureNamespace func(ctx context.Context) error
}

// newClient returns a client for opts, with Helm's kube client and Secret
// storage driver on getter.
func newClient(getter genericclioptions.RESTClientGetter, opts Options) (*client, error) {
	opts, err := opts.complete(getter)
	if err != nil {
		return nil, err
	}
	cfg := new(action.Configuration)
	if err := cfg.Init(getter, opts.Namespace, storageDriver, opts.Log); err != nil {
		return nil, fmt.Errorf("helm configuration: %w", err)
	}
	// The chart's objects name their namespace, but Helm's kube client
	// otherwise falls back to the getter's namespace for those that do not.
	if kc, ok := cfg.KubeClient.(*kube.Client); ok {
		kc.Namespace = opts.Namespace
	}
	c := &client{cfg: cfg, opts: opts}
	c.ensureNamespace = func(ctx context.Context) error {
		cs, err := cfg.KubernetesClientSet()
		if err != nil {
			return fmt.Errorf("kubernetes client: %w", err)
		}
		return ensureNamespace(ctx, cs, opts.Namespace, opts.Log)
	}
	return c, nil
}

func (c *client) install(ctx context.Context) (*release.Release, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	last, err := c.last()
	switch {
	case err == nil:
		return nil, fmt.Errorf("%w in namespace %s (release %s, version %s, %s); run `tp helm upgrade --namespace %s`",
			ErrAlreadyInstalled, c.opts.Namespace, last.Name, appVersion(last), last.Info.Status, c.opts.Namespace)
	case !errors.Is(err, ErrNotInstalled):
		return nil, err
	}
	return c.installMissing(ctx)
}

// installMissing installs the chart; the caller checked that the release is
// missing.
func (c *client) installMissing(ctx context.Context) (*release.Release, error) {
	ch, err := Load(c.opts.Version)
	if err != nil {
		return nil, err
	}
	// Refuse invalid values before creating the namespace.
	vals, err := chartutil.CoalesceValues(ch, c.opts.Values)
	if err != nil {
		return nil, fmt.Errorf("values: %w", err)
	}
	if err := chartutil.ValidateAgainstSchema(ch, vals); err != nil {
		return nil, fmt.Errorf("values: %w", err)
	}
	if err := c.ensureNamespace(ctx); err != nil {
		return nil, err
	}
	inst := action.NewInstall(c.cfg)
	inst.Namespace = c.opts.Namespace
	inst.ReleaseName = c.opts.ReleaseName
	inst.Wait = c.opts.Wait
	inst.Description = "tp helm install " + ch.Metadata.AppVersion
	if inst.Timeout, err = c.timeout(ctx); err != nil {
		return nil, err
	}
	rel, err := inst.Run(ch, c.opts.Values) // see timeout about ctx
	if err != nil {
		return nil, c.actionError(fmt.Sprintf("install traffic-manager %s in namespace %s", ch.Metadata.AppVersion, c.opts.Namespace), err, inst.Timeout)
	}
	return rel, nil
}

func (c *client) upgrade(ctx context.Context) (*release.Release, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	last, err := c.last()
	if errors.Is(err, ErrNotInstalled) {
		c.opts.Log("release %s not found in namespace %s; installing it", c.opts.ReleaseName, c.opts.Namespace)
		return c.installMissing(ctx)
	}
	if err != nil {
		return nil, err
	}
	if last.Info.Status.IsPending() {
		return nil, fmt.Errorf("traffic-manager release %s in namespace %s is %s: another install or upgrade runs or was interrupted; retry later, or run `tp helm uninstall --namespace %s` and install again",
			last.Name, c.opts.Namespace, last.Info.Status, c.opts.Namespace)
	}
	ch, err := Load(c.opts.Version)
	if err != nil {
		return nil, err
	}
	up := action.NewUpgrade(c.cfg)
	up.Namespace = c.opts.Namespace
	up.Wait = c.opts.Wait
	// Unlike helm upgrade, without ReuseValues the previous values go even
	// when Values is empty.
	up.ResetThenReuseValues = c.opts.ReuseValues
	up.ResetValues = !c.opts.ReuseValues
	up.MaxHistory = maxHistory
	up.Description = "tp helm upgrade to " + ch.Metadata.AppVersion
	if up.Timeout, err = c.timeout(ctx); err != nil {
		return nil, err
	}
	rel, err := up.Run(c.opts.ReleaseName, ch, c.opts.Values) // see timeout about ctx
	if err != nil {
		return nil, c.actionError(fmt.Sprintf("upgrade traffic-manager in namespace %s from %s to %s", c.opts.Namespace, appVersion(last), ch.Metadata.AppVersion), err, up.Timeout)
	}
	return rel, nil
}

func (c *client) uninstall(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, err := c.last(); err != nil {
		return err
	}
	un := action.NewUninstall(c.cfg)
	un.Wait = c.opts.Wait
	un.Description = "tp helm uninstall"
	var err error
	if un.Timeout, err = c.timeout(ctx); err != nil {
		return err
	}
	if _, err := un.Run(c.opts.ReleaseName); err != nil {
		return &actionError{
			action: "uninstall traffic-manager from namespace " + c.opts.Namespace,
			err:    err,
			hint:   fmt.Sprintf("fix the cause and run `tp helm uninstall --namespace %s` again", c.opts.Namespace),
		}
	}
	return nil
}

// actionError reports a failed install or upgrade with what to do next.
func (c *client) actionError(action string, err error, timeout time.Duration) error {
	hint := fmt.Sprintf("fix the cause and run `tp helm upgrade --namespace %s`", c.opts.Namespace)
	if c.opts.Wait && errors.Is(err, context.DeadlineExceeded) {
		hint = fmt.Sprintf("the traffic-manager was not ready within %v; see `kubectl --namespace %s describe pods -l app=traffic-manager`, then %s",
			timeout.Round(time.Second), c.opts.Namespace, hint)
	}
	return &actionError{action: action, err: err, hint: hint}
}

// actionError is a failed Helm action. Its message puts Helm's error, which
// may span lines, on one line.
type actionError struct {
	action string // what failed
	err    error  // Helm's error
	hint   string // what to do
}

func (e *actionError) Error() string {
	msg := strings.Join(strings.Fields(e.err.Error()), " ")
	return e.action + ": " + msg + "; " + e.hint
}

func (e *actionError) Unwrap() error { return e.err }

// timeout returns how long a Helm action may wait: Options.Timeout, cut to
// ctx's deadline. It fails if ctx is done.
//
// Helm actions run to completion without ctx: Install/Upgrade.RunWithContext
// leave the action running in a goroutine when ctx ends and race with it
// while marking the release failed (helm/helm#12086), and Uninstall takes no
// context. So ctx is checked before an action starts and its deadline bounds
// the action's waiting.
func (c *client) timeout(ctx context.Context) (time.Duration, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	timeout := c.opts.Timeout
	if deadline, ok := ctx.Deadline(); ok {
		left := time.Until(deadline)
		if left <= 0 {
			return 0, context.DeadlineExceeded
		}
		timeout = min(timeout, left)
	}
	return timeout, nil
}

// last returns the latest revision of the release, or ErrNotInstalled.
func (c *client) last() (*release.Release, error) {
	ns, name := c.opts.Namespace, c.opts.ReleaseName
	rels, err := action.NewHistory(c.cfg).Run(name)
	if errors.Is(err, driver.ErrReleaseNotFound) {
		return nil, notInstalled(ns, name)
	}
	if err != nil {
		return nil, fmt.Errorf("read release %s in namespace %s: %w", name, ns, err)
	}
	if len(rels) == 0 {
		return nil, notInstalled(ns, name)
	}
	releaseutil.Reverse(rels, releaseutil.SortByRevision)
	if rels[0].Info == nil || rels[0].Info.Status == release.StatusUninstalled {
		return nil, notInstalled(ns, name)
	}
	return rels[0], nil
}

func notInstalled(namespace, name string) error {
	if name != DefaultReleaseName {
		return fmt.Errorf("%w in namespace %s (release %s); run `tp helm install --namespace %s`", ErrNotInstalled, namespace, name, namespace)
	}
	return fmt.Errorf("%w in namespace %s; run `tp helm install --namespace %s`", ErrNotInstalled, namespace, namespace)
}

// ensureNamespace creates the namespace if it is missing. Helm's own
// CreateNamespace insists on a create even when the namespace exists, which
// fails for users who may use a namespace but not create one.
func ensureNamespace(ctx context.Context, cs kubernetes.Interface, namespace string, log func(string, ...any)) error {
	_, err := cs.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{})
	switch {
	case err == nil:
		return nil
	case apierrors.IsForbidden(err):
		// Maybe allowed to use it without reading it; the install will tell.
		log("cannot read namespace %s, assuming it exists: %v", namespace, err)
		return nil
	case !apierrors.IsNotFound(err):
		return fmt.Errorf("get namespace %s: %w", namespace, err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name:   namespace,
		Labels: map[string]string{"name": namespace}, // as helm --create-namespace
	}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", namespace, err)
	}
	log("created namespace %s", namespace)
	return nil
}

// appVersion returns the version a release runs.
func appVersion(rel *release.Release) string {
	if rel.Chart == nil || rel.Chart.Metadata == nil {
		return "unknown"
	}
	return rel.Chart.Metadata.AppVersion
}
