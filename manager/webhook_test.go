package manager

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	jsonpatch "github.com/evanphx/json-patch"
	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes/fake"

	tpagent "github.com/tp-run/tp/agent"
)

// echoReplicaSet is the ReplicaSet of Deployment shop/echo.
func echoReplicaSet() *appsv1.ReplicaSet {
	return &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{
		Namespace: "shop", Name: "echo-5d9f",
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kindDeployment, Name: "echo", Controller: ptr(true)}},
	}}
}

// echoPod is a pod of echoReplicaSet, labelled for injection.
func echoPod(containers ...corev1.Container) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "shop", GenerateName: "echo-5d9f-",
			Labels:          map[string]string{"app": "echo", agentLabel: agentLabelEnabled},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kindReplicaSet, Name: "echo-5d9f", Controller: ptr(true)}},
		},
		Spec: corev1.PodSpec{Containers: containers},
	}
}

func httpProbe(port intstr.IntOrString) *corev1.Probe {
	return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: port}}}
}

// admit sends the pod (as raw JSON, so that fields unknown to the Go types
// survive) to the injector and returns the response and the patched pod.
func admit(t *testing.T, in *injector, raw []byte) (*admissionv1.AdmissionResponse, *corev1.Pod, map[string]any) {
	t.Helper()
	srv := httptest.NewServer(in)
	t.Cleanup(srv.Close)
	review := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: types.UID("req-1"), Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"}, Namespace: "shop",
			Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: raw},
		},
	}
	body, err := json.Marshal(review)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(srv.URL+WebhookPath, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out admissionv1.AdmissionReview
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("decode response: %v", err)
	}
	if out.Kind != "AdmissionReview" || out.APIVersion != "admission.k8s.io/v1" || out.Response == nil {
		t.Fatalf("response: got %+v, want an admission.k8s.io/v1 AdmissionReview", out)
	}
	r := out.Response
	if r.UID != "req-1" || !r.Allowed {
		t.Fatalf("response: got uid %q allowed %v, want req-1, true", r.UID, r.Allowed)
	}
	patched := raw
	if r.Patch != nil {
		if r.PatchType == nil || *r.PatchType != admissionv1.PatchTypeJSONPatch {
			t.Fatalf("patch type: got %v, want JSONPatch", r.PatchType)
		}
		p, err := jsonpatch.DecodePatch(r.Patch)
		if err != nil {
			t.Fatalf("decode patch %s: %v", r.Patch, err)
		}
		if patched, err = p.Apply(raw); err != nil {
			t.Fatalf("apply patch %s: %v", r.Patch, err)
		}
	}
	var pod corev1.Pod
	var generic map[string]any
	if err := json.Unmarshal(patched, &pod); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(patched, &generic); err != nil {
		t.Fatal(err)
	}
	return r, &pod, generic
}

// testCAFile stands for ca.crt of the chart's Secret.
const testCAFile = "testdata/ca.crt"

func newInjector(objs ...runtime.Object) *injector {
	return &injector{
		kube:   fake.NewClientset(objs...),
		agent:  agentSpec{image: "tp:test", pullPolicy: corev1.PullNever, managerAddr: agentManagerAddr("tp")},
		caFile: testCAFile,
		log:    slog.New(slog.DiscardHandler),
	}
}

func testCA(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(testCAFile)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func findContainer(cs []corev1.Container, name string) *corev1.Container {
	if i := containerIndex(cs, name); i >= 0 {
		return &cs[i]
	}
	return nil
}

func envOf(c *corev1.Container) map[string]corev1.EnvVar {
	out := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		out[e.Name] = e
	}
	return out
}

