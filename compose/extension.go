package compose

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/compose-spec/compose-go/v2/types"
	"gopkg.in/yaml.v3"

	"github.com/tp-run/tp/intercept"
)

// Extension is the name of tp's compose extension, at the top level (the
// connection) and in services (their role).
const Extension = "x-tp"

// Connection is the top-level x-tp: which connection the project uses.
// Every field is optional.
type Connection struct {
	Name             string `yaml:"name"`
	Context          string `yaml:"context"`
	Namespace        string `yaml:"namespace"`
	ManagerNamespace string `yaml:"manager-namespace"`
}

// RoleKind is what tp does with a service.
type RoleKind string

const (
	// RoleLocal: no x-tp; compose runs the service as it is.
	RoleLocal RoleKind = ""
	// RoleIntercept: the service receives a workload's traffic, env and
	// mounts, and reaches the cluster.
	RoleIntercept RoleKind = "intercept"
	// RoleConnect: the service reaches the cluster (joins the daemon
	// container's network namespace).
	RoleConnect RoleKind = "connect"
	// RoleIngest: a pod's env and mounts, and the cluster's network, but
	// no traffic.
	RoleIngest RoleKind = "ingest"
	// RoleUseCluster: the service is not started; its name means the
	// cluster's service.
	RoleUseCluster RoleKind = "use-cluster"
)

// Joins says whether services of this role share the daemon container's
// network namespace.
func (k RoleKind) Joins() bool {
	return k == RoleIntercept || k == RoleConnect || k == RoleIngest
}

// Role is one service's x-tp.
type Role struct {
	Kind RoleKind
	// Intercept is set for RoleIntercept, Ingest for RoleIngest.
	Intercept *InterceptRole
	Ingest    *IngestRole
	// ClusterService is the cluster's service a RoleUseCluster service
	// stands for.
	ClusterService string
}

// InterceptRole is x-tp.intercept of a service.
type InterceptRole struct {
	// Workload defaults to the service's name; Service and Container pick
	// among several (as tp intercept --service, --container).
	Workload  string `yaml:"workload"`
	Service   string `yaml:"service"`
	Container string `yaml:"container"`
	// Ports are LOCAL[:SVCPORT], as tp intercept --port; one intercept each.
	Ports []string `yaml:"ports"`
	// Headers and PathPrefix make it personal.
	Headers    map[string]string `yaml:"headers"`
	PathPrefix string            `yaml:"path-prefix"`
	// Env: the pod's environment (compose's own environment wins).
	Env *bool `yaml:"env"`
	// Mounts: the pod's volumes at their paths.
	Mounts Mounts `yaml:"mounts"`
}

// IngestRole is x-tp.ingest of a service.
type IngestRole struct {
	Workload  string `yaml:"workload"`
	Container string `yaml:"container"`
	Env       *bool  `yaml:"env"`
	Mounts    Mounts `yaml:"mounts"`
}

// Mounts is `mounts: true | false | [paths] | {paths: [...], read-only: true}`
// (default true): which of the app container's mounts go into the service
// at their pod paths, as tp intercept --mount, --mount-path and
// --mount-readonly.
type Mounts struct {
	Set      bool     // given at all
	All      bool     // true (or the mapping form without paths)
	Paths    []string // a list: only these
	ReadOnly bool     // read-only: true
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (m *Mounts) UnmarshalYAML(n *yaml.Node) error {
	m.Set = true
	var b bool
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!bool" && n.Decode(&b) == nil {
		m.All = b
		return nil
	}
	var paths []string
	switch n.Kind {
	case yaml.MappingNode:
		var v struct {
			Paths    []string `yaml:"paths"`
			ReadOnly bool     `yaml:"read-only"`
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k := n.Content[i].Value; k != "paths" && k != "read-only" {
				return fmt.Errorf("unknown key %s (known: paths, read-only)", k)
			}
		}
		if err := n.Decode(&v); err != nil {
			return fmt.Errorf("want {paths: [PATH...], read-only: true|false}")
		}
		m.ReadOnly, paths = v.ReadOnly, v.Paths
		m.All = len(paths) == 0
	case yaml.SequenceNode:
		if err := n.Decode(&paths); err != nil {
			return fmt.Errorf("want true, false, a list of paths or {paths: [...], read-only: true}")
		}
		if len(paths) == 0 {
			return fmt.Errorf("an empty list mounts nothing: write mounts: false")
		}
	default:
		return fmt.Errorf("want true, false, a list of paths or {paths: [...], read-only: true}")
	}
	for _, p := range paths {
		if !strings.HasPrefix(p, "/") {
			return fmt.Errorf("path %q is not absolute", p)
		}
	}
	if len(paths) > 0 {
		m.Paths = paths
	}
	return nil
}

