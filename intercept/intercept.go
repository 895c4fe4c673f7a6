// Package intercept is the host side of an intercept: it asks the
// connection's daemon container for the intercept, hands local containers
// the pod's environment, watches that the intercept still exists, and
// leaves it. `tp intercept` and `tp compose` share it, so an intercept
// behaves the same whichever started it. What runs inside the daemon
// container (the session, the tunnel, dialing intercepted connections)
// lives in daemoncontainer/daemon; this package talks to it only through
// the daemon API.
package intercept

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/client"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/tp-run/tp/internal/phasetrace"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// Daemon is the part of the daemon API an intercept needs
// (daemoncontainer.Client has it).
type Daemon interface {
	CreateIntercept(ctx context.Context, in *managerv1.InterceptSpec, opts ...grpc.CallOption) (*managerv1.InterceptInfo, error)
	RemoveIntercept(ctx context.Context, in *managerv1.RemoveInterceptRequest, opts ...grpc.CallOption) (*managerv1.RemoveInterceptResponse, error)
	ListWorkloads(ctx context.Context, in *managerv1.ListWorkloadsRequest, opts ...grpc.CallOption) (*managerv1.ListWorkloadsResponse, error)
}

// Options says what to intercept.
type Options struct {
	// Connection names the connection (for TP_CONNECTION and messages).
	Connection string
	// Workload is the Deployment, StatefulSet or ReplicaSet; Name is the
	// intercept's name (default: Workload).
	Workload, Name string
	// Namespace of the workload (default: the connection's).
	Namespace string
	// Service and Container pick among several; ServicePort is a name or
	// number (default: the only one).
	Service, Container, ServicePort string
	// LocalPort receives the traffic in the daemon container's network
	// namespace.
	LocalPort int32
	// Headers and PathPrefix make the intercept personal: only matching
	// HTTP requests reach LocalPort.
	Headers    map[string]string
	PathPrefix string
	// Ingest asks for the pod's environment and mounts only: no traffic
	// reaches the caller, and Service, ServicePort, LocalPort, Headers and
	// PathPrefix must be empty.
	Ingest bool
	// Timeout bounds the wait for the agent (a first injection rolls the
	// workload); default 2 minutes.
	Timeout time.Duration
}

// Intercept is an intercept this process created; Leave ends it.
type Intercept struct {
	// Info is what the traffic-manager answered: the intercept, the pod's
	// environment, how many endpoints route to it.
	Info *managerv1.InterceptInfo
	// Took is how long the intercept took to be in place.
	Took time.Duration

	d          Daemon
	connection string
	leaveOnce  sync.Once
	leaveErr   error
	// docker and volumes are set by CreateVolumes; Leave removes them.
	docker  client.APIClient
	volumes []Volume
}

