package charts

import (
	"errors"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func pod(name string, ready bool, waiting string) corev1.Pod {
	p := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "manager", Image: "registry.example/tp:v1"}}}}
	if ready {
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	}
	st := corev1.ContainerStatus{Name: "manager"}
	if waiting != "" {
		st.State.Waiting = &corev1.ContainerStateWaiting{Reason: waiting, Message: "pull failed"}
	}
	p.Status.ContainerStatuses = []corev1.ContainerStatus{st}
	return p
}

func TestManagerState(t *testing.T) {
	for _, tc := range []struct {
		name     string
		pods     []corev1.Pod
		done     bool
		pullFail bool
	}{
		{"no pod yet", nil, false, false},
		{"creating", []corev1.Pod{pod("a", false, "ContainerCreating")}, false, false},
		{"ready", []corev1.Pod{pod("a", true, "")}, true, false},
		{"ErrImagePull", []corev1.Pod{pod("a", false, "ErrImagePull")}, true, true},
		{"ImagePullBackOff", []corev1.Pod{pod("a", false, "ImagePullBackOff")}, true, true},
		{"ErrImageNeverPull", []corev1.Pod{pod("a", false, "ErrImageNeverPull")}, true, true},
		{"new pod cannot pull, old one serves", []corev1.Pod{pod("new", false, "ErrImagePull"), pod("old", true, "")}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done, err := managerState("tp", tc.pods)
			var pe *ImagePullError
			if done != tc.done || errors.As(err, &pe) != tc.pullFail {
				t.Fatalf("got done %v, err %v; want done %v, pull error %v", done, err, tc.done, tc.pullFail)
			}
			if pe != nil {
				for _, want := range []string{"registry.example/tp:v1", "--image-registry", "tp helm upgrade --namespace tp"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not name %q", err, want)
					}
				}
			}
		})
	}
}

func TestImageValues(t *testing.T) {
	vals := ImageValues("ghcr.io/me", "v2", []string{"regcred"})
	r := mustRender(t, "v1.2.3", "tp", vals)
	var d appsv1.Deployment
	r.decode(t, "Deployment", "tp", "traffic-manager", &d)
	ps := d.Spec.Template.Spec
	if got := ps.Containers[0].Image; got != "ghcr.io/me/tp:v2" {
		t.Errorf("image: got %q, want ghcr.io/me/tp:v2", got)
	}
	if len(ps.ImagePullSecrets) != 1 || ps.ImagePullSecrets[0].Name != "regcred" {
		t.Errorf("imagePullSecrets: got %v, want regcred", ps.ImagePullSecrets)
	}
	if len(ImageValues("", "", nil)) != 0 {
		t.Errorf("no flags: got values %v, want none", ImageValues("", "", nil))
	}
}
