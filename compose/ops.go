package compose

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	composeapi "github.com/docker/compose/v5/pkg/api"
	"google.golang.org/grpc/status"

	"github.com/tp-run/tp/daemoncontainer"
	daemonv1 "github.com/tp-run/tp/rpc/daemon/v1"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// StopOptions are `tp compose stop`'s.
type StopOptions struct {
	// Services to stop (empty: all).
	Services []string
	// Timeout before compose kills a container (default: compose's, 10 s).
	Timeout *time.Duration
}

// Stop stops the services' containers (as docker compose stop does) and
// leaves their intercepts, as Ctrl-C of a foreground up does (the
// containers that mount the pod's volumes are removed with the volumes): the
// cluster's own pods take the traffic again. `tp compose up` starts them
// and intercepts again; `tp compose down` removes them.
func Stop(ctx context.Context, lo LoadOptions, o StopOptions, s Streams) error {
	svc, err := newComposeService(s, lo.Engine)
	if err != nil {
		return err
	}
	p, err := load(ctx, svc, lo)
	if err != nil {
		return err
	}
	services := slices.DeleteFunc(slices.Clone(o.Services), func(name string) bool { _, replaced := p.Replaced[name]; return replaced })
	if err := svc.Stop(ctx, p.Project.Name, composeapi.StopOptions{Project: p.Project, Services: services, Timeout: o.Timeout}); err != nil {
		return fmt.Errorf("compose stop: %w", err)
	}
	var only []string
	if len(o.Services) > 0 {
		only = o.Services
	}
	docker, err := p.engine.Client(ctx)
	if err != nil {
		return err
	}
	defer docker.Close()
	// The volumes go with their intercepts, and the stopped containers
	// that mount them (up makes them anew), as on Ctrl-C of up.
	volErr := p.removeVolumes(ctx, docker, only, s.ErrOut)
	d, err := daemoncontainer.DialConnection(ctx, p.engine, p.connection)
	if errors.Is(err, daemoncontainer.ErrNotConnected) {
		return volErr
	}
	if err != nil {
		return errors.Join(volErr, err)
	}
	defer d.Close()
	return errors.Join(volErr, p.leaveIntercepts(ctx, d, only, s.ErrOut))
}

// LogsOptions are `tp compose logs`'.
type LogsOptions struct {
	Services   []string
	Follow     bool
	Tail       string
	Timestamps bool
}

// Logs writes the services' logs, a prefix each, as docker compose logs does.
func Logs(ctx context.Context, lo LoadOptions, o LogsOptions, s Streams) error {
	svc, err := newComposeService(s, lo.Engine)
	if err != nil {
		return err
	}
	p, err := load(ctx, svc, lo)
	if err != nil {
		return err
	}
	services := slices.DeleteFunc(slices.Clone(o.Services), func(name string) bool { _, replaced := p.Replaced[name]; return replaced })
	err = svc.Logs(ctx, p.Project.Name, &printer{out: s.Out, errOut: s.ErrOut}, composeapi.LogOptions{
		Project: p.Project, Services: services, Follow: o.Follow, Tail: cmp.Or(o.Tail, "all"), Timestamps: o.Timestamps,
	})
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("compose logs: %w", err)
	}
	return nil
}

// ServiceState is one service of `tp compose ps`: its containers as docker
// compose ps shows them, and what tp does with it.
type ServiceState struct {
	Service string `json:"service"`
	// Role is local, intercept, connect, ingest or use-cluster.
	Role string `json:"role"`
	// ClusterService is the cluster's service a use-cluster service is.
	ClusterService string `json:"clusterService,omitempty"`
	// Containers are the service's containers (none: not created, or a
	// use-cluster service, which is never started).
	Containers []ContainerState `json:"containers,omitempty"`
	// Ports are the service's published ports: a joined service's are
	// published by the daemon container.
	Ports []string `json:"ports,omitempty"`
	// Intercepts are an intercept role's intercepts, one per port.
	Intercepts []InterceptState `json:"intercepts,omitempty"`
}

// ContainerState is one container of a service.
type ContainerState struct {
	Name   string `json:"name"`
	State  string `json:"state"`  // running, exited, created, ...
	Status string `json:"status"` // Docker's: "Up 3 minutes (healthy)"
	Health string `json:"health,omitempty"`
}

// InterceptState is one intercept of a service.
type InterceptState struct {
	Name     string `json:"name"`
	Workload string `json:"workload"`
	Port     string `json:"port"` // LOCAL[:SVCPORT]
	// State is active or waiting (the manager's), "not intercepting"
	// (the project does not hold it: not up, stopped, or left), or
	// "unknown: ..." when the connection cannot say.
	State     string            `json:"state"`
	Namespace string            `json:"namespace,omitempty"`
	Headers   map[string]string `json:"headers,omitempty"`
	// PathPrefix makes it personal, with Headers.
	PathPrefix string `json:"pathPrefix,omitempty"`
}

