package manager

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// WebhookPort is where the manager serves the agent-injection webhook (TLS).
const WebhookPort = 8443

// WebhookPath is the webhook's URL path.
const WebhookPath = "/inject"

// injector is the mutating admission webhook that adds the traffic-agent to
// pods labelled tp.run/agent=enabled. It never rejects a pod: on failure it
// admits the pod unchanged with a warning (and the webhook configuration's
// failurePolicy is Ignore, for when the manager is down).
type injector struct {
	kube  kubernetes.Interface
	agent agentSpec
	// caFile is the PEM CA bundle of the manager's certificate, which the
	// agents verify it against (ca.crt of the chart's Secret).
	caFile string
	log    *slog.Logger
}

func (in *injector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	serveAdmission(w, r, in.review)
}

// review admits the pod in req, with the agent injected when it should be.
func (in *injector) review(ctx context.Context, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	allow := &admissionv1.AdmissionResponse{Allowed: true}
	if req.Kind.Kind != "Pod" || req.Operation != admissionv1.Create || req.SubResource != "" {
		return allow
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return in.notInjected(allow, req, "decode pod: %v", err)
	}
	if hasAgent(&pod) || pod.Labels[agentLabel] != agentLabelEnabled {
		return allow // injected already (idempotent), or not asked for
	}
	namespace := req.Namespace
	if namespace == "" {
		namespace = pod.Namespace
	}
	mutated, wl, err := in.inject(ctx, namespace, &pod)
	if err != nil {
		return in.notInjected(allow, req, "%v", err)
	}
	ops, err := podPatch(&pod, mutated)
	if err == nil {
		allow.Patch, err = json.Marshal(ops)
	}
	if err != nil {
		return in.notInjected(allow, req, "patch: %v", err)
	}
	pt := admissionv1.PatchTypeJSONPatch
	allow.PatchType = &pt
	in.log.Info("traffic-agent injected", "namespace", namespace, "workload", wl.String(), "pod", podName(&pod))
	return allow
}

// inject returns pod with the agent injected and the workload it belongs
// to, or why it gets no agent. The webhook and the repair of pods admitted
// while the webhook was down (repair.go) decide alike.
func (in *injector) inject(ctx context.Context, namespace string, pod *corev1.Pod) (*corev1.Pod, workloadRef, error) {
	if in.agent.image == "" {
		return nil, workloadRef{}, errors.New("the traffic-manager has no agent image (TP_AGENT_IMAGE); run `tp helm upgrade`")
	}
	spec := in.agent
	var err error
	if spec.managerCA, err = os.ReadFile(in.caFile); err != nil {
		return nil, workloadRef{}, fmt.Errorf("the CA bundle agents verify the traffic-manager with: %w; run `tp helm upgrade`", err)
	}
	wl, err := workloadOfPod(ctx, in.kube, namespace, pod)
	if err != nil {
		return nil, workloadRef{}, err
	}
	svcs, err := in.kube.CoreV1().Services(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, workloadRef{}, fmt.Errorf("list services: %w", err)
	}
	mutated := pod.DeepCopy()
	if err := injectAgent(mutated, wl, planPorts(&pod.Spec, pod.Labels, svcs.Items), spec); err != nil {
		return nil, workloadRef{}, err
	}
	return mutated, wl, nil
}

func (in *injector) notInjected(resp *admissionv1.AdmissionResponse, req *admissionv1.AdmissionRequest, format string, args ...any) *admissionv1.AdmissionResponse {
	msg := fmt.Sprintf(format, args...)
	in.log.Warn("traffic-agent not injected", "namespace", req.Namespace, "name", req.Name, "err", msg)
	resp.Warnings = append(resp.Warnings, "tp: traffic-agent not injected: "+msg)
	return resp
}

func podName(p *corev1.Pod) string {
	if p.Name != "" {
		return p.Name
	}
	return p.GenerateName + "*"
}

// workloadOfPod finds the workload that created pod: its StatefulSet or
// ReplicaSet, or the ReplicaSet's Deployment.
func workloadOfPod(ctx context.Context, kube kubernetes.Interface, namespace string, pod *corev1.Pod) (workloadRef, error) {
	owner := metav1.GetControllerOf(pod)
	if owner == nil {
		return workloadRef{}, errors.New("the pod has no controller; only pods of Deployments, StatefulSets and ReplicaSets get an agent")
	}
	switch owner.Kind {
	case kindStatefulSet:
		return workloadRef{Namespace: namespace, Kind: kindStatefulSet, Name: owner.Name}, nil
	case kindReplicaSet:
		rs, err := kube.AppsV1().ReplicaSets(namespace).Get(ctx, owner.Name, metav1.GetOptions{})
		if err != nil {
			return workloadRef{}, fmt.Errorf("get the pod's ReplicaSet: %w", err)
		}
		if d := metav1.GetControllerOf(rs); d != nil && d.Kind == kindDeployment {
			return workloadRef{Namespace: namespace, Kind: kindDeployment, Name: d.Name}, nil
		}
		return workloadRef{Namespace: namespace, Kind: kindReplicaSet, Name: rs.Name}, nil
	default:
		return workloadRef{}, fmt.Errorf("the pod's controller is a %s; only pods of Deployments, StatefulSets and ReplicaSets get an agent", owner.Kind)
	}
}

// certFiles loads the webhook's serving certificate from dir (tls.crt,
// tls.key, as a kubernetes.io/tls Secret mounts them) and reloads it when the
// files change.
type certFiles struct {
	dir string

	mu      sync.Mutex
	cert    *tls.Certificate
	modTime time.Time
}

func (c *certFiles) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.load()
}

func (c *certFiles) load() (*tls.Certificate, error) {
	crt, key := filepath.Join(c.dir, "tls.crt"), filepath.Join(c.dir, "tls.key")
	var newest time.Time
	for _, f := range []string{crt, key} {
		st, err := os.Stat(f)
		if err != nil {
			return nil, fmt.Errorf("webhook certificate: %w", err)
		}
		if st.ModTime().After(newest) {
			newest = st.ModTime()
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cert != nil && newest.Equal(c.modTime) {
		return c.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		return nil, fmt.Errorf("webhook certificate: %w", err)
	}
	c.cert, c.modTime = &cert, newest
	return c.cert, nil
}

// serveWebhook serves the admission webhooks (path -> handler) with TLS on
// lis until ctx ends.
func serveWebhook(ctx context.Context, lis net.Listener, handlers map[string]http.Handler, certs *certFiles, log *slog.Logger) error {
	mux := http.NewServeMux()
	for path, h := range handlers {
		mux.Handle(path, h)
	}
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.get},
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return serveHTTP(ctx, srv, "webhook", func() error { return srv.ServeTLS(lis, "", "") }, 5*time.Second)
}

// serveHTTP runs serve (srv's Serve or ServeTLS) until ctx ends, then shuts
// srv down within grace. It returns serve's error, named by what.
func serveHTTP(ctx context.Context, srv *http.Server, what string, serve func() error, grace time.Duration) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := serve(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
		defer cancel()
		_ = srv.Shutdown(sctx)
		return nil
	})
	return g.Wait()
}