func TestWebhookInjects(t *testing.T) {
	symbolicApp := corev1.Container{
		Name: "app", Image: "echo:1",
		Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "metrics", ContainerPort: 9090}},
		ReadinessProbe: httpProbe(intstr.FromString("http")),
		LivenessProbe:  httpProbe(intstr.FromString("metrics")),
		StartupProbe:   &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("http")}}},
		Env:            []corev1.EnvVar{{Name: "GREETING", Value: "hi"}, {Name: "POD", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
		EnvFrom: []corev1.EnvFromSource{
			{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "echo-config"}}},
			{Prefix: "S_", SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "echo-secret"}}},
		},
	}
	numericApp := corev1.Container{Name: "app", Image: "echo:1", Ports: []corev1.ContainerPort{{ContainerPort: 8080}, {Name: "admin", ContainerPort: 9000}},
		ReadinessProbe: httpProbe(intstr.FromInt32(8080))}
	clusterIP := func(ports ...corev1.ServicePort) *corev1.Service {
		return service("shop", "echo", echoLabels, ports...)
	}
	headless := func(ports ...corev1.ServicePort) *corev1.Service {
		s := service("shop", "echo-headless", echoLabels, ports...)
		s.Spec.ClusterIP = corev1.ClusterIPNone
		return s
	}

	tests := []struct {
		name      string
		app       corev1.Container
		services  []runtime.Object
		wantPorts []tpagent.Port
		// wantAppPorts are the app container's ports after injection.
		wantAppPorts []corev1.ContainerPort
		// wantAgentPorts are the agent container's declared ports.
		wantAgentPorts []corev1.ContainerPort
		wantInit       bool
	}{
		{
			name: "symbolic port", app: symbolicApp,
			services:       []runtime.Object{clusterIP(namedPort("http", 80, intstr.FromString("http")))},
			wantPorts:      []tpagent.Port{{Name: "http", ContainerPort: 8080, AgentPort: 9900, Protocol: "TCP", Mechanism: tpagent.MechanismRename}},
			wantAppPorts:   []corev1.ContainerPort{{Name: "tm-http", ContainerPort: 8080}, {Name: "metrics", ContainerPort: 9090}},
			wantAgentPorts: []corev1.ContainerPort{{Name: "http", ContainerPort: 9900, Protocol: corev1.ProtocolTCP}},
		},
		{
			name: "numeric port", app: numericApp,
			services:       []runtime.Object{clusterIP(namedPort("", 80, intstr.FromInt32(8080)))},
			wantPorts:      []tpagent.Port{{ContainerPort: 8080, AgentPort: 9900, Protocol: "TCP", Mechanism: tpagent.MechanismRedirect}},
			wantAppPorts:   numericApp.Ports,
			wantAgentPorts: []corev1.ContainerPort{{ContainerPort: 9900, Protocol: corev1.ProtocolTCP}},
			wantInit:       true,
		},
		{
			name: "target port defaults to the port", app: numericApp,
			services:       []runtime.Object{clusterIP(corev1.ServicePort{Port: 8080})},
			wantPorts:      []tpagent.Port{{ContainerPort: 8080, AgentPort: 9900, Protocol: "TCP", Mechanism: tpagent.MechanismRedirect}},
			wantAppPorts:   numericApp.Ports,
			wantAgentPorts: []corev1.ContainerPort{{ContainerPort: 9900, Protocol: corev1.ProtocolTCP}},
			wantInit:       true,
		},
		{
			name: "headless service", app: symbolicApp,
			services:       []runtime.Object{headless(namedPort("http", 8080, intstr.FromString("http")))},
			wantPorts:      []tpagent.Port{{Name: "http", ContainerPort: 8080, AgentPort: 9900, Protocol: "TCP", Mechanism: tpagent.MechanismRedirect}},
			wantAppPorts:   symbolicApp.Ports,
			wantAgentPorts: []corev1.ContainerPort{{ContainerPort: 9900, Protocol: corev1.ProtocolTCP}},
			wantInit:       true,
		},
		{
			name: "multi-port service", app: symbolicApp,
			services: []runtime.Object{clusterIP(
				namedPort("http", 80, intstr.FromString("http")),
				namedPort("metrics", 9090, intstr.FromString("metrics")),
				corev1.ServicePort{Name: "dns", Port: 53, TargetPort: intstr.FromInt32(53), Protocol: corev1.ProtocolUDP},
			)},
			wantPorts: []tpagent.Port{
				{Name: "http", ContainerPort: 8080, AgentPort: 9900, Protocol: "TCP", Mechanism: tpagent.MechanismRename},
				{Name: "metrics", ContainerPort: 9090, AgentPort: 9901, Protocol: "TCP", Mechanism: tpagent.MechanismRename},
			},
			wantAppPorts: []corev1.ContainerPort{{Name: "tm-http", ContainerPort: 8080}, {Name: "tm-metrics", ContainerPort: 9090}},
			wantAgentPorts: []corev1.ContainerPort{
				{Name: "http", ContainerPort: 9900, Protocol: corev1.ProtocolTCP},
				{Name: "metrics", ContainerPort: 9901, Protocol: corev1.ProtocolTCP},
			},
		},
		{
			name: "two services, one port twice", app: symbolicApp,
			services: []runtime.Object{
				clusterIP(namedPort("http", 80, intstr.FromString("http"))),
				headless(namedPort("http", 8080, intstr.FromString("http")), namedPort("metrics", 9090, intstr.FromInt32(9090))),
			},
			wantPorts: []tpagent.Port{
				{Name: "http", ContainerPort: 8080, AgentPort: 9900, Protocol: "TCP", Mechanism: tpagent.MechanismRedirect},
				{Name: "metrics", ContainerPort: 9090, AgentPort: 9901, Protocol: "TCP", Mechanism: tpagent.MechanismRedirect},
			},
			wantAppPorts: symbolicApp.Ports,
			wantAgentPorts: []corev1.ContainerPort{
				{ContainerPort: 9900, Protocol: corev1.ProtocolTCP},
				{ContainerPort: 9901, Protocol: corev1.ProtocolTCP},
			},
			wantInit: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := newInjector(append([]runtime.Object{echoReplicaSet()}, tt.services...)...)
			orig := echoPod(tt.app, corev1.Container{Name: "sidecar", Image: "proxy:1"})
			_, pod, _ := admit(t, in, mustJSON(t, orig))

			if got := pod.Annotations[injectedAnnotation]; got != "true" {
				t.Errorf("annotation %s: got %q, want true", injectedAnnotation, got)
			}
			var names []string
			for _, c := range pod.Spec.Containers {
				names = append(names, c.Name)
			}
			if want := []string{"app", "sidecar", agentContainerName}; !slices.Equal(names, want) {
				t.Fatalf("containers: got %v, want %v", names, want)
			}
			app, agent := &pod.Spec.Containers[0], &pod.Spec.Containers[2]
			if !reflect.DeepEqual(app.Ports, tt.wantAppPorts) {
				t.Errorf("app ports: got %+v, want %+v", app.Ports, tt.wantAppPorts)
			}
			if !reflect.DeepEqual(agent.Ports, tt.wantAgentPorts) {
				t.Errorf("agent ports: got %+v, want %+v", agent.Ports, tt.wantAgentPorts)
			}
			if !reflect.DeepEqual(pod.Spec.Containers[1], orig.Spec.Containers[1]) {
				t.Errorf("sidecar changed: got %+v, want %+v", pod.Spec.Containers[1], orig.Spec.Containers[1])
			}

			// Probes that named a renamed port use its number; others stay.
			renamed := map[string]int32{}
			for _, p := range tt.wantPorts {
				if p.Mechanism == tpagent.MechanismRename {
					renamed[p.Name] = p.ContainerPort
				}
			}
			for name, pair := range map[string][2]*corev1.Probe{
				"readiness": {tt.app.ReadinessProbe, app.ReadinessProbe},
				"liveness":  {tt.app.LivenessProbe, app.LivenessProbe},
				"startup":   {tt.app.StartupProbe, app.StartupProbe},
			} {
				before, after := pair[0], pair[1]
				if before == nil {
					if after != nil {
						t.Errorf("%s probe: got %+v, want none", name, after)
					}
					continue
				}
				port := func(p *corev1.Probe) intstr.IntOrString {
					if p.HTTPGet != nil {
						return p.HTTPGet.Port
					}
					return p.TCPSocket.Port
				}
				want := port(before)
				if n, ok := renamed[want.StrVal]; ok && want.Type == intstr.String {
					want = intstr.FromInt32(n)
				}
				if got := port(after); got != want {
					t.Errorf("%s probe port: got %v, want %v", name, got.String(), want.String())
				}
			}

			// The agent.
			if agent.Image != "tp:test" || agent.ImagePullPolicy != corev1.PullNever || !slices.Equal(agent.Args, []string{"agent"}) {
				t.Errorf("agent image/pull policy/args: got %s %s %v, want tp:test Never [agent]", agent.Image, agent.ImagePullPolicy, agent.Args)
			}
			if !reflect.DeepEqual(agent.EnvFrom, tt.app.EnvFrom) {
				t.Errorf("agent envFrom: got %+v, want the app's %+v", agent.EnvFrom, tt.app.EnvFrom)
			}
			if n := len(tt.app.Env); n > 0 && !reflect.DeepEqual(agent.Env[:n], tt.app.Env) {
				t.Errorf("agent env: got %+v first, want the app's %+v", agent.Env[:n], tt.app.Env)
			}
			env := envOf(agent)
			for name, want := range map[string]string{
				"TP_AGENT_WORKLOAD": "echo", "TP_AGENT_KIND": kindDeployment, "TP_AGENT_CONTAINER": "app",
				"TP_MANAGER_ADDR": "traffic-manager.tp.svc:8082", "TP_AGENT_HEALTH_ADDR": ":9898",
				"TP_MANAGER_CA": string(testCA(t)), "TP_AGENT_TOKEN_FILE": "/var/run/secrets/tp.run/agent/token",
			} {
				if got := env[name].Value; got != want {
					t.Errorf("agent env %s: got %q, want %q", name, got, want)
				}
			}
			for name, path := range map[string]string{"TP_AGENT_NAMESPACE": "metadata.namespace", "TP_AGENT_POD_NAME": "metadata.name", "TP_AGENT_POD_IP": "status.podIP"} {
				if e := env[name]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != path {
					t.Errorf("agent env %s: got %+v, want fieldRef %s", name, e, path)
				}
			}
			var ports []tpagent.Port
			if err := json.Unmarshal([]byte(env["TP_AGENT_PORTS"].Value), &ports); err != nil {
				t.Fatalf("TP_AGENT_PORTS %q: %v", env["TP_AGENT_PORTS"].Value, err)
			}
			if !reflect.DeepEqual(ports, tt.wantPorts) {
				t.Errorf("TP_AGENT_PORTS: got %+v, want %+v", ports, tt.wantPorts)
			}
			// The token: a projected ServiceAccount token with audience tp,
			// read-only in the agent container only.
			wantMounts := []corev1.VolumeMount{{Name: "tp-agent-token", MountPath: "/var/run/secrets/tp.run/agent", ReadOnly: true}}
			if !reflect.DeepEqual(agent.VolumeMounts, wantMounts) {
				t.Errorf("agent volumeMounts: got %+v, want %+v", agent.VolumeMounts, wantMounts)
			}
			wantVolume := corev1.Volume{Name: "tp-agent-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
				Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
					Audience: "tp", ExpirationSeconds: ptr(int64(600)), Path: "token",
				}}},
			}}}
			if n := len(pod.Spec.Volumes); n == 0 || !reflect.DeepEqual(pod.Spec.Volumes[n-1], wantVolume) {
				t.Errorf("volumes: got %+v, want the token volume %+v last", pod.Spec.Volumes, wantVolume)
			}
			for _, c := range pod.Spec.Containers[:2] {
				if len(c.VolumeMounts) != 0 {
					t.Errorf("container %s mounts %+v, want nothing", c.Name, c.VolumeMounts)
				}
			}
			if p := agent.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/ready" || p.HTTPGet.Port != intstr.FromInt32(agentHealthPort) {
				t.Errorf("agent readiness probe: got %+v, want GET /ready on 9898", p)
			}
			sc := agent.SecurityContext
			if sc == nil || !*sc.RunAsNonRoot || *sc.RunAsUser != agentUID || !*sc.ReadOnlyRootFilesystem || *sc.AllowPrivilegeEscalation ||
				len(sc.Capabilities.Add) != 0 || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
				t.Errorf("agent securityContext: got %+v, want non-root 65532, read-only, no capabilities", sc)
			}

			// The init container, only for redirects.
			init := findContainer(pod.Spec.InitContainers, agentInitContainerName)
			if (init != nil) != tt.wantInit {
				t.Fatalf("init container: got %v, want present=%v", init, tt.wantInit)
			}
			if init != nil {
				isc := init.SecurityContext
				if !slices.Equal(init.Args, []string{"agent-init"}) || init.Image != "tp:test" || init.ImagePullPolicy != corev1.PullNever {
					t.Errorf("init: got %s %s %v, want tp:test Never [agent-init]", init.Image, init.ImagePullPolicy, init.Args)
				}
				if isc == nil || !slices.Equal(isc.Capabilities.Add, []corev1.Capability{"NET_ADMIN"}) ||
					!slices.Equal(isc.Capabilities.Drop, []corev1.Capability{"ALL"}) || *isc.RunAsUser != 0 || *isc.AllowPrivilegeEscalation {
					t.Errorf("init securityContext: got %+v, want root with NET_ADMIN only", isc)
				}
				if got := envOf(init)["TP_AGENT_PORTS"].Value; got != env["TP_AGENT_PORTS"].Value {
					t.Errorf("init TP_AGENT_PORTS: got %q, want the agent's %q", got, env["TP_AGENT_PORTS"].Value)
				}
			}
		})
	}
}

