package charts

import (
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/Masterminds/semver/v3"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chartutil"
	kubefake "helm.sh/helm/v3/pkg/kube/fake"
	"helm.sh/helm/v3/pkg/releaseutil"
	"helm.sh/helm/v3/pkg/storage"
	"helm.sh/helm/v3/pkg/storage/driver"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

func TestLoad(t *testing.T) {
	tests := []struct {
		version      string
		wantVersion  string
		wantAppVer   string
		wantSemverOK bool
	}{
		{version: "", wantVersion: "0.0.0-dev", wantAppVer: "dev"},
		{version: "v0.3.1", wantVersion: "0.3.1", wantAppVer: "v0.3.1"},
		{version: "0.3.1", wantVersion: "0.3.1", wantAppVer: "0.3.1"},
		{version: "v0.1.0-3-gabcdef0-dirty", wantVersion: "0.1.0-3-gabcdef0-dirty", wantAppVer: "v0.1.0-3-gabcdef0-dirty"},
		{version: "1.2.3+build.7", wantVersion: "1.2.3+build.7", wantAppVer: "1.2.3+build.7"},
		{version: "dev", wantVersion: "0.0.0-dev", wantAppVer: "dev"},
		{version: "1.2", wantVersion: "0.0.0-1.2", wantAppVer: "1.2"},
		{version: "feature/x_y", wantVersion: "0.0.0-feature-x-y", wantAppVer: "feature/x_y"},
		{version: "007", wantVersion: "0.0.0-x007", wantAppVer: "007"},
		{version: "..", wantVersion: "0.0.0-unknown", wantAppVer: ".."},
	}
	for _, tt := range tests {
		t.Run(tt.version, func(t *testing.T) {
			ch, err := Load(tt.version)
			if err != nil {
				t.Fatalf("Load(%q): %v", tt.version, err)
			}
			if got := ch.Name(); got != "tp" {
				t.Errorf("name: got %q, want %q", got, "tp")
			}
			if got := ch.Metadata.Version; got != tt.wantVersion {
				t.Errorf("version: got %q, want %q", got, tt.wantVersion)
			}
			if _, err := semver.StrictNewVersion(ch.Metadata.Version); err != nil {
				t.Errorf("version %q is not SemVer 2: %v", ch.Metadata.Version, err)
			}
			if got := ch.Metadata.AppVersion; got != tt.wantAppVer {
				t.Errorf("appVersion: got %q, want %q", got, tt.wantAppVer)
			}
		})
	}
}

func TestLoadContents(t *testing.T) {
	ch, err := Load("v1.0.0")
	if err != nil {
		t.Fatal(err)
	}
	var templates []string
	for _, f := range ch.Templates {
		templates = append(templates, f.Name)
	}
	for _, want := range []string{"templates/_helpers.tpl", "templates/deployment.yaml", "templates/service.yaml",
		"templates/serviceaccount.yaml", "templates/rbac.yaml", "templates/NOTES.txt"} {
		if !slices.Contains(templates, want) {
			t.Errorf("templates: got %v, want %s among them", templates, want)
		}
	}
	if ch.Schema == nil {
		t.Error("schema: got none, want values.schema.json")
	}
	if got := ch.Values["logLevel"]; got != "info" {
		t.Errorf("values logLevel: got %v, want info", got)
	}

	// Every Load is a fresh copy.
	ch.Metadata.AppVersion = "changed"
	ch.Values["logLevel"] = "debug"
	again, err := Load("v1.0.0")
	if err != nil {
		t.Fatal(err)
	}
	if got := again.Metadata.AppVersion; got != "v1.0.0" {
		t.Errorf("appVersion of a second Load: got %q, want v1.0.0", got)
	}
	if got := again.Values["logLevel"]; got != "info" {
		t.Errorf("logLevel of a second Load: got %v, want info", got)
	}
}

// object is one rendered manifest.
type object struct {
	Kind     string
	Name     string
	Ns       string
	Manifest string
}

func (o object) key() string { return fmt.Sprintf("%s %s/%s", o.Kind, o.Ns, o.Name) }

// rendered is a release's objects.
type rendered struct {
	objects []object
	notes   string
}

// render renders the chart of version like `helm install --dry-run` would.
func render(t testing.TB, version, namespace string, vals map[string]any) (rendered, error) {
	t.Helper()
	ch, err := Load(version)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &action.Configuration{
		Releases:     storage.Init(driver.NewMemory()),
		KubeClient:   &kubefake.PrintingKubeClient{Out: io.Discard},
		Capabilities: chartutil.DefaultCapabilities,
		Log:          t.Logf,
	}
	inst := action.NewInstall(cfg)
	inst.DryRun = true
	inst.ClientOnly = true
	inst.Namespace = namespace
	inst.ReleaseName = DefaultReleaseName
	rel, err := inst.Run(ch, vals)
	if err != nil {
		return rendered{}, err
	}
	var r rendered
	r.notes = rel.Info.Notes
	for _, m := range releaseutil.SplitManifests(rel.Manifest) {
		var meta struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(m), &meta); err != nil {
			t.Fatalf("manifest %q: %v", m, err)
		}
		r.objects = append(r.objects, object{Kind: meta.Kind, Name: meta.Metadata.Name, Ns: meta.Metadata.Namespace, Manifest: m})
	}
	return r, nil
}

