package manager

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// DefaultAgentWait bounds how long CreateIntercept waits for an agent when
// the request has no deadline.
const DefaultAgentWait = 60 * time.Second

// CreateIntercept implements managerv1.ManagerServer (docs/intercepts.md).
func (m *Manager) CreateIntercept(ctx context.Context, req *managerv1.CreateInterceptRequest) (*managerv1.InterceptInfo, error) {
	sess, err := m.clientSession(req.GetSessionId())
	if err != nil {
		return nil, err
	}
	spec, err := normalizeSpec(req.GetSpec(), sess.client)
	if err != nil {
		return nil, err
	}
	if err := m.interceptable(spec.GetNamespace()); err != nil {
		return nil, err
	}
	if err := m.cannotInject(); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "the traffic-manager cannot inject agents: %v", err)
	}
	w, err := getWorkload(ctx, m.kube, spec.GetNamespace(), spec.GetWorkload())
	if errors.Is(err, errNoWorkload) {
		return nil, status.Error(codes.NotFound, err.Error())
	} else if err != nil {
		return nil, kubeStatus(err)
	}
	if w.controller != "" {
		return nil, status.Errorf(codes.FailedPrecondition, "ReplicaSet %s belongs to Deployment %s: intercept the Deployment", w.ref.Name, w.controller)
	}
	if w.optedOut() {
		return nil, status.Errorf(codes.FailedPrecondition, "%s opted out of intercepts with the annotation %s: \"false\"; remove the annotation to intercept it", w.ref, injectAnnotation)
	}
	user, err := m.grants.authorized(w, sess.id)
	if err != nil {
		m.log.Warn("intercept refused: not authorized", "name", spec.GetName(), "workload", w.ref.String(),
			"session", sess.id, "err", err)
		return nil, notAuthorizedStatus(err, fmt.Sprintf("intercept %s: %v", spec.GetName(), err))
	}
	// The grant is used: drop the annotation (a leftover one authorizes
	// nothing once its grant expires). The patch, an API round trip, runs
	// while the intercept is registered and the agent takes it; it is done
	// before this call patches the workload again and before it answers.
	clearing := make(chan struct{})
	go func() { // owned by this call: cleared waits for it
		defer close(clearing)
		clearAuthorization(context.WithoutCancel(ctx), m.kube, w.ref, w.annotations[authorizeAnnotation], m.log)
	}()
	cleared := func() { <-clearing }
	defer cleared()
	svcs, err := m.kube.CoreV1().Services(spec.GetNamespace()).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, kubeStatus(err)
	}
	tgt := target{container: spec.GetContainer()} // an ingest takes no port
	if !spec.GetIngest() {
		if tgt, err = resolveTarget(spec, w, svcs.Items); err != nil {
			return nil, err
		}
	} else if c := tgt.container; c != "" && containerIndex(w.template.Spec.Containers, c) < 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "%s has no container %s", w.ref, c)
	}
	// Refuse before labelling the workload: the webhook would not inject.
	if err := checkInjectable(&w.template.Spec, planPorts(&w.template.Spec, w.template.Labels, svcs.Items)); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "cannot intercept %s: %v", w.ref, err)
	}

	ic, created, err := m.registry.create(ctx, &intercept{
		ID: newSessionID(), Owner: sess.id, User: user.Username, Spec: spec, Workload: w.ref,
		Container: tgt.container, ServiceName: tgt.service, ServicePortName: tgt.portName,
		ServicePort: tgt.port, ContainerPort: tgt.containerPort, Created: time.Now(),
	})
	var conflict *conflictError
	if errors.As(err, &conflict) {
		return nil, m.conflictStatus(spec, w.ref, tgt, conflict)
	} else if errors.Is(err, errSessionEnded) {
		return nil, status.Errorf(codes.Aborted, "register intercept: %v", err)
	} else if err != nil {
		return nil, status.Errorf(codes.Internal, "register intercept: %v", err)
	}
	fail := func(err error) (*managerv1.InterceptInfo, error) {
		if created {
			_, _ = m.registry.remove(context.WithoutCancel(ctx), func(o *intercept) bool { return o.ID == ic.ID })
		}
		return nil, err
	}
	if created {
		m.log.Info("intercept created", "intercept", ic.ID, "name", spec.GetName(), "workload", w.ref.String(),
			"port", tgt.containerPort, "session", sess.id, "host", sess.client.GetHost(), "user", user.Username,
			"headers", spec.GetHeaders(), "ingest", spec.GetIngest())
	}

	// Enable the agent, or, if a manager of another version enabled it,
	// replace its pods to get this manager's agent (docs/manager.md).
	if !w.agentEnabled() || w.agentVersion() != m.cfg.Version {
		cleared()
		if err := setAgentLabel(ctx, m.kube, w.ref, true, m.cfg.Version); err != nil {
			return fail(kubeStatus(err))
		}
		if w.agentEnabled() {
			m.log.Info("agent of another version: replacing the pods", "workload", w.ref.String(),
				"agentVersion", w.agentVersion(), "version", m.cfg.Version)
		} else {
			m.log.Info("agent injection enabled", "workload", w.ref.String(), "version", m.cfg.Version)
		}
	}
	if w.manualRoll {
		m.rollouts.enqueue(w.ref)
	}
	r, err := m.awaitAgent(ctx, ic)
	if err != nil {
		return fail(err)
	}
	info := m.interceptInfo(ic, true)
	info.RoutedEndpoints, info.ReadyEndpoints = int32(r.routed), int32(r.ready)
	return info, nil
}