// Create asks the daemon for the intercept and returns once every ready
// endpoint of its service routes to it (the traffic-manager waits for that).
func Create(ctx context.Context, d Daemon, opts Options) (*Intercept, error) {
	name := opts.Name
	if name == "" {
		name = opts.Workload
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	end := phasetrace.Begin("CreateIntercept RPC")
	info, err := d.CreateIntercept(cctx, &managerv1.InterceptSpec{
		Name: name, Workload: opts.Workload, Namespace: opts.Namespace, Service: opts.Service, Container: opts.Container,
		ServicePort: opts.ServicePort, LocalPort: opts.LocalPort, Headers: opts.Headers, PathPrefix: opts.PathPrefix,
		Ingest: opts.Ingest,
	})
	end()
	if err != nil {
		return nil, fmt.Errorf("intercept %s: %w", opts.Workload, statusError(err))
	}
	return &Intercept{Info: info, Took: time.Since(start), d: d, connection: opts.Connection}, nil
}

// Name and Namespace are the intercept's.
func (ic *Intercept) Name() string      { return ic.Info.GetSpec().GetName() }
func (ic *Intercept) Namespace() string { return ic.Info.GetSpec().GetNamespace() }

// Env is the pod's environment plus TP_* variables naming the intercept.
func (ic *Intercept) Env() map[string]string {
	env := maps.Clone(ic.Info.GetEnvironment())
	if env == nil {
		env = map[string]string{}
	}
	env["TP_INTERCEPT_ID"] = ic.Info.GetId()
	env["TP_INTERCEPT_NAME"] = ic.Name()
	env["TP_WORKLOAD"] = ic.Info.GetSpec().GetWorkload()
	env["TP_NAMESPACE"] = ic.Namespace()
	env["TP_POD"] = ic.Info.GetPodName()
	env["TP_CONNECTION"] = ic.connection
	return env
}

// Leave removes the intercept's volumes and ends the intercept (once;
// later calls return the first result). The containers that use the
// volumes must be gone (RunContainer removes its own).
// It runs even when ctx is already cancelled (Ctrl-C), within 15 s.
func (ic *Intercept) Leave(ctx context.Context) error {
	ic.leaveOnce.Do(func() {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
		defer cancel()
		var errs []error
		if err := ic.RemoveVolumes(lctx); err != nil {
			errs = append(errs, fmt.Errorf("leave %s: %w", ic.Name(), err))
		}
		if _, err := ic.d.RemoveIntercept(lctx, &managerv1.RemoveInterceptRequest{Name: ic.Name(), Namespace: ic.Namespace()}); err != nil {
			errs = append(errs, fmt.Errorf("leave %s: %w", ic.Name(), statusError(err)))
		}
		ic.leaveErr = errors.Join(errs...)
	})
	return ic.leaveErr
}

// PollInterval is how often Watch checks that the intercept still exists.
const PollInterval = 2 * time.Second

// ErrEnded says that the intercept was removed by someone else than its
// creator: `tp leave` in another shell, the session TTL, an administrator,
// or a restarted traffic-manager.
var ErrEnded = errors.New("intercept ended elsewhere")

// EndedError is ErrEnded for one intercept.
type EndedError struct{ Name string }

func (e *EndedError) Error() string {
	return fmt.Sprintf("intercept %s was ended elsewhere (tp leave, the session TTL or an administrator); the container was stopped", e.Name)
}

func (e *EndedError) Is(target error) bool { return target == ErrEnded }

// Watch polls the daemon every interval until the intercept (by id) is no
// longer among its namespace's intercepts, and then returns an EndedError;
// it returns nil when ctx ends. Failed polls (the daemon is reconnecting,
// the manager restarts) are no answer: it polls on, and says on progress
// when the connection was lost and when it came back.
func (ic *Intercept) Watch(ctx context.Context, interval time.Duration, progress io.Writer) error {
	return watch(ctx, ic.d, ic.Info, interval, progress)
}

// workloadLister is the part of the daemon API that watch needs.
type workloadLister interface {
	ListWorkloads(ctx context.Context, in *managerv1.ListWorkloadsRequest, opts ...grpc.CallOption) (*managerv1.ListWorkloadsResponse, error)
}

func watch(ctx context.Context, d workloadLister, info *managerv1.InterceptInfo, interval time.Duration, progress io.Writer) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	lost := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		lctx, cancel := context.WithTimeout(ctx, max(interval, 5*time.Second))
		resp, err := d.ListWorkloads(lctx, &managerv1.ListWorkloadsRequest{Namespace: info.GetSpec().GetNamespace()})
		cancel()
		if err != nil {
			if !lost && ctx.Err() == nil {
				lost = true
				fmt.Fprintf(progress, "Lost the connection to the traffic-manager (%s); intercept %s and the container stay while tp reconnects (see `tp status`)\n",
					status.Convert(err).Message(), info.GetSpec().GetName())
			}
			continue
		}
		if !hasIntercept(resp, info.GetId()) {
			return &EndedError{Name: info.GetSpec().GetName()}
		}
		if lost {
			lost = false
			fmt.Fprintf(progress, "Connection to the traffic-manager resumed; intercept %s is still in place\n", info.GetSpec().GetName())
		}
	}
}

// ParsePort parses LOCAL[:SVCPORT].
func ParsePort(s string) (local int32, svcPort string, err error) {
	l, svc, _ := strings.Cut(s, ":")
	n, err := strconv.ParseUint(l, 10, 16)
	if err != nil || n == 0 {
		return 0, "", fmt.Errorf("--port %q: want LOCAL[:SVCPORT], LOCAL a port number (SVCPORT a service port name or number)", s)
	}
	return int32(n), svc, nil
}

// hasIntercept says whether resp lists the intercept with id.
func hasIntercept(resp *managerv1.ListWorkloadsResponse, id string) bool {
	for _, w := range resp.GetWorkloads() {
		for _, ic := range w.GetIntercepts() {
			if ic.GetId() == id {
				return true
			}
		}
	}
	return false
}

// statusError turns a gRPC error into one whose text is the status message
// (what the manager or daemon says to do) and that keeps its status, so
// callers can still ask status.Code.
func statusError(err error) error {
	s, ok := status.FromError(err)
	if !ok {
		return err
	}
	return &grpcError{s: s}
}

type grpcError struct{ s *status.Status }

func (e *grpcError) Error() string              { return e.s.Message() }
func (e *grpcError) GRPCStatus() *status.Status { return e.s }