func TestWebhookPatchKeepsTheRest(t *testing.T) {
	in := newInjector(echoReplicaSet(), service("shop", "echo", echoLabels, namedPort("", 80, intstr.FromInt32(8080))))
	pod := echoPod(corev1.Container{Name: "app", Image: "echo:1"})
	pod.Annotations = map[string]string{"a/b": "c"}
	pod.Spec.InitContainers = []corev1.Container{{Name: "migrate", Image: "db:1"}}
	pod.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	// A field this version of the Go types does not know must survive.
	var raw map[string]any
	if err := json.Unmarshal(mustJSON(t, pod), &raw); err != nil {
		t.Fatal(err)
	}
	raw["spec"].(map[string]any)["futureField"] = "kept"
	raw["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)["futureContainerField"] = "kept"

	_, got, generic := admit(t, in, mustJSON(t, raw))
	if want := map[string]string{"a/b": "c", injectedAnnotation: "true"}; !reflect.DeepEqual(got.Annotations, want) {
		t.Errorf("annotations: got %v, want %v", got.Annotations, want)
	}
	var inits []string
	for _, c := range got.Spec.InitContainers {
		inits = append(inits, c.Name)
	}
	if want := []string{agentInitContainerName, "migrate"}; !slices.Equal(inits, want) {
		t.Errorf("init containers: got %v, want %v", inits, want)
	}
	var volumes []string
	for _, v := range got.Spec.Volumes {
		volumes = append(volumes, v.Name)
	}
	if want := []string{"data", agentTokenVolume}; !slices.Equal(volumes, want) {
		t.Errorf("volumes: got %v, want %v", volumes, want)
	}
	spec := generic["spec"].(map[string]any)
	if spec["futureField"] != "kept" || spec["containers"].([]any)[0].(map[string]any)["futureContainerField"] != "kept" {
		t.Errorf("unknown fields lost: %v", spec)
	}
	// Numeric undeclared port: the app container is the first one.
	if got := envOf(&got.Spec.Containers[1])["TP_AGENT_CONTAINER"].Value; got != "app" {
		t.Errorf("TP_AGENT_CONTAINER: got %q, want app", got)
	}
}

func TestWebhookLeavesAlone(t *testing.T) {
	svc := service("shop", "echo", echoLabels, namedPort("http", 80, intstr.FromString("http")))
	app := corev1.Container{Name: "app", Image: "echo:1", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}
	injected := echoPod(app, corev1.Container{Name: agentContainerName, Image: "tp:old"})
	unlabelled := echoPod(app)
	delete(unlabelled.Labels, agentLabel)
	bare := echoPod(app)
	bare.OwnerReferences = nil
	job := echoPod(app)
	job.OwnerReferences[0].Kind = "Job"
	tokenClash := echoPod(app)
	tokenClash.Spec.Volumes = []corev1.Volume{{Name: agentTokenVolume}}
	noCA := newInjector(echoReplicaSet(), svc)
	noCA.caFile = "testdata/missing.crt"
	hostNet := echoPod(app)
	hostNet.Spec.HostNetwork = true
	clash := echoPod(app, corev1.Container{Name: "sidecar", Image: "s:1", Ports: []corev1.ContainerPort{{ContainerPort: 9900}}})

	tests := []struct {
		name        string
		objs        []runtime.Object
		pod         *corev1.Pod
		wantWarning string
		in          *injector // default newInjector(objs...)
	}{
		{"no CA bundle", nil, echoPod(app), "CA bundle", noCA},
		{"token volume name taken", []runtime.Object{echoReplicaSet(), svc}, tokenClash, "volume named tp-agent-token", nil},
		{"already injected", []runtime.Object{echoReplicaSet(), svc}, injected, "", nil},
		{"not labelled", []runtime.Object{echoReplicaSet(), svc}, unlabelled, "", nil},
		{"no service", []runtime.Object{echoReplicaSet()}, echoPod(app), "no service selecting the pod", nil},
		{"no controller", []runtime.Object{svc}, bare, "no controller", nil},
		{"a job's pod", []runtime.Object{svc}, job, "Job", nil},
		{"replicaset gone", []runtime.Object{svc}, echoPod(app), "ReplicaSet", nil},
		{"hostNetwork", []runtime.Object{echoReplicaSet(), svc}, hostNet, "hostNetwork: true", nil},
		{"agent port taken", []runtime.Object{echoReplicaSet(), svc}, clash, "container sidecar uses port 9900", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.in
			if in == nil {
				in = newInjector(tt.objs...)
			}
			resp, _, _ := admit(t, in, mustJSON(t, tt.pod))
			if resp.Patch != nil {
				t.Errorf("patch: got %s, want none", resp.Patch)
			}
			switch {
			case tt.wantWarning == "" && len(resp.Warnings) > 0:
				t.Errorf("warnings: got %v, want none", resp.Warnings)
			case tt.wantWarning != "" && (len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], tt.wantWarning)):
				t.Errorf("warnings: got %v, want one containing %q", resp.Warnings, tt.wantWarning)
			}
		})
	}
}

