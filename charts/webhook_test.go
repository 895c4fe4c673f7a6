package charts

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The agent-injection webhook: see docs/intercepts.md and the manager's
// webhook.go for the other side of these names and ports.
func TestRenderWebhook(t *testing.T) {
	const ns = "tp-test"
	r := mustRender(t, "v1.2.3", ns, map[string]any{"podAnnotations": map[string]any{"team": "dev"}})

	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	r.decode(t, "MutatingWebhookConfiguration", "", "traffic-manager-"+ns, &mwc)
	if len(mwc.Webhooks) != 1 {
		t.Fatalf("webhooks: got %d, want 1", len(mwc.Webhooks))
	}
	wh := mwc.Webhooks[0]
	svcRef := wh.ClientConfig.Service
	if svcRef == nil || svcRef.Name != "traffic-manager" || svcRef.Namespace != ns || svcRef.Path == nil || *svcRef.Path != "/inject" ||
		svcRef.Port == nil || *svcRef.Port != 443 {
		t.Errorf("clientConfig.service: got %+v, want traffic-manager.%s:443/inject", svcRef, ns)
	}
	if !slices.Equal(wh.AdmissionReviewVersions, []string{"v1"}) {
		t.Errorf("admissionReviewVersions: got %v, want [v1]", wh.AdmissionReviewVersions)
	}
	if len(wh.Rules) != 1 || !slices.Equal(wh.Rules[0].Operations, []admissionregistrationv1.OperationType{admissionregistrationv1.Create}) ||
		!slices.Equal(wh.Rules[0].Resources, []string{"pods"}) || !slices.Equal(wh.Rules[0].APIGroups, []string{""}) {
		t.Errorf("rules: got %+v, want CREATE of core pods", wh.Rules)
	}
	if got := wh.ObjectSelector; got == nil || len(got.MatchLabels) != 1 || got.MatchLabels["tp.run/agent"] != "enabled" {
		t.Errorf("objectSelector: got %+v, want tp.run/agent=enabled", got)
	}
	wantNS := []metav1.LabelSelectorRequirement{{Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpNotIn, Values: []string{ns, "kube-system"}}}
	if got := wh.NamespaceSelector; got == nil || !equalRequirements(got.MatchExpressions, wantNS) {
		t.Errorf("namespaceSelector: got %+v, want %+v", got, wantNS)
	}
	for name, c := range map[string]struct{ got, want any }{
		"failurePolicy":      {deref(wh.FailurePolicy), admissionregistrationv1.Ignore},
		"sideEffects":        {deref(wh.SideEffects), admissionregistrationv1.SideEffectClassNone},
		"reinvocationPolicy": {deref(wh.ReinvocationPolicy), admissionregistrationv1.NeverReinvocationPolicy},
		"timeoutSeconds":     {deref(wh.TimeoutSeconds), int32(5)},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", name, c.got, c.want)
		}
	}

	// TLS: the Secret's certificate serves the Service's name, and the
	// webhook trusts its CA.
	var secret corev1.Secret
	r.decode(t, "Secret", ns, "traffic-manager-webhook-tls", &secret)
	if secret.Type != corev1.SecretTypeTLS {
		t.Errorf("secret type: got %q, want %q", secret.Type, corev1.SecretTypeTLS)
	}
	if !bytes.Equal(wh.ClientConfig.CABundle, secret.Data["ca.crt"]) {
		t.Error("caBundle differs from the Secret's ca.crt")
	}
	pair, err := tls.X509KeyPair(secret.Data["tls.crt"], secret.Data["tls.key"])
	if err != nil {
		t.Fatalf("tls.crt and tls.key: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(wh.ClientConfig.CABundle) {
		t.Fatal("caBundle holds no certificate")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "traffic-manager." + ns + ".svc", Roots: roots}); err != nil {
		t.Errorf("serving certificate for traffic-manager.%s.svc: %v", ns, err)
	}

	// The manager serves it: port, certificate, agent image, restart on a new certificate.
	var dep appsv1.Deployment
	r.decode(t, "Deployment", ns, "traffic-manager", &dep)
	pod := dep.Spec.Template
	if pod.Annotations["checksum/webhook-tls"] == "" || pod.Annotations["team"] != "dev" {
		t.Errorf("pod annotations: got %v, want checksum/webhook-tls and the podAnnotations", pod.Annotations)
	}
	c := pod.Spec.Containers[0]
	if !slices.Contains(c.Ports, corev1.ContainerPort{Name: "webhook", ContainerPort: 8443, Protocol: corev1.ProtocolTCP}) {
		t.Errorf("container ports: got %+v, want webhook 8443", c.Ports)
	}
	// The agent port: same certificate (the agents get the CA from the
	// webhook), Service port 8082.
	if !slices.Contains(c.Ports, corev1.ContainerPort{Name: "agents", ContainerPort: 8082, Protocol: corev1.ProtocolTCP}) {
		t.Errorf("container ports: got %+v, want agents 8082", c.Ports)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	if got := env["TP_AGENT_IMAGE"]; got != c.Image {
		t.Errorf("TP_AGENT_IMAGE: got %q, want the manager's image %q", got, c.Image)
	}
	if got := env["TP_AGENT_IMAGE_PULL_POLICY"]; got != string(c.ImagePullPolicy) {
		t.Errorf("TP_AGENT_IMAGE_PULL_POLICY: got %q, want the manager's %q", got, c.ImagePullPolicy)
	}
	if got := env["TP_WEBHOOK_CERT_DIR"]; got != "/etc/tp/webhook" {
		t.Errorf("TP_WEBHOOK_CERT_DIR: got %q, want /etc/tp/webhook", got)
	}
	var mount *corev1.VolumeMount
	for i, m := range c.VolumeMounts {
		if m.MountPath == "/etc/tp/webhook" {
			mount = &c.VolumeMounts[i]
		}
	}
	if mount == nil || !mount.ReadOnly {
		t.Fatalf("volume mounts: got %+v, want /etc/tp/webhook read-only", c.VolumeMounts)
	}
	var fromSecret string
	for _, v := range pod.Spec.Volumes {
		if v.Name == mount.Name && v.Secret != nil {
			fromSecret = v.Secret.SecretName
		}
	}
	if fromSecret != "traffic-manager-webhook-tls" {
		t.Errorf("volume %s: got secret %q, want traffic-manager-webhook-tls", mount.Name, fromSecret)
	}

	var svc corev1.Service
	r.decode(t, "Service", ns, "traffic-manager", &svc)
	var webhookPort *corev1.ServicePort
	for i, p := range svc.Spec.Ports {
		if p.Name == "webhook" {
			webhookPort = &svc.Spec.Ports[i]
		}
	}
	if webhookPort == nil || webhookPort.Port != 443 || webhookPort.TargetPort.String() != "webhook" {
		t.Errorf("service port webhook: got %+v, want 443 -> webhook", webhookPort)
	}
	if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool {
		return p.Name == "agents" && p.Port == 8082 && p.TargetPort.String() == "agents" && p.Protocol == corev1.ProtocolTCP
	}) {
		t.Errorf("service ports: got %+v, want agents 8082 -> agents", svc.Spec.Ports)
	}

	// The CA is in a Secret of its own that nothing mounts, with its key
	// (for the next upgrade to sign with), and signed the serving certificate.
	var caSecret corev1.Secret
	r.decode(t, "Secret", ns, "traffic-manager-ca", &caSecret)
	if !bytes.Equal(caSecret.Data["ca.crt"], secret.Data["ca.crt"]) || len(caSecret.Data["ca.key"]) == 0 {
		t.Errorf("Secret traffic-manager-ca: got keys %v, want ca.crt (the webhook Secret's) and ca.key", slices.Sorted(maps.Keys(caSecret.Data)))
	}
	if _, ok := secret.Data["ca.key"]; ok {
		t.Error("Secret traffic-manager-webhook-tls holds ca.key; the manager mounts it and must not have the CA's key")
	}
	for _, v := range pod.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == "traffic-manager-ca" {
			t.Errorf("volume %s mounts the CA's Secret", v.Name)
		}
	}

	// The manager needs no access to webhook configurations.
	var cr rbacv1.ClusterRole
	r.decode(t, "ClusterRole", "", "traffic-manager-"+ns, &cr)
	for _, verb := range []string{"create", "update", "patch", "delete"} {
		if allows(cr.Rules, "admissionregistration.k8s.io", "mutatingwebhookconfigurations", verb, "") {
			t.Errorf("ClusterRole: allows %s mutatingwebhookconfigurations, want no access", verb)
		}
	}

	// A render without a cluster (helm template, an install) makes a new
	// certificate, and the checksum follows it.
	again := mustRender(t, "v1.2.3", ns, nil)
	var dep2 appsv1.Deployment
	again.decode(t, "Deployment", ns, "traffic-manager", &dep2)
	var secret2 corev1.Secret
	again.decode(t, "Secret", ns, "traffic-manager-webhook-tls", &secret2)
	if bytes.Equal(secret.Data["tls.crt"], secret2.Data["tls.crt"]) {
		t.Error("two renders: same certificate, want a new one")
	}
	if dep.Spec.Template.Annotations["checksum/webhook-tls"] == dep2.Spec.Template.Annotations["checksum/webhook-tls"] {
		t.Error("two renders: same checksum/webhook-tls, want it to follow the certificate")
	}
}