// normalizeSpec checks spec and fills in the defaults.
func normalizeSpec(in *managerv1.InterceptSpec, client *managerv1.ClientInfo) (*managerv1.InterceptSpec, error) {
	spec := proto.Clone(in).(*managerv1.InterceptSpec)
	if spec == nil {
		spec = &managerv1.InterceptSpec{}
	}
	if spec.GetWorkload() == "" {
		return nil, status.Error(codes.InvalidArgument, "intercept: no workload")
	}
	if spec.Namespace == "" {
		spec.Namespace = client.GetNamespace()
	}
	if spec.Namespace == "" {
		spec.Namespace = metav1.NamespaceDefault
	}
	if spec.Name == "" {
		spec.Name = spec.Workload
	}
	if spec.GetIngest() {
		if spec.GetService() != "" || spec.GetServicePort() != "" || spec.GetLocalPort() != 0 || len(spec.GetHeaders()) > 0 || spec.GetPathPrefix() != "" {
			return nil, status.Errorf(codes.InvalidArgument, "ingest %s: an ingest takes no traffic; give no service, service port, local port, headers or path prefix", spec.Name)
		}
		return spec, nil
	}
	if p := spec.GetLocalPort(); p <= 0 || p > 65535 {
		return nil, status.Errorf(codes.InvalidArgument, "intercept %s: local port %d out of range 1-65535", spec.Name, p)
	}
	for k, v := range spec.GetHeaders() {
		if k == "" || strings.ContainsAny(k, " :\t\r\n") {
			return nil, status.Errorf(codes.InvalidArgument, "intercept %s: invalid header name %q", spec.Name, k)
		}
		// Spaces and tabs around a field value are not part of it (RFC 9110
		// 5.5): the agent matches without them, so conflicts compare so too.
		spec.Headers[k] = strings.Trim(v, " \t")
	}
	if p := spec.GetPathPrefix(); p != "" && !strings.HasPrefix(p, "/") {
		return nil, status.Errorf(codes.InvalidArgument, "intercept %s: path prefix %q must start with /", spec.Name, p)
	}
	return spec, nil
}

// target is the port an intercept takes over.
type target struct {
	service, portName string
	port              int32
	containerPort     int32
	container         string
}

// preferredService picks among several services selecting a workload the one
// the user most likely means: the only one with the requested port (name or
// number), else the only non-headless one among those. Nil when that still
// leaves a choice.
func preferredService(selecting []corev1.Service, port string) *corev1.Service {
	var withPort []*corev1.Service
	for i := range selecting {
		for _, p := range selecting[i].Spec.Ports {
			if port == "" || p.Name == port || strconv.Itoa(int(p.Port)) == port {
				withPort = append(withPort, &selecting[i])
				break
			}
		}
	}
	if len(withPort) == 1 {
		return withPort[0]
	}
	var clusterIP []*corev1.Service
	for _, s := range withPort {
		if s.Spec.ClusterIP != corev1.ClusterIPNone {
			clusterIP = append(clusterIP, s)
		}
	}
	if len(clusterIP) == 1 {
		return clusterIP[0]
	}
	return nil
}

