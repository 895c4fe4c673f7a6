package manager

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"reflect"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"

	tpagent "github.com/tp-run/tp/agent"
)

// Names and ports of what the webhook injects.
const (
	agentContainerName     = "tp-agent"
	agentInitContainerName = "tp-agent-init"
	agentHealthPort        = 9898
	agentUID               = 65532
	// agentTokenVolume is the projected ServiceAccount token (audience tp)
	// the agent authenticates with; mounted read-only into tp-agent only.
	agentTokenVolume = "tp-agent-token"
	// agentTokenSeconds is the token's lifetime (the API's minimum); the
	// kubelet renews it after 80 % of that.
	agentTokenSeconds = 600
)

// agentSpec is what the webhook needs besides the pod to inject an agent.
type agentSpec struct {
	// image of the agent: the manager's own.
	image      string
	pullPolicy corev1.PullPolicy
	// managerAddr is host:port of the manager's agent port.
	managerAddr string
	// managerCA is the PEM CA bundle of the manager's certificate.
	managerCA []byte
}

// errNothingToIntercept: no service selecting the pod targets a TCP port of it.
var errNothingToIntercept = errors.New("no service selecting the pod targets a TCP port of it")

// errNotInjectable wraps why a pod cannot get the traffic-agent.
var errNotInjectable = errors.New("the traffic-agent cannot be added")

// checkInjectable refuses pods the agent would break or could not serve: a
// pod on the node's network (hostNetwork), where the agent's ports and the
// init container's nftables redirect would act on the node itself, and a pod
// whose containers already use a port of the agent (its ports 9900, 9901,
// ... as plan numbers them, and its health port 9898). The error says why
// and what to do. CreateIntercept checks the pod template with it before it
// labels the workload, and injectAgent every pod.
func checkInjectable(spec *corev1.PodSpec, plan []agentPort) error {
	if spec.HostNetwork {
		return fmt.Errorf("%w: the pod uses the node's network (hostNetwork: true), where the agent's ports and its "+
			"traffic redirect would act on the node itself; tp intercepts only pods with their own network, "+
			"so remove hostNetwork from the pod template to intercept it", errNotInjectable)
	}
	used := map[int32]string{agentHealthPort: "health port"}
	for _, p := range plan {
		used[p.AgentPort] = "port"
	}
	last := int32(tpagent.FirstAgentPort + len(plan) - 1)
	ports := fmt.Sprintf("%d-%d and %d", tpagent.FirstAgentPort, last, agentHealthPort)
	if len(plan) <= 1 {
		ports = fmt.Sprintf("%d and %d", tpagent.FirstAgentPort, agentHealthPort)
	}
	clash := func(container string, port int32) error {
		return fmt.Errorf("%w: container %s uses port %d, the traffic-agent's %s (the agent listens on %s in the pod); "+
			"move the container to another port to intercept it", errNotInjectable, container, port, used[port], ports)
	}
	for _, cs := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
		for _, c := range cs {
			for _, cp := range c.Ports {
				if _, ok := used[cp.ContainerPort]; ok && c.Name != agentContainerName {
					return clash(c.Name, cp.ContainerPort)
				}
			}
		}
	}
	for _, p := range plan {
		if _, ok := used[p.ContainerPort]; ok {
			return clash(p.container, p.ContainerPort)
		}
	}
	return nil
}

