package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tp-run/tp/volumes/driveropts"
)

// fakeMounts records the driver's mounts instead of making them.
type fakeMounts struct {
	mu     sync.Mutex
	live   map[string]*fakeMount
	mounts int
	fail   error
}

type fakeMount struct {
	f      *fakeMounts
	dir    string
	broken error
}

func (m *fakeMount) Close() error {
	m.f.mu.Lock()
	defer m.f.mu.Unlock()
	delete(m.f.live, m.dir)
	return nil
}

func (m *fakeMount) Err() error {
	m.f.mu.Lock()
	defer m.f.mu.Unlock()
	return m.broken
}

func (f *fakeMounts) mount(_ context.Context, dir string, _ driveropts.Options, _ time.Duration) (Mounted, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return nil, f.fail
	}
	f.mounts++
	m := &fakeMount{f: f, dir: dir}
	f.live[dir] = m
	return m, nil
}

func (f *fakeMounts) liveCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.live)
}

func newTestDriver(t *testing.T, state string) (*Driver, *fakeMounts) {
	t.Helper()
	f := &fakeMounts{live: map[string]*fakeMount{}}
	d, err := NewDriver(Config{
		MountRoot: filepath.Join(t.TempDir(), "mnt"), StatePath: state,
		Mount: f.mount, Unmount: func(string) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	return d, f
}

var goodOpts = map[string]string{"addr": "172.17.0.2:9022", "token": "abc", "path": "/var/run/secrets", "ro": "true"}

func TestCreateValidates(t *testing.T) {
	d, _ := newTestDriver(t, filepath.Join(t.TempDir(), "state.json"))
	for _, tc := range []struct {
		name string
		opts map[string]string
		want string // in the error; "" for success
	}{
		{"ok", goodOpts, ""},
		{"no ro", map[string]string{"addr": "h:1", "token": "t", "path": "/p"}, ""},
		{"unknown", map[string]string{"addr": "h:1", "token": "t", "path": "/p", "size": "1G"}, `unknown option "size"`},
		{"no addr", map[string]string{"token": "t", "path": "/p"}, "missing option addr"},
		{"none", nil, "missing option addr, token, path"},
		{"bad addr", map[string]string{"addr": "nohost", "token": "t", "path": "/p"}, "want HOST:PORT"},
		{"relative path", map[string]string{"addr": "h:1", "token": "t", "path": "p"}, "clean absolute path"},
		{"unclean path", map[string]string{"addr": "h:1", "token": "t", "path": "/a/../b"}, "clean absolute path"},
		{"bad ro", map[string]string{"addr": "h:1", "token": "t", "path": "/p", "ro": "yes"}, "want true or false"},
		{"token space", map[string]string{"addr": "h:1", "token": "a b", "path": "/p"}, "white space"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := d.Create("v-"+strings.ReplaceAll(tc.name, " ", "-"), tc.opts)
			if tc.want == "" && err != nil {
				t.Fatalf("Create = %v, want success", err)
			}
			if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Create = %v, want an error with %q", err, tc.want)
			}
		})
	}
	if err := d.Create("../x", goodOpts); err == nil {
		t.Error("Create of a name with a slash succeeded")
	}
	if err := d.Create("v-ok", goodOpts); err == nil {
		t.Error("a second Create of the same name succeeded")
	}
}

// TestMountRefcount: two containers share a mount; the last unmount
// unmounts; unmounts always succeed.
func TestMountRefcount(t *testing.T) {
	d, f := newTestDriver(t, filepath.Join(t.TempDir(), "state.json"))
	if err := d.Create("v", goodOpts); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	dir1, err := d.Mount(ctx, "v", "c1")
	if err != nil {
		t.Fatal(err)
	}
	dir2, err := d.Mount(ctx, "v", "c2")
	if err != nil || dir2 != dir1 || f.mounts != 1 {
		t.Fatalf("second Mount = %q, %v after %d mounts; want the same dir, one mount", dir2, err, f.mounts)
	}
	if p, _ := d.Path("v"); p != dir1 {
		t.Errorf("Path = %q, want %q", p, dir1)
	}
	if err := d.Unmount("v", "c1"); err != nil || f.liveCount() != 1 {
		t.Errorf("first Unmount = %v with %d live mounts, want 1", err, f.liveCount())
	}
	if err := d.Unmount("v", "c2"); err != nil || f.liveCount() != 0 {
		t.Errorf("last Unmount = %v with %d live mounts, want 0", err, f.liveCount())
	}
	if err := d.Unmount("v", "c2"); err != nil {
		t.Errorf("repeated Unmount = %v, want success", err)
	}
	if err := d.Unmount("unknown", "c"); err != nil {
		t.Errorf("Unmount of an unknown volume = %v, want success", err)
	}
	if p, _ := d.Path("v"); p != "" {
		t.Errorf("Path after unmount = %q, want empty", p)
	}
}

