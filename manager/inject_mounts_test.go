package manager

import (
	"encoding/json"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	tpagent "github.com/tp-run/tp/agent"
)

// TestWebhookExportsTheAppsVolumes: the agent gets every volume mount of the
// app container under /tp-export (nested ones, the ServiceAccount token,
// subPath, subPathExpr, readOnly; no propagation), tp's own volume is not
// exported, and TP_AGENT_MOUNTS lists them sorted with what the app sees as
// read-only. The pod's fsGroup is the pod's: the agent gets it as the app.
func TestWebhookExportsTheAppsVolumes(t *testing.T) {
	in := newInjector(echoReplicaSet(), service("shop", "echo", echoLabels, namedPort("http", 80, intstr.FromString("http"))))
	bidir := corev1.MountPropagationBidirectional
	app := corev1.Container{
		Name: "app", Image: "echo:1", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
		VolumeMounts: []corev1.VolumeMount{
			{Name: "var", MountPath: "/var"},
			{Name: "kube-api-access-x7k2p", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true},
			{Name: "secret", MountPath: "/etc/secret"},
			{Name: "config", MountPath: "/etc/config/app.yaml", SubPath: "app.yaml"},
			{Name: "data", MountPath: "/data/", SubPathExpr: "$(POD_NAME)", MountPropagation: &bidir},
			{Name: "cache", MountPath: "/cache", ReadOnly: true},
		},
	}
	pod := echoPod(app)
	pod.Spec.SecurityContext = &corev1.PodSecurityContext{FSGroup: ptr(int64(2000))}
	pod.Spec.Volumes = []corev1.Volume{
		{Name: "var", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		{Name: "kube-api-access-x7k2p", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{}}},
		{Name: "secret", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "s"}}},
		{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{}}},
		{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		{Name: "cache", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
	}
	_, got, _ := admit(t, in, mustJSON(t, pod))
	agent := findContainer(got.Spec.Containers, agentContainerName)
	if agent == nil {
		t.Fatal("no agent injected")
	}
	wantMounts := []corev1.VolumeMount{
		{Name: agentTokenVolume, MountPath: "/var/run/secrets/tp.run/agent", ReadOnly: true},
		{Name: "var", MountPath: "/tp-export/var"},
		{Name: "kube-api-access-x7k2p", MountPath: "/tp-export/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true},
		{Name: "secret", MountPath: "/tp-export/etc/secret"},
		{Name: "config", MountPath: "/tp-export/etc/config/app.yaml", SubPath: "app.yaml"},
		{Name: "data", MountPath: "/tp-export/data", SubPathExpr: "$(POD_NAME)"},
		{Name: "cache", MountPath: "/tp-export/cache", ReadOnly: true},
	}
	if !reflect.DeepEqual(agent.VolumeMounts, wantMounts) {
		t.Errorf("agent volume mounts:\ngot  %+v\nwant %+v", agent.VolumeMounts, wantMounts)
	}
	var mounts []tpagent.Mount
	if err := json.Unmarshal([]byte(envOf(agent)[tpagent.EnvMounts].Value), &mounts); err != nil {
		t.Fatalf("%s: %v", tpagent.EnvMounts, err)
	}
	wantEnv := []tpagent.Mount{
		{Path: "/cache", ReadOnly: true},
		{Path: "/data"},
		{Path: "/etc/config/app.yaml", ReadOnly: true},
		{Path: "/etc/secret", ReadOnly: true},
		{Path: "/var"},
		{Path: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true},
	}
	if !reflect.DeepEqual(mounts, wantEnv) {
		t.Errorf("%s: got %+v, want %+v", tpagent.EnvMounts, mounts, wantEnv)
	}
	// The app container is unchanged, the agent still runs as 65532 and
	// the pod's fsGroup (which the kubelet applies to every container) stays.
	if a := findContainer(got.Spec.Containers, "app"); !reflect.DeepEqual(a.VolumeMounts, app.VolumeMounts) {
		t.Errorf("app volume mounts changed: %+v", a.VolumeMounts)
	}
	if sc := agent.SecurityContext; sc == nil || *sc.RunAsUser != agentUID || !*sc.RunAsNonRoot {
		t.Errorf("agent security context %+v, want runAsNonRoot %d", sc, agentUID)
	}
	if got.Spec.SecurityContext == nil || got.Spec.SecurityContext.FSGroup == nil || *got.Spec.SecurityContext.FSGroup != 2000 {
		t.Errorf("pod security context %+v, want fsGroup 2000 kept", got.Spec.SecurityContext)
	}
}

// TestWebhookNoVolumes: an app without volume mounts gives the agent an
// empty TP_AGENT_MOUNTS and only its token.
func TestWebhookNoVolumes(t *testing.T) {
	in := newInjector(echoReplicaSet(), service("shop", "echo", echoLabels, namedPort("http", 80, intstr.FromString("http"))))
	_, got, _ := admit(t, in, mustJSON(t, echoPod(corev1.Container{Name: "app", Image: "echo:1", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}})))
	agent := findContainer(got.Spec.Containers, agentContainerName)
	if v := envOf(agent)[tpagent.EnvMounts].Value; v != "[]" {
		t.Errorf("%s: got %q, want []", tpagent.EnvMounts, v)
	}
	if len(agent.VolumeMounts) != 1 {
		t.Errorf("agent volume mounts: got %+v, want the token only", agent.VolumeMounts)
	}
}
