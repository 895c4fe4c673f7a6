package manager

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestPreferredService(t *testing.T) {
	svc := func(name, clusterIP string, ports ...corev1.ServicePort) corev1.Service {
		s := corev1.Service{Spec: corev1.ServiceSpec{ClusterIP: clusterIP, Ports: ports}}
		s.Name = name
		return s
	}
	http80 := corev1.ServicePort{Name: "http", Port: 80}
	http8080 := corev1.ServicePort{Name: "http", Port: 8080}
	grpc := corev1.ServicePort{Name: "grpc", Port: 9091}
	echo := svc("echo", "10.96.0.5", http80, grpc)
	headless := svc("echo-headless", corev1.ClusterIPNone, http8080)
	other := svc("other", "10.96.0.6", http80)
	for _, tc := range []struct {
		name     string
		services []corev1.Service
		port     string
		want     string
	}{
		{"port only on one", []corev1.Service{echo, headless}, "grpc", "echo"},
		{"port number only on the headless one", []corev1.Service{echo, headless}, "8080", "echo-headless"},
		{"port on both: the non-headless one", []corev1.Service{echo, headless}, "http", "echo"},
		{"no port: the non-headless one", []corev1.Service{echo, headless}, "", "echo"},
		{"two ClusterIP services with the port: ambiguous", []corev1.Service{echo, other, headless}, "http", ""},
	} {
		got := preferredService(tc.services, tc.port)
		name := ""
		if got != nil {
			name = got.Name
		}
		if name != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, name, tc.want)
		}
	}
}
