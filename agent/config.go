package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path"
	"strings"
	"time"
)

// Environment variables the webhook sets on the agent container (see
// docs/intercepts.md). The init container needs only EnvPorts.
const (
	EnvWorkload  = "TP_AGENT_WORKLOAD"
	EnvKind      = "TP_AGENT_KIND"
	EnvNamespace = "TP_AGENT_NAMESPACE"
	EnvPodName   = "TP_AGENT_POD_NAME"
	EnvPodIP     = "TP_AGENT_POD_IP"
	EnvHostIP    = "TP_AGENT_HOST_IP"
	EnvContainer = "TP_AGENT_CONTAINER"
	EnvPorts     = "TP_AGENT_PORTS"
	// EnvMounts is the JSON list of the app container's volume mounts the
	// agent exports (Mount), sorted by path; absent when it has none.
	EnvMounts      = "TP_AGENT_MOUNTS"
	EnvHealthAddr  = "TP_AGENT_HEALTH_ADDR"
	EnvManagerAddr = "TP_MANAGER_ADDR"
	// EnvManagerCA holds the PEM CA bundle that signed the manager's
	// certificate.
	EnvManagerCA = "TP_MANAGER_CA"
	// EnvTokenFile is the path of the projected ServiceAccount token
	// (audience TokenAudience); default DefaultTokenFile.
	EnvTokenFile = "TP_AGENT_TOKEN_FILE"
)

// Health endpoints of the agent container.
const (
	// HealthPort is the port of DefaultHealthAddr, for the readiness probe.
	HealthPort        = 9898
	DefaultHealthAddr = ":9898"
	// ReadyPath answers 200 once the agent listens on every agent port,
	// whether or not it has arrived at the traffic-manager (without a
	// session it routes everything to the app); 503 while it drains.
	ReadyPath = "/ready"
	// LivePath answers 200 while the process serves.
	LivePath = "/healthz"
)

// DefaultDrainTimeout is how long the agent keeps serving after its
// context ended (see Config.DrainTimeout); well within Kubernetes' default
// termination grace period of 30 s.
const DefaultDrainTimeout = 5 * time.Second

// FirstAgentPort is the port the webhook gives the first port the agent
// takes over; the next ones get 9901, 9902, ...
const FirstAgentPort = 9900

// Mechanisms that send a container port's traffic to its agent port.
const (
	// MechanismRename: the app's named port was renamed and the agent
	// declares the original name, so endpoints point at the agent port.
	MechanismRename = "rename"
	// MechanismRedirect: agent-init installs an nftables redirect from the
	// container port to the agent port in the pod's network namespace.
	MechanismRedirect = "redirect"
)

// Port is one port the agent takes over, as in the JSON list of
// TP_AGENT_PORTS.
type Port struct {
	// Name of the container port ("" when it has none).
	Name string `json:"name"`
	// ContainerPort is the app's port; the agent reaches the app at
	// 127.0.0.1:ContainerPort.
	ContainerPort int32 `json:"containerPort"`
	// AgentPort is where the agent listens for it.
	AgentPort int32 `json:"agentPort"`
	// Protocol is "TCP" (or empty, meaning TCP); the agent takes over TCP
	// ports only.
	Protocol string `json:"protocol"`
	// Mechanism is MechanismRename or MechanismRedirect.
	Mechanism string `json:"mechanism"`
}

// ExportRoot is where the webhook mounts the app container's volumes into
// the agent container: the app's mountPath P is ExportRoot+P there. (Not
// /tp/export: /tp is the tp binary in the image, so no directory can be
// made under it.) The
// agent serves this tree, and nothing outside it, over SFTP.
const ExportRoot = "/tp-export"

// Mount is one volume mount of the app container that the agent exports, as
// in the JSON list of TP_AGENT_MOUNTS.
type Mount struct {
	// Path is the app container's mountPath (clean, absolute), which is also
	// its path in the SFTP export.
	Path string `json:"path"`
	// ReadOnly: the app sees the volume read-only (its mount says so, or the
	// volume is a Secret, ConfigMap, downward API or projected one, which
	// the kubelet always mounts read-only). The agent refuses writes there.
	ReadOnly bool `json:"readOnly"`
}