// resolveTarget finds the service, service port and container port an
// intercept of w means: spec's choices, or the only one.
func resolveTarget(spec *managerv1.InterceptSpec, w *workload, services []corev1.Service) (target, error) {
	selecting := selectingServices(services, w.template.Labels)
	names := make([]string, len(selecting))
	for i, s := range selecting {
		names[i] = s.Name
	}
	var svc *corev1.Service
	switch {
	case len(selecting) == 0:
		return target{}, status.Errorf(codes.FailedPrecondition, "no service selects the pods of %s: tp intercepts the traffic of a service; create one", w.ref)
	case spec.GetService() != "":
		i := slices.Index(names, spec.GetService())
		if i < 0 {
			return target{}, status.Errorf(codes.FailedPrecondition, "service %s does not select the pods of %s; services that do: %s",
				spec.GetService(), w.ref, strings.Join(names, ", "))
		}
		svc = &selecting[i]
	case len(selecting) > 1:
		svc = preferredService(selecting, spec.GetServicePort())
		if svc == nil {
			return target{}, status.Errorf(codes.FailedPrecondition, "several services select the pods of %s: %s; choose one (--service)",
				w.ref, strings.Join(names, ", "))
		}
	default:
		svc = &selecting[0]
	}

	var sp *corev1.ServicePort
	var portNames []string
	for i, p := range svc.Spec.Ports {
		portNames = append(portNames, servicePortString(p))
		want := spec.GetServicePort()
		if want != "" && (p.Name == want || strconv.Itoa(int(p.Port)) == want) {
			sp = &svc.Spec.Ports[i]
		}
	}
	switch {
	case spec.GetServicePort() != "" && sp == nil:
		return target{}, status.Errorf(codes.FailedPrecondition, "service %s has no port %s; its ports: %s",
			svc.Name, spec.GetServicePort(), strings.Join(portNames, ", "))
	case sp == nil && len(svc.Spec.Ports) != 1:
		return target{}, status.Errorf(codes.FailedPrecondition, "service %s has several ports: %s; choose one (--port)",
			svc.Name, strings.Join(portNames, ", "))
	case sp == nil:
		sp = &svc.Spec.Ports[0]
	}
	if !isTCP(sp.Protocol) {
		return target{}, status.Errorf(codes.FailedPrecondition, "port %s of service %s is %s; tp intercepts TCP only",
			servicePortString(*sp), svc.Name, sp.Protocol)
	}

	for _, p := range planPorts(&w.template.Spec, w.template.Labels, services) {
		for _, ref := range p.refs {
			if ref.service != svc.Name || ref.port != sp.Port {
				continue
			}
			container := p.container
			if c := spec.GetContainer(); c != "" && c != container {
				if containerIndex(w.template.Spec.Containers, c) < 0 {
					return target{}, status.Errorf(codes.FailedPrecondition, "%s has no container %s", w.ref, c)
				}
				if p.Name != "" || declaresPort(w.template.Spec.Containers, p.ContainerPort) {
					return target{}, status.Errorf(codes.FailedPrecondition, "port %s of service %s targets container %s, not %s",
						servicePortString(*sp), svc.Name, container, c)
				}
				container = c
			}
			return target{service: svc.Name, portName: sp.Name, port: sp.Port, containerPort: p.ContainerPort, container: container}, nil
		}
	}
	return target{}, status.Errorf(codes.FailedPrecondition, "port %s of service %s targets %s, which no container of %s declares",
		servicePortString(*sp), svc.Name, sp.TargetPort.String(), w.ref)
}

func declaresPort(cs []corev1.Container, port int32) bool {
	for _, c := range cs {
		for _, p := range c.Ports {
			if p.ContainerPort == port {
				return true
			}
		}
	}
	return false
}

