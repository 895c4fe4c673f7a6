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

	// Every render rotates the certificate, and the checksum restarts the manager.
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

// renderSecrets renders the chart as an upgrade in a cluster holding
// secrets, and returns the Secrets it renders by name.
func renderSecrets(t *testing.T, ns string, secrets ...runtime.Object) map[string]corev1.Secret {
	t.Helper()
	ch, err := Load("v1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	vals, err := chartutil.ToRenderValues(ch, nil, chartutil.ReleaseOptions{Name: DefaultReleaseName, Namespace: ns, IsUpgrade: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err := engine.RenderWithClientProvider(ch, vals, secretsProvider{dynamicfake.NewSimpleDynamicClient(scheme.Scheme, secrets...)})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]corev1.Secret{}
	for _, m := range releaseutil.SplitManifests(out[ch.Name()+"/templates/webhook.yaml"]) {
		var s corev1.Secret
		if err := yaml.Unmarshal([]byte(m), &s); err != nil {
			t.Fatal(err)
		}
		if s.Kind == "Secret" {
			got[s.Name] = s
		}
	}
	return got
}

// An upgrade keeps the CA (agents carry it in their pod spec) and signs a
// new serving certificate with it.
func TestRenderKeepsCA(t *testing.T) {
	const ns = "tp-test"
	first := renderSecrets(t, ns)
	ca := first["traffic-manager-ca"]
	if len(ca.Data["ca.crt"]) == 0 || len(ca.Data["ca.key"]) == 0 {
		t.Fatalf("first render: traffic-manager-ca %v, want ca.crt and ca.key", ca.Data)
	}
	ca.Namespace = ns
	again := renderSecrets(t, ns, &ca)
	if got := again["traffic-manager-ca"]; !bytes.Equal(got.Data["ca.crt"], ca.Data["ca.crt"]) || !bytes.Equal(got.Data["ca.key"], ca.Data["ca.key"]) {
		t.Error("upgrade: a new CA, want the one in the cluster")
	}
	tlsSecret := again["traffic-manager-webhook-tls"]
	if !bytes.Equal(tlsSecret.Data["ca.crt"], ca.Data["ca.crt"]) {
		t.Error("upgrade: webhook Secret's ca.crt is not the kept CA")
	}
	if bytes.Equal(tlsSecret.Data["tls.crt"], first["traffic-manager-webhook-tls"].Data["tls.crt"]) {
		t.Error("upgrade: same serving certificate, want a new one")
	}
	pair, err := tls.X509KeyPair(tlsSecret.Data["tls.crt"], tlsSecret.Data["tls.key"])
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.Data["ca.crt"])
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "traffic-manager." + ns + ".svc", Roots: roots}); err != nil {
		t.Errorf("upgrade: the new serving certificate does not verify against the kept CA: %v", err)
	}
}