// PsOptions are `tp compose ps`'.
type PsOptions struct {
	Services []string
}

// Ps lists the project's services: their containers (any state, as docker
// compose ps -a), tp's role of each, and the intercepts' state as the
// traffic-manager has it.
func Ps(ctx context.Context, lo LoadOptions, o PsOptions, s Streams) ([]ServiceState, error) {
	svc, err := newComposeService(s, lo.Engine)
	if err != nil {
		return nil, err
	}
	lo.Services = o.Services
	p, err := load(ctx, svc, lo)
	if err != nil {
		return nil, err
	}
	cs, err := svc.Ps(ctx, p.Project.Name, composeapi.PsOptions{Project: p.Project, All: true})
	if err != nil {
		return nil, fmt.Errorf("compose ps: %w", err)
	}
	intercepts, icErr := p.heldIntercepts(ctx)
	original, _ := loadWith(ctx, svc, lo) // for the joined services' own ports
	var out []ServiceState
	names := append(p.Project.ServiceNames(), slices.Collect(maps.Keys(p.Replaced))...)
	slices.Sort(names)
	for _, name := range names {
		st := ServiceState{Service: name, Role: "local"}
		if cluster, ok := p.Replaced[name]; ok {
			st.Role, st.ClusterService = string(RoleUseCluster), cluster
			out = append(out, st)
			continue
		}
		sc := p.Project.Services[name]
		if role := sc.Labels[LabelRole]; role != "" {
			st.Role = role
		}
		for _, c := range cs {
			if c.Service == name {
				st.Containers = append(st.Containers, ContainerState{Name: c.Name, State: string(c.State), Status: c.Status, Health: string(c.Health)})
				for _, pub := range c.Publishers {
					if pub.PublishedPort != 0 {
						st.Ports = append(st.Ports, pub.String())
					}
				}
			}
		}
		if RoleKind(st.Role).Joins() && original != nil {
			for _, pc := range original.Services[name].Ports {
				st.Ports = append(st.Ports, fmt.Sprintf("%s:%s->%d/%s (published by %s)", cmp.Or(pc.HostIP, "0.0.0.0"), pc.Published, pc.Target, cmp.Or(pc.Protocol, "tcp"), p.daemon))
			}
		}
		if r := p.plan.Roles[name].Intercept; r != nil {
			for i, port := range r.Ports {
				ic := InterceptState{Name: interceptName(p.Project.Name, name, r.Ports, i), Workload: r.Workload, Port: port,
					Namespace: p.plan.Connection.Namespace, Headers: r.Headers, PathPrefix: r.PathPrefix}
				switch held, ok := intercepts[ic.Name]; {
				case icErr != nil:
					ic.State = "unknown: " + icErr.Error()
				case ok && !held.ours:
					o := held.info.GetOwner()
					ic.State = fmt.Sprintf("held by another session: %s@%s (connection %s)", o.GetUser(), o.GetHost(), o.GetName())
				case ok:
					ic.State = strings.ToLower(strings.TrimPrefix(held.info.GetState().String(), "INTERCEPT_STATE_"))
					ic.Namespace = held.info.GetSpec().GetNamespace()
				default:
					ic.State = "not intercepting"
				}
				st.Intercepts = append(st.Intercepts, ic)
			}
		}
		out = append(out, st)
	}
	return out, nil
}

// heldIntercept is an intercept of the project's namespace; ours when this
// connection's session holds it.
type heldIntercept struct {
	info *managerv1.InterceptInfo
	ours bool
}

// heldIntercepts are the intercepts of the project's namespace, by name.
func (p *project) heldIntercepts(ctx context.Context) (map[string]heldIntercept, error) {
	d, err := daemoncontainer.DialConnection(ctx, p.engine, p.connection)
	if errors.Is(err, daemoncontainer.ErrNotConnected) {
		return nil, nil // no connection, no intercepts
	}
	if err != nil {
		return nil, err
	}
	defer d.Close()
	lctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	st, err := d.Status(lctx, &daemonv1.StatusRequest{})
	if err != nil {
		return nil, fmt.Errorf("the daemon in %s does not answer: %s", p.daemon, status.Convert(err).Message())
	}
	resp, err := d.ListWorkloads(lctx, &managerv1.ListWorkloadsRequest{Namespace: p.plan.Connection.Namespace})
	if err != nil {
		return nil, fmt.Errorf("the traffic-manager does not answer: %s", status.Convert(err).Message())
	}
	out := map[string]heldIntercept{}
	for _, w := range resp.GetWorkloads() {
		for _, ic := range w.GetIntercepts() {
			out[ic.GetSpec().GetName()] = heldIntercept{info: ic, ours: ic.GetSessionId() == st.GetSessionId()}
		}
	}
	return out, nil
}
