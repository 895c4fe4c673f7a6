package daemoncontainer

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
)

// execRecorder is a Docker client whose exec creation reports on created
// and then fails (no daemon to talk to).
type execRecorder struct {
	client.APIClient
	created chan []string
}

func (d execRecorder) ContainerExecCreate(_ context.Context, _ string, o container.ExecOptions) (container.ExecCreateResponse, error) {
	d.created <- o.Cmd
	return container.ExecCreateResponse{}, errors.New("no daemon in this test")
}

func (d execRecorder) Close() error { return nil }

// TestPreconnectStartsTheExecBeforeAnyCall: the daemon channel (docker exec
// of `tp daemon proxy`) is lazy until Preconnect, which starts it without a
// call, so that it overlaps with the caller's other work.
func TestPreconnectStartsTheExecBeforeAnyCall(t *testing.T) {
	docker := execRecorder{created: make(chan []string, 16)}
	cc, err := DialDaemon(docker, "c1")
	if err != nil {
		t.Fatal(err)
	}
	c := &Client{cc: cc}
	defer cc.Close()
	select {
	case cmd := <-docker.created:
		t.Fatalf("exec %q before Preconnect: want a lazy channel", cmd)
	case <-time.After(200 * time.Millisecond):
	}
	c.Preconnect()
	select {
	case cmd := <-docker.created:
		if want := []string{"/tp", "daemon", "proxy"}; !slices.Equal(cmd, want) {
			t.Errorf("exec %q, want %q", cmd, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exec within 10 s of Preconnect")
	}
}
