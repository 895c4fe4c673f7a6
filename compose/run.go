package compose

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/docker/cli/cli/command"
	cliflags "github.com/docker/cli/cli/flags"
	composeapi "github.com/docker/compose/v5/pkg/api"
	composesvc "github.com/docker/compose/v5/pkg/compose"
	"github.com/docker/docker/api/types/network"
	dockerclient "github.com/docker/docker/client"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tp-run/tp/daemoncontainer"
	"github.com/tp-run/tp/intercept"
	"github.com/tp-run/tp/internal/dockerengine"
	"github.com/tp-run/tp/internal/version"
	daemonv1 "github.com/tp-run/tp/rpc/daemon/v1"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// Streams are where compose and tp write, and compose's stdin.
type Streams struct {
	In          io.ReadCloser
	Out, ErrOut io.Writer
}

// ConnectFunc makes sure the connection runs and publishes publish (docker
// -p specs): the CLI connects as `tp connect` does (kubeconfig, exec
// plugins), with the project's x-tp.connection.
type ConnectFunc func(ctx context.Context, conn Connection, publish []string) error

// UpOptions are `tp compose up`'s.
type UpOptions struct {
	// Detach (-d) returns once the services run; the intercepts stay
	// until `tp compose down`.
	Detach bool
	// Build builds the images of services with a build section before
	// starting them (--build); without it only missing images are built.
	Build bool
	// Connect starts the connection when it is not running.
	Connect ConnectFunc
}

// project is a loaded, planned and transformed project with what running
// it needs.
type project struct {
	*Transformed
	plan       *Plan
	connection string               // the connection's name
	daemon     string               // its container
	engine     *dockerengine.Engine // the engine the project runs on
	cluster    []netip.Prefix       // the cluster's ranges the daemon routes (set by avoidCluster)
}

func load(ctx context.Context, svc composeapi.Compose, lo LoadOptions) (*project, error) {
	p, err := loadWith(ctx, svc, lo)
	if err != nil {
		return nil, err
	}
	plan, err := ParsePlan(p)
	if err != nil {
		return nil, err
	}
	conn := cmp.Or(plan.Connection.Name, daemoncontainer.DefaultName)
	t, err := Transform(p, plan, daemoncontainer.ContainerName(conn))
	if err != nil {
		return nil, err
	}
	// The labels docker compose gives every service's containers, so that
	// docker compose (and tp compose) find them again.
	for name, s := range t.Project.Services {
		s.CustomLabels = map[string]string{
			composeapi.ProjectLabel:     t.Project.Name,
			composeapi.ServiceLabel:     name,
			composeapi.VersionLabel:     composeapi.ComposeVersion,
			composeapi.WorkingDirLabel:  t.Project.WorkingDir,
			composeapi.ConfigFilesLabel: strings.Join(t.Project.ComposeFiles, ","),
			composeapi.OneoffLabel:      "False",
			LabelProject:                t.Project.Name,
		}
		if len(lo.EnvFiles) > 0 {
			s.CustomLabels[composeapi.EnvironmentFileLabel] = strings.Join(lo.EnvFiles, ",")
		}
		t.Project.Services[name] = s
	}
	return &project{Transformed: t, plan: plan, connection: conn, daemon: daemoncontainer.ContainerName(conn), engine: lo.Engine}, nil
}

// publishSpecs are the daemon container's -p specs for the joined services' ports.
func (p *project) publishSpecs() []string {
	var specs []string
	for _, pc := range p.Publish {
		spec := strconv.Itoa(int(pc.Target))
		if pc.Published != "" {
			spec = pc.Published + ":" + spec
		}
		if pc.HostIP != "" {
			spec = pc.HostIP + ":" + spec
		}
		if pc.Protocol != "" && pc.Protocol != "tcp" {
			spec += "/" + pc.Protocol
		}
		specs = append(specs, spec)
	}
	return specs
}

// interceptName is the intercept of a service's port i: the project and
// service name it, so that `down` (another process) finds it again.
func interceptName(projectName, service string, ports []string, i int) string {
	name := projectName + "-" + service
	if len(ports) > 1 {
		local, _, _ := strings.Cut(ports[i], ":")
		name += "-" + local
	}
	return name
}