// Wanted says whether the pod's mount at path goes into the container.
func (m Mounts) Wanted(path string) bool {
	switch {
	case !m.Set:
		return true
	case m.Paths != nil:
		return slices.Contains(m.Paths, path)
	default:
		return m.All
	}
}

// Options are the intercept library's options for m: the same as tp
// intercept --docker-run's flags.
func (m Mounts) Options() intercept.MountOptions {
	return intercept.MountOptions{Disabled: m.Set && !m.All && m.Paths == nil, ReadOnly: m.ReadOnly, Paths: m.Paths}
}

// Plan is what x-tp says of a project.
type Plan struct {
	Connection Connection
	// Roles are the services' roles, by service name; services without
	// x-tp are RoleLocal and not listed.
	Roles map[string]Role
}

// HasExtension says whether the project uses x-tp at all.
func (p *Plan) HasExtension() bool { return p.Connection != (Connection{}) || len(p.Roles) > 0 }

// ExtensionError is an invalid x-tp: it names the file, the service and
// the key.
type ExtensionError struct {
	File    string // the compose file that sets it ("" when unknown)
	Service string // "" for the top level
	Key     string // e.g. "x-tp.intercept.ports"
	Msg     string
}

func (e *ExtensionError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File + ": ")
	}
	if e.Service != "" {
		b.WriteString("service " + e.Service + ": ")
	}
	b.WriteString(e.Key + ": " + e.Msg)
	return b.String()
}

// knownKeys are the keys of each x-tp map.
var knownKeys = map[string][]string{
	"x-tp":            {"connection"},
	"x-tp.connection": {"name", "context", "namespace", "manager-namespace"},
	"service":         {"intercept", "connect", "ingest", "use-cluster"},
	"intercept":       {"workload", "service", "container", "ports", "headers", "path-prefix", "env", "mounts"},
	"ingest":          {"workload", "container", "env", "mounts"},
}