func mustRender(t testing.TB, version, namespace string, vals map[string]any) rendered {
	t.Helper()
	r, err := render(t, version, namespace, vals)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	return r
}

func (r rendered) keys() []string {
	var keys []string
	for _, o := range r.objects {
		keys = append(keys, o.key())
	}
	slices.Sort(keys)
	return keys
}

// decode decodes the object kind namespace/name into out.
func (r rendered) decode(t testing.TB, kind, namespace, name string, out any) {
	t.Helper()
	for _, o := range r.objects {
		if o.Kind == kind && o.Ns == namespace && o.Name == name {
			if err := yaml.UnmarshalStrict([]byte(o.Manifest), out); err != nil {
				t.Fatalf("%s: %v\n%s", o.key(), err, o.Manifest)
			}
			return
		}
	}
	t.Fatalf("no %s %s/%s among %v", kind, namespace, name, r.keys())
}

// allows reports whether rules grant verb on group/resource (and name, if
// not empty).
func allows(rules []rbacv1.PolicyRule, group, resource, verb, name string) bool {
	for _, r := range rules {
		if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) &&
			(len(r.ResourceNames) == 0 || slices.Contains(r.ResourceNames, name)) {
			return true
		}
	}
	return false
}

// The manager's exact RBAC: what its code calls (manager/, see the rules in
// templates/_helpers.tpl), nothing more.
var (
	// namespacedRules are granted in every namespace the manager sees.
	namespacedRules = []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"list"}},
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "delete"}},
		{APIGroups: []string{"apps"}, Resources: []string{"deployments", "replicasets", "statefulsets"}, Verbs: []string{"get", "list", "patch"}},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
	}
	// nodeRules are cluster-scoped (rbac.readNodes).
	nodeRules = []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"list", "watch"}},
	}
	// serviceCIDRRules are cluster-scoped in every mode: the service ranges
	// (networking.k8s.io/v1 ServiceCIDRs, where served), watched.
	serviceCIDRRules = []rbacv1.PolicyRule{
		{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"servicecidrs"}, Verbs: []string{"list", "watch"}},
	}
	// agentAuthRules are cluster-scoped in every mode: TokenReviews of the
	// agents' tokens (a create, no read).
	agentAuthRules = []rbacv1.PolicyRule{
		{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
	}
	// releaseRules are granted in the release namespace (service CIDR probe,
	// session records).
	releaseRules = []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"create"}},
		{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"create", "get", "list", "update", "delete"}},
	}
)