func TestWebhookWorkloadKinds(t *testing.T) {
	svc := service("shop", "echo", echoLabels, namedPort("", 80, intstr.FromInt32(8080)))
	bareRS := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "echo-5d9f"}}
	sts := echoPod(appContainer())
	sts.OwnerReferences[0].Kind, sts.OwnerReferences[0].Name = kindStatefulSet, "db"
	tests := []struct {
		name     string
		objs     []runtime.Object
		pod      *corev1.Pod
		wantKind string
		wantName string
	}{
		{"deployment", []runtime.Object{echoReplicaSet(), svc}, echoPod(appContainer()), kindDeployment, "echo"},
		{"bare replicaset", []runtime.Object{bareRS, svc}, echoPod(appContainer()), kindReplicaSet, "echo-5d9f"},
		{"statefulset", []runtime.Object{svc}, sts, kindStatefulSet, "db"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, pod, _ := admit(t, newInjector(tt.objs...), mustJSON(t, tt.pod))
			agent := findContainer(pod.Spec.Containers, agentContainerName)
			if agent == nil {
				t.Fatal("no agent injected")
			}
			env := envOf(agent)
			if env["TP_AGENT_KIND"].Value != tt.wantKind || env["TP_AGENT_WORKLOAD"].Value != tt.wantName {
				t.Errorf("workload: got %s %s, want %s %s", env["TP_AGENT_KIND"].Value, env["TP_AGENT_WORKLOAD"].Value, tt.wantKind, tt.wantName)
			}
		})
	}
}