func servicePortString(p corev1.ServicePort) string {
	if p.Name != "" {
		return fmt.Sprintf("%s (%d)", p.Name, p.Port)
	}
	return strconv.Itoa(int(p.Port))
}

// conflictStatus is the AlreadyExists status for a refused intercept, naming
// the owner of the one it conflicts with. The holder's InterceptInfo travels
// as a detail.
func (m *Manager) conflictStatus(spec *managerv1.InterceptSpec, ref workloadRef, tgt target, c *conflictError) error {
	holder := m.interceptInfo(c.Holder, false)
	var msg string
	if c.Same {
		msg = fmt.Sprintf("you already have an intercept %s in namespace %s (of %s); remove it first (tp leave %s)",
			spec.GetName(), spec.GetNamespace(), c.Holder.Workload, spec.GetName())
	} else {
		kind, advice := "a global intercept", "ask them to leave it"
		if !c.Holder.global() {
			kind, advice = "a personal intercept with the same headers", "choose other headers"
		} else if spec.GetHeaders() != nil {
			advice = "ask them to leave it; personal intercepts cannot share a port with a global one"
		}
		msg = fmt.Sprintf("port %d of %s is already intercepted by %s: intercept %s (%s), last seen %s; %s",
			tgt.containerPort, ref, ownerString(holder), c.Holder.Spec.GetName(), kind, lastSeenString(holder), advice)
	}
	st := status.New(codes.AlreadyExists, msg)
	if d, err := st.WithDetails(holder); err == nil {
		st = d
	}
	return st.Err()
}

func ownerString(ic *managerv1.InterceptInfo) string {
	o := ic.GetOwner()
	if o == nil {
		return "a session that ended"
	}
	return fmt.Sprintf("%s on host %s (connection %s)", orUnknown(o.GetUser()), orUnknown(o.GetHost()), orUnknown(o.GetName()))
}

