package compose

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/tp-run/tp/daemoncontainer/dns"
)

// Labels tp puts on the services it changes, so `tp compose ps` and a
// later `down` know each one's role.
const (
	LabelRole    = "tp.run/role"
	LabelProject = "tp.run/compose-project"
)

// Transformed is the project compose runs, and what tp does around it.
type Transformed struct {
	Project *types.Project
	// Publish are the joined services' ports: joined containers cannot
	// publish ports, so the daemon container publishes them.
	Publish []types.ServicePortConfig
	// Joined are the services that join the daemon container's network
	// namespace (sorted): the daemon container has their names as aliases
	// on the project's networks, so local services reach them by name.
	Joined []string
	// Replaced are the use-cluster services, which compose does not start:
	// service name -> the cluster's service its name resolves to.
	Replaced map[string]string
	// Aliases are the replaced services whose name differs from their
	// cluster service: name -> cluster service. Up has the daemon's DNS
	// answer each name (bare and with the joined containers' search
	// domains) as that service; down removes them. A replaced service whose
	// name is its cluster service needs none: the search list resolves it.
	Aliases map[string]string
	// ClusterWaits are the depends_on of services on use-cluster services,
	// which compose cannot wait for: up waits for the cluster's service to
	// answer through the connection before it starts the services.
	ClusterWaits []ClusterWait
	// Notes say what tp changed beyond the roles (shown by `tp compose
	// config` as comments).
	Notes []string
}

// ClusterWait is a depends_on of Service on a use-cluster service.
type ClusterWait struct {
	Service, Dependency string
	// ClusterService is the cluster's service that Dependency is.
	ClusterService string
	// Ports are Dependency's expose and ports (their container ports, TCP):
	// up waits until one of them accepts a connection; without any it waits
	// until the name resolves.
	Ports []uint32
	// Required is depends_on's required (default true): false only warns
	// when the cluster's service does not answer.
	Required bool
}

// Transform turns the project into the one compose runs:
//   - a joined service (intercept, connect, ingest) gets network_mode
//     container:<daemonContainer> and no networks; its ports move to the
//     daemon container (Publish) and its expose is dropped (the namespace
//     is shared);
//   - a use-cluster service is removed, and a depends_on on it is dropped
//     (its name is the cluster's service): it becomes a ClusterWait, and
//     condition service_completed_successfully on it is an error; a local service that depended on
//     it must resolve that name, so it is joined (and a note says so);
//   - every changed service carries the LabelRole label.
func Transform(p *types.Project, plan *Plan, daemonContainer string) (*Transformed, error) {
	roles := maps.Clone(plan.Roles)
	t := &Transformed{Replaced: map[string]string{}, Aliases: map[string]string{}}
	for name, r := range roles {
		if r.Kind == RoleUseCluster {
			t.Replaced[name] = r.ClusterService
		}
	}
	for _, name := range sortedKeys(t.Replaced) {
		cluster := t.Replaced[name]
		if cluster == name {
			continue
		}
		if !dns.IsLabel(name) {
			return nil, &ExtensionError{File: fileWith(p.ComposeFiles, name, ""), Service: name, Key: "x-tp.use-cluster",
				Msg: fmt.Sprintf("the service's name %q is not a DNS label (lower-case letters, digits and '-', at most 63), so tp's DNS cannot make it an alias of %s: rename the service", name, cluster)}
		}
		if !dns.IsLabel(cluster) {
			return nil, &ExtensionError{File: fileWith(p.ComposeFiles, name, ""), Service: name, Key: "x-tp.use-cluster",
				Msg: fmt.Sprintf("%q is not a DNS label (lower-case letters, digits and '-', at most 63): give the name of a service in the connection's namespace", cluster)}
		}
		t.Aliases[name] = cluster
		t.Notes = append(t.Notes, fmt.Sprintf("the name %s resolves to the cluster's service %s (a DNS alias in the connection's namespace while the project is up)", name, cluster))
	}
	waits, err := clusterWaits(p, t.Replaced)
	if err != nil {
		return nil, err
	}
	t.ClusterWaits = waits
	for _, w := range waits {
		addrs := strings.Join(clusterAddrs(w), " or ")
		if len(w.Ports) == 0 {
			addrs += " resolves (give " + w.Dependency + " expose: [PORT] to wait until it answers)"
		} else {
			addrs = "answers on " + addrs
		}
		t.Notes = append(t.Notes, fmt.Sprintf("service %s starts once %s, the cluster's service %s, %s (depends_on)", w.Service, w.Dependency, w.ClusterService, addrs))
	}
	// A local service that depends on a replaced one reaches it through
	// the cluster's DNS: it joins.
	for _, name := range slices.Sorted(maps.Keys(p.Services)) {
		if roles[name].Kind != RoleLocal {
			continue
		}
		for _, dep := range slices.Sorted(maps.Keys(p.Services[name].DependsOn)) {
			if _, ok := t.Replaced[dep]; ok {
				roles[name] = Role{Kind: RoleConnect}
				t.Notes = append(t.Notes, fmt.Sprintf("service %s joins tp's network (role connect): it depends on %s, which is the cluster's service %s", name, dep, t.Replaced[dep]))
				break
			}
		}
	}
	// fn runs concurrently (one goroutine per service): it only changes its
	// service; what tp collects comes from the loop after it.
	out, err := p.WithServicesTransform(func(name string, s types.ServiceConfig) (types.ServiceConfig, error) {
		r := roles[name]
		s.DependsOn = maps.Clone(s.DependsOn) // maps may be shared with p
		s.Labels = maps.Clone(s.Labels)
		for dep := range s.DependsOn {
			if _, ok := t.Replaced[dep]; ok {
				delete(s.DependsOn, dep) // tp waits for the cluster's service instead
			}
		}
		if len(s.DependsOn) == 0 {
			s.DependsOn = nil
		}
		if r.Kind == RoleLocal || r.Kind == RoleUseCluster {
			return s, nil
		}
		s.NetworkMode = types.NetworkModeContainerPrefix + daemonContainer
		s.Networks = nil
		s.Ports = nil  // the daemon container publishes them (below)
		s.Expose = nil // the namespace is shared
		if s.Labels == nil {
			s.Labels = types.Labels{}
		}
		s.Labels[LabelRole] = string(r.Kind)
		return s, nil
	})
	if err != nil {
		return nil, err
	}
	for _, name := range slices.Sorted(maps.Keys(p.Services)) {
		if !roles[name].Kind.Joins() {
			continue
		}
		s := p.Services[name]
		t.Joined = append(t.Joined, name)
		t.Publish = append(t.Publish, s.Ports...)
		if len(s.Expose) > 0 {
			t.Notes = append(t.Notes, fmt.Sprintf("service %s: expose dropped (it shares the daemon container's network namespace)", name))
		}
	}
	if len(t.Replaced) > 0 {
		out = out.WithServicesDisabled(slices.Sorted(maps.Keys(t.Replaced))...)
	}
	t.Project = out
	return t, nil
}