// Config configures the traffic-agent sidecar.
type Config struct {
	// ManagerAddr is the traffic-manager's agent address (host:port): TLS,
	// the certificate must be valid for the host.
	ManagerAddr string
	// ManagerCA is the PEM CA bundle the manager's certificate is verified
	// against.
	ManagerCA []byte
	// TokenFile holds the pod's projected ServiceAccount token with audience
	// TokenAudience, presented on every RPC and reread each time.
	TokenFile string
	// The workload the pod belongs to.
	Workload  string
	Kind      string // Deployment, StatefulSet or ReplicaSet
	Namespace string
	// The pod the agent runs in.
	PodName string
	PodIP   netip.Addr
	// NodeAddrs are the addresses the pod's node reaches it from (its host IP
	// and the pod's default gateway). Connections from them, kubelet probes
	// above all, always go to the app: an intercept must not take over the
	// app's health.
	NodeAddrs []netip.Addr
	// Container is the app container whose ports the agent took over.
	Container string
	Ports     []Port
	// Mounts are the app container's volume mounts under ExportRoot that
	// the agent serves over SFTP on the flows the manager pairs.
	Mounts []Mount
	// ExportRoot overrides ExportRoot (tests).
	ExportRoot string
	// HealthAddr serves ReadyPath and LivePath; default DefaultHealthAddr.
	HealthAddr string
	// Environment is what the agent reports as the app container's
	// environment (see ReportedEnvironment).
	Environment map[string]string
	// DrainTimeout: when Run's context ends (the pod terminates), the agent
	// departs from the manager at once (everything goes to the app) but
	// keeps serving this long, so that connections in flight finish and new
	// ones that arrive while the endpoints update still reach the app,
	// which terminates at the same time. 0 means DefaultDrainTimeout; a
	// negative value stops at once.
	DrainTimeout time.Duration
	// Log receives the agent's logs; nil means slog.Default().
	Log *slog.Logger
}

// ConfigFromEnv reads the agent's configuration from environ (os.Environ()
// in the sidecar): the TP_AGENT_* and TP_MANAGER_ADDR variables, and the
// environment to report (ReportedEnvironment). It names every missing or
// bad variable at once.
func ConfigFromEnv(environ []string) (Config, error) {
	env := envMap(environ)
	var errs []error
	required := func(name, what string) string {
		v := strings.TrimSpace(env[name])
		if v == "" {
			errs = append(errs, fmt.Errorf("%s is not set (%s); the tp webhook sets it when it injects the agent", name, what))
		}
		return v
	}
	cfg := Config{
		ManagerAddr: required(EnvManagerAddr, "the traffic-manager's host:port"),
		ManagerCA:   []byte(required(EnvManagerCA, "the PEM CA bundle of the traffic-manager's certificate")),
		TokenFile:   strings.TrimSpace(env[EnvTokenFile]),
		Workload:    required(EnvWorkload, "the workload's name"),
		Namespace:   required(EnvNamespace, "the pod's namespace"),
		PodName:     required(EnvPodName, "the pod's name"),
		Kind:        required(EnvKind, "the workload's kind: Deployment, StatefulSet or ReplicaSet"),
		Container:   strings.TrimSpace(env[EnvContainer]),
		HealthAddr:  strings.TrimSpace(env[EnvHealthAddr]),
		Environment: ReportedEnvironment(environ),
	}
	if ip := required(EnvPodIP, "the pod's IP, from the downward API status.podIP"); ip != "" {
		addr, err := netip.ParseAddr(ip)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s=%q is not an IP address: %w", EnvPodIP, ip, err))
		}
		cfg.PodIP = addr.Unmap()
	}
	if ip := strings.TrimSpace(env[EnvHostIP]); ip != "" {
		if addr, err := netip.ParseAddr(ip); err == nil {
			cfg.NodeAddrs = append(cfg.NodeAddrs, addr.Unmap())
		}
	}
	if raw := required(EnvPorts, "the JSON list of ports the agent takes over"); raw != "" {
		ports, err := parsePorts(raw)
		if err != nil {
			errs = append(errs, err)
		}
		cfg.Ports = ports
	}
	if raw := strings.TrimSpace(env[EnvMounts]); raw != "" {
		mounts, err := parseMounts(raw)
		if err != nil {
			errs = append(errs, err)
		}
		cfg.Mounts = mounts
	}
	if err := errors.Join(errs...); err != nil {
		return Config{}, fmt.Errorf("traffic-agent configuration: %w", err)
	}
	if cfg.TokenFile == "" {
		cfg.TokenFile = DefaultTokenFile
	}
	return cfg, nil
}