func lastSeenString(ic *managerv1.InterceptInfo) string {
	if ic.GetOwnerLastSeen() == nil {
		return "never"
	}
	t := ic.GetOwnerLastSeen().AsTime()
	return fmt.Sprintf("%s ago (%s)", time.Since(t).Round(time.Second), t.UTC().Format(time.RFC3339))
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// awaitAgent waits until an agent of ic's workload serving its port has
// arrived and every ready endpoint of ic's service is a pod whose agent has
// applied ic (RoutesApplied): until ctx's deadline (a little before, to
// answer in time), or AgentWait when ctx has none. Old pods without the
// agent still being ready (a rollout in progress) mean waiting. When the
// time is up with an agent there, it returns how many endpoints route to ic,
// without an error: the caller says so.
func (m *Manager) awaitAgent(ctx context.Context, ic *intercept) (routing, error) {
	wait := m.cfg.AgentWait
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		wait = left - min(2*time.Second, left/10)
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	endpoints := &endpointWatch{m: m, ns: ic.Workload.Namespace, svc: ic.ServiceName}
	defer endpoints.stop()
	ingest := ic.Spec.GetIngest()
	if !ingest { // an ingest routes nothing: an arrived agent is enough
		if err := endpoints.start(ctx); err != nil {
			return routing{}, kubeStatus(err)
		}
	}
	for {
		changed, acked := m.changes.wait(), m.applied.changes.wait()
		_, arrived := m.agentOf(ic)
		var r routing
		if arrived && ingest {
			return routing{}, nil
		}
		if arrived {
			var err error
			if r, err = m.routing(ctx, ic); err != nil {
				return routing{}, kubeStatus(err)
			}
			if r.complete() {
				return r, nil
			}
		}
		if _, ok := m.sessions.byPublic(ic.Owner); !ok {
			return routing{}, status.Errorf(codes.Aborted, "session %s ended while waiting for the agent", ic.Owner)
		}
		if _, ok := m.registry.get(ctx, ic.ID); !ok {
			return routing{}, status.Errorf(codes.Aborted, "intercept %s was removed while waiting for the agent", ic.Spec.GetName())
		}
		select {
		case <-ctx.Done():
			return routing{}, status.FromContextError(ctx.Err()).Err()
		case <-timer.C:
			if arrived {
				m.log.Warn("intercept answered before all endpoints route to it", "intercept", ic.ID, "name", ic.Spec.GetName(),
					"workload", ic.Workload.String(), "service", ic.ServiceName, "routed", r.routed, "ready", r.ready, "waited", wait)
				return r, nil
			}
			return routing{}, status.Errorf(codes.DeadlineExceeded, "no traffic-agent of %s arrived within %s: %s",
				ic.Workload, wait.Round(time.Second), m.diagnoseAgents(context.WithoutCancel(ctx), ic))
		case <-changed:
		case <-acked:
		case _, ok := <-endpoints.events():
			if !ok && !ingest {
				if err := endpoints.start(ctx); err != nil {
					return routing{}, kubeStatus(err)
				}
			}
		}
	}
}

// diagnoseAgents says why no agent serves ic's port, as far as it can tell.
func (m *Manager) diagnoseAgents(ctx context.Context, ic *intercept) string {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if len(m.agentsOf(ic.Workload)) > 0 {
		return fmt.Sprintf("its agents do not take over container port %d (the service changed after they started); "+
			"run `tp uninstall %s` and intercept again", ic.ContainerPort, ic.Workload.Name)
	}
	w, err := getWorkload(ctx, m.kube, ic.Workload.Namespace, ic.Workload.Name)
	if err != nil {
		return err.Error()
	}
	var hints []string
	if ic.Workload.Kind == kindDeployment {
		if d, err := m.kube.AppsV1().Deployments(w.ref.Namespace).Get(ctx, w.ref.Name, metav1.GetOptions{}); err == nil {
			for _, c := range d.Status.Conditions {
				if c.Type == appsv1.DeploymentReplicaFailure && c.Status == corev1.ConditionTrue {
					hints = append(hints, "the Deployment cannot create pods: "+c.Message)
				}
			}
		}
	}
	pods, err := m.rollouts.pods(ctx, w)
	if err != nil {
		return strings.Join(append(hints, err.Error()), "; ")
	}
	withAgent, ready := 0, 0
	var missed []string
	for _, p := range pods {
		if p.DeletionTimestamp != nil {
			continue
		}
		if hasAgent(&p) {
			withAgent++
			if podReady(&p) {
				ready++
			}
		} else if p.Labels[agentLabel] == agentLabelEnabled {
			missed = append(missed, p.Name)
		}
	}
	hints = append(hints, fmt.Sprintf("%d pods, %d with the agent, %d of them ready", len(pods), withAgent, ready))
	if len(missed) > 0 {
		hints = append(hints, fmt.Sprintf("the injection webhook did not inject pods %s (see the events of the pods and the traffic-manager's log; "+
			"the API server must reach port 443 of service traffic-manager in namespace %s)", strings.Join(missed, ", "), m.cfg.Namespace))
	}
	if withAgent > 0 && ready == 0 {
		hints = append(hints, "pods with the agent are not ready yet: see `kubectl describe pod` and the tp-agent container's log")
	}
	return strings.Join(hints, "; ")
}

// agentsOf returns the live agent sessions of a workload, oldest first.
func (m *Manager) agentsOf(ref workloadRef) []session {
	var out []session
	for _, s := range m.sessions.list(agentSession) {
		a := s.agent
		if a.GetNamespace() == ref.Namespace && a.GetKind() == ref.Kind && a.GetWorkload() == ref.Name {
			out = append(out, s)
		}
	}
	return out
}

// agentServing returns the oldest agent of ref that takes over containerPort.
func (m *Manager) agentServing(ref workloadRef, containerPort int32) (session, bool) {
	for _, s := range m.agentsOf(ref) {
		for _, p := range s.agent.GetPorts() {
			if p.GetContainerPort() == containerPort {
				return s, true
			}
		}
	}
	return session{}, false
}

// agentOf is the agent whose pod's environment and mounts ic's owner gets:
// the one serving ic's port, or for an ingest (no port) the first arrived
// agent of the workload.
func (m *Manager) agentOf(ic *intercept) (session, bool) {
	if !ic.Spec.GetIngest() {
		return m.agentServing(ic.Workload, ic.ContainerPort)
	}
	if agents := m.agentsOf(ic.Workload); len(agents) > 0 {
		return agents[0], true
	}
	return session{}, false
}

// interceptInfo describes ic; withEnv adds the environment and the volume
// mounts of the pod whose agent serves it, which are for the intercept's
// owner only. The owner's
// session is named by its public id, and the owner's user is the one the API
// server authenticated (ClientInfo.User is only what the client said).
func (m *Manager) interceptInfo(ic *intercept, withEnv bool) *managerv1.InterceptInfo {
	info := &managerv1.InterceptInfo{
		Id: ic.ID, Spec: ic.Spec, SessionId: ic.Owner, State: managerv1.InterceptState_INTERCEPT_STATE_WAITING,
		ServiceName: ic.ServiceName, ServicePortName: ic.ServicePortName, ServicePort: ic.ServicePort,
		ContainerPort: ic.ContainerPort, OwnerConnected: m.ownerConnected(ic.Owner),
	}
	if owner, ok := m.sessions.byPublic(ic.Owner); ok {
		info.Owner = proto.Clone(owner.client).(*managerv1.ClientInfo)
		if ic.User != "" {
			info.Owner.User = ic.User
		}
		info.OwnerLastSeen = timestamppb.New(owner.lastSeen)
	}
	if a, ok := m.agentOf(ic); ok {
		info.State = managerv1.InterceptState_INTERCEPT_STATE_ACTIVE
		info.PodName, info.PodIp = a.agent.GetPodName(), a.agent.GetPodIp()
		if withEnv {
			info.Environment = appEnvironment(a.agent.GetEnvironment())
			info.Mounts = interceptMounts(a.agent)
		}
	}
	return info
}

// appEnvironment drops the agent's own variables from env.
func appEnvironment(env map[string]string) map[string]string {
	out := make(map[string]string, len(env))
	for k, v := range env {
		if !strings.HasPrefix(k, "TP_AGENT_") && !strings.HasPrefix(k, "TP_MANAGER_") {
			out[k] = v
		}
	}
	return out
}

// RemoveIntercept implements managerv1.ManagerServer.
func (m *Manager) RemoveIntercept(ctx context.Context, req *managerv1.RemoveInterceptRequest) (*managerv1.RemoveInterceptResponse, error) {
	sess, err := m.clientSession(req.GetSessionId())
	if err != nil {
		return nil, err
	}
	ns := req.GetNamespace()
	if ns == "" {
		ns = sess.client.GetNamespace()
	}
	if ns == "" {
		ns = metav1.NamespaceDefault
	}
	if req.GetForce() {
		return m.removeByForce(ctx, sess, req.GetName(), ns)
	}
	gone, err := m.registry.remove(ctx, func(ic *intercept) bool {
		return ic.Owner == sess.id && ic.Spec.GetName() == req.GetName() && ic.Spec.GetNamespace() == ns
	})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "remove intercept: %v", err)
	}
	if len(gone) == 0 {
		return nil, status.Errorf(codes.NotFound, "you have no intercept %s in namespace %s", req.GetName(), ns)
	}
	m.log.Info("intercept removed", "intercept", gone[0].ID, "name", req.GetName(), "namespace", ns, "session", sess.id)
	return &managerv1.RemoveInterceptResponse{}, nil
}

