package manager

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	tpagent "github.com/tp-run/tp/agent"
	"github.com/tp-run/tp/internal/tlsbatch"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/tunnel"
)

// AgentPort is where the manager serves the traffic-agents: TLS with the
// chart's certificate, every RPC authenticated by the agent pod's projected
// ServiceAccount token (audience tpagent.TokenAudience).
const AgentPort = 8082

// agentTokenCacheTTL is how long a verified token is trusted without asking
// the API server again: agents open a stream per intercepted connection.
const agentTokenCacheTTL = time.Minute

// User extras of a pod-bound ServiceAccount token in a TokenReview.
const (
	extraPodName = "authentication.kubernetes.io/pod-name"
	extraPodUID  = "authentication.kubernetes.io/pod-uid"
)

// agentIdentity is what the manager verified about the caller on the agent
// port: the pod its token is bound to, and what the webhook injected into
// that pod (the workload and ports the agent may claim).
type agentIdentity struct {
	Workload workloadRef
	Pod      string
	PodUID   types.UID
	// PodIPs from the pod's status (empty while the API has none yet).
	PodIPs []string
	// Container whose ports the agent took over (TP_AGENT_CONTAINER).
	Container string
	// Ports the webhook gave the agent (TP_AGENT_PORTS).
	Ports []tpagent.Port
	// Mounts the webhook gave the agent (TP_AGENT_MOUNTS).
	Mounts []tpagent.Mount
}

func (id *agentIdentity) String() string {
	return fmt.Sprintf("pod %s (uid %s) of %s", id.Pod, id.PodUID, id.Workload)
}

// agentAuthenticator verifies the caller of an RPC on the agent port. Errors
// are status errors (Unauthenticated, PermissionDenied, Unavailable).
type agentAuthenticator interface {
	authenticate(ctx context.Context) (*agentIdentity, error)
}

// tokenAuthenticator verifies an agent's bearer token with a TokenReview
// (audience tp), then checks that the pod the token is bound to is an agent
// pod the webhook injected, and learns its workload from the owner
// references. Verified tokens are cached for agentTokenCacheTTL by hash.
type tokenAuthenticator struct {
	kube kubernetes.Interface
	// allowed refuses namespaces the manager does not serve.
	allowed func(ns string) error
	now     func() time.Time
	log     *slog.Logger

	mu    sync.Mutex
	cache map[[sha256.Size]byte]cachedIdentity
}

type cachedIdentity struct {
	id      *agentIdentity
	expires time.Time
}

func newTokenAuthenticator(kube kubernetes.Interface, allowed func(string) error, log *slog.Logger) *tokenAuthenticator {
	return &tokenAuthenticator{kube: kube, allowed: allowed, now: time.Now, log: log,
		cache: map[[sha256.Size]byte]cachedIdentity{}}
}

func bearerToken(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if tok, ok := strings.CutPrefix(v, "Bearer "); ok && tok != "" {
			return strings.TrimSpace(tok)
		}
	}
	return ""
}

func (a *tokenAuthenticator) authenticate(ctx context.Context) (*agentIdentity, error) {
	tok := bearerToken(ctx)
	if tok == "" {
		return nil, status.Error(codes.Unauthenticated, "no bearer token: traffic-agents present their pod's ServiceAccount token with audience "+tpagent.TokenAudience)
	}
	key := sha256.Sum256([]byte(tok))
	now := a.now()
	a.mu.Lock()
	c, ok := a.cache[key]
	a.mu.Unlock()
	if ok && now.Before(c.expires) {
		return c.id, nil
	}
	id, err := a.verify(ctx, tok)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	for k, c := range a.cache {
		if !now.Before(c.expires) {
			delete(a.cache, k)
		}
	}
	a.cache[key] = cachedIdentity{id: id, expires: now.Add(agentTokenCacheTTL)}
	a.mu.Unlock()
	return id, nil
}