// injectAgent adds the traffic-agent to pod, which belongs to wl and whose
// ports are taken over as plan says (see planPorts and docs/intercepts.md).
func injectAgent(pod *corev1.Pod, wl workloadRef, plan []agentPort, spec agentSpec) error {
	if len(plan) == 0 {
		return errNothingToIntercept
	}
	if err := checkInjectable(&pod.Spec, plan); err != nil {
		return err
	}
	for _, v := range pod.Spec.Volumes {
		if v.Name == agentTokenVolume {
			return fmt.Errorf("the pod has a volume named %s already", agentTokenVolume)
		}
	}
	app := containerIndex(pod.Spec.Containers, plan[0].container)
	if app < 0 {
		return fmt.Errorf("no container %q in the pod", plan[0].container)
	}
	wire := make([]tpagent.Port, len(plan))
	for i, p := range plan {
		wire[i] = p.Port
	}
	portsJSON, err := json.Marshal(wire)
	if err != nil {
		return err
	}
	exports, mounts := exportMounts(pod.Spec.Volumes, &pod.Spec.Containers[app])
	mountsJSON, err := json.Marshal(mounts)
	if err != nil {
		return err
	}

	agent := corev1.Container{
		Name:            agentContainerName,
		Image:           spec.image,
		ImagePullPolicy: spec.pullPolicy,
		Args:            []string{"agent"},
		// The kubelet resolves ConfigMaps, Secrets and the downward API for
		// the agent exactly as for the app.
		EnvFrom: append([]corev1.EnvFromSource(nil), pod.Spec.Containers[app].EnvFrom...),
		Env: append(append([]corev1.EnvVar(nil), pod.Spec.Containers[app].Env...),
			corev1.EnvVar{Name: "TP_AGENT_WORKLOAD", Value: wl.Name},
			corev1.EnvVar{Name: "TP_AGENT_KIND", Value: wl.Kind},
			fieldEnv("TP_AGENT_NAMESPACE", "metadata.namespace"),
			fieldEnv("TP_AGENT_POD_NAME", "metadata.name"),
			fieldEnv("TP_AGENT_POD_IP", "status.podIP"),
			// Connections from the node (kubelet probes) always reach the app.
			fieldEnv("TP_AGENT_HOST_IP", "status.hostIP"),
			corev1.EnvVar{Name: "TP_AGENT_CONTAINER", Value: pod.Spec.Containers[app].Name},
			corev1.EnvVar{Name: "TP_AGENT_PORTS", Value: string(portsJSON)},
			corev1.EnvVar{Name: tpagent.EnvMounts, Value: string(mountsJSON)},
			corev1.EnvVar{Name: tpagent.EnvManagerAddr, Value: spec.managerAddr},
			corev1.EnvVar{Name: tpagent.EnvManagerCA, Value: string(spec.managerCA)},
			corev1.EnvVar{Name: tpagent.EnvTokenFile, Value: tpagent.DefaultTokenFile},
			corev1.EnvVar{Name: "TP_AGENT_HEALTH_ADDR", Value: fmt.Sprintf(":%d", agentHealthPort)},
		),
		VolumeMounts: append([]corev1.VolumeMount{{
			Name: agentTokenVolume, MountPath: path.Dir(tpagent.DefaultTokenFile), ReadOnly: true,
		}}, exports...),
		ReadinessProbe: &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: "/ready", Port: intstr.FromInt32(agentHealthPort),
			}},
			PeriodSeconds: 2, FailureThreshold: 3,
		},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("10m"),
				corev1.ResourceMemory: resource.MustParse("32Mi"),
			},
			Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
		},
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr(true),
			RunAsUser:                ptr(int64(agentUID)),
			RunAsGroup:               ptr(int64(agentUID)),
			AllowPrivilegeEscalation: ptr(false),
			ReadOnlyRootFilesystem:   ptr(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}

	redirect := false
	for _, p := range plan {
		if p.Mechanism == tpagent.MechanismRedirect {
			redirect = true
			agent.Ports = append(agent.Ports, corev1.ContainerPort{ContainerPort: p.AgentPort, Protocol: corev1.ProtocolTCP})
			continue
		}
		// Rename: the agent declares the name the service targets.
		c := &pod.Spec.Containers[containerIndex(pod.Spec.Containers, p.container)]
		renamed := renamedPort(p.Name)
		for i := range c.Ports {
			if c.Ports[i].Name == p.Name {
				c.Ports[i].Name = renamed
			}
		}
		rewriteProbes(c, p.Name, p.ContainerPort)
		agent.Ports = append(agent.Ports, corev1.ContainerPort{Name: p.Name, ContainerPort: p.AgentPort, Protocol: corev1.ProtocolTCP})
	}
	pod.Spec.Containers = append(pod.Spec.Containers, agent)
	pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{
		Name: agentTokenVolume,
		VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Audience: tpagent.TokenAudience, ExpirationSeconds: ptr(int64(agentTokenSeconds)),
				Path: path.Base(tpagent.DefaultTokenFile),
			}}},
			// The default mode 0644: the agent (agentUID) must read it
			// whatever user owns the file; only tp-agent mounts it.
		}},
	})

	if redirect {
		init := corev1.Container{
			Name:            agentInitContainerName,
			Image:           spec.image,
			ImagePullPolicy: spec.pullPolicy,
			Args:            []string{"agent-init"},
			Env:             []corev1.EnvVar{{Name: "TP_AGENT_PORTS", Value: string(portsJSON)}},
			Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{
					corev1.ResourceCPU:    resource.MustParse("10m"),
					corev1.ResourceMemory: resource.MustParse("16Mi"),
				},
				Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")},
			},
			// nftables in the pod's network namespace needs NET_ADMIN (as
			// root); nothing else.
			SecurityContext: &corev1.SecurityContext{
				RunAsNonRoot:             ptr(false),
				RunAsUser:                ptr(int64(0)),
				AllowPrivilegeEscalation: ptr(false),
				ReadOnlyRootFilesystem:   ptr(true),
				Capabilities: &corev1.Capabilities{
					Add:  []corev1.Capability{"NET_ADMIN"},
					Drop: []corev1.Capability{"ALL"},
				},
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
		}
		pod.Spec.InitContainers = append([]corev1.Container{init}, pod.Spec.InitContainers...)
	}

	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[injectedAnnotation] = "true"
	return nil
}