// removeByForce ends every intercept named name in namespace ns, whoever
// holds it (a teammate's stale intercept), once the caller has authorized on
// each intercepted workload with the user's own credentials: whoever may patch
// a workload may take it back.
func (m *Manager) removeByForce(ctx context.Context, sess session, name, ns string) (*managerv1.RemoveInterceptResponse, error) {
	ics, err := m.registry.list(ctx, func(ic *intercept) bool { return ic.Spec.GetName() == name && ic.Spec.GetNamespace() == ns })
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list intercepts: %v", err)
	}
	if len(ics) == 0 {
		return nil, status.Errorf(codes.NotFound, "no intercept %s in namespace %s", name, ns)
	}
	users := map[workloadRef]string{}
	for _, ic := range ics {
		if _, ok := users[ic.Workload]; ok {
			continue
		}
		w, err := getWorkload(ctx, m.kube, ic.Workload.Namespace, ic.Workload.Name)
		if err != nil {
			return nil, kubeStatus(err)
		}
		user, err := m.grants.authorized(w, sess.id)
		if err != nil {
			return nil, notAuthorizedStatus(err, fmt.Sprintf("end intercept %s by force: %v", name, err))
		}
		clearAuthorization(context.WithoutCancel(ctx), m.kube, w.ref, w.annotations[authorizeAnnotation], m.log)
		users[ic.Workload] = user.Username
	}
	ids := map[string]bool{}
	for _, ic := range ics {
		ids[ic.ID] = true
	}
	gone, err := m.registry.remove(ctx, func(ic *intercept) bool { return ids[ic.ID] })
	if err != nil {
		return nil, status.Errorf(codes.Internal, "remove intercept: %v", err)
	}
	for _, ic := range gone {
		m.log.Info("intercept ended by force", "intercept", ic.ID, "name", name, "workload", ic.Workload.String(),
			"owner", ic.User, "ownerSession", ic.Owner, "by", users[ic.Workload], "session", sess.id)
	}
	return &managerv1.RemoveInterceptResponse{}, nil
}