// ParsePlan reads the project's x-tp and checks it: unknown keys, two roles
// on one service, a joining role with network_mode or networks, two joined
// services publishing or exposing the same port, use-cluster without a
// service name. Errors are ExtensionErrors.
func ParsePlan(p *types.Project) (*Plan, error) {
	plan := &Plan{Roles: map[string]Role{}}
	files := p.ComposeFiles
	if top, ok := p.Extensions[Extension]; ok {
		key := Extension
		m, err := asMap(top)
		if err == nil {
			err = checkKeys(m, knownKeys["x-tp"])
		}
		if err == nil && m["connection"] != nil {
			key = Extension + ".connection"
			var cm map[string]any
			if cm, err = asMap(m["connection"]); err == nil {
				if err = checkKeys(cm, knownKeys["x-tp.connection"]); err == nil {
					err = decode(cm, &plan.Connection)
					key += subKey(err)
				}
			}
		}
		if err != nil {
			return nil, &ExtensionError{File: fileWith(files, "", key), Key: key, Msg: err.Error()}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(p.Services)) {
		svc := p.Services[name]
		raw, ok := svc.Extensions[Extension]
		if !ok {
			continue
		}
		role, key, err := parseRole(name, raw)
		if err != nil {
			return nil, &ExtensionError{File: fileWith(files, name, key), Service: name, Key: key, Msg: err.Error()}
		}
		if role.Kind.Joins() {
			switch {
			case svc.NetworkMode != "":
				return nil, &ExtensionError{File: fileWith(files, name, Extension), Service: name, Key: Extension + "." + string(role.Kind),
					Msg: fmt.Sprintf("the service joins tp's network, so it cannot also have network_mode %q: remove network_mode", svc.NetworkMode)}
			case hasNetworks(svc):
				return nil, &ExtensionError{File: fileWith(files, name, Extension), Service: name, Key: Extension + "." + string(role.Kind),
					Msg: "the service joins tp's network, so it cannot also list networks: remove networks (tp's daemon container joins the project's networks for it)"}
			}
		}
		plan.Roles[name] = role
	}
	if err := checkJoinedPorts(p, plan); err != nil {
		return nil, err
	}
	return plan, nil
}

func parseRole(service string, raw any) (Role, string, error) {
	key := Extension
	m, err := asMap(raw)
	if err != nil {
		return Role{}, key, err
	}
	if err := checkKeys(m, knownKeys["service"]); err != nil {
		return Role{}, key, err
	}
	if len(m) != 1 {
		return Role{}, key, fmt.Errorf("give exactly one role of intercept, connect, ingest, use-cluster (got %s)", strings.Join(slices.Sorted(maps.Keys(m)), ", "))
	}
	for k, v := range m {
		key = Extension + "." + k
		switch RoleKind(k) {
		case RoleConnect:
			b, ok := v.(bool)
			if !ok || !b {
				return Role{}, key, fmt.Errorf("want true (remove x-tp to run the service without the cluster)")
			}
			return Role{Kind: RoleConnect}, key, nil
		case RoleUseCluster:
			s, ok := v.(string)
			if !ok || s == "" {
				return Role{}, key, fmt.Errorf("want the name of the cluster's service, e.g. use-cluster: postgres")
			}
			return Role{Kind: RoleUseCluster, ClusterService: s}, key, nil
		case RoleIntercept:
			im, err := asMap(v)
			if err == nil {
				err = checkKeys(im, knownKeys["intercept"])
			}
			r := &InterceptRole{}
			if err == nil {
				err = decode(im, r)
			}
			if err != nil {
				return Role{}, key + subKey(err), err
			}
			if r.Workload == "" {
				r.Workload = service
			}
			if len(r.Ports) == 0 {
				return Role{}, key + ".ports", fmt.Errorf(`want at least one LOCAL[:SVCPORT], e.g. ports: ["8080:http"]`)
			}
			locals := map[int32]bool{}
			for _, port := range r.Ports {
				local, _, err := intercept.ParsePort(port)
				if err != nil {
					return Role{}, key + ".ports", fmt.Errorf("%q: want LOCAL[:SVCPORT], LOCAL a port number, SVCPORT a service port name or number", port)
				}
				if locals[local] {
					return Role{}, key + ".ports", fmt.Errorf("local port %d is given twice: each intercept needs its own", local)
				}
				locals[local] = true
			}
			if r.PathPrefix != "" && !strings.HasPrefix(r.PathPrefix, "/") {
				return Role{}, key + ".path-prefix", fmt.Errorf("%q must start with /", r.PathPrefix)
			}
			return Role{Kind: RoleIntercept, Intercept: r}, key, nil
		case RoleIngest:
			im, err := asMap(v)
			if err == nil {
				err = checkKeys(im, knownKeys["ingest"])
			}
			r := &IngestRole{}
			if err == nil {
				err = decode(im, r)
			}
			if err != nil {
				return Role{}, key + subKey(err), err
			}
			if r.Workload == "" {
				r.Workload = service
			}
			return Role{Kind: RoleIngest, Ingest: r}, key, nil
		}
	}
	panic("unreachable: keys were checked")
}

// checkJoinedPorts refuses two joined services that publish or expose the
// same container port: they share one network namespace, so only one can
// listen on it.
func checkJoinedPorts(p *types.Project, plan *Plan) error {
	owner := map[string]string{} // "8080/tcp" -> service
	for _, name := range slices.Sorted(maps.Keys(p.Services)) {
		if !plan.Roles[name].Kind.Joins() {
			continue
		}
		svc := p.Services[name]
		var ports []string
		for _, pc := range svc.Ports {
			ports = append(ports, fmt.Sprintf("%d/%s", pc.Target, cmp.Or(pc.Protocol, "tcp")))
		}
		for _, e := range svc.Expose {
			port, proto, _ := strings.Cut(e, "/")
			ports = append(ports, port+"/"+cmp.Or(proto, "tcp"))
		}
		for _, port := range ports {
			if other, dup := owner[port]; dup && other != name {
				return &ExtensionError{File: fileWith(p.ComposeFiles, name, ""), Service: name, Key: "ports",
					Msg: fmt.Sprintf("port %s is also published or exposed by %s; both join tp's network namespace, so only one can listen on it", port, other)}
			}
			owner[port] = name
		}
	}
	return nil
}

func asMap(v any) (map[string]any, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("want a mapping, got %v", v)
	}
	return m, nil
}