// exportMounts gives the agent the volume mounts of the app container app:
// each at tpagent.ExportRoot + its mountPath, with the same volume, subPath
// (or subPathExpr, which the kubelet expands with the agent's copy of the
// app's env) and readOnly, without mountPropagation. The kubelet mounts a
// volume of one pod into several containers alike, so the agent sees the
// very files the app sees, nested mounts included (a volume at /var and
// another at /var/run/secrets: the container runtime mounts parents first).
// tp's own volume is left out. mounts is TP_AGENT_MOUNTS, sorted by path:
// read-only where the app's mount is, and for the volumes the kubelet
// always mounts read-only (Secret, ConfigMap, downward API, projected).
func exportMounts(volumes []corev1.Volume, app *corev1.Container) (exports []corev1.VolumeMount, mounts []tpagent.Mount) {
	alwaysRO := map[string]bool{}
	for _, v := range volumes {
		if v.Secret != nil || v.ConfigMap != nil || v.DownwardAPI != nil || v.Projected != nil {
			alwaysRO[v.Name] = true
		}
	}
	mounts = []tpagent.Mount{}
	for _, vm := range app.VolumeMounts {
		p := path.Clean("/" + vm.MountPath)
		if vm.Name == agentTokenVolume || p == "/" {
			continue
		}
		e := *vm.DeepCopy()
		e.MountPath = path.Join(tpagent.ExportRoot, p)
		e.MountPropagation = nil
		exports = append(exports, e)
		mounts = append(mounts, tpagent.Mount{Path: p, ReadOnly: vm.ReadOnly || alwaysRO[vm.Name]})
	}
	slices.SortFunc(mounts, func(a, b tpagent.Mount) int { return strings.Compare(a.Path, b.Path) })
	return exports, mounts
}

// renamedPort is the app's new name for a port the agent takes over.
func renamedPort(name string) string {
	n := "tm-" + name
	if len(n) > 15 {
		n = n[:15]
	}
	return strings.TrimRight(n, "-")
}

// rewriteProbes replaces references to the port name in c's probes and
// lifecycle hooks by its number: the name now belongs to the agent.
func rewriteProbes(c *corev1.Container, name string, port int32) {
	fix := func(h *corev1.ProbeHandler) {
		if h == nil {
			return
		}
		if h.HTTPGet != nil && h.HTTPGet.Port.Type == intstr.String && h.HTTPGet.Port.StrVal == name {
			h.HTTPGet.Port = intstr.FromInt32(port)
		}
		if h.TCPSocket != nil && h.TCPSocket.Port.Type == intstr.String && h.TCPSocket.Port.StrVal == name {
			h.TCPSocket.Port = intstr.FromInt32(port)
		}
	}
	for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
		if p != nil {
			fix(&p.ProbeHandler)
		}
	}
	if c.Lifecycle != nil {
		for _, h := range []*corev1.LifecycleHandler{c.Lifecycle.PostStart, c.Lifecycle.PreStop} {
			if h == nil {
				continue
			}
			if h.HTTPGet != nil && h.HTTPGet.Port.Type == intstr.String && h.HTTPGet.Port.StrVal == name {
				h.HTTPGet.Port = intstr.FromInt32(port)
			}
			if h.TCPSocket != nil && h.TCPSocket.Port.Type == intstr.String && h.TCPSocket.Port.StrVal == name {
				h.TCPSocket.Port = intstr.FromInt32(port)
			}
		}
	}
}