func (a *tokenAuthenticator) verify(ctx context.Context, tok string) (*agentIdentity, error) {
	review, err := a.kube.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: tok, Audiences: []string{tpagent.TokenAudience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "verify the token: TokenReview: %v", err)
	}
	st := review.Status
	if !st.Authenticated {
		return nil, status.Errorf(codes.Unauthenticated, "token not valid for audience %s: %s", tpagent.TokenAudience, st.Error)
	}
	if !slices.Contains(st.Audiences, tpagent.TokenAudience) {
		return nil, status.Errorf(codes.Unauthenticated, "token audiences %v do not include %s", st.Audiences, tpagent.TokenAudience)
	}
	ns, sa, ok := serviceAccountOf(st.User.Username)
	if !ok {
		return nil, status.Errorf(codes.Unauthenticated, "token of %q, not of a ServiceAccount", st.User.Username)
	}
	podName, podUID := firstExtra(st.User.Extra, extraPodName), firstExtra(st.User.Extra, extraPodUID)
	if podName == "" || podUID == "" {
		return nil, status.Errorf(codes.Unauthenticated, "token of %s is not bound to a pod", st.User.Username)
	}
	if err := a.allowed(ns); err != nil {
		return nil, status.Errorf(codes.PermissionDenied, "pod %s/%s: %s", ns, podName, status.Convert(err).Message())
	}
	pod, err := a.kube.CoreV1().Pods(ns).Get(ctx, podName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, status.Errorf(codes.PermissionDenied, "the token's pod %s/%s does not exist", ns, podName)
	case err != nil:
		return nil, status.Errorf(codes.Unavailable, "get the token's pod %s/%s: %v", ns, podName, err)
	case string(pod.UID) != podUID:
		return nil, status.Errorf(codes.PermissionDenied, "the token's pod %s/%s (uid %s) was replaced by uid %s", ns, podName, podUID, pod.UID)
	case pod.Spec.ServiceAccountName != sa:
		return nil, status.Errorf(codes.PermissionDenied, "pod %s/%s runs as ServiceAccount %q, the token is of %q", ns, podName, pod.Spec.ServiceAccountName, sa)
	}
	return agentOfPod(ctx, a.kube, pod)
}

// agentOfPod checks that pod is an agent pod the webhook injected and
// returns what its agent may claim.
func agentOfPod(ctx context.Context, kube kubernetes.Interface, pod *corev1.Pod) (*agentIdentity, error) {
	name := pod.Namespace + "/" + pod.Name
	i := containerIndex(pod.Spec.Containers, agentContainerName)
	if pod.Annotations[injectedAnnotation] != "true" || i < 0 {
		return nil, status.Errorf(codes.PermissionDenied, "pod %s is not a pod the tp webhook injected a traffic-agent into", name)
	}
	var env map[string]string = map[string]string{}
	for _, e := range pod.Spec.Containers[i].Env {
		if e.ValueFrom == nil {
			env[e.Name] = e.Value
		}
	}
	ports, err := tpagent.PortsFromEnv([]string{tpagent.EnvPorts + "=" + env[tpagent.EnvPorts]})
	if err != nil {
		return nil, status.Errorf(codes.PermissionDenied, "pod %s: its %s container: %v", name, agentContainerName, err)
	}
	mounts, err := tpagent.MountsFromEnv([]string{tpagent.EnvMounts + "=" + env[tpagent.EnvMounts]})
	if err != nil {
		return nil, status.Errorf(codes.PermissionDenied, "pod %s: its %s container: %v", name, agentContainerName, err)
	}
	wl, err := verifiedWorkloadOfPod(ctx, kube, pod)
	if err != nil {
		return nil, err
	}
	id := &agentIdentity{Workload: wl, Pod: pod.Name, PodUID: pod.UID, Container: env[tpagent.EnvContainer], Ports: ports, Mounts: mounts}
	for _, ip := range pod.Status.PodIPs {
		id.PodIPs = append(id.PodIPs, ip.IP)
	}
	return id, nil
}