// checkRules compares rendered rules with the exact rules wanted.
func checkRules(t testing.TB, what string, got, want []rbacv1.PolicyRule) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s rules:\n got  %+v\n want %+v", what, got, want)
	}
}

func TestRenderDefaults(t *testing.T) {
	const ns = "tp-test"
	r := mustRender(t, "v1.2.3", ns, nil)

	wantKeys := []string{
		"ClusterRole /traffic-manager-" + ns,
		"ClusterRoleBinding /traffic-manager-" + ns,
		"Deployment " + ns + "/traffic-manager",
		"MutatingWebhookConfiguration /traffic-manager-" + ns,
		"NetworkPolicy " + ns + "/traffic-manager",
		"Role " + ns + "/traffic-manager",
		"RoleBinding " + ns + "/traffic-manager",
		"Secret " + ns + "/traffic-manager-ca",
		"Secret " + ns + "/traffic-manager-webhook-tls",
		"Service " + ns + "/traffic-manager",
		"ServiceAccount " + ns + "/traffic-manager",
		"ValidatingWebhookConfiguration /traffic-manager-" + ns,
	}
	if got := r.keys(); !slices.Equal(got, wantKeys) {
		t.Errorf("objects: got %v, want %v", got, wantKeys)
	}

	var dep appsv1.Deployment
	r.decode(t, "Deployment", ns, "traffic-manager", &dep)
	if got := *dep.Spec.Replicas; got != 1 {
		t.Errorf("replicas: got %d, want 1", got)
	}
	wantLabels := map[string]string{
		"app":                        "traffic-manager",
		"app.kubernetes.io/name":     "traffic-manager",
		"app.kubernetes.io/instance": DefaultReleaseName,
		"app.kubernetes.io/version":  "v1.2.3",
	}
	pod := dep.Spec.Template
	for k, v := range wantLabels {
		if got := dep.Labels[k]; got != v {
			t.Errorf("deployment label %s: got %q, want %q", k, got, v)
		}
		if got := pod.Labels[k]; got != v {
			t.Errorf("pod label %s: got %q, want %q", k, got, v)
		}
	}
	sel, err := labels.ValidatedSelectorFromSet(dep.Spec.Selector.MatchLabels)
	if err != nil {
		t.Fatal(err)
	}
	if !sel.Matches(labels.Set(pod.Labels)) {
		t.Errorf("selector %v does not match pod labels %v", sel, pod.Labels)
	}
	if _, ok := dep.Spec.Selector.MatchLabels["app.kubernetes.io/version"]; ok {
		t.Errorf("selector %v holds the version: upgrades would fail (selectors are immutable)", dep.Spec.Selector.MatchLabels)
	}
	if got := pod.Spec.ServiceAccountName; got != "traffic-manager" {
		t.Errorf("serviceAccountName: got %q, want traffic-manager", got)
	}

	if got := len(pod.Spec.Containers); got != 1 {
		t.Fatalf("containers: got %d, want 1", got)
	}
	c := pod.Spec.Containers[0]
	if got, want := c.Image, "tp:v1.2.3"; got != want {
		t.Errorf("image: got %q, want %q", got, want)
	}
	if got, want := c.ImagePullPolicy, corev1.PullIfNotPresent; got != want {
		t.Errorf("imagePullPolicy: got %q, want %q", got, want)
	}
	if got, want := c.Args, []string{"manager"}; !slices.Equal(got, want) {
		t.Errorf("args: got %v, want %v", got, want)
	}
	if len(c.Command) != 0 {
		t.Errorf("command: got %v, want none (the image's entrypoint /tp)", c.Command)
	}
	// The client API (8081) listens on the pod's loopback only: no port.
	for _, p := range c.Ports {
		if p.ContainerPort == 8081 {
			t.Errorf("ports: got %+v, want no 8081 (the client API is reached through port-forward only)", c.Ports)
		}
	}
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Port.String() != "health" {
			t.Errorf("%s probe: got %+v, want HTTP on the health port", name, p)
		}
	}

	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	for name, want := range map[string]string{"TP_LOG_LEVEL": "info", "TP_SESSION_TTL": "10m"} {
		if got := env[name].Value; got != want {
			t.Errorf("env %s: got %q, want %q", name, got, want)
		}
	}
	for name, want := range map[string]string{"TP_NAMESPACE": "metadata.namespace", "TP_POD_NAME": "metadata.name", "TP_POD_IP": "status.podIP"} {
		e := env[name]
		if e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != want {
			t.Errorf("env %s: got %+v, want fieldRef %s", name, e, want)
		}
	}
	if e, ok := env["TP_MANAGED_NAMESPACES"]; ok {
		t.Errorf("env TP_MANAGED_NAMESPACES: got %+v, want none when cluster-wide", e)
	}

	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		t.Errorf("resources: got requests %v, want cpu and memory", c.Resources.Requests)
	}
	sc := c.SecurityContext
	switch {
	case sc == nil:
		t.Fatal("securityContext: got none")
	case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot:
		t.Errorf("runAsNonRoot: got %v, want true", sc.RunAsNonRoot)
	case sc.RunAsUser == nil || *sc.RunAsUser != 65532:
		t.Errorf("runAsUser: got %v, want 65532", sc.RunAsUser)
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Errorf("readOnlyRootFilesystem: got %v, want true", sc.ReadOnlyRootFilesystem)
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Errorf("allowPrivilegeEscalation: got %v, want false", sc.AllowPrivilegeEscalation)
	case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}):
		t.Errorf("capabilities: got %+v, want drop ALL", sc.Capabilities)
	}

	var svc corev1.Service
	r.decode(t, "Service", ns, "traffic-manager", &svc)
	if got := svc.Spec.Type; got != corev1.ServiceTypeClusterIP {
		t.Errorf("service type: got %q, want ClusterIP", got)
	}
	// Agents and the webhook only: the client API is not on the pod network.
	var svcPorts []string
	for _, p := range svc.Spec.Ports {
		svcPorts = append(svcPorts, fmt.Sprintf("%s %d->%s", p.Name, p.Port, p.TargetPort.String()))
	}
	if want := []string{"agents 8082->agents", "webhook 443->webhook"}; !slices.Equal(svcPorts, want) {
		t.Errorf("service ports: got %v, want %v", svcPorts, want)
	}
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(pod.Labels)) {
		t.Errorf("service selector %v does not match pod labels %v", svc.Spec.Selector, pod.Labels)
	}

	var cr rbacv1.ClusterRole
	r.decode(t, "ClusterRole", "", "traffic-manager-"+ns, &cr)
	checkRules(t, "ClusterRole", cr.Rules, slices.Concat(nodeRules, serviceCIDRRules, agentAuthRules, namespacedRules))
	checkBinding(t, r, "ClusterRoleBinding", "", "traffic-manager-"+ns, "ClusterRole", ns)

	var role rbacv1.Role
	r.decode(t, "Role", ns, "traffic-manager", &role)
	checkRules(t, "Role "+ns+"/traffic-manager", role.Rules, releaseRules)
	checkBinding(t, r, "RoleBinding", ns, "traffic-manager", "Role", ns)

	if !strings.Contains(r.notes, ns) {
		t.Errorf("notes: got %q, want the namespace %s in it", r.notes, ns)
	}
}