// ListWorkloads implements managerv1.ManagerServer.
func (m *Manager) ListWorkloads(ctx context.Context, req *managerv1.ListWorkloadsRequest) (*managerv1.ListWorkloadsResponse, error) {
	resp := &managerv1.ListWorkloadsResponse{}
	ics, err := m.registry.list(ctx, nil)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list intercepts: %v", err)
	}
	for _, ns := range m.namespacesFor(req.GetNamespace()) {
		ws, err := listWorkloads(ctx, m.kube, ns)
		if err != nil {
			return nil, kubeStatus(err)
		}
		svcs, err := m.kube.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, kubeStatus(err)
		}
		for _, w := range ws {
			info := &managerv1.WorkloadInfo{
				Name: w.ref.Name, Namespace: w.ref.Namespace, Kind: w.ref.Kind,
				AgentInstalled: w.agentEnabled(),
				OptedOut:       w.optedOut() || m.interceptable(w.ref.Namespace) != nil,
			}
			for _, s := range svcs.Items {
				if s.Namespace == w.ref.Namespace && len(selectingServices([]corev1.Service{s}, w.template.Labels)) == 1 {
					info.Services = append(info.Services, s.Name)
				}
			}
			slices.Sort(info.Services)
			for _, ic := range ics {
				if ic.Workload == w.ref {
					// Never the environment: it holds the app's Secrets and is
					// for the intercept's owner only (CreateIntercept returns it).
					info.Intercepts = append(info.Intercepts, m.interceptInfo(ic, false))
				}
			}
			resp.Workloads = append(resp.Workloads, info)
		}
	}
	return resp, nil
}

