package intercept

import (
	"context"
	"errors"
	"maps"
	"os"
	"os/exec"
	"slices"
	"sync"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
	"google.golang.org/grpc"

	"github.com/tp-run/tp/daemoncontainer"
	"github.com/tp-run/tp/internal/owner"
	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
	"github.com/tp-run/tp/volumes"
)

// fakeDocker holds daemon containers (by connection), --docker-run
// containers and volumes (by name), and records what is removed.
type fakeDocker struct {
	client.APIClient
	mu         sync.Mutex
	daemons    []string
	runs, vols map[string]map[string]string // name -> labels
	removed    []string
}

func (f *fakeDocker) ContainerList(_ context.Context, o container.ListOptions) ([]container.Summary, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []container.Summary
	if slices.Contains(o.Filters.Get("label"), LabelDockerRun+"=true") {
		for _, n := range slices.Sorted(maps.Keys(f.runs)) {
			out = append(out, container.Summary{ID: n, Names: []string{"/" + n}, Labels: f.runs[n]})
		}
		return out, nil
	}
	for _, d := range f.daemons {
		out = append(out, container.Summary{ID: "id-" + d, Names: []string{"/" + daemoncontainer.ContainerName(d)},
			Labels: map[string]string{daemoncontainer.LabelConnection: d}, State: "running"})
	}
	return out, nil
}

func (f *fakeDocker) ContainerRemove(_ context.Context, id string, _ container.RemoveOptions) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.runs, id)
	f.removed = append(f.removed, "container "+id)
	return nil
}

func (f *fakeDocker) ContainerInspect(_ context.Context, id string) (container.InspectResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.runs[id]; ok {
		return container.InspectResponse{}, nil
	}
	return container.InspectResponse{}, cerrdefs.ErrNotFound
}

func (f *fakeDocker) VolumeList(context.Context, volume.ListOptions) (volume.ListResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*volume.Volume
	for _, n := range slices.Sorted(maps.Keys(f.vols)) {
		out = append(out, &volume.Volume{Name: n, Labels: f.vols[n]})
	}
	return volume.ListResponse{Volumes: out}, nil
}

func (f *fakeDocker) VolumeRemove(_ context.Context, name string, _ bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.vols, name)
	f.removed = append(f.removed, "volume "+name)
	return nil
}

// fakeDaemon lists the intercepts live and records RemoveIntercept.
type fakeDaemon struct {
	Daemon
	live    []string
	listErr error
	left    []string
}

func (d *fakeDaemon) ListWorkloads(context.Context, *managerv1.ListWorkloadsRequest, ...grpc.CallOption) (*managerv1.ListWorkloadsResponse, error) {
	if d.listErr != nil {
		return nil, d.listErr
	}
	return workloadsWith(d.live...), nil
}

func (d *fakeDaemon) RemoveIntercept(_ context.Context, in *managerv1.RemoveInterceptRequest, _ ...grpc.CallOption) (*managerv1.RemoveInterceptResponse, error) {
	d.left = append(d.left, in.GetNamespace()+"/"+in.GetName())
	return &managerv1.RemoveInterceptResponse{}, nil
}

// labelsOf are the labels of intercept id (named name) on connection, owned by o (or nobody).
func labelsOf(connection, id, name string, o *owner.Owner) map[string]string {
	l := map[string]string{volumes.LabelManaged: "true", volumes.LabelConnection: connection, volumes.LabelIntercept: id,
		LabelNamespace: "shop", LabelInterceptName: name, LabelDockerRun: "true"}
	if o != nil {
		maps.Copy(l, o.Labels())
	}
	return l
}