func TestRenamedPort(t *testing.T) {
	for name, want := range map[string]string{
		"http":            "tm-http",
		"metrics-port":    "tm-metrics-port",
		"abcdefghijkl":    "tm-abcdefghijkl",
		"abcdefghijk-xyz": "tm-abcdefghijk",
		"very-long-name1": "tm-very-long-na",
	} {
		got := renamedPort(name)
		if got != want {
			t.Errorf("renamedPort(%q): got %q, want %q", name, got, want)
		}
		if errs := validation.IsValidPortName(got); len(errs) > 0 {
			t.Errorf("renamedPort(%q) = %q: not a valid port name: %v", name, got, errs)
		}
	}
}

// writeCert writes a self-signed serving certificate for 127.0.0.1 to dir
// and returns it.
func writeCert(t *testing.T, dir string, serial int64) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "traffic-manager.tp.svc"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for name, block := range map[string]*pem.Block{"tls.crt": {Type: "CERTIFICATE", Bytes: der}, "tls.key": {Type: "EC PRIVATE KEY", Bytes: kder}} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
		// Distinct modification times, as a Secret update gives.
		mt := time.Now().Add(time.Duration(serial) * time.Minute)
		if err := os.Chtimes(filepath.Join(dir, name), mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestServeWebhookTLS(t *testing.T) {
	dir := t.TempDir()
	writeCert(t, dir, 1)
	certs := &certFiles{dir: dir}
	if _, err := certs.load(); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- serveWebhook(ctx, lis, map[string]http.Handler{WebhookPath: newInjector()}, certs, slog.New(slog.DiscardHandler))
	}()

	// post sends a review of a pod that is not labelled and returns the
	// certificate the server presented.
	post := func() *x509.Certificate {
		t.Helper()
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true}}
		body := mustJSON(t, admissionv1.AdmissionReview{
			TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
			Request: &admissionv1.AdmissionRequest{UID: "u", Kind: metav1.GroupVersionKind{Kind: "Pod", Version: "v1"},
				Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: mustJSON(t, &corev1.Pod{})}},
		})
		resp, err := client.Post("https://"+lis.Addr().String()+WebhookPath, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("POST: %v", err)
		}
		defer resp.Body.Close()
		var out admissionv1.AdmissionReview
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Response == nil || !out.Response.Allowed {
			t.Fatalf("response: got %+v, %v, want allowed", out, err)
		}
		return resp.TLS.PeerCertificates[0]
	}
	if got := post().SerialNumber.Int64(); got != 1 {
		t.Errorf("served certificate serial: got %d, want 1", got)
	}
	writeCert(t, dir, 2) // the Secret changed
	if got := post().SerialNumber.Int64(); got != 2 {
		t.Errorf("served certificate serial after the update: got %d, want 2", got)
	}

	cancel()
	if err := <-served; err != nil {
		t.Errorf("serveWebhook: got %v, want nil after cancel", err)
	}
}

