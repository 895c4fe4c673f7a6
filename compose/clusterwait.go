package compose

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// ClusterDialer checks that an address answers through the connection
// (daemoncontainer.Client has it).
type ClusterDialer interface {
	DialCluster(ctx context.Context, addr string, timeout time.Duration) error
}

// ClusterWaitTimeout bounds how long up waits for a use-cluster service
// that a service depends on.
const ClusterWaitTimeout = 2 * time.Minute

// waitCluster waits, for each depends_on on a use-cluster service of the
// services up starts (all when services is empty), until the cluster's
// service answers through the connection: one of its ports accepts a
// connection (without ports: its name resolves). compose cannot wait for
// a service it does not run; a required dependency that does not answer
// within timeout fails up, another one is a warning.
func waitCluster(ctx context.Context, d ClusterDialer, waits []ClusterWait, started func(service string) bool, interval, timeout time.Duration, progress io.Writer) error {
	done := map[string]error{} // by dependency: each cluster service is waited for once
	for _, w := range waits {
		if !started(w.Service) {
			continue
		}
		err, ok := done[w.Dependency]
		if !ok {
			err = waitAnswer(ctx, d, w, interval, timeout, progress)
			done[w.Dependency] = err
		}
		switch {
		case err == nil:
		case ctx.Err() != nil:
			return ctx.Err()
		case w.Required:
			return fmt.Errorf("service %s depends on %s, the cluster's service %s: %w", w.Service, w.Dependency, w.ClusterService, err)
		default:
			fmt.Fprintf(progress, "tp: warning: service %s depends on %s (required: false), the cluster's service %s: %v\n", w.Service, w.Dependency, w.ClusterService, err)
		}
	}
	return nil
}

// waitAnswer dials w's cluster service until one of its ports answers.
func waitAnswer(ctx context.Context, d ClusterDialer, w ClusterWait, interval, timeout time.Duration, progress io.Writer) error {
	addrs := clusterAddrs(w)
	what := "to answer on " + strings.Join(addrs, ", ")
	if len(w.Ports) == 0 {
		what = "its name to resolve (give " + w.Dependency + " expose: [PORT] to wait until it answers)"
	}
	fmt.Fprintf(progress, "Waiting for %s, the cluster's service %s, %s\n", w.Dependency, w.ClusterService, what)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		for _, a := range addrs {
			dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
			last = d.DialCluster(dctx, a, 3*time.Second)
			dcancel()
			if last == nil {
				fmt.Fprintf(progress, "%s (the cluster's service %s) answers on %s\n", w.Dependency, w.ClusterService, a)
				return nil
			}
		}
		select {
		case <-ctx.Done():
			if last == nil {
				last = ctx.Err()
			}
			return fmt.Errorf("no answer within %s (last: %w); check its pods: kubectl get pods,endpoints in the connection's namespace", timeout, last)
		case <-time.After(interval):
		}
	}
}

// clusterAddrs are the addresses waitAnswer dials: the cluster service's
// name with each port, or its name alone.
func clusterAddrs(w ClusterWait) []string {
	if len(w.Ports) == 0 {
		return []string{w.ClusterService}
	}
	var out []string
	for _, p := range w.Ports {
		out = append(out, net.JoinHostPort(w.ClusterService, strconv.Itoa(int(p))))
	}
	return out
}