func TestRemoveStale(t *testing.T) {
	// A process that has ended: this test binary, running no test (portable, unlike "true").
	ended := exec.Command(os.Args[0], "-test.run=^$")
	if err := ended.Run(); err != nil {
		t.Fatal(err)
	}
	self := owner.Self()
	killed := owner.Owner{Host: self.Host, PID: ended.Process.Pid, Start: "1"}
	if !killed.Gone() {
		t.Skip("this OS cannot tell an ended process (owner.Gone)")
	}
	elsewhere := owner.Owner{Host: self.Host + "-other", PID: 1, Start: "1"}
	world := func() *fakeDocker {
		return &fakeDocker{
			daemons: []string{"a", "b"},
			runs: map[string]map[string]string{
				"run-killed": labelsOf("a", "ic-1", "echo", &killed),
				"run-live":   labelsOf("a", "ic-2", "web", &self),
				"run-far":    labelsOf("a", "ic-5", "far", &elsewhere),
				"run-gone":   labelsOf("gone", "ic-9", "x", &self),
				"run-b":      labelsOf("b", "ic-7", "echo", &killed),
			},
			vols: map[string]map[string]string{
				"v-killed": labelsOf("a", "ic-1", "echo", &killed),
				"v-live":   labelsOf("a", "ic-2", "web", &self),
				"v-far":    labelsOf("a", "ic-5", "far", &elsewhere),
				"v-left":   labelsOf("a", "ic-3", "old", nil), // --mount-volumes of an intercept now gone
				"v-kept":   labelsOf("a", "ic-4", "mv", nil),  // --mount-volumes of a live intercept
				"v-gone":   labelsOf("gone", "ic-9", "x", nil),
				"v-b":      labelsOf("b", "ic-7", "echo", &killed),
			},
		}
	}
	for _, tc := range []struct {
		name        string
		daemon      *fakeDaemon // nil: the daemon does not answer
		wantRemoved []string
		wantLeft    []string
	}{
		{
			name:   "with the daemon",
			daemon: &fakeDaemon{live: []string{"ic-1", "ic-2", "ic-4", "ic-5", "ic-7"}},
			wantRemoved: []string{"container run-gone", "container run-killed",
				"volume v-gone", "volume v-killed", "volume v-left"},
			wantLeft: []string{"shop/echo"},
		},
		{
			name:        "without the daemon: only what removed daemon containers left",
			wantRemoved: []string{"container run-gone", "volume v-gone"},
		},
		{
			name:        "the daemon cannot list intercepts: only what removed daemon containers left",
			daemon:      &fakeDaemon{listErr: errors.New("not connected to the traffic-manager")},
			wantRemoved: []string{"container run-gone", "volume v-gone"},
		},
		{
			name:        "the killed CLI's intercept already ended",
			daemon:      &fakeDaemon{live: []string{"ic-2", "ic-4", "ic-5"}},
			wantRemoved: []string{"container run-gone", "container run-killed", "volume v-gone", "volume v-killed", "volume v-left"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			docker := world()
			var d Daemon
			if tc.daemon != nil {
				d = tc.daemon
			}
			if err := RemoveStale(context.Background(), docker, d, "a"); err != nil {
				t.Fatalf("RemoveStale: %v", err)
			}
			slices.Sort(docker.removed)
			if !slices.Equal(docker.removed, tc.wantRemoved) {
				t.Errorf("removed %q, want %q", docker.removed, tc.wantRemoved)
			}
			var left []string
			if tc.daemon != nil {
				left = tc.daemon.left
			}
			if !slices.Equal(left, tc.wantLeft) {
				t.Errorf("left intercepts %q, want %q", left, tc.wantLeft)
			}
		})
	}
}

// TestLabels: what RemoveStale reads is what CreateVolumes and RunContainer
// write: the connection, the intercept, and the owner only when owned.
func TestLabels(t *testing.T) {
	ic := &Intercept{Info: &managerv1.InterceptInfo{Id: "ic-1", Spec: &managerv1.InterceptSpec{Name: "echo", Namespace: "shop"}}, connection: "a"}
	l := ic.labels(true)
	if got := orphanOf(l); got != (orphan{name: "echo", namespace: "shop"}) {
		t.Errorf("orphanOf(labels) = %+v, want echo in shop", got)
	}
	if l[volumes.LabelConnection] != "a" || l[volumes.LabelIntercept] != "ic-1" {
		t.Errorf("labels %v: want connection a, intercept ic-1", l)
	}
	if o, ok := owner.FromLabels(l); !ok || o != owner.Self() {
		t.Errorf("owner of owned labels: %+v, %v, want this process", o, ok)
	}
	if o, ok := owner.FromLabels(ic.labels(false)); ok {
		t.Errorf("owner of unowned labels: %+v, want none", o)
	}
}