// PortsFromEnv reads TP_AGENT_PORTS from environ, for agent-init.
func PortsFromEnv(environ []string) ([]Port, error) {
	raw := strings.TrimSpace(envMap(environ)[EnvPorts])
	if raw == "" {
		return nil, fmt.Errorf("%s is not set (the JSON list of ports the agent takes over); the tp webhook sets it when it injects the agent", EnvPorts)
	}
	return parsePorts(raw)
}

// MountsFromEnv reads TP_AGENT_MOUNTS from environ (none when it is not set).
func MountsFromEnv(environ []string) ([]Mount, error) {
	raw := strings.TrimSpace(envMap(environ)[EnvMounts])
	if raw == "" {
		return nil, nil
	}
	return parseMounts(raw)
}

func parseMounts(raw string) ([]Mount, error) {
	var mounts []Mount
	if err := json.Unmarshal([]byte(raw), &mounts); err != nil {
		return nil, fmt.Errorf("%s is not a JSON list of {path, readOnly}: %w", EnvMounts, err)
	}
	seen := map[string]bool{}
	for _, m := range mounts {
		if !path.IsAbs(m.Path) || path.Clean(m.Path) != m.Path || m.Path == "/" {
			return nil, fmt.Errorf("%s: path %q is not a clean absolute path below /", EnvMounts, m.Path)
		}
		if seen[m.Path] {
			return nil, fmt.Errorf("%s: path %q twice", EnvMounts, m.Path)
		}
		seen[m.Path] = true
	}
	return mounts, nil
}

func parsePorts(raw string) ([]Port, error) {
	// Unknown fields are ignored, so that a newer webhook's additions do
	// not break an agent; misspelt ones leave zeros that validation names.
	var ports []Port
	if err := json.Unmarshal([]byte(raw), &ports); err != nil {
		return nil, fmt.Errorf("%s is not a JSON list of {name, containerPort, agentPort, protocol, mechanism}: %w", EnvPorts, err)
	}
	if err := validatePorts(ports); err != nil {
		return nil, fmt.Errorf("%s: %w", EnvPorts, err)
	}
	return ports, nil
}