func newComposeService(s Streams, engine *dockerengine.Engine) (composeapi.Compose, error) {
	cli, err := command.NewDockerCli(command.WithOutputStream(s.Out), command.WithErrorStream(s.ErrOut), command.WithInputStream(s.In))
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	// The docker CLI's options that picked tp's engine, so that compose
	// resolves the same one (nil: the docker CLI's own choice).
	opts := cliflags.NewClientOptions()
	if engine != nil {
		opts = engine.ClientOptions()
	}
	if err := cli.Initialize(opts); err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	return composesvc.NewComposeService(cli, composesvc.WithStreams(s.Out, s.ErrOut, s.In))
}

// Up runs the project: it connects (publishing the joined services' ports
// on the daemon container), creates the intercepts and gives their
// services the pod's environment and volumes (compose's own win), builds
// missing images (all of them with Build), creates the containers, joins
// the daemon container to the project's networks (so local services reach
// joined ones by IP), waits for the use-cluster services that services
// depend on to answer, and starts them. In the foreground it streams the
// logs until Ctrl-C, then stops the services, removes the pod's volumes
// with the containers that mount them, and leaves the intercepts; with
// Detach all stay. Up twice is harmless: intercepts this project
// holds already are reused, unchanged containers stay.
//
// The project's containers record whether this up (or an earlier one of
// the project) started the connection, so that Down quits it.
func Up(ctx context.Context, lo LoadOptions, o UpOptions, s Streams) error {
	svc, err := newComposeService(s, lo.Engine)
	if err != nil {
		return err
	}
	p, err := load(ctx, svc, lo)
	if err != nil {
		return err
	}
	docker, err := lo.Engine.Client(ctx)
	if err != nil {
		return err
	}
	defer docker.Close()
	// Undo what this up did when it fails before the services exist.
	var (
		created          []*intercept.Intercept
		startsConnection bool
	)
	var aliased *daemoncontainer.Client // set the project's DNS aliases
	fail := func(err error) error {
		leave(ctx, created, s.ErrOut)
		if aliased != nil && !p.hasContainers(ctx, docker) {
			p.clearAliases(ctx, aliased, s.ErrOut)
		}
		if startsConnection && !p.hasContainers(ctx, docker) {
			if qerr := daemoncontainer.Quit(context.WithoutCancel(ctx), docker, p.connection); qerr == nil {
				fmt.Fprintf(s.ErrOut, "Disconnected %s (this up had started it)\n", p.daemon)
			}
		}
		return err
	}
	// A project without roles is docker compose's: no connection.
	var d *daemoncontainer.Client
	if len(p.plan.Roles) > 0 {
		if startsConnection, err = p.startsConnection(ctx, docker); err != nil {
			return err
		}
		p.setLabel(LabelConnection, p.connection)
		p.setLabel(LabelStartedConnection, strconv.FormatBool(startsConnection))
		if o.Connect != nil {
			conn := p.plan.Connection
			conn.Name = p.connection
			if err := o.Connect(ctx, conn, p.publishSpecs()); err != nil {
				return fail(err)
			}
		}
		if d, err = daemoncontainer.DialConnection(ctx, lo.Engine, p.connection); err != nil {
			return fail(err)
		}
		defer d.Close()
		if len(p.Aliases) > 0 {
			if err := p.setAliases(ctx, d); err != nil {
				return fail(err)
			}
			aliased = d
		}
		if created, err = p.intercept(ctx, d, s.ErrOut); err != nil {
			return fail(err)
		}
	}
	if o.Build {
		for name, sc := range p.Project.Services {
			if sc.Build != nil {
				sc.PullPolicy = types.PullPolicyBuild
				p.Project.Services[name] = sc
			}
		}
	}
	services := slices.DeleteFunc(slices.Clone(lo.Services), func(name string) bool { _, replaced := p.Replaced[name]; return replaced })
	create := composeapi.CreateOptions{
		Build:    &composeapi.BuildOptions{Services: p.Project.ServiceNames(), Deps: true, Progress: "plain", Out: s.ErrOut},
		Services: services, Recreate: composeapi.RecreateDiverged, RecreateDependencies: composeapi.RecreateDiverged,
	}
	if err := p.avoidCluster(ctx, d, docker, s.ErrOut); err != nil {
		return fail(err)
	}
	if err := svc.Create(ctx, p.Project, create); err != nil {
		return fail(fmt.Errorf("compose create: %w", err))
	}
	if len(created) > 0 {
		ids := map[string]bool{}
		for _, ic := range created {
			ids[ic.Info.GetId()] = true
		}
		// The containers Create recreated let go of an earlier up's volumes.
		if err := p.removeStaleVolumes(ctx, docker, ids); err != nil {
			fmt.Fprintf(s.ErrOut, "tp: warning: %v\n", err)
		}
	}
	if d != nil {
		if err := p.joinNetworks(ctx, docker, d.Connection.ContainerID); err != nil {
			leave(ctx, created, s.ErrOut)
			return err
		}
		if err := d.PointResolver(ctx); err != nil { // Docker rewrote it when the daemon joined the networks
			leave(ctx, created, s.ErrOut)
			return err
		}
		// compose does not wait for the services it does not run.
		started := func(service string) bool { return len(services) == 0 || slices.Contains(services, service) }
		if err := waitCluster(ctx, d, p.ClusterWaits, started, time.Second, ClusterWaitTimeout, s.ErrOut); err != nil {
			leave(ctx, created, s.ErrOut)
			return err
		}
	}
	start := composeapi.StartOptions{Project: p.Project, Services: services}
	if !o.Detach {
		start.Attach = &printer{out: s.Out, errOut: s.ErrOut}
	}
	again := create
	again.Build = nil // built by Create above
	err = svc.Up(ctx, p.Project, composeapi.UpOptions{Create: again, Start: start})
	if o.Detach && err == nil && len(created) > 0 {
		fmt.Fprintf(s.ErrOut, "Project %s is up; its intercepts stay until: tp compose down\n", p.Project.Name)
	}
	if o.Detach {
		return err
	}
	// Ctrl-C: compose stopped the services; the cluster's own pods take
	// the traffic again. The containers and the connection stay for the
	// next up, until tp compose down; those that mount the pod's volumes go
	// with the volumes (they cannot start without their intercept).
	if err := p.removeVolumes(context.WithoutCancel(ctx), docker, nil, s.ErrOut); err != nil {
		fmt.Fprintf(s.ErrOut, "tp: %v\n", err)
	}
	leave(ctx, created, s.ErrOut)
	if aliased != nil {
		p.clearAliases(ctx, aliased, s.ErrOut)
	}
	if len(created) > 0 {
		fmt.Fprintf(s.ErrOut, "Stopped project %s and left its intercepts; remove its containers (and the connection, when up started it) with: tp compose down\n", p.Project.Name)
	}
	return err
}

