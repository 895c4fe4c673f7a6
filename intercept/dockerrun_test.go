package intercept

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/client"
)

// fakeEngine is a Docker engine that is down for the first downPolls pings
// and whose daemon container runs from the runningAfter-th inspect on.
type fakeEngine struct {
	client.APIClient
	downPolls, runningAfter int32
	pings, inspects         atomic.Int32
}

func (e *fakeEngine) Ping(context.Context) (types.Ping, error) {
	if e.pings.Add(1) <= e.downPolls {
		return types.Ping{}, errors.New("Cannot connect to the Docker daemon")
	}
	return types.Ping{APIVersion: "1.41"}, nil
}

func (e *fakeEngine) ContainerInspect(context.Context, string) (container.InspectResponse, error) {
	if e.inspects.Add(1) < e.runningAfter {
		return container.InspectResponse{ContainerJSONBase: &container.ContainerJSONBase{State: &container.State{Running: false}}}, nil
	}
	return container.InspectResponse{ContainerJSONBase: &container.ContainerJSONBase{State: &container.State{Running: true}}}, nil
}

// TestWaitEngine: the wait for an engine that went away ends when the
// daemon container runs again, with an error naming what to do when it does
// not in time, and early on Ctrl-C or when the intercept ends.
func TestWaitEngine(t *testing.T) {
	ctx := context.Background()
	never := make(chan struct{})
	if err := waitEngine(ctx, never, &fakeEngine{runningAfter: 3}, "tp", 10*time.Second); err != nil {
		t.Errorf("daemon container back: %v, want nil", err)
	}
	err := waitEngine(ctx, never, &fakeEngine{runningAfter: 1 << 30}, "tp-x", 1200*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "tp-x did not come back") {
		t.Errorf("daemon container never back: %v, want it named", err)
	}
	err = waitEngine(ctx, never, &fakeEngine{downPolls: 1 << 30, runningAfter: 1 << 30}, "tp", 1200*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "start Docker") {
		t.Errorf("engine never back: %v, want what to do", err)
	}
	ended := make(chan struct{})
	close(ended)
	if err := waitEngine(ctx, ended, &fakeEngine{runningAfter: 1 << 30}, "tp", time.Minute); !errors.Is(err, ErrEnded) {
		t.Errorf("intercept ended while waiting: %v, want ErrEnded", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := waitEngine(cctx, never, &fakeEngine{runningAfter: 1 << 30}, "tp", time.Minute); !errors.Is(err, context.Canceled) {
		t.Errorf("Ctrl-C while waiting: %v, want context.Canceled", err)
	}
	if engineUp(ctx, &fakeEngine{downPolls: 1}) {
		t.Error("engineUp: true for an engine that does not answer")
	}
}

// eventsEngine streams the events of msgs, breaks its stream once when
// breakFirst, and says the daemon container exists unless gone (with
// breakFirst: from the second subscription on).
type eventsEngine struct {
	client.APIClient
	msgs       chan events.Message
	breakFirst bool
	gone       atomic.Bool
	subscribed atomic.Int32
}

func (e *eventsEngine) Events(ctx context.Context, _ events.ListOptions) (<-chan events.Message, <-chan error) {
	errs := make(chan error, 1)
	if e.subscribed.Add(1) == 1 && e.breakFirst {
		errs <- errors.New("unexpected EOF") // the engine restarts
	}
	return e.msgs, errs
}

func (e *eventsEngine) ContainerInspect(context.Context, string) (container.InspectResponse, error) {
	if e.gone.Load() && (!e.breakFirst || e.subscribed.Load() > 1) {
		return container.InspectResponse{}, cerrdefs.ErrNotFound
	}
	return container.InspectResponse{}, nil
}

// TestDaemonDestroyed: the removal of the daemon container is seen as an
// event, or found when the event stream broke in between; Ctrl-C ends the
// watch without one.
func TestDaemonDestroyed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e := &eventsEngine{msgs: make(chan events.Message, 1)}
	e.msgs <- events.Message{Action: events.ActionDestroy}
	if !daemonDestroyed(ctx, e, "tp") {
		t.Error("destroy event: daemonDestroyed = false, want true")
	}
	e = &eventsEngine{msgs: make(chan events.Message), breakFirst: true}
	e.gone.Store(true) // removed while the stream was broken
	if !daemonDestroyed(ctx, e, "tp") {
		t.Error("removed while the stream broke: daemonDestroyed = false, want true")
	}
	e = &eventsEngine{msgs: make(chan events.Message)}
	cctx, ccancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer ccancel()
	if daemonDestroyed(cctx, e, "tp") {
		t.Error("no removal: daemonDestroyed = true, want false when ctx ends")
	}
}