func TestRenderWebhookNamespaced(t *testing.T) {
	const ns = "tp-system"
	vals, err := MergeValues(nil, []string{"rbac.namespaced=true", "rbac.managedNamespaces={shop,billing,shop}"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := mustRender(t, "v1.2.3", ns, vals)
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	r.decode(t, "MutatingWebhookConfiguration", "", "traffic-manager-"+ns, &mwc)
	want := []metav1.LabelSelectorRequirement{
		{Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpNotIn, Values: []string{ns, "kube-system"}},
		{Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpIn, Values: []string{"shop", "billing"}},
	}
	if got := mwc.Webhooks[0].NamespaceSelector; got == nil || !equalRequirements(got.MatchExpressions, want) {
		t.Errorf("namespaceSelector: got %+v, want %+v", got, want)
	}
}

func equalRequirements(a, b []metav1.LabelSelectorRequirement) bool {
	return slices.EqualFunc(a, b, func(x, y metav1.LabelSelectorRequirement) bool {
		return x.Key == y.Key && x.Operator == y.Operator && slices.Equal(x.Values, y.Values)
	})
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

// The authorizer (docs/security.md): sees only updates of workloads that
// change tp.run/authorize, never blocks them, and never sees the manager's
// own namespace or kube-system.
func TestRenderAuthorizerWebhook(t *testing.T) {
	const ns = "tp-test"
	r := mustRender(t, "v1.2.3", ns, nil)
	var vwc admissionregistrationv1.ValidatingWebhookConfiguration
	r.decode(t, "ValidatingWebhookConfiguration", "", "traffic-manager-"+ns, &vwc)
	if len(vwc.Webhooks) != 1 {
		t.Fatalf("webhooks: got %d, want 1", len(vwc.Webhooks))
	}
	wh := vwc.Webhooks[0]
	svcRef := wh.ClientConfig.Service
	if svcRef == nil || svcRef.Name != "traffic-manager" || svcRef.Namespace != ns || svcRef.Path == nil || *svcRef.Path != "/authorize" ||
		svcRef.Port == nil || *svcRef.Port != 443 {
		t.Errorf("clientConfig.service: got %+v, want traffic-manager.%s:443/authorize", svcRef, ns)
	}
	if len(wh.Rules) != 1 || !slices.Equal(wh.Rules[0].Operations, []admissionregistrationv1.OperationType{admissionregistrationv1.Update}) ||
		!slices.Equal(wh.Rules[0].APIGroups, []string{"apps"}) ||
		!slices.Equal(wh.Rules[0].Resources, []string{"deployments", "statefulsets", "replicasets"}) {
		t.Errorf("rules: got %+v, want UPDATE of apps deployments, statefulsets, replicasets", wh.Rules)
	}
	if len(wh.MatchConditions) != 1 || !strings.Contains(wh.MatchConditions[0].Expression, "'tp.run/authorize' in object.metadata.annotations") {
		t.Errorf("matchConditions: got %+v, want one on the tp.run/authorize annotation", wh.MatchConditions)
	}
	if wh.FailurePolicy == nil || *wh.FailurePolicy != admissionregistrationv1.Ignore {
		t.Errorf("failurePolicy: got %v, want Ignore", wh.FailurePolicy)
	}
	if wh.SideEffects == nil || *wh.SideEffects != admissionregistrationv1.SideEffectClassNoneOnDryRun {
		t.Errorf("sideEffects: got %v, want NoneOnDryRun", wh.SideEffects)
	}
	if wh.NamespaceSelector == nil || len(wh.NamespaceSelector.MatchExpressions) == 0 ||
		!slices.Contains(wh.NamespaceSelector.MatchExpressions[0].Values, ns) ||
		!slices.Contains(wh.NamespaceSelector.MatchExpressions[0].Values, "kube-system") {
		t.Errorf("namespaceSelector: got %+v, want NotIn %s, kube-system", wh.NamespaceSelector, ns)
	}
}

// secretsProvider is the cluster of `lookup` during a render: it holds
// the given Secrets.
type secretsProvider struct {
	client *dynamicfake.FakeDynamicClient
}

func (p secretsProvider) GetClientFor(apiVersion, kind string) (dynamic.NamespaceableResourceInterface, bool, error) {
	if apiVersion != "v1" || kind != "Secret" {
		return nil, false, fmt.Errorf("lookup of %s %s: only v1 Secrets here", apiVersion, kind)
	}
	return p.client.Resource(corev1.SchemeGroupVersion.WithResource("secrets")), true, nil
}

// renderUpgrade renders the chart with vals as an upgrade of the release in
// ns, in a cluster holding objs (what `lookup` finds), and returns its
// objects by "Kind namespace/name".
func renderUpgrade(t *testing.T, ns string, vals map[string]any, objs ...runtime.Object) map[string]string {
	t.Helper()
	ch, err := Load("v1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	rv, err := chartutil.ToRenderValues(ch, vals, chartutil.ReleaseOptions{Name: DefaultReleaseName, Namespace: ns, IsUpgrade: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err := engine.RenderWithClientProvider(ch, rv, secretsProvider{dynamicfake.NewSimpleDynamicClient(scheme.Scheme, objs...)})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for name, text := range out {
		if !strings.HasSuffix(name, ".yaml") {
			continue
		}
		for _, m := range releaseutil.SplitManifests(text) {
			var meta metav1.PartialObjectMetadata
			if err := yaml.Unmarshal([]byte(m), &meta); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			got[fmt.Sprintf("%s %s/%s", meta.Kind, meta.Namespace, meta.Name)] = m
		}
	}
	return got
}

// secret decodes the Secret name of namespace ns among objs.
func secret(t *testing.T, objs map[string]string, ns, name string) *corev1.Secret {
	t.Helper()
	m, ok := objs["Secret "+ns+"/"+name]
	if !ok {
		t.Fatalf("no Secret %s/%s among %v", ns, name, slices.Sorted(maps.Keys(objs)))
	}
	var s corev1.Secret
	if err := yaml.UnmarshalStrict([]byte(m), &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

// podChecksum returns the Deployment's checksum/webhook-tls among objs.
func podChecksum(t *testing.T, objs map[string]string, ns string) string {
	t.Helper()
	var dep appsv1.Deployment
	if err := yaml.Unmarshal([]byte(objs["Deployment "+ns+"/traffic-manager"]), &dep); err != nil {
		t.Fatal(err)
	}
	sum := dep.Spec.Template.Annotations["checksum/webhook-tls"]
	if sum == "" {
		t.Fatal("Deployment: no checksum/webhook-tls annotation")
	}
	return sum
}

// verifyServing checks that s holds a serving certificate for the manager's
// Service in ns signed by the CA caPEM, valid for about ten years.
func verifyServing(t *testing.T, s *corev1.Secret, ns string, caPEM []byte) {
	t.Helper()
	pair, err := tls.X509KeyPair(s.Data["tls.crt"], s.Data["tls.key"])
	if err != nil {
		t.Fatalf("tls.crt and tls.key: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "traffic-manager." + ns + ".svc", Roots: roots}); err != nil {
		t.Errorf("serving certificate does not verify against the CA: %v", err)
	}
	if !bytes.Equal(s.Data["ca.crt"], caPEM) {
		t.Error("Secret's ca.crt is not the CA")
	}
	notAfter, err := time.Parse(time.RFC3339, s.Annotations["tp.run/cert-not-after"])
	if err != nil {
		t.Fatalf("annotation tp.run/cert-not-after: %v", err)
	}
	if notAfter.After(leaf.NotAfter) || leaf.NotAfter.Sub(notAfter) > time.Minute {
		t.Errorf("annotation tp.run/cert-not-after %v, want the certificate's NotAfter %v (or a little earlier)", notAfter, leaf.NotAfter)
	}
}

// An upgrade with unchanged values in a cluster holding the Secrets of the
// release renders exactly what is installed, so it restarts nothing; with a
// changed value only that value changes, and the certificate stays.
func TestRenderUpgradeChangesNothing(t *testing.T) {
	const ns = "tp-test"
	first := renderUpgrade(t, ns, nil)
	ca := secret(t, first, ns, "traffic-manager-ca")
	serving := secret(t, first, ns, "traffic-manager-webhook-tls")
	verifyServing(t, serving, ns, ca.Data["ca.crt"])
	for i := range 2 {
		again := renderUpgrade(t, ns, nil, ca, serving)
		for _, k := range slices.Sorted(maps.Keys(first)) {
			if again[k] != first[k] {
				t.Errorf("upgrade %d: %s differs from the installed one:\n%s\nwant\n%s", i+1, k, again[k], first[k])
			}
		}
		if len(again) != len(first) {
			t.Errorf("upgrade %d: %d objects, want %d", i+1, len(again), len(first))
		}
	}

	changed := renderUpgrade(t, ns, map[string]any{"logLevel": "debug"}, ca, serving)
	for _, name := range []string{"traffic-manager-ca", "traffic-manager-webhook-tls"} {
		if changed["Secret "+ns+"/"+name] != first["Secret "+ns+"/"+name] {
			t.Errorf("upgrade with logLevel=debug: Secret %s changed", name)
		}
	}
	if podChecksum(t, changed, ns) != podChecksum(t, first, ns) {
		t.Error("upgrade with logLevel=debug: checksum/webhook-tls changed")
	}
	if changed["Deployment "+ns+"/traffic-manager"] == first["Deployment "+ns+"/traffic-manager"] {
		t.Error("upgrade with logLevel=debug: same Deployment, want the new log level in it")
	}
}

// An upgrade keeps the CA (agents carry it in their pod spec) and signs a new
// serving certificate with it when the kept one is missing, expires within
// 30 days, is for other names or another CA, or is not the one its
// annotations describe.
func TestRenderRenewsCertificate(t *testing.T) {
	const ns = "tp-test"
	first := renderUpgrade(t, ns, nil)
	ca := secret(t, first, ns, "traffic-manager-ca")
	serving := secret(t, first, ns, "traffic-manager-webhook-tls")
	other := renderUpgrade(t, ns, nil) // another CA and certificate
	otherCA := secret(t, other, ns, "traffic-manager-ca")
	otherServing := secret(t, other, ns, "traffic-manager-webhook-tls")

	annotated := func(key, value string) *corev1.Secret {
		s := serving.DeepCopy()
		s.Annotations[key] = value
		return s
	}
	replaced := serving.DeepCopy()
	replaced.Data["tls.crt"], replaced.Data["tls.key"] = otherServing.Data["tls.crt"], otherServing.Data["tls.key"]
	tests := []struct {
		name    string
		cluster []runtime.Object
		wantCA  *corev1.Secret
	}{
		{"no serving Secret", []runtime.Object{ca}, ca},
		{"no annotations", []runtime.Object{ca, func() *corev1.Secret { s := serving.DeepCopy(); s.Annotations = nil; return s }()}, ca},
		{"expires in 29 days", []runtime.Object{ca, annotated("tp.run/cert-not-after", time.Now().Add(29*24*time.Hour).UTC().Format(time.RFC3339))}, ca},
		{"other names", []runtime.Object{ca, annotated("tp.run/cert-names", "traffic-manager.tp-old.svc")}, ca},
		{"another CA", []runtime.Object{otherCA, serving}, otherCA},
		{"certificate replaced", []runtime.Object{ca, replaced}, ca},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := renderUpgrade(t, ns, nil, tc.cluster...)
			gotCA := secret(t, got, ns, "traffic-manager-ca")
			if !bytes.Equal(gotCA.Data["ca.crt"], tc.wantCA.Data["ca.crt"]) || !bytes.Equal(gotCA.Data["ca.key"], tc.wantCA.Data["ca.key"]) {
				t.Error("a new CA, want the one in the cluster")
			}
			s := secret(t, got, ns, "traffic-manager-webhook-tls")
			if bytes.Equal(s.Data["tls.crt"], serving.Data["tls.crt"]) || bytes.Equal(s.Data["tls.crt"], otherServing.Data["tls.crt"]) {
				t.Error("kept the serving certificate, want a new one")
			}
			verifyServing(t, s, ns, tc.wantCA.Data["ca.crt"])
			if podChecksum(t, got, ns) == podChecksum(t, first, ns) {
				t.Error("same checksum/webhook-tls, want a new one (the manager loads the new certificate)")
			}
			// The renewed certificate is kept by the next upgrade.
			again := renderUpgrade(t, ns, nil, gotCA, s)
			if !bytes.Equal(secret(t, again, ns, "traffic-manager-webhook-tls").Data["tls.crt"], s.Data["tls.crt"]) {
				t.Error("the next upgrade renewed the renewed certificate, want it kept")
			}
		})
	}
}