// validatePorts checks ports for Run and Init.
func validatePorts(ports []Port) error {
	if len(ports) == 0 {
		return errors.New("no ports: the agent must take over at least one port")
	}
	var errs []error
	agentPorts := map[int32]bool{}
	containerPorts := map[int32]bool{}
	for i, p := range ports {
		what := fmt.Sprintf("port %d (%q)", i, p.Name)
		if p.ContainerPort < 1 || p.ContainerPort > 65535 {
			errs = append(errs, fmt.Errorf("%s: containerPort %d out of range 1-65535", what, p.ContainerPort))
		}
		if p.AgentPort < 1 || p.AgentPort > 65535 {
			errs = append(errs, fmt.Errorf("%s: agentPort %d out of range 1-65535", what, p.AgentPort))
		}
		if p.AgentPort == p.ContainerPort {
			errs = append(errs, fmt.Errorf("%s: agentPort and containerPort are both %d", what, p.AgentPort))
		}
		if agentPorts[p.AgentPort] {
			errs = append(errs, fmt.Errorf("%s: agentPort %d used twice", what, p.AgentPort))
		}
		if containerPorts[p.ContainerPort] {
			errs = append(errs, fmt.Errorf("%s: containerPort %d used twice", what, p.ContainerPort))
		}
		agentPorts[p.AgentPort] = true
		containerPorts[p.ContainerPort] = true
		if p.Protocol != "" && !strings.EqualFold(p.Protocol, "TCP") {
			errs = append(errs, fmt.Errorf("%s: protocol %q is not supported; the agent takes over TCP ports only", what, p.Protocol))
		}
		if p.Mechanism != MechanismRename && p.Mechanism != MechanismRedirect {
			errs = append(errs, fmt.Errorf("%s: mechanism %q, want %q or %q", what, p.Mechanism, MechanismRename, MechanismRedirect))
		}
	}
	return errors.Join(errs...)
}

// ReportedEnvironment is the environment the agent reports to the
// traffic-manager as the app container's: the webhook copied the app
// container's env and envFrom into the agent container, so the kubelet
// resolved them exactly as for the app. Left out are
//   - every TP_AGENT_* and TP_MANAGER_* variable (the agent's own);
//   - the variables of the Kubernetes API's own service link
//     (KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT*, KUBERNETES_PORT*),
//     which would make tools on the workstation believe they run in-cluster;
//   - PATH when it is the container runtime's default: the agent's image
//     sets none, so that PATH is not the app's.
//
// The service link variables of other services (FOO_SERVICE_HOST, ...) are
// kept: Kubernetes injects the same ones into every container of the pod,
// so the app sees them too. HOSTNAME (the pod name) is kept for the same
// reason. Variables the app's image sets (its ENV) are not visible to the
// agent and so are not reported.
func ReportedEnvironment(environ []string) map[string]string {
	out := map[string]string{}
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || name == "" || !reported(name, value) {
			continue
		}
		out[name] = value
	}
	return out
}

// defaultRuntimePATH is the PATH containerd, CRI-O and Docker give a
// container whose image sets none.
const defaultRuntimePATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func reported(name, value string) bool {
	switch {
	case strings.HasPrefix(name, "TP_AGENT_"), strings.HasPrefix(name, "TP_MANAGER_"):
		return false
	case strings.HasPrefix(name, "KUBERNETES_SERVICE_"),
		name == "KUBERNETES_PORT", strings.HasPrefix(name, "KUBERNETES_PORT_"):
		return false
	case name == "PATH" && value == defaultRuntimePATH:
		return false
	}
	return true
}

// envMap turns KEY=VALUE entries into a map; later entries win, as in
// os.Getenv.
func envMap(environ []string) map[string]string {
	m := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

// validate checks a Config for Run and fills in defaults.
func (c *Config) validate() error {
	var errs []error
	if c.ManagerAddr == "" {
		errs = append(errs, errors.New("no traffic-manager address"))
	}
	if len(c.ManagerCA) == 0 {
		errs = append(errs, errors.New("no CA bundle of the traffic-manager"))
	}
	if c.TokenFile == "" {
		errs = append(errs, errors.New("no ServiceAccount token file"))
	}
	if c.Workload == "" || c.Namespace == "" || c.Kind == "" {
		errs = append(errs, errors.New("no workload, namespace or kind"))
	}
	if c.PodName == "" {
		errs = append(errs, errors.New("no pod name"))
	}
	if !c.PodIP.IsValid() {
		errs = append(errs, errors.New("no pod IP"))
	}
	if err := validatePorts(c.Ports); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("traffic-agent configuration: %w", err)
	}
	if c.HealthAddr == "" {
		c.HealthAddr = DefaultHealthAddr
	}
	if c.ExportRoot == "" {
		c.ExportRoot = ExportRoot
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	return nil
}