// checkBinding checks that the binding kind namespace/name binds role kind
// roleKind of the same name to the manager's ServiceAccount in saNamespace.
func checkBinding(t testing.TB, r rendered, kind, namespace, name, roleKind, saNamespace string) {
	t.Helper()
	var b rbacv1.RoleBinding // ClusterRoleBinding has the same fields
	r.decode(t, kind, namespace, name, &b)
	if b.RoleRef.Kind != roleKind || b.RoleRef.Name != name {
		t.Errorf("%s %s/%s roleRef: got %+v, want %s %s", kind, namespace, name, b.RoleRef, roleKind, name)
	}
	want := []rbacv1.Subject{{Kind: "ServiceAccount", Name: "traffic-manager", Namespace: saNamespace}}
	if !slices.Equal(b.Subjects, want) {
		t.Errorf("%s %s/%s subjects: got %+v, want %+v", kind, namespace, name, b.Subjects, want)
	}
}

func TestRenderNamespaced(t *testing.T) {
	const ns = "tp-system"
	vals, err := MergeValues(nil, []string{"rbac.namespaced=true", "rbac.managedNamespaces={shop,billing,shop}"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := mustRender(t, "v1.2.3", ns, vals)

	wantKeys := []string{
		"ClusterRole /traffic-manager-" + ns,
		"ClusterRoleBinding /traffic-manager-" + ns,
		"Deployment " + ns + "/traffic-manager",
		"MutatingWebhookConfiguration /traffic-manager-" + ns,
		"Secret " + ns + "/traffic-manager-ca",
		"NetworkPolicy " + ns + "/traffic-manager",
		"Secret " + ns + "/traffic-manager-webhook-tls",
		"Role billing/traffic-manager-" + ns,
		"Role shop/traffic-manager-" + ns,
		"Role " + ns + "/traffic-manager",
		"RoleBinding billing/traffic-manager-" + ns,
		"RoleBinding shop/traffic-manager-" + ns,
		"RoleBinding " + ns + "/traffic-manager",
		"Service " + ns + "/traffic-manager",
		"ServiceAccount " + ns + "/traffic-manager",
		"ValidatingWebhookConfiguration /traffic-manager-" + ns,
	}
	slices.Sort(wantKeys)
	if got := r.keys(); !slices.Equal(got, wantKeys) {
		t.Errorf("objects: got %v, want %v", got, wantKeys)
	}

	var cr rbacv1.ClusterRole
	r.decode(t, "ClusterRole", "", "traffic-manager-"+ns, &cr)
	checkRules(t, "ClusterRole", cr.Rules, slices.Concat(nodeRules, serviceCIDRRules, agentAuthRules))
	checkBinding(t, r, "ClusterRoleBinding", "", "traffic-manager-"+ns, "ClusterRole", ns)

	for _, managed := range []string{"shop", "billing"} {
		var role rbacv1.Role
		r.decode(t, "Role", managed, "traffic-manager-"+ns, &role)
		checkRules(t, "Role "+managed, role.Rules, namespacedRules)
		checkBinding(t, r, "RoleBinding", managed, "traffic-manager-"+ns, "Role", ns)
	}
	checkBinding(t, r, "RoleBinding", ns, "traffic-manager", "Role", ns)
	var role rbacv1.Role
	r.decode(t, "Role", ns, "traffic-manager", &role)
	checkRules(t, "Role "+ns+"/traffic-manager", role.Rules, releaseRules)

	var dep appsv1.Deployment
	r.decode(t, "Deployment", ns, "traffic-manager", &dep)
	var managed string
	for _, e := range dep.Spec.Template.Spec.Containers[0].Env {
		if e.Name == "TP_MANAGED_NAMESPACES" {
			managed = e.Value
		}
	}
	if want := "shop,billing"; managed != want {
		t.Errorf("env TP_MANAGED_NAMESPACES: got %q, want %q", managed, want)
	}
}

func TestRenderValues(t *testing.T) {
	vals, err := MergeValues(nil, []string{
		"image.registry=ghcr.io/tp-run/",
		"image.name=tp-custom",
		"image.pullPolicy=Always",
		"logLevel=debug",
		"session.ttl=1m30s",
		"imagePullSecrets[0].name=regcred",
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := mustRender(t, "v1.2.3", "tp", vals)
	var dep appsv1.Deployment
	r.decode(t, "Deployment", "tp", "traffic-manager", &dep)
	c := dep.Spec.Template.Spec.Containers[0]
	if got, want := c.Image, "ghcr.io/tp-run/tp-custom:v1.2.3"; got != want {
		t.Errorf("image: got %q, want %q", got, want)
	}
	if got, want := c.ImagePullPolicy, corev1.PullAlways; got != want {
		t.Errorf("imagePullPolicy: got %q, want %q", got, want)
	}
	if got, want := dep.Spec.Template.Spec.ImagePullSecrets, []corev1.LocalObjectReference{{Name: "regcred"}}; !slices.Equal(got, want) {
		t.Errorf("imagePullSecrets: got %v, want %v", got, want)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	if got, want := env["TP_LOG_LEVEL"], "debug"; got != want {
		t.Errorf("TP_LOG_LEVEL: got %q, want %q", got, want)
	}
	if got, want := env["TP_SESSION_TTL"], "1m30s"; got != want {
		t.Errorf("TP_SESSION_TTL: got %q, want %q", got, want)
	}

	// An explicit tag wins over the appVersion, also a numeric one.
	for _, tag := range []map[string]any{{"tag": "pr-12"}, {"tag": 123}} {
		r := mustRender(t, "v1.2.3", "tp", map[string]any{"image": tag})
		r.decode(t, "Deployment", "tp", "traffic-manager", &dep)
		if got, want := dep.Spec.Template.Spec.Containers[0].Image, fmt.Sprintf("tp:%v", tag["tag"]); got != want {
			t.Errorf("image with tag %v: got %q, want %q", tag["tag"], got, want)
		}
	}
}

func TestRenderRejects(t *testing.T) {
	tests := []struct {
		name string
		set  []string
	}{
		{"namespaced without namespaces", []string{"rbac.namespaced=true"}},
		{"invalid namespace", []string{"rbac.namespaced=true", "rbac.managedNamespaces={Shop_1}"}},
		{"unknown log level", []string{"logLevel=verbose"}},
		{"ttl not a duration", []string{"session.ttl=fifteen"}},
		{"misspelt image key", []string{"image.tga=v1"}},
		{"pull policy", []string{"image.pullPolicy=Sometimes"}},
		{"allowCIDRs not a CIDR", []string{"tunnel.allowCIDRs={metadata.internal}"}},
		{"misspelt tunnel key", []string{"tunnel.allowCIDR={10.0.0.0/8}"}},
		{"networkPolicy not a bool", []string{"networkPolicy.enabled=maybe"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vals, err := MergeValues(nil, tt.set, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := render(t, "v1.2.3", "tp", vals); err == nil {
				t.Errorf("render with %v: got no error, want one", tt.set)
			}
		})
	}
}

// TestRenderNamespacedWithoutNodes: rbac.namespaced with rbac.readNodes=false
// grants nothing cluster-wide but the service ranges and TokenReviews.
func TestRenderNamespacedWithoutNodes(t *testing.T) {
	const ns = "tp-system"
	vals, err := MergeValues(nil, []string{"rbac.namespaced=true", "rbac.managedNamespaces={shop}", "rbac.readNodes=false"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := mustRender(t, "v1.2.3", ns, vals)
	// No cluster-wide read but the service ranges: the ClusterRole holds
	// those and the agents' TokenReviews only.
	var onlyAuth rbacv1.ClusterRole
	r.decode(t, "ClusterRole", "", "traffic-manager-"+ns, &onlyAuth)
	checkRules(t, "ClusterRole", onlyAuth.Rules, slices.Concat(serviceCIDRRules, agentAuthRules))
	var role rbacv1.Role
	r.decode(t, "Role", "shop", "traffic-manager-"+ns, &role)
	checkRules(t, "Role shop", role.Rules, namespacedRules)
	r.decode(t, "Role", ns, "traffic-manager", &role)
	checkRules(t, "Role "+ns+"/traffic-manager", role.Rules, releaseRules)
	if got := deploymentEnv(t, r, ns)["TP_READ_NODES"].Value; got != "false" {
		t.Errorf("env TP_READ_NODES: got %q, want false", got)
	}

	// Cluster-wide without node access: the namespaced rules only.
	vals, err = MergeValues(nil, []string{"rbac.readNodes=false"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r = mustRender(t, "v1.2.3", ns, vals)
	var cr rbacv1.ClusterRole
	r.decode(t, "ClusterRole", "", "traffic-manager-"+ns, &cr)
	checkRules(t, "ClusterRole", cr.Rules, slices.Concat(serviceCIDRRules, agentAuthRules, namespacedRules))
}

func deploymentEnv(t testing.TB, r rendered, ns string) map[string]corev1.EnvVar {
	t.Helper()
	var dep appsv1.Deployment
	r.decode(t, "Deployment", ns, "traffic-manager", &dep)
	env := map[string]corev1.EnvVar{}
	for _, e := range dep.Spec.Template.Spec.Containers[0].Env {
		env[e.Name] = e
	}
	return env
}

func TestRenderTunnelPolicy(t *testing.T) {
	r := mustRender(t, "v1.2.3", "tp", nil)
	env := deploymentEnv(t, r, "tp")
	if e, ok := env["TP_TUNNEL_ALLOW_CIDRS"]; ok {
		t.Errorf("env TP_TUNNEL_ALLOW_CIDRS: got %+v, want none by default", e)
	}
	if e, ok := env["TP_READ_NODES"]; ok {
		t.Errorf("env TP_READ_NODES: got %+v, want none by default (true)", e)
	}
	if e := env["TP_HOST_IP"]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "status.hostIP" {
		t.Errorf("env TP_HOST_IP: got %+v, want fieldRef status.hostIP", e)
	}

	vals, err := MergeValues(nil, []string{"tunnel.allowCIDRs={10.20.0.0/16,192.168.1.10/32,fd00::/8}"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	env = deploymentEnv(t, mustRender(t, "v1.2.3", "tp", vals), "tp")
	if got, want := env["TP_TUNNEL_ALLOW_CIDRS"].Value, "10.20.0.0/16,192.168.1.10/32,fd00::/8"; got != want {
		t.Errorf("env TP_TUNNEL_ALLOW_CIDRS: got %q, want %q", got, want)
	}
}

func TestRenderNetworkPolicy(t *testing.T) {
	const ns = "tp"
	r := mustRender(t, "v1.2.3", ns, nil)
	var np networkingv1.NetworkPolicy
	r.decode(t, "NetworkPolicy", ns, "traffic-manager", &np)

	var dep appsv1.Deployment
	r.decode(t, "Deployment", ns, "traffic-manager", &dep)
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		t.Fatal(err)
	}
	if sel.Empty() || !sel.Matches(labels.Set(dep.Spec.Template.Labels)) {
		t.Errorf("podSelector %v: want the manager pod's labels %v", sel, dep.Spec.Template.Labels)
	}
	if got, want := np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}; !slices.Equal(got, want) {
		t.Errorf("policyTypes: got %v, want %v", got, want)
	}
	tcp := corev1.ProtocolTCP
	port := func(p int) []networkingv1.NetworkPolicyPort {
		v := intstr.FromInt(p)
		return []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &v}}
	}
	want := []networkingv1.NetworkPolicyIngressRule{
		{Ports: port(8443)}, // webhook: from anywhere (the API server)
		{Ports: port(8082), From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}}}}, // agents: pods of every namespace
		{Ports: port(8083)}, // health: kubelet
	}
	if !reflect.DeepEqual(np.Spec.Ingress, want) {
		t.Errorf("ingress:\n got  %+v\n want %+v", np.Spec.Ingress, want)
	}

	vals, err := MergeValues(nil, []string{"networkPolicy.enabled=false"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range mustRender(t, "v1.2.3", ns, vals).keys() {
		if strings.HasPrefix(k, "NetworkPolicy") {
			t.Errorf("networkPolicy.enabled=false: got %s", k)
		}
	}
}
