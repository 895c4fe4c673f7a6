package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The traffic-manager is shared: on the local cluster other engineers' tests
// upgrade, restart or uninstall it while the bench runs. A tp measurement
// during which the connection changed (the manager's pods, or the daemon's
// session and reconnects) measured that event, not tp: the bench notes it,
// waits until the manager's rollout is done and the connection is back, and
// runs the measurement again (three attempts in all).

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

// waitConnected waits until the traffic-manager's rollout is complete and the
// bench connection is connected, and returns its fingerprint.
func (b *bench) waitConnected(ctx context.Context, timeout time.Duration) (fingerprint, error) {
	deadline := time.Now().Add(timeout)
	if err := b.k.waitDeployment(ctx, b.o.managerNamespace, "traffic-manager", timeout); err != nil {
		return fingerprint{}, fmt.Errorf("traffic-manager: %w", err)
	}
	var last string
	for {
		out, err := b.tp(ctx, 30*time.Second, "status", "--name", b.o.name, "-o", "json")
		var st tpStatus
		if err == nil {
			err = json.Unmarshal([]byte(out), &st)
		}
		switch {
		case err != nil:
			last = fmt.Sprintf("%v: %s", err, strings.TrimSpace(out))
		case st.State == "connected":
			return fingerprint{session: st.SessionID, managerVersion: st.ManagerVersion, reconnects: st.Reconnects,
				managerPods: strings.Join(b.managerPods(ctx), " ")}, nil
		default:
			last = st.State + " " + st.LastError
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fingerprint{}, fmt.Errorf("connection %s not connected within %s: %s", b.o.name, timeout, last)
		}
		sleep(ctx, 500*time.Millisecond)
	}
}

// managerPods names the running traffic-manager pods.
func (b *bench) managerPods(ctx context.Context) []string {
	pods, err := b.k.client.CoreV1().Pods(b.o.managerNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=traffic-manager"})
	if err != nil {
		return []string{"error: " + err.Error()}
	}
	var names []string
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			names = append(names, p.Name)
		}
	}
	slices.Sort(names)
	return names
}

// tpPhase is phase for a measurement through tp: run again (up to three
// attempts) when the connection changed under it. keys are the probe results it records; a
// disturbed run's results are kept under "KEY (disturbed)".
func (b *bench) tpPhase(ctx context.Context, name string, keys []string, fn func(context.Context) error) {
	b.phase(ctx, name, func(ctx context.Context) error {
		for attempt := 1; ; attempt++ {
			before, err := b.waitConnected(ctx, 90*time.Second)
			if err != nil {
				return err
			}
			err = fn(ctx)
			after, aerr := b.waitConnected(ctx, 90*time.Second)
			if aerr == nil && after == before {
				return err
			}
			d := fmt.Sprintf("%s (attempt %d): the connection changed during the measurement: before %s; after %s", name, attempt, before, after)
			if aerr != nil {
				d = fmt.Sprintf("%s (attempt %d): the connection broke during the measurement: %v", name, attempt, aerr)
			}
			b.logf("%s", d)
			b.res.Disturbances = append(b.res.Disturbances, d)
			for _, k := range keys {
				if p, ok := b.res.Probes[k]; ok {
					b.res.Probes[k+" (disturbed)"] = p
					delete(b.res.Probes, k)
				}
			}
			if attempt == 3 || aerr != nil {
				return errors.Join(err, fmt.Errorf("disturbed by a change of the connection (another user of the cluster replaced the traffic-manager?): %s", d))
			}
			b.logf("%s: running it once more", name)
		}
	})
}
