package manager

import (
	"sort"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tp-run/tp/agent"
	"github.com/tp-run/tp/internal/kube"
)

// Labels and annotations of the intercept contract (docs/intercepts.md).
const (
	// agentLabel on a pod template enables the injection webhook for its pods.
	agentLabel        = kube.AgentLabel
	agentLabelEnabled = "enabled"
	// agentVersionAnnotation on a pod template with agentLabel is the
	// version of the manager that set it, so of the agent its pods get.
	agentVersionAnnotation = kube.AgentVersionAnnotation
	// injectAnnotation "false" on a workload refuses intercepts.
	injectAnnotation = "tp.run/inject"
	// injectedAnnotation marks a pod the webhook injected.
	injectedAnnotation = "tp.run/agent-injected"
)

// agentPort is a port the agent takes over. Its JSON form, an entry of
// TP_AGENT_PORTS, is the agent's own type, so the webhook and the agent cannot
// disagree on it.
type agentPort struct {
	agent.Port

	// container that declares the port (the first container when none does).
	container string
	// refs are the service ports targeting it.
	refs []servicePortRef
}

// servicePortRef names a port of a service.
type servicePortRef struct {
	service string
	name    string
	port    int32
}

// selectingServices returns the services (sorted by name) whose selector
// matches podLabels.
func selectingServices(services []corev1.Service, podLabels map[string]string) []corev1.Service {
	var out []corev1.Service
	for _, svc := range services {
		if len(svc.Spec.Selector) == 0 || svc.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		if labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(podLabels)) {
			out = append(out, svc)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// planPorts decides which ports of a pod the agent takes over: every TCP port
// of a service selecting the pod (services by name, ports in order) whose
// target is a container port of the pod. A port behind several service ports
// is taken over once; it is redirected if any of them needs it (a numeric
// target or a headless service), renamed otherwise. The manager (resolving an
// intercept from a pod template) and the webhook (injecting a pod) agree
// because both call planPorts.
func planPorts(spec *corev1.PodSpec, podLabels map[string]string, services []corev1.Service) []agentPort {
	if len(spec.Containers) == 0 {
		return nil
	}
	var plan []agentPort
	index := map[int32]int{} // container port -> index in plan
	for _, svc := range selectingServices(services, podLabels) {
		headless := svc.Spec.ClusterIP == corev1.ClusterIPNone
		for _, sp := range svc.Spec.Ports {
			if !isTCP(sp.Protocol) {
				continue
			}
			p, ok := targetOf(spec, sp)
			if !ok {
				continue
			}
			if headless {
				p.Mechanism = agent.MechanismRedirect
			}
			ref := servicePortRef{service: svc.Name, name: sp.Name, port: sp.Port}
			if i, seen := index[p.ContainerPort]; seen {
				if p.Mechanism == agent.MechanismRedirect {
					plan[i].Mechanism = agent.MechanismRedirect
				}
				plan[i].refs = append(plan[i].refs, ref)
				continue
			}
			p.AgentPort = agent.FirstAgentPort + int32(len(plan))
			p.Protocol = string(corev1.ProtocolTCP)
			p.refs = []servicePortRef{ref}
			index[p.ContainerPort] = len(plan)
			plan = append(plan, p)
		}
	}
	return plan
}

// targetOf resolves a service port's target in a pod: a named target must be
// a TCP port of a container; a numeric one is taken over even when no
// container declares it (containerPort is informational).
func targetOf(spec *corev1.PodSpec, sp corev1.ServicePort) (agentPort, bool) {
	tp := sp.TargetPort
	if tp.Type == intstr.String && tp.StrVal != "" {
		for _, c := range spec.Containers {
			for _, cp := range c.Ports {
				if cp.Name == tp.StrVal && isTCP(cp.Protocol) {
					return agentPort{Port: agent.Port{Name: cp.Name, ContainerPort: cp.ContainerPort, Mechanism: agent.MechanismRename}, container: c.Name}, true
				}
			}
		}
		return agentPort{}, false
	}
	num := tp.IntVal
	if tp.Type == intstr.String || num == 0 {
		num = sp.Port
	}
	for _, c := range spec.Containers {
		for _, cp := range c.Ports {
			if cp.ContainerPort == num && isTCP(cp.Protocol) {
				return agentPort{Port: agent.Port{Name: cp.Name, ContainerPort: num, Mechanism: agent.MechanismRedirect}, container: c.Name}, true
			}
		}
	}
	return agentPort{Port: agent.Port{ContainerPort: num, Mechanism: agent.MechanismRedirect}, container: spec.Containers[0].Name}, true
}

func isTCP(p corev1.Protocol) bool { return p == "" || p == corev1.ProtocolTCP }