func fieldEnv(name, path string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
}

func containerIndex(cs []corev1.Container, name string) int {
	for i, c := range cs {
		if c.Name == name {
			return i
		}
	}
	return -1
}

func ptr[T any](v T) *T { return &v }

// patchOp is an RFC 6902 JSON Patch operation.
type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// podPatch is the JSON Patch from orig to mutated, where mutated is orig after
// injectAgent: it replaces only the container fields injectAgent changes,
// appends the agent, prepends the init container and adds the annotation,
// appends the token volume, leaving every other field of the pod as the API
// server sent it.
func podPatch(orig, mutated *corev1.Pod) ([]patchOp, error) {
	var ops []patchOp
	if len(mutated.Spec.Containers) < len(orig.Spec.Containers) {
		return nil, errors.New("containers removed")
	}
	for i := range orig.Spec.Containers {
		o, m := &orig.Spec.Containers[i], &mutated.Spec.Containers[i]
		base := "/spec/containers/" + strconv.Itoa(i) + "/"
		for _, f := range []struct {
			name string
			o, m any
		}{
			{"ports", o.Ports, m.Ports},
			{"livenessProbe", o.LivenessProbe, m.LivenessProbe},
			{"readinessProbe", o.ReadinessProbe, m.ReadinessProbe},
			{"startupProbe", o.StartupProbe, m.StartupProbe},
			{"lifecycle", o.Lifecycle, m.Lifecycle},
		} {
			if !reflect.DeepEqual(f.o, f.m) {
				ops = append(ops, patchOp{Op: "replace", Path: base + f.name, Value: f.m})
			}
		}
	}
	for _, c := range mutated.Spec.Containers[len(orig.Spec.Containers):] {
		ops = append(ops, patchOp{Op: "add", Path: "/spec/containers/-", Value: c})
	}
	switch added := len(mutated.Spec.InitContainers) - len(orig.Spec.InitContainers); {
	case added == 0:
	case added == 1 && len(orig.Spec.InitContainers) == 0:
		ops = append(ops, patchOp{Op: "add", Path: "/spec/initContainers", Value: mutated.Spec.InitContainers})
	case added == 1:
		ops = append(ops, patchOp{Op: "add", Path: "/spec/initContainers/0", Value: mutated.Spec.InitContainers[0]})
	default:
		return nil, fmt.Errorf("%d init containers added, want at most 1", added)
	}
	switch {
	case len(mutated.Spec.Volumes) == len(orig.Spec.Volumes):
	case len(orig.Spec.Volumes) == 0:
		ops = append(ops, patchOp{Op: "add", Path: "/spec/volumes", Value: mutated.Spec.Volumes})
	default:
		for _, v := range mutated.Spec.Volumes[len(orig.Spec.Volumes):] {
			ops = append(ops, patchOp{Op: "add", Path: "/spec/volumes/-", Value: v})
		}
	}
	if len(orig.Annotations) == 0 {
		ops = append(ops, patchOp{Op: "add", Path: "/metadata/annotations", Value: mutated.Annotations})
	} else {
		for k, v := range mutated.Annotations {
			if ov, ok := orig.Annotations[k]; !ok || ov != v {
				ops = append(ops, patchOp{Op: "add", Path: "/metadata/annotations/" + escapePointer(k), Value: v})
			}
		}
	}
	return ops, nil
}

// escapePointer escapes a JSON Pointer reference token (RFC 6901).
func escapePointer(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}