// aliasOwner is the owner of the project's DNS aliases in the daemon.
func (p *project) aliasOwner() string { return "compose:" + p.Project.Name }

// setAliases has the daemon's DNS answer the names of the project's
// use-cluster services as their cluster services.
func (p *project) setAliases(ctx context.Context, d *daemoncontainer.Client) error {
	req := &daemonv1.SetAliasesRequest{Owner: p.aliasOwner(), Aliases: p.Aliases}
	_, err := d.SetAliases(ctx, req)
	// Unavailable: the daemon's network (and DNS) is not up yet.
	for deadline := time.Now().Add(30 * time.Second); status.Code(err) == codes.Unavailable && time.Now().Before(deadline); {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
		_, err = d.SetAliases(ctx, req)
	}
	switch status.Code(err) {
	case codes.OK:
		return nil
	case codes.Unimplemented:
		return fmt.Errorf("the daemon of connection %s cannot alias %s: it is older than this tp; reconnect with tp quit %s and tp compose up: %w",
			p.connection, strings.Join(sortedKeys(p.Aliases), ", "), p.connection, err)
	default:
		return fmt.Errorf("set the DNS aliases %s of project %s: %w", strings.Join(sortedKeys(p.Aliases), ", "), p.Project.Name, err)
	}
}

// clearAliases removes the project's DNS aliases (even when ctx is
// cancelled: Ctrl-C); failures are reported on progress.
func (p *project) clearAliases(ctx context.Context, d *daemoncontainer.Client, progress io.Writer) {
	_, err := d.SetAliases(context.WithoutCancel(ctx), &daemonv1.SetAliasesRequest{Owner: p.aliasOwner()})
	if err != nil {
		fmt.Fprintf(progress, "tp: warning: remove the DNS aliases of project %s: %s\n", p.Project.Name, status.Convert(err).Message())
		return
	}
	fmt.Fprintf(progress, "Removed DNS aliases %s\n", strings.Join(sortedKeys(p.Aliases), ", "))
}

