package intercept

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// fakeLister answers ListWorkloads from a script: one answer per call, the
// last one repeated.
type fakeLister struct {
	mu      sync.Mutex
	answers []listAnswer
	calls   int
	ns      []string
}

type listAnswer struct {
	resp *managerv1.ListWorkloadsResponse
	err  error
}

func (f *fakeLister) ListWorkloads(_ context.Context, req *managerv1.ListWorkloadsRequest, _ ...grpc.CallOption) (*managerv1.ListWorkloadsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ns = append(f.ns, req.GetNamespace())
	a := f.answers[min(f.calls, len(f.answers)-1)]
	f.calls++
	return a.resp, a.err
}

func workloadsWith(ids ...string) *managerv1.ListWorkloadsResponse {
	w := &managerv1.WorkloadInfo{Name: "echo", Namespace: "shop"}
	for _, id := range ids {
		w.Intercepts = append(w.Intercepts, &managerv1.InterceptInfo{Id: id})
	}
	return &managerv1.ListWorkloadsResponse{Workloads: []*managerv1.WorkloadInfo{{Name: "other", Namespace: "shop"}, w}}
}

func TestWatchInterceptEnded(t *testing.T) {
	info := &managerv1.InterceptInfo{Id: "ic-1", Spec: &managerv1.InterceptSpec{Name: "echo", Namespace: "shop"}}
	unavailable := status.Error(codes.Unavailable, "not connected to the traffic-manager")
	tests := []struct {
		name      string
		answers   []listAnswer
		wantCalls int
	}{
		{"removed after two polls", []listAnswer{{resp: workloadsWith("ic-1")}, {resp: workloadsWith("ic-2", "ic-1")}, {resp: workloadsWith("ic-2")}}, 3},
		{"failed polls are no answer", []listAnswer{{err: unavailable}, {err: unavailable}, {resp: workloadsWith("ic-1")}, {resp: workloadsWith()}}, 4},
		{"no workloads at all", []listAnswer{{resp: &managerv1.ListWorkloadsResponse{}}}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeLister{answers: tt.answers}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := watch(ctx, f, info, time.Millisecond, io.Discard); !errors.Is(err, ErrEnded) {
				t.Fatalf("watch: %v, want ErrEnded", err)
			}
			if f.calls != tt.wantCalls {
				t.Errorf("%d polls, want %d", f.calls, tt.wantCalls)
			}
			for _, ns := range f.ns {
				if ns != "shop" {
					t.Errorf("polled namespace %q, want the intercept's (shop)", ns)
				}
			}
		})
	}
}

func TestWatchInterceptStopsWithContext(t *testing.T) {
	info := &managerv1.InterceptInfo{Id: "ic-1", Spec: &managerv1.InterceptSpec{Name: "echo", Namespace: "shop"}}
	f := &fakeLister{answers: []listAnswer{{resp: workloadsWith("ic-1")}}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- watch(ctx, f, info, time.Millisecond, io.Discard) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		f.mu.Lock()
		n := f.calls
		f.mu.Unlock()
		if n >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d polls, want at least 3", n)
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("watch after its context ended: %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch did not return when its context ended")
	}
}

func TestInterceptEndedError(t *testing.T) {
	err := error(&EndedError{Name: "echo"})
	if !errors.Is(err, ErrEnded) {
		t.Errorf("errors.Is(%v, ErrEnded) = false, want true", err)
	}
	want := "intercept echo was ended elsewhere (tp leave, the session TTL or an administrator); the container was stopped"
	if got := err.Error(); got != want {
		t.Errorf("message %q, want %q", got, want)
	}
}

func TestFlagValue(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--name", "web", "img"}, "web"},
		{[]string{"--name=web", "img"}, "web"},
		{[]string{"-e", "X=1", "--rm", "-dit", "--name", "web", "img"}, "web"},
		{[]string{"-eX=1", "--name", "web", "img"}, "web"},
		{[]string{"-p", "8080:80", "img", "--name", "arg"}, ""},
		{[]string{"img"}, ""},
		{[]string{"--name"}, ""},
	}
	for _, tt := range tests {
		if got := FlagValue(tt.args, "--name"); got != tt.want {
			t.Errorf("FlagValue(%q) = %q, want %q", tt.args, got, tt.want)
		}
	}
}

func TestWatchInterceptSaysLostAndResumed(t *testing.T) {
	info := &managerv1.InterceptInfo{Id: "ic-1", Spec: &managerv1.InterceptSpec{Name: "echo", Namespace: "shop"}}
	unavailable := status.Error(codes.Unavailable, "not connected to the traffic-manager")
	f := &fakeLister{answers: []listAnswer{
		{resp: workloadsWith("ic-1")}, {err: unavailable}, {err: unavailable}, {resp: workloadsWith("ic-1")},
		{err: unavailable}, {resp: workloadsWith("ic-1")}, {resp: workloadsWith()},
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out strings.Builder
	if err := watch(ctx, f, info, time.Millisecond, &out); !errors.Is(err, ErrEnded) {
		t.Fatalf("watch: %v, want ErrEnded", err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	want := []string{"Lost the connection", "Connection to the traffic-manager resumed", "Lost the connection", "Connection to the traffic-manager resumed"}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines %q, want %d", len(lines), lines, len(want))
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("line %d: got %q, want it to start with %q", i, lines[i], w)
		}
	}
}

func TestWithImage(t *testing.T) {
	tests := []struct {
		args    []string
		want    string
		wantErr bool
	}{
		{[]string{"-it", "IMAGE", "sh"}, "-it sha256:x sh", false},
		{[]string{"-e", "A=1", "--name", "web"}, "-e A=1 --name web sha256:x", false},
		{[]string{"-p", "80:80", "IMAGE"}, "-p 80:80 sha256:x", false},
		{nil, "sha256:x", false},
		{[]string{"--rm", "nginx"}, "", true},
	}
	for _, tt := range tests {
		got, err := WithImage(tt.args, "sha256:x")
		if (err != nil) != tt.wantErr || strings.Join(got, " ") != tt.want {
			t.Errorf("WithImage(%q) = %q, %v; want %q, error %v", tt.args, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestParsePort(t *testing.T) {
	for _, tc := range []struct {
		in      string
		local   int32
		svc     string
		wantErr bool
	}{
		{"8080", 8080, "", false},
		{"8080:80", 8080, "80", false},
		{"8080:http", 8080, "http", false},
		{"x", 0, "", true},
		{"0", 0, "", true},
		{"70000", 0, "", true},
	} {
		local, svc, err := ParsePort(tc.in)
		if (err != nil) != tc.wantErr || local != tc.local || svc != tc.svc {
			t.Errorf("ParsePort(%q) = %d, %q, %v; want %d, %q, err %v", tc.in, local, svc, err, tc.local, tc.svc, tc.wantErr)
		}
	}
}
