package intercept

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
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