// verifiedWorkloadOfPod is workloadOfPod with the owner references checked
// against the owners' UIDs.
func verifiedWorkloadOfPod(ctx context.Context, kube kubernetes.Interface, pod *corev1.Pod) (workloadRef, error) {
	name := pod.Namespace + "/" + pod.Name
	denied := func(format string, args ...any) (workloadRef, error) {
		return workloadRef{}, status.Errorf(codes.PermissionDenied, "pod %s: "+format, append([]any{name}, args...)...)
	}
	get := func(what string, err error) (workloadRef, error) {
		if apierrors.IsNotFound(err) {
			return denied("its %s does not exist", what)
		}
		return workloadRef{}, status.Errorf(codes.Unavailable, "pod %s: get its %s: %v", name, what, err)
	}
	owner := metav1.GetControllerOf(pod)
	if owner == nil {
		return denied("no controller; only pods of Deployments, StatefulSets and ReplicaSets have agents")
	}
	switch owner.Kind {
	case kindStatefulSet:
		s, err := kube.AppsV1().StatefulSets(pod.Namespace).Get(ctx, owner.Name, metav1.GetOptions{})
		if err != nil {
			return get("StatefulSet "+owner.Name, err)
		}
		if s.UID != owner.UID {
			return denied("its owner reference names StatefulSet %s with uid %s, which has uid %s", owner.Name, owner.UID, s.UID)
		}
		return workloadRef{Namespace: pod.Namespace, Kind: kindStatefulSet, Name: s.Name}, nil
	case kindReplicaSet:
		rs, err := kube.AppsV1().ReplicaSets(pod.Namespace).Get(ctx, owner.Name, metav1.GetOptions{})
		if err != nil {
			return get("ReplicaSet "+owner.Name, err)
		}
		if rs.UID != owner.UID {
			return denied("its owner reference names ReplicaSet %s with uid %s, which has uid %s", owner.Name, owner.UID, rs.UID)
		}
		d := metav1.GetControllerOf(rs)
		if d == nil || d.Kind != kindDeployment {
			return workloadRef{Namespace: pod.Namespace, Kind: kindReplicaSet, Name: rs.Name}, nil
		}
		dep, err := kube.AppsV1().Deployments(pod.Namespace).Get(ctx, d.Name, metav1.GetOptions{})
		if err != nil {
			return get("Deployment "+d.Name, err)
		}
		if dep.UID != d.UID {
			return denied("its ReplicaSet's owner reference names Deployment %s with uid %s, which has uid %s", d.Name, d.UID, dep.UID)
		}
		return workloadRef{Namespace: pod.Namespace, Kind: kindDeployment, Name: dep.Name}, nil
	default:
		return denied("its controller is a %s; only pods of Deployments, StatefulSets and ReplicaSets have agents", owner.Kind)
	}
}

// serviceAccountOf parses system:serviceaccount:<namespace>:<name>.
func serviceAccountOf(user string) (ns, name string, ok bool) {
	rest, ok := strings.CutPrefix(user, "system:serviceaccount:")
	if !ok {
		return "", "", false
	}
	ns, name, ok = strings.Cut(rest, ":")
	return ns, name, ok && ns != "" && name != "" && !strings.Contains(name, ":")
}