// leave leaves the intercepts (even when ctx is cancelled: Ctrl-C).
func leave(ctx context.Context, ics []*intercept.Intercept, progress io.Writer) {
	for _, ic := range ics {
		if err := ic.Leave(ctx); err != nil {
			fmt.Fprintf(progress, "tp: %v\n", err)
		} else {
			fmt.Fprintf(progress, "Left intercept %s\n", ic.Name())
		}
	}
}

// intercept creates the project's intercepts (or finds those it holds
// already) and puts the pod's environment and volumes into their services.
func (p *project) intercept(ctx context.Context, d *daemoncontainer.Client, progress io.Writer) ([]*intercept.Intercept, error) {
	var created []*intercept.Intercept
	for _, service := range slices.Sorted(maps.Keys(p.plan.Roles)) {
		ris, err := p.roleIntercepts(service)
		if err != nil {
			return created, err
		}
		for i, ri := range ris {
			ic, err := intercept.Create(ctx, d, ri.opts)
			if err != nil {
				return created, fmt.Errorf("service %s: %w", service, err)
			}
			created = append(created, ic)
			if ri.opts.Ingest {
				fmt.Fprintf(progress, "Ingested %s/%s for service %s: its env and mounts, no traffic\n", ic.Namespace(), ri.opts.Workload, service)
			} else {
				fmt.Fprintf(progress, "Intercepted %s/%s for service %s: its traffic goes to port %d (%d of %d ready endpoints route to it)\n",
					ic.Namespace(), ri.opts.Workload, service, ri.opts.LocalPort, ic.Info.GetRoutedEndpoints(), ic.Info.GetReadyEndpoints())
			}
			if ri.env == nil || *ri.env {
				p.addEnv(service, ic.Env())
			}
			if i == 0 { // one set of volumes for the service
				if err := p.mountVolumes(ctx, d.Docker(), d, ic, service, ri.mounts, version.Version, progress); err != nil {
					return created, err
				}
			}
		}
	}
	return created, nil
}

// roleIntercept is one intercept that a service's role asks for.
type roleIntercept struct {
	opts   intercept.Options
	env    *bool
	mounts Mounts
}

// roleIntercepts are the intercepts of a service's role: one per port of
// x-tp.intercept, one without traffic for x-tp.ingest, none for the others.
// Their names are the project's and the service's, so that `down` (another
// process) finds them again.
func (p *project) roleIntercepts(service string) ([]roleIntercept, error) {
	role := p.plan.Roles[service]
	if g := role.Ingest; g != nil {
		return []roleIntercept{{
			opts: intercept.Options{
				Connection: p.connection, Workload: g.Workload, Name: interceptName(p.Project.Name, service, nil, 0),
				Namespace: p.plan.Connection.Namespace, Container: g.Container, Ingest: true,
			},
			env: g.Env, mounts: g.Mounts,
		}}, nil
	}
	r := role.Intercept
	if r == nil {
		return nil, nil
	}
	var out []roleIntercept
	for i, port := range r.Ports {
		local, svcPort, err := intercept.ParsePort(port)
		if err != nil {
			return nil, &ExtensionError{Service: service, Key: Extension + ".intercept.ports", Msg: err.Error()}
		}
		out = append(out, roleIntercept{
			opts: intercept.Options{
				Connection: p.connection, Workload: r.Workload, Name: interceptName(p.Project.Name, service, r.Ports, i),
				Namespace: p.plan.Connection.Namespace, Service: r.Service, Container: r.Container,
				ServicePort: svcPort, LocalPort: local, Headers: r.Headers, PathPrefix: r.PathPrefix,
			},
			env: r.Env, mounts: r.Mounts,
		})
	}
	return out, nil
}