func checkKeys(m map[string]any, known []string) error {
	var unknown []string
	for k := range m {
		if !slices.Contains(known, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	sort.Strings(unknown)
	return fmt.Errorf("unknown key %s (known: %s)", strings.Join(unknown, ", "), strings.Join(known, ", "))
}

// decode turns a loaded extension map into v (through YAML, so the
// struct's yaml tags and Unmarshalers apply), one key at a time so that an
// error names its key (a *fieldError).
func decode(m map[string]any, v any) error {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		b, err := yaml.Marshal(map[string]any{k: m[k]})
		if err != nil {
			return &fieldError{key: k, msg: err.Error()}
		}
		if err := yaml.Unmarshal(b, v); err != nil {
			return &fieldError{key: k, msg: yamlMessage(err)}
		}
	}
	return nil
}

// fieldError is a value of the wrong type under key.
type fieldError struct{ key, msg string }

func (e *fieldError) Error() string { return e.msg }

// subKey is ".KEY" of a fieldError, else "".
func subKey(err error) string {
	var fe *fieldError
	if errors.As(err, &fe) {
		return "." + fe.key
	}
	return ""
}

var (
	yamlLine      = regexp.MustCompile(`^line \d+: `)
	yamlUnmarshal = regexp.MustCompile(`cannot unmarshal !!(\w+)(?: ` + "`" + `[^` + "`" + `]*` + "`" + `)? into (\S+)`)
	yamlKindNames = map[string]string{"seq": "a list", "map": "a mapping", "str": "a string", "int": "a number", "float": "a number", "bool": "true or false", "null": "nothing"}
	yamlTypeNames = map[string]string{"string": "a string", "bool": "true or false", "[]string": "a list of strings", "map[string]string": "a mapping of strings"}
)

// yamlMessage says what a YAML type error wants, without the line numbers
// of the re-encoded map (they are not the user's file's).
func yamlMessage(err error) string {
	var te *yaml.TypeError
	if !errors.As(err, &te) || len(te.Errors) == 0 {
		return strings.TrimPrefix(err.Error(), "yaml: ")
	}
	msg := yamlLine.ReplaceAllString(te.Errors[0], "")
	if m := yamlUnmarshal.FindStringSubmatch(msg); m != nil {
		want := yamlTypeNames[m[2]]
		if want == "" {
			want = m[2]
		}
		return fmt.Sprintf("want %s, got %s", want, cmp.Or(yamlKindNames[m[1]], m[1]))
	}
	return msg
}

// fileWith is the last of files (later files override earlier ones) whose
// YAML sets x-tp of service (or at the top level when service is ""); ""
// when none can be read.
func fileWith(files []string, service, key string) string {
	found := ""
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var doc struct {
			Ext      any                       `yaml:"x-tp"`
			Services map[string]map[string]any `yaml:"services"`
		}
		if yaml.Unmarshal(b, &doc) != nil {
			continue
		}
		if service == "" && doc.Ext != nil {
			found = f
		}
		if s, ok := doc.Services[service]; ok && (key == "" || s[Extension] != nil) {
			found = f
		}
	}
	return found
}

// hasNetworks says whether the service lists networks of its own (the
// loader gives every service without any the project's "default").
func hasNetworks(s types.ServiceConfig) bool {
	if len(s.Networks) == 1 {
		if cfg, ok := s.Networks["default"]; ok && cfg == nil {
			return false
		}
	}
	return len(s.Networks) > 0
}