// UninstallAgents implements managerv1.ManagerServer. The client has
// already removed the agent label from the workloads' pod templates with the
// user's own credentials (kube.RestoreWorkloads), so the API server decided
// whether the user may. The manager only follows what is in the cluster: it
// ends the intercepts of the workloads whose template no longer asks for the
// agent and replaces the pods that no controller replaces. Whoever asks can
// make it undo nothing but an injection that is gone already.
func (m *Manager) UninstallAgents(ctx context.Context, req *managerv1.UninstallAgentsRequest) (*managerv1.UninstallAgentsResponse, error) {
	if !req.GetAll() && len(req.GetWorkloads()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "uninstall agents: name workloads or ask for all")
	}
	if !req.GetAll() && req.GetNamespace() == "" {
		return nil, status.Error(codes.InvalidArgument, "uninstall agents: workloads need a namespace")
	}
	var targets []*workload
	found := map[string]bool{}
	for _, ns := range m.namespacesFor(req.GetNamespace()) {
		ws, err := listWorkloads(ctx, m.kube, ns)
		if err != nil {
			return nil, kubeStatus(err)
		}
		for _, w := range ws {
			if !req.GetAll() && !slices.Contains(req.GetWorkloads(), w.ref.Name) {
				continue
			}
			found[w.ref.Name] = true
			if w.agentEnabled() {
				if !req.GetAll() {
					return nil, status.Errorf(codes.FailedPrecondition, "%s still asks for the traffic-agent (label %s on its pod template): "+
						"remove the label with your own credentials (`tp uninstall --agent %s` does)", w.ref, agentLabel, w.ref.Name)
				}
				continue
			}
			targets = append(targets, w)
		}
	}
	if !req.GetAll() {
		var missing []string
		for _, name := range req.GetWorkloads() {
			if !found[name] {
				missing = append(missing, name)
			}
		}
		if len(missing) > 0 {
			return nil, status.Errorf(codes.NotFound, "no Deployment, StatefulSet or ReplicaSet %s in namespace %s",
				strings.Join(missing, ", "), req.GetNamespace())
		}
	}
	resp := &managerv1.UninstallAgentsResponse{}
	for _, w := range targets {
		gone, err := m.registry.remove(ctx, func(ic *intercept) bool { return ic.Workload == w.ref })
		if err != nil {
			return nil, status.Errorf(codes.Internal, "remove intercepts: %v", err)
		}
		for _, ic := range gone {
			m.log.Info("intercept ended by uninstall", "intercept", ic.ID, "name", ic.Spec.GetName(), "workload", w.ref.String())
		}
		if w.manualRoll {
			m.rollouts.enqueue(w.ref)
		}
		if len(gone) > 0 || w.manualRoll {
			resp.Restored = append(resp.Restored, fmt.Sprintf("%s/%s/%s", w.ref.Namespace, strings.ToLower(w.ref.Kind), w.ref.Name))
		}
	}
	return resp, nil
}

// interceptable refuses namespaces the webhook does not serve: the manager's
// own, kube-system, and with managed namespaces all others.
func (m *Manager) interceptable(ns string) error {
	switch {
	case ns == m.cfg.Namespace:
		return status.Errorf(codes.FailedPrecondition, "namespace %s holds the traffic-manager; tp does not intercept there", ns)
	case ns == metav1.NamespaceSystem:
		return status.Errorf(codes.FailedPrecondition, "tp does not intercept in namespace %s", ns)
	case len(m.cfg.ManagedNamespaces) > 0 && !slices.Contains(m.cfg.ManagedNamespaces, ns):
		return status.Errorf(codes.PermissionDenied, "the traffic-manager in namespace %s manages only namespaces %s; "+
			"add %s to rbac.managedNamespaces (tp helm upgrade --set ...)", m.cfg.Namespace, strings.Join(m.cfg.ManagedNamespaces, ", "), ns)
	}
	return nil
}

// namespacesFor is the namespaces a request for ns covers: ns, or all that
// the manager may see.
func (m *Manager) namespacesFor(ns string) []string {
	switch {
	case ns != "":
		return []string{ns}
	case len(m.cfg.ManagedNamespaces) > 0:
		return m.cfg.ManagedNamespaces
	default:
		return []string{metav1.NamespaceAll}
	}
}

// clientSession returns the live client session id.
func (m *Manager) clientSession(id string) (session, error) {
	s, ok := m.sessions.get(id)
	switch {
	case !ok:
		return session{}, status.Errorf(codes.NotFound, "session %q is unknown to the traffic-manager (expired or the manager restarted); reconnect", id)
	case s.kind != clientSession:
		return session{}, status.Errorf(codes.PermissionDenied, "session %q is a traffic-agent's, not a client's", id)
	}
	return s, nil
}

// snapshot is what the agents of ref route: the intercepts of the workload.
func (m *Manager) snapshot(ctx context.Context, ref workloadRef) (*managerv1.InterceptSnapshot, error) {
	ics, err := m.registry.list(ctx, func(ic *intercept) bool { return ic.Workload == ref })
	if err != nil {
		return nil, err
	}
	snap := &managerv1.InterceptSnapshot{}
	for _, ic := range ics {
		info := m.interceptInfo(ic, false)
		info.OwnerLastSeen = nil // changes all the time; agents do not need it
		snap.Intercepts = append(snap.Intercepts, info)
	}
	return snap, nil
}