// addEnv gives the service env where compose defines no value.
func (p *project) addEnv(service string, env map[string]string) {
	s := p.Project.Services[service]
	if s.Environment == nil {
		s.Environment = types.MappingWithEquals{}
	}
	for k, v := range env {
		if _, ok := s.Environment[k]; !ok {
			s.Environment[k] = &v
		}
	}
	p.Project.Services[service] = s
}

// joinNetworks connects the daemon container to the project's networks,
// with the joined services' names as its aliases there.
func (p *project) joinNetworks(ctx context.Context, docker dockerclient.APIClient, daemonID string) error {
	info, err := docker.ContainerInspect(ctx, daemonID)
	if err != nil {
		return fmt.Errorf("inspect the daemon container %s: %w", p.daemon, err)
	}
	if err := p.checkSubnets(ctx, docker, p.cluster); err != nil {
		return err
	}
	for _, key := range slices.Sorted(maps.Keys(p.Project.Networks)) {
		n := p.Project.Networks[key]
		if n.External || n.Name == "" {
			continue
		}
		if _, joined := info.NetworkSettings.Networks[n.Name]; joined {
			continue // up twice
		}
		// The joined services' names are the daemon container's aliases:
		// Docker's DNS gives local services its address for them.
		if err := docker.NetworkConnect(ctx, n.Name, daemonID, &network.EndpointSettings{Aliases: p.Joined}); err != nil {
			return fmt.Errorf("join the daemon container %s to network %s: %w", p.daemon, n.Name, err)
		}
	}
	return nil
}

// leaveNetworks disconnects the daemon container from the project's
// networks, so that compose can remove them.
func (p *project) leaveNetworks(ctx context.Context, docker dockerclient.APIClient) {
	for _, n := range p.Project.Networks {
		if !n.External && n.Name != "" {
			_ = docker.NetworkDisconnect(ctx, n.Name, p.daemon, true)
		}
	}
}

// DownOptions are `tp compose down`'s.
type DownOptions struct {
	// Volumes (-v) also removes the project's named volumes.
	Volumes bool
}

// Down stops and removes the project's containers and networks (as docker
// compose down does), leaves every intercept the project holds, removes
// tp's volumes of the project, and quits the connection when the
// project's up started it and no other compose project uses it.
func Down(ctx context.Context, lo LoadOptions, o DownOptions, s Streams) error {
	svc, err := newComposeService(s, lo.Engine)
	if err != nil {
		return err
	}
	p, err := load(ctx, svc, lo)
	if err != nil {
		return err
	}
	docker, err := lo.Engine.Client(ctx)
	if err != nil {
		return err
	}
	defer docker.Close()
	startedConnection, err := p.startedConnection(ctx, docker)
	if err != nil {
		return err
	}
	p.leaveNetworks(ctx, docker)
	timeout := 10 * time.Second
	downErr := svc.Down(ctx, p.Project.Name, composeapi.DownOptions{Project: p.Project, RemoveOrphans: true, Volumes: o.Volumes, Timeout: &timeout})
	if downErr != nil {
		downErr = fmt.Errorf("compose down: %w", downErr)
	}
	errs := []error{downErr}
	var (
		others    []string // intercepts of the connection's session not of the project
		connected bool     // the connection runs
		unsure    bool     // the daemon could not say whether others use it
	)
	d, err := daemoncontainer.DialConnection(ctx, lo.Engine, p.connection)
	switch {
	case errors.Is(err, daemoncontainer.ErrNotConnected):
		// no connection: no intercepts to leave
	case err != nil:
		errs = append(errs, err)
	default:
		connected = true
		errs = append(errs, p.leaveIntercepts(ctx, d, nil, s.ErrOut))
		if len(p.Aliases) > 0 {
			p.clearAliases(ctx, d, s.ErrOut)
		}
		if startedConnection {
			if others, err = p.otherIntercepts(ctx, d); err != nil {
				// No answer is no proof that no one else uses the connection.
				errs = append(errs, err)
				unsure = true
			}
		}
		d.Close()
	}
	if err := p.removeVolumes(ctx, docker, nil, s.ErrOut); err != nil {
		errs = append(errs, err)
	}
	switch {
	case !startedConnection:
		if connected && len(p.plan.Roles) > 0 {
			fmt.Fprintf(s.ErrOut, "Kept connection %s: tp compose up did not start it\n", p.daemon)
		}
	case downErr != nil, unsure:
	case len(others) > 0:
		fmt.Fprintf(s.ErrOut, "Kept connection %s (tp compose up had started it): intercept %s, not of project %s, uses it\n",
			p.daemon, strings.Join(others, ", "), p.Project.Name)
	default:
		errs = append(errs, p.quitConnection(ctx, docker, s.ErrOut))
	}
	return errors.Join(errs...)
}