func firstExtra(extra map[string]authnv1.ExtraValue, key string) string {
	if v := extra[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// checkClaims refuses an AgentInfo that claims anything but the verified
// pod's workload, pod, container and ports.
func (id *agentIdentity) checkClaims(a *managerv1.AgentInfo) error {
	claimed := workloadRef{Namespace: a.GetNamespace(), Kind: a.GetKind(), Name: a.GetWorkload()}
	var bad []string
	if claimed != id.Workload {
		bad = append(bad, fmt.Sprintf("claims %s", claimed))
	}
	if a.GetPodName() != id.Pod {
		bad = append(bad, fmt.Sprintf("claims pod %s", a.GetPodName()))
	}
	if len(id.PodIPs) > 0 && !slices.Contains(id.PodIPs, a.GetPodIp()) {
		bad = append(bad, fmt.Sprintf("claims pod IP %s, the pod has %v", a.GetPodIp(), id.PodIPs))
	}
	if a.GetContainer() != id.Container {
		bad = append(bad, fmt.Sprintf("claims container %q, the webhook gave it %q", a.GetContainer(), id.Container))
	}
	if !sameAgentPorts(a.GetPorts(), id.Ports) {
		bad = append(bad, "claims other ports than the webhook gave it")
	}
	if !sameAgentMounts(a.GetMounts(), id.Mounts) {
		bad = append(bad, "claims other volume mounts than the webhook gave it")
	}
	if len(bad) > 0 {
		return status.Errorf(codes.PermissionDenied, "the agent of %s %s", id, strings.Join(bad, ", "))
	}
	return nil
}

func sameAgentPorts(claimed []*managerv1.AgentPort, given []tpagent.Port) bool {
	if len(claimed) != len(given) {
		return false
	}
	for _, c := range claimed {
		if !slices.ContainsFunc(given, func(g tpagent.Port) bool {
			return g.ContainerPort == c.GetContainerPort() && g.AgentPort == c.GetAgentPort() && g.Name == c.GetContainerPortName()
		}) {
			return false
		}
	}
	return true
}

// agentServer is the Manager API on the agent port: the RPCs traffic-agents
// call, for verified agents only, each bound to its pod. Everything else is
// Unimplemented there.
type agentServer struct {
	managerv1.UnimplementedManagerServer
	m *Manager
}

// agentCaller authenticates the caller of an RPC on the agent port (the
// interceptors did it already; the cache answers).
func (m *Manager) agentCaller(ctx context.Context) (*agentIdentity, error) {
	return m.agentAuth.authenticate(ctx)
}

// agentSessionOf returns the agent session id if it belongs to the caller.
func (m *Manager) agentSessionOf(ctx context.Context, id string) (session, error) {
	caller, err := m.agentCaller(ctx)
	if err != nil {
		return session{}, err
	}
	s, ok := m.sessions.get(id)
	if !ok {
		return session{}, status.Errorf(codes.NotFound, "session %q is unknown to the traffic-manager (expired or the manager restarted); arrive again", id)
	}
	if s.kind != agentSession || s.agentPod != caller.PodUID {
		m.log.Warn("agent refused: session of someone else", "caller", caller.String(), "session", s.id, "peer", peerAddr(ctx))
		return session{}, status.Errorf(codes.PermissionDenied, "session %q is not this agent's", id)
	}
	return s, nil
}

func (a agentServer) Version(ctx context.Context, r *managerv1.VersionRequest) (*managerv1.VersionResponse, error) {
	return a.m.Version(ctx, r)
}

func (a agentServer) ArriveAsAgent(ctx context.Context, info *managerv1.AgentInfo) (*managerv1.SessionInfo, error) {
	caller, err := a.m.agentCaller(ctx)
	if err != nil {
		return nil, err
	}
	return a.m.arriveAgent(ctx, caller, info)
}

func (a agentServer) Remain(ctx context.Context, r *managerv1.SessionRef) (*managerv1.RemainResponse, error) {
	if _, err := a.m.agentSessionOf(ctx, r.GetSessionId()); err != nil {
		return nil, err
	}
	if err := a.m.sessions.touch(r.GetSessionId()); err != nil {
		return nil, status.Error(codes.NotFound, err.Error())
	}
	return &managerv1.RemainResponse{}, nil
}

func (a agentServer) Depart(ctx context.Context, r *managerv1.SessionRef) (*managerv1.DepartResponse, error) {
	if _, err := a.m.agentSessionOf(ctx, r.GetSessionId()); err != nil {
		if status.Code(err) == codes.NotFound {
			return &managerv1.DepartResponse{}, nil
		}
		return nil, err
	}
	if s, ok := a.m.sessions.remove(r.GetSessionId()); ok {
		a.m.endSession(context.WithoutCancel(ctx), s, "departed")
	}
	return &managerv1.DepartResponse{}, nil
}

func (a agentServer) WatchIntercepts(ref *managerv1.SessionRef, stream grpc.ServerStreamingServer[managerv1.InterceptSnapshot]) error {
	if _, err := a.m.agentSessionOf(stream.Context(), ref.GetSessionId()); err != nil {
		return err
	}
	return a.m.watchIntercepts(ref, stream)
}

// authorizeAgentFlow is the agent tunnel's Authorizer: the session must be
// the calling agent's.
func (m *Manager) authorizeAgentFlow(ctx context.Context, sessionID string) error {
	_, err := m.agentSessionOf(ctx, sessionID)
	if status.Code(err) == codes.NotFound {
		return fmt.Errorf("%w: %s", tunnel.ErrUnknownSession, status.Convert(err).Message())
	}
	return err
}

// errAgentsDoNotDial: agents open paired flows only; the manager dials
// nothing on their behalf.
var errAgentsDoNotDial = errors.New("traffic-agents open paired flows only; the traffic-manager dials nothing for them")

func refuseAgentDial(context.Context, string, string) (net.Conn, error) {
	return nil, refused("%v", errAgentsDoNotDial)
}

// authenticateAgents are the agent server's interceptors: no RPC is served
// without a verified token, and every refusal is logged.
func (m *Manager) authenticateAgentUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if _, err := m.authenticateAgentRPC(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (m *Manager) authenticateAgentStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if _, err := m.authenticateAgentRPC(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}

func (m *Manager) authenticateAgentRPC(ctx context.Context, method string) (*agentIdentity, error) {
	id, err := m.agentCaller(ctx)
	if err != nil {
		lvl := slog.LevelWarn
		if status.Code(err) == codes.Unavailable {
			lvl = slog.LevelError
		}
		m.log.Log(ctx, lvl, "agent refused", "method", method, "peer", peerAddr(ctx), "err", status.Convert(err).Message())
	}
	return id, err
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

// agentListener serves the agent port.
type agentListener struct {
	srv *grpc.Server
	lis net.Listener
}

// listenAgents listens on the agent port with TLS from certs; nil (nothing
// to serve) when the manager has no certificate, as for the webhook.
func (m *Manager) listenAgents(certs *certFiles) (*agentListener, error) {
	if _, err := certs.load(); err != nil {
		m.log.Error("agent port disabled", "err", err)
		return nil, nil
	}
	lis, err := net.Listen("tcp", m.cfg.AgentAddr)
	if err != nil {
		return nil, fmt.Errorf("manager: listen %s: %w", m.cfg.AgentAddr, err)
	}
	tunnels, err := tunnel.NewServer(refuseAgentDial, m.authorizeAgentFlow, m.log.With("component", "tunnel", "peer", "agent"))
	if err != nil {
		lis.Close()
		return nil, err
	}
	tunnels.HandlePairing(m.pair)
	// Batched records: every intercepted byte crosses these connections.
	creds := tlsbatch.Wrap(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, GetCertificate: certs.get}))
	srv := grpc.NewServer(append(tunnel.ServerOptions(), grpc.Creds(creds), grpc.WriteBufferSize(tlsbatch.WriteBufferSize),
		grpc.UnaryInterceptor(m.authenticateAgentUnary), grpc.StreamInterceptor(m.authenticateAgentStream))...)
	managerv1.RegisterManagerServer(srv, agentServer{m: m})
	tunnels.Register(srv)
	m.log.Info("agent port serving", "addr", lis.Addr())
	return &agentListener{srv: srv, lis: lis}, nil
}

// serve serves until ctx ends; a nil agentListener returns at once.
func (l *agentListener) serve(ctx context.Context) error {
	if l == nil {
		return nil
	}
	stopped := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(stopped)
		// Watches end with their agents' sessions only: cut them after a while.
		t := time.AfterFunc(5*time.Second, l.srv.Stop)
		defer t.Stop()
		l.srv.GracefulStop()
	})
	err := l.srv.Serve(l.lis)
	if !stop() {
		<-stopped
	} else {
		l.srv.Stop()
	}
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("agent port: %w", err)
	}
	return nil
}

// agentManagerAddr is the address agents dial: the host their TLS checks
// the manager's certificate for, and the agent port.
func agentManagerAddr(namespace string) string {
	return fmt.Sprintf("traffic-manager.%s.svc:%d", namespace, AgentPort)
}
