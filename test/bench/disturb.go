package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The traffic-manager is shared: on the local cluster other engineers' tests
// upgrade, restart or uninstall it while the bench runs. A tp measurement
// during which the connection changed (the manager's pods, or the daemon's
// session and reconnects) measured that event, not tp: the bench notes it,
// waits until the cluster, the manager's rollout and the connection are ready
// and runs the measurement again (three attempts in all, every retry
// reported). A measurement that failed is retried the same way.

// tpStatus is the part of `tp status -o json` the bench reads.
type tpStatus struct {
	State          string `json:"state"`
	LastError      string `json:"lastError"`
	SessionID      string `json:"sessionID"`
	ManagerVersion string `json:"managerVersion"`
	Reconnects     int    `json:"reconnects"`
}

// fingerprint says who serves the connection: equal fingerprints before and
// after a measurement mean nothing changed under it.
type fingerprint struct {
	session, managerVersion string
	reconnects              int
	managerPods             string
}

func (f fingerprint) String() string {
	return fmt.Sprintf("session %s, reconnects %d, manager %s pods [%s]", f.session, f.reconnects, f.managerVersion, f.managerPods)
}

// waitConnected waits until the API server is ready, the traffic-manager's
// rollout is complete and the bench connection is connected, and returns its
// fingerprint.
func (b *bench) waitConnected(ctx context.Context, timeout time.Duration) (fingerprint, error) {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		fp, err := b.connectedNow(ctx)
		if err == nil {
			return fp, nil
		}
		last = err.Error()
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fingerprint{}, fmt.Errorf("connection %s not ready within %s: %s", b.o.name, timeout, last)
		}
		sleep(ctx, 500*time.Millisecond)
	}
}

// connectedNow returns the fingerprint when everything is ready now.
func (b *bench) connectedNow(ctx context.Context) (fingerprint, error) {
	if _, err := b.k.client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx); err != nil {
		return fingerprint{}, fmt.Errorf("API server not ready: %w", err)
	}
	if err := b.k.deploymentReady(ctx, b.o.managerNamespace, "traffic-manager"); err != nil {
		return fingerprint{}, err
	}
	pods, err := b.managerPods(ctx)
	if err != nil {
		return fingerprint{}, err
	}
	out, err := b.tp(ctx, 30*time.Second, "status", "--name", b.o.name, "-o", "json")
	if err != nil {
		return fingerprint{}, fmt.Errorf("tp status: %w: %s", err, strings.TrimSpace(out))
	}
	var st tpStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return fingerprint{}, fmt.Errorf("decode tp status %q: %w", out, err)
	}
	if st.State != "connected" {
		return fingerprint{}, fmt.Errorf("connection %s: %s %s", b.o.name, st.State, st.LastError)
	}
	return fingerprint{session: st.SessionID, managerVersion: st.ManagerVersion, reconnects: st.Reconnects,
		managerPods: strings.Join(pods, " ")}, nil
}

// managerPods names the traffic-manager's pods that are not terminating.
func (b *bench) managerPods(ctx context.Context) ([]string, error) {
	pods, err := b.k.client.CoreV1().Pods(b.o.managerNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=traffic-manager"})
	if err != nil {
		return nil, fmt.Errorf("list traffic-manager pods: %w", err)
	}
	var names []string
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			names = append(names, p.Name)
		}
	}
	slices.Sort(names)
	return names, nil
}

// tpPhase is phase for a measurement through tp. When the connection changed
// under it or it failed, it is run again once everything is ready, three
// attempts in all; every retry is reported. A disturbed run's results are
// kept under "KEY (disturbed)" for each of keys.
func (b *bench) tpPhase(ctx context.Context, name string, keys []string, fn func(context.Context) error) {
	b.tpPhaseAttempts(ctx, name, keys, 3, fn)
}

// tpPhaseAttempts is tpPhase with at most attempts runs: 1 for a phase
// whose load itself may take the shared traffic-manager down (its memory
// limit), which a retry would only do again.
func (b *bench) tpPhaseAttempts(ctx context.Context, name string, keys []string, attempts int, fn func(context.Context) error) {
	b.phase(ctx, name, func(ctx context.Context) error {
		for attempt := 1; ; attempt++ {
			before, err := b.waitConnected(ctx, 2*time.Minute)
			if err != nil {
				return err
			}
			stopProfile := b.profile(ctx, name)
			err = fn(ctx)
			stopProfile()
			if ctx.Err() != nil { // interrupted or out of time: nothing to retry
				return errors.Join(err, context.Cause(ctx))
			}
			after, aerr := b.waitConnected(ctx, 2*time.Minute)
			var d string
			switch {
			case aerr != nil:
				d = fmt.Sprintf("the connection broke: %v", aerr)
			case after != before:
				d = fmt.Sprintf("the connection changed (another user of the cluster replaced the traffic-manager or restarted the cluster?): before %s; after %s", before, after)
			case err != nil:
				d = "failed: " + firstLine(err.Error())
			default:
				return nil
			}
			d = fmt.Sprintf("%s (attempt %d): %s", name, attempt, d)
			b.logf("%s", d)
			b.res.Retries = append(b.res.Retries, d)
			for _, k := range keys {
				if p, ok := b.res.Probes[k]; ok {
					b.res.Probes[k+" (disturbed)"] = p
					delete(b.res.Probes, k)
				}
			}
			if attempt >= attempts || aerr != nil {
				return errors.Join(err, errors.New(d))
			}
			b.logf("%s: running it again", name)
		}
	})
}

// managerMemoryLimit is the traffic-manager container's memory limit in
// bytes, 0 when it has none or it cannot be read.
func (b *bench) managerMemoryLimit(ctx context.Context) int64 {
	d, err := b.k.client.AppsV1().Deployments(b.o.managerNamespace).Get(ctx, "traffic-manager", metav1.GetOptions{})
	if err != nil {
		return 0
	}
	for _, c := range d.Spec.Template.Spec.Containers {
		if q, ok := c.Resources.Limits[corev1.ResourceMemory]; ok {
			return q.Value()
		}
	}
	return 0
}