// leaveIntercepts ends the intercepts of services (all of the project's
// when nil), by name: up ran in another process.
func (p *project) leaveIntercepts(ctx context.Context, d *daemoncontainer.Client, services []string, progress io.Writer) error {
	var errs []error
	for _, service := range slices.Sorted(maps.Keys(p.plan.Roles)) {
		if services != nil && !slices.Contains(services, service) {
			continue
		}
		ris, err := p.roleIntercepts(service)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, ri := range ris {
			name := ri.opts.Name
			_, err := d.RemoveIntercept(ctx, &managerv1.RemoveInterceptRequest{Name: name, Namespace: p.plan.Connection.Namespace})
			switch status.Code(err) {
			case codes.OK:
				fmt.Fprintf(progress, "Left intercept %s\n", name)
			case codes.NotFound:
			default:
				errs = append(errs, fmt.Errorf("leave %s: %s", name, status.Convert(err).Message()))
			}
		}
	}
	return errors.Join(errs...)
}

// otherIntercepts are the intercepts that the connection's session holds
// in the project's namespace and that are not the project's: e.g. one made
// by tp intercept by hand. Quitting the connection would end them.
func (p *project) otherIntercepts(ctx context.Context, d *daemoncontainer.Client) ([]string, error) {
	lctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	st, err := d.Status(lctx, &daemonv1.StatusRequest{})
	if err != nil {
		return nil, fmt.Errorf("the daemon in %s does not answer, so tp keeps the connection: %s", p.daemon, status.Convert(err).Message())
	}
	resp, err := d.ListWorkloads(lctx, &managerv1.ListWorkloadsRequest{Namespace: p.plan.Connection.Namespace})
	if err != nil {
		return nil, fmt.Errorf("the traffic-manager does not answer, so tp keeps connection %s: %s", p.daemon, status.Convert(err).Message())
	}
	ours := map[string]bool{}
	for _, service := range sortedKeys(p.plan.Roles) {
		ris, err := p.roleIntercepts(service)
		if err != nil {
			return nil, err
		}
		for _, ri := range ris {
			ours[ri.opts.Name] = true
		}
	}
	var others []string
	for _, w := range resp.GetWorkloads() {
		for _, ic := range w.GetIntercepts() {
			if ic.GetSessionId() == st.GetSessionId() && !ours[ic.GetSpec().GetName()] {
				others = append(others, ic.GetSpec().GetName())
			}
		}
	}
	slices.Sort(others)
	return others, nil
}

// printer writes the services' logs as docker compose does, a prefix each.
type printer struct{ out, errOut io.Writer }

func (p *printer) Log(container, msg string) { fmt.Fprintf(p.out, "%s | %s\n", container, msg) }
func (p *printer) Err(container, msg string) { fmt.Fprintf(p.errOut, "%s | %s\n", container, msg) }
func (p *printer) Status(container, msg string) {
	fmt.Fprintf(p.errOut, "%s %s\n", container, msg)
}