// TestMountBrokenRemounts: a new container after a broken connection gets a
// new mount.
func TestMountBrokenRemounts(t *testing.T) {
	d, f := newTestDriver(t, filepath.Join(t.TempDir(), "state.json"))
	if err := d.Create("v", goodOpts); err != nil {
		t.Fatal(err)
	}
	dir, err := d.Mount(context.Background(), "v", "c1")
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.live[dir].broken = errors.New("gone")
	f.mu.Unlock()
	if i, _ := d.Get("v"); i.Status["error"] != "gone" {
		t.Errorf("Get status = %v, want the mount's error", i.Status)
	}
	if _, err := d.Mount(context.Background(), "v", "c2"); err != nil || f.mounts != 2 {
		t.Errorf("Mount after a break = %v after %d mounts, want a second mount", err, f.mounts)
	}
	f.fail = errors.New("the daemon refused the mount: unknown token")
	d.Close()
	if _, err := d.Mount(context.Background(), "v", "c3"); err == nil || !strings.Contains(err.Error(), "unknown token") {
		t.Errorf("failing Mount = %v, want the mount's reason", err)
	}
}

// TestStateSurvivesRestart: a new driver (a plugin restart) knows the
// volumes; Remove forgets them for good.
func TestStateSurvivesRestart(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state", "state.json")
	d, _ := newTestDriver(t, state)
	for _, n := range []string{"a", "b"} {
		if err := d.Create(n, goodOpts); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.Mount(context.Background(), "a", "c1"); err != nil {
		t.Fatal(err)
	}
	d2, _ := newTestDriver(t, state)
	var names []string
	for _, i := range d2.List() {
		names = append(names, i.Name)
		if i.Mountpoint != "" {
			t.Errorf("volume %s has mount point %q after a restart, want none", i.Name, i.Mountpoint)
		}
	}
	if strings.Join(names, ",") != "a,b" {
		t.Errorf("List after a restart = %q, want a,b", names)
	}
	if i, err := d2.Get("a"); err != nil || i.Status["path"] != "/var/run/secrets" || i.Status["token"] != nil {
		t.Errorf("Get = %+v, %v; want the path and no token", i, err)
	}
	if err := d2.Remove("a"); err != nil {
		t.Fatal(err)
	}
	if err := d2.Remove("never"); err != nil {
		t.Errorf("Remove of an unknown volume = %v, want success", err)
	}
	d3, _ := newTestDriver(t, state)
	if _, err := d3.Get("a"); err == nil {
		t.Error("a removed volume came back after a restart")
	}
	if _, err := d3.Get("b"); err != nil {
		t.Errorf("Get b after two restarts: %v", err)
	}
}

// TestHandlerProtocol: the driver API as Docker calls it.
func TestHandlerProtocol(t *testing.T) {
	d, _ := newTestDriver(t, filepath.Join(t.TempDir(), "state.json"))
	srv := httptest.NewServer(d.Handler())
	defer srv.Close()
	call := func(path string, body any) map[string]any {
		t.Helper()
		b, _ := json.Marshal(body)
		resp, err := http.Post(srv.URL+path, "application/vnd.docker.plugins.v1.2+json", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if ct := resp.Header.Get("Content-Type"); ct != contentType {
			t.Errorf("%s: Content-Type %q, want %q", path, ct, contentType)
		}
		var out map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		return out
	}
	if got := call("/Plugin.Activate", nil); got["Implements"].([]any)[0] != "VolumeDriver" {
		t.Errorf("Activate = %v", got)
	}
	if got := call("/VolumeDriver.Capabilities", nil); got["Capabilities"].(map[string]any)["Scope"] != "local" {
		t.Errorf("Capabilities = %v", got)
	}
	if got := call("/VolumeDriver.Create", map[string]any{"Name": "v", "Opts": map[string]string{"bogus": "1"}}); !strings.Contains(got["Err"].(string), "unknown option") {
		t.Errorf("Create with a bad option = %v, want Err", got)
	}
	if got := call("/VolumeDriver.Create", map[string]any{"Name": "v", "Opts": goodOpts}); got["Err"] != "" {
		t.Errorf("Create = %v", got)
	}
	got := call("/VolumeDriver.Mount", map[string]any{"Name": "v", "ID": "c1"})
	if got["Err"] != "" || !strings.HasSuffix(got["Mountpoint"].(string), "/v") {
		t.Errorf("Mount = %v", got)
	}
	if got := call("/VolumeDriver.Get", map[string]any{"Name": "v"}); got["Volume"].(map[string]any)["Name"] != "v" {
		t.Errorf("Get = %v", got)
	}
	if got := call("/VolumeDriver.Get", map[string]any{"Name": "nope"}); got["Err"] == "" {
		t.Errorf("Get of an unknown volume = %v, want Err", got)
	}
	if got := call("/VolumeDriver.List", nil); len(got["Volumes"].([]any)) != 1 {
		t.Errorf("List = %v", got)
	}
	if got := call("/VolumeDriver.Unmount", map[string]any{"Name": "v", "ID": "c1"}); got["Err"] != "" {
		t.Errorf("Unmount = %v", got)
	}
	if got := call("/VolumeDriver.Remove", map[string]any{"Name": "v"}); got["Err"] != "" {
		t.Errorf("Remove = %v", got)
	}
}