func TestCheckInjectable(t *testing.T) {
	plan := func(containerPorts ...int32) []agentPort {
		var out []agentPort
		for i, p := range containerPorts {
			out = append(out, agentPort{Port: tpagent.Port{ContainerPort: p, AgentPort: tpagent.FirstAgentPort + int32(i)}, container: "app"})
		}
		return out
	}
	app := func(ports ...int32) corev1.Container {
		c := corev1.Container{Name: "app"}
		for _, p := range ports {
			c.Ports = append(c.Ports, corev1.ContainerPort{ContainerPort: p})
		}
		return c
	}
	tests := []struct {
		name    string
		spec    corev1.PodSpec
		plan    []agentPort
		wantErr string // empty: injectable
	}{
		{name: "plain", spec: corev1.PodSpec{Containers: []corev1.Container{app(8080)}}, plan: plan(8080)},
		{name: "port beyond the agent's", spec: corev1.PodSpec{Containers: []corev1.Container{app(8080, 9901)}}, plan: plan(8080)},
		{name: "hostNetwork", spec: corev1.PodSpec{HostNetwork: true, Containers: []corev1.Container{app(8080)}}, plan: plan(8080),
			wantErr: "remove hostNetwork"},
		{name: "health port", spec: corev1.PodSpec{Containers: []corev1.Container{app(8080, 9898)}}, plan: plan(8080),
			wantErr: "container app uses port 9898, the traffic-agent's health port (the agent listens on 9900 and 9898 in the pod); move"},
		{name: "second agent port", spec: corev1.PodSpec{Containers: []corev1.Container{app(8080, 8081, 9901)}}, plan: plan(8080, 8081),
			wantErr: "uses port 9901, the traffic-agent's port (the agent listens on 9900-9901 and 9898"},
		{name: "init container", spec: corev1.PodSpec{InitContainers: []corev1.Container{{Name: "init", Ports: []corev1.ContainerPort{{ContainerPort: 9900}}}},
			Containers: []corev1.Container{app(8080)}}, plan: plan(8080), wantErr: "container init uses port 9900"},
		{name: "undeclared target port", spec: corev1.PodSpec{Containers: []corev1.Container{app()}}, plan: plan(9898),
			wantErr: "container app uses port 9898"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkInjectable(&tt.spec, tt.plan)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("got %v, want injectable", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("got %v, want an error containing %q", err, tt.wantErr)
			case tt.wantErr != "" && !errors.Is(err, errNotInjectable):
				t.Errorf("got %v, want errors.Is errNotInjectable", err)
			}
		})
	}
}