// clusterWaits are the depends_on on replaced services, sorted by service
// and dependency.
func clusterWaits(p *types.Project, replaced map[string]string) ([]ClusterWait, error) {
	var waits []ClusterWait
	for _, name := range slices.Sorted(maps.Keys(p.Services)) {
		if _, ok := replaced[name]; ok {
			continue // not started: nothing waits for its dependencies
		}
		deps := p.Services[name].DependsOn
		for _, dep := range slices.Sorted(maps.Keys(deps)) {
			cluster, ok := replaced[dep]
			if !ok {
				continue
			}
			d := deps[dep]
			if d.Condition == types.ServiceConditionCompletedSuccessfully {
				return nil, &ExtensionError{File: fileWith(p.ComposeFiles, name, ""), Service: name, Key: "depends_on." + dep,
					Msg: fmt.Sprintf("%s is the cluster's service %s (x-tp use-cluster), which never completes: use condition service_started or service_healthy", dep, cluster)}
			}
			ports, err := tcpPorts(p.Services[dep])
			if err != nil {
				return nil, &ExtensionError{File: fileWith(p.ComposeFiles, dep, ""), Service: dep, Key: "expose", Msg: err.Error()}
			}
			waits = append(waits, ClusterWait{Service: name, Dependency: dep, ClusterService: cluster, Ports: ports, Required: d.Required})
		}
	}
	return waits, nil
}

// tcpPorts are a service's TCP container ports, from expose and ports
// (sorted, once each; a range gives its first port).
func tcpPorts(s types.ServiceConfig) ([]uint32, error) {
	var ports []uint32
	for _, e := range s.Expose {
		spec, proto, _ := strings.Cut(e, "/")
		if proto != "" && proto != "tcp" {
			continue
		}
		first, _, _ := strings.Cut(spec, "-")
		n, err := strconv.ParseUint(first, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%q: want PORT[/tcp] (tp waits for the cluster's service on it)", e)
		}
		ports = append(ports, uint32(n))
	}
	for _, pc := range s.Ports {
		if pc.Protocol == "" || pc.Protocol == "tcp" {
			ports = append(ports, pc.Target)
		}
	}
	slices.Sort(ports)
	return slices.Compact(ports), nil
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
