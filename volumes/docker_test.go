//go:build docker

// The integration test against the real Docker engine:
//
//	make image && go test -tags docker -count=1 -v -run TestPlugin ./volumes/
//
// It needs the images tp:dev and tp-probe:dev of this checkout, root (the
// in-test SFTP server's files are the host's) and /dev/fuse in Docker's host.
package volumes_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/tp-run/tp/volumes"
	"github.com/tp-run/tp/volumes/driveropts"
	"github.com/tp-run/tp/volumes/internal/mounttest"
)

const (
	testVersion = "dev" // the plugin of tp:dev
	probeImage  = "tp-probe:dev"
	labelTest   = "tp.run/volumes-test"
)

func dockerClient(t *testing.T) *client.Client {
	t.Helper()
	c, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Skipf("docker client: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Ping(ctx); err != nil {
		t.Skipf("Docker not reachable: %v", err)
	}
	for _, img := range []string{"tp:" + testVersion, probeImage} {
		if _, err := c.ImageInspect(ctx, img); err != nil {
			t.Skipf("image %s: %v (run `make image`)", img, err)
		}
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// run runs the probe with a volume at /data, waits and returns its exit code
// and output.
func run(t *testing.T, docker client.APIClient, vol string, args ...string) (int64, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	id := start(t, docker, vol, args...)
	waitc, errc := docker.ContainerWait(ctx, id, container.WaitConditionNotRunning)
	var code int64
	select {
	case w := <-waitc:
		code = w.StatusCode
	case err := <-errc:
		t.Fatalf("wait for the probe: %v", err)
	}
	out := logs(t, docker, id)
	// Gone now, not at the test's end: a volume in use by a container,
	// even a stopped one, cannot be removed.
	if err := docker.ContainerRemove(ctx, id, container.RemoveOptions{}); err != nil {
		t.Errorf("remove the probe container: %v", err)
	}
	return code, out
}

// start starts the probe with a volume at /data; the test's end removes it.
func start(t *testing.T, docker client.APIClient, vol string, args ...string) string {
	t.Helper()
	ctx := context.Background()
	created, err := docker.ContainerCreate(ctx, &container.Config{Image: probeImage, Cmd: args, Labels: map[string]string{labelTest: "true"}},
		&container.HostConfig{Mounts: []mount.Mount{{Type: mount.TypeVolume, Source: vol, Target: "/data"}}}, nil, nil, "")
	if err != nil {
		t.Fatalf("create the probe container: %v", err)
	}
	t.Cleanup(func() {
		_ = docker.ContainerRemove(context.Background(), created.ID, container.RemoveOptions{Force: true})
	})
	if err := docker.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		t.Fatalf("start the probe container: %v", err)
	}
	return created.ID
}

func logs(t *testing.T, docker client.APIClient, id string) string {
	t.Helper()
	rc, err := docker.ContainerLogs(context.Background(), id, container.LogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var out bytes.Buffer
	_, _ = stdcopy.StdCopy(&out, &out, rc)
	return out.String()
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Since(start)
}

// fuseMounts lists the host's tp FUSE mounts.
func fuseMounts(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[2] == "fuse.tp" {
			out = append(out, f[1])
		}
	}
	return out
}

func create2(t *testing.T, docker client.APIClient, driver, conn string, o driveropts.Options) string {
	t.Helper()
	name, err := volumes.CreateVolume(context.Background(), docker, volumes.Spec{Driver: driver, Connection: conn, Intercept: "itest", Options: o})
	if err != nil {
		t.Fatalf("CreateVolume: %v", err)
	}
	return name
}

func pluginID(t *testing.T, docker client.APIClient, name string) (string, bool) {
	t.Helper()
	p, _, err := docker.PluginInspectWithRaw(context.Background(), name)
	if err != nil {
		t.Fatalf("inspect plugin %s: %v", name, err)
	}
	return p.ID, p.Enabled
}

// TestPlugin: the managed plugin from tp:dev mounts an SFTP export into
// containers, read-write and read-only; a dead server fails reads with EIO
// in time and `docker stop` returns; the plugin survives a restart and is
// recreated after a removal by hand; nothing stays behind.
func TestPlugin(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the SFTP server serves the host's files to the plugin")
	}
	docker := dockerClient(t)
	ctx := context.Background()
	conn := "test-" + randomHex(4)
	sel := map[string]string{volumes.LabelConnection: conn}
	t.Cleanup(func() {
		if err := volumes.RemoveVolumes(context.Background(), docker, sel); err != nil {
			t.Errorf("RemoveVolumes: %v", err)
		}
		if left, _ := volumes.ListVolumes(context.Background(), docker, sel); len(left) > 0 {
			t.Errorf("%d volumes left after RemoveVolumes", len(left))
		}
		for _, m := range fuseMounts(t) {
			if strings.Contains(m, "tp-"+conn) {
				t.Errorf("FUSE mount left behind: %s", m)
			}
		}
	})

	driver, err := volumes.Ensure(ctx, docker, testVersion)
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	id, enabled := pluginID(t, docker, driver)
	if !enabled {
		t.Fatalf("plugin %s not enabled after Ensure", driver)
	}
	if again, err := volumes.Ensure(ctx, docker, testVersion); err != nil || again != driver {
		t.Fatalf("second Ensure = %q, %v", again, err)
	}
	if id2, _ := pluginID(t, docker, driver); id2 != id {
		t.Errorf("second Ensure replaced the plugin (%s -> %s), want it left alone", id, id2)
	}

	token := randomHex(32)
	srv := mounttest.NewServer(t, token)
	export := t.TempDir()
	if err := os.WriteFile(filepath.Join(export, "hello.txt"), []byte("hello from the pod\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	create := func(o driveropts.Options) string { t.Helper(); return create2(t, docker, driver, conn, o) }
	rw := create(driveropts.Options{Addr: srv.Addr(), Token: token, Path: export})
	ro := create(driveropts.Options{Addr: srv.Addr(), Token: token, Path: export, ReadOnly: true})
	wrong := create(driveropts.Options{Addr: srv.Addr(), Token: "wrong", Path: export})

	t.Run("BadOptions", func(t *testing.T) {
		_, err := docker.VolumeCreate(ctx, volume.CreateOptions{Name: "tp-" + conn + "-bad", Driver: driver,
			DriverOpts: map[string]string{"bogus": "1"}, Labels: map[string]string{volumes.LabelManaged: "true", volumes.LabelConnection: conn}})
		if err == nil || !strings.Contains(err.Error(), `unknown option "bogus"`) {
			t.Errorf("docker volume create with a bad option = %v, want the plugin's error", err)
		}
	})
	t.Run("ReadWrite", func(t *testing.T) {
		if code, out := run(t, docker, rw, "cat", "/data/hello.txt"); code != 0 || out != "hello from the pod\n" {
			t.Errorf("cat = %d %q, want the export's file", code, out)
		}
		if code, out := run(t, docker, rw, "write", "/data/from-container.txt", "written"); code != 0 {
			t.Errorf("write = %d %q", code, out)
		}
		if b, err := os.ReadFile(filepath.Join(export, "from-container.txt")); err != nil || string(b) != "written" {
			t.Errorf("the export has %q, %v; want what the container wrote", b, err)
		}
	})
	t.Run("ReadOnly", func(t *testing.T) {
		if code, out := run(t, docker, ro, "cat", "/data/hello.txt"); code != 0 || out != "hello from the pod\n" {
			t.Errorf("cat = %d %q", code, out)
		}
		code, out := run(t, docker, ro, "write", "/data/nope.txt", "x")
		if code == 0 || !strings.Contains(out, "read-only file system") {
			t.Errorf("write to a read-only volume = %d %q, want EROFS", code, out)
		}
		if _, err := os.Stat(filepath.Join(export, "nope.txt")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the refused write reached the export: %v", err)
		}
	})
	t.Run("WrongToken", func(t *testing.T) {
		_, err := docker.ContainerCreate(ctx, &container.Config{Image: probeImage, Cmd: []string{"cat", "/data/hello.txt"}, Labels: map[string]string{labelTest: "true"}},
			&container.HostConfig{Mounts: []mount.Mount{{Type: mount.TypeVolume, Source: wrong, Target: "/data"}}}, nil, nil, "wrong-"+conn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = docker.ContainerRemove(context.Background(), "wrong-"+conn, container.RemoveOptions{Force: true})
		})
		err = docker.ContainerStart(ctx, "wrong-"+conn, container.StartOptions{})
		if err == nil || !strings.Contains(err.Error(), "unknown token") {
			t.Errorf("start with a wrong token = %v, want the daemon's refusal", err)
		}
		if err := docker.ContainerRemove(ctx, "wrong-"+conn, container.RemoveOptions{Force: true}); err != nil {
			t.Errorf("remove the container: %v", err)
		}
	})
	t.Run("PluginRestart", func(t *testing.T) {
		if err := docker.PluginDisable(ctx, driver, types.PluginDisableOptions{Force: true}); err != nil {
			t.Fatal(err)
		}
		if err := docker.PluginEnable(ctx, driver, types.PluginEnableOptions{Timeout: 30}); err != nil {
			t.Fatal(err)
		}
		if _, err := docker.VolumeInspect(ctx, rw); err != nil {
			t.Errorf("inspect a volume after a plugin restart: %v", err)
		}
		if code, out := run(t, docker, rw, "cat", "/data/hello.txt"); code != 0 || out != "hello from the pod\n" {
			t.Errorf("cat after a plugin restart = %d %q", code, out)
		}
	})
	t.Run("ServerStallsMidRead", func(t *testing.T) {
		stalling := mounttest.NewServer(t, token)
		v := create(driveropts.Options{Addr: stalling.Addr(), Token: token, Path: export, ReadOnly: true})
		cid := start(t, docker, v, "readloop", "/data/hello.txt")
		waitFor(t, 20*time.Second, "a first read", func() bool { return strings.Contains(logs(t, docker, cid), "ok 19") })
		stalling.Stall()
		took := waitFor(t, 15*time.Second, "a read failing", func() bool {
			return strings.Contains(logs(t, docker, cid), "error ")
		})
		if out := logs(t, docker, cid); !strings.Contains(out, "input/output error") {
			t.Errorf("reads after the server stalled: %q, want EIO", out[strings.Index(out, "error"):])
		}
		if took > 10*time.Second {
			t.Errorf("the first failed read came %v after the stall, want <= 10s", took)
		}
		t.Logf("reads failed %v after the server stalled", took)
		stopStart := time.Now()
		timeout := 2
		if err := docker.ContainerStop(ctx, cid, container.StopOptions{Timeout: &timeout}); err != nil {
			t.Errorf("docker stop: %v", err)
		}
		if d := time.Since(stopStart); d > 10*time.Second {
			t.Errorf("docker stop took %v", d)
		}
		if err := docker.ContainerRemove(ctx, cid, container.RemoveOptions{}); err != nil {
			t.Errorf("docker rm: %v", err)
		}
		stalling.Unstall()
	})
	t.Run("ServerDiesMidRead", func(t *testing.T) {
		big := make([]byte, 4<<20)
		if err := os.WriteFile(filepath.Join(export, "big"), big, 0o644); err != nil {
			t.Fatal(err)
		}
		cid := start(t, docker, rw, "readloop", "/data/big")
		waitFor(t, 20*time.Second, "a first read", func() bool { return strings.Contains(logs(t, docker, cid), "ok 4194304") })
		srv.Close()
		took := waitFor(t, 15*time.Second, "a read failing", func() bool {
			return strings.Contains(logs(t, docker, cid), "error ")
		})
		out := logs(t, docker, cid)
		if !strings.Contains(out, "input/output error") {
			t.Errorf("reads after the server died: %q, want EIO", out[strings.Index(out, "error"):])
		}
		if took > 10*time.Second {
			t.Errorf("the first failed read came %v after the server died, want <= 10s", took)
		}
		t.Logf("reads failed %v after the server died", took)
		stopStart := time.Now()
		timeout := 2
		if err := docker.ContainerStop(ctx, cid, container.StopOptions{Timeout: &timeout}); err != nil {
			t.Errorf("docker stop: %v", err)
		}
		if d := time.Since(stopStart); d > 10*time.Second {
			t.Errorf("docker stop took %v", d)
		}
		if err := docker.ContainerRemove(ctx, cid, container.RemoveOptions{}); err != nil {
			t.Errorf("docker rm: %v", err)
		}
	})
	t.Run("Upgrade", func(t *testing.T) {
		// An older tp version's plugin: the same binary under another tag.
		const old = "itest-old"
		if err := docker.ImageTag(ctx, "tp:"+testVersion, "tp:"+old); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = docker.PluginRemove(context.Background(), volumes.PluginName(old), types.PluginRemoveOptions{Force: true})
			_, _ = docker.ImageRemove(context.Background(), "tp:"+old, image.RemoveOptions{})
		})
		oldDriver, err := volumes.Ensure(ctx, docker, old)
		if err != nil {
			t.Fatal(err)
		}
		// In use by a volume: an upgrade keeps it.
		v := create2(t, docker, oldDriver, conn, driveropts.Options{Addr: srv.Addr(), Token: token, Path: export})
		if _, err := volumes.Ensure(ctx, docker, testVersion); err != nil {
			t.Fatal(err)
		}
		if _, _, err := docker.PluginInspectWithRaw(ctx, oldDriver); err != nil {
			t.Errorf("Ensure removed %s that a volume uses: %v", oldDriver, err)
		}
		if err := docker.VolumeRemove(ctx, v, true); err != nil {
			t.Fatal(err)
		}
		// Unused: the next Ensure removes it.
		if _, err := volumes.Ensure(ctx, docker, testVersion); err != nil {
			t.Fatal(err)
		}
		if _, _, err := docker.PluginInspectWithRaw(ctx, oldDriver); err == nil {
			t.Errorf("%s still installed after an upgrade, with no volume", oldDriver)
		}
		if _, enabled := pluginID(t, docker, driver); !enabled {
			t.Errorf("%s not enabled after the upgrade", driver)
		}
	})
	t.Run("RemovedByHand", func(t *testing.T) {
		// The volumes of the removed plugin go first: Docker keeps volumes
		// of a removed driver that no one can remove.
		if err := volumes.RemoveVolumes(ctx, docker, sel); err != nil {
			t.Fatal(err)
		}
		if err := docker.PluginDisable(ctx, driver, types.PluginDisableOptions{Force: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := volumes.Ensure(ctx, docker, testVersion); err != nil {
			t.Fatalf("Ensure of a disabled plugin: %v", err)
		}
		if _, enabled := pluginID(t, docker, driver); !enabled {
			t.Error("Ensure left the plugin disabled")
		}
		if err := docker.PluginRemove(ctx, driver, types.PluginRemoveOptions{Force: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := volumes.Ensure(ctx, docker, testVersion); err != nil {
			t.Fatalf("Ensure of a removed plugin: %v", err)
		}
		list, err := docker.PluginList(ctx, filters.NewArgs())
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, p := range list {
			found = found || (p.Name == driver && p.Enabled)
		}
		if !found {
			t.Fatalf("plugin %s not back after Ensure", driver)
		}
		srv2 := mounttest.NewServer(t, token)
		v := create(driveropts.Options{Addr: srv2.Addr(), Token: token, Path: export})
		if code, out := run(t, docker, v, "cat", "/data/hello.txt"); code != 0 || out != "hello from the pod\n" {
			t.Errorf("cat through the recreated plugin = %d %q", code, out)
		}
	})
}

// TestPluginBench measures reads through the plugin from a container, with
// an in-process SFTP server on loopback (no tunnel: the plugin's own cost).
// It runs with TP_VOLUMES_BENCH=1 and prints, asserting nothing.
func TestPluginBench(t *testing.T) {
	if os.Getenv("TP_VOLUMES_BENCH") == "" {
		t.Skip("set TP_VOLUMES_BENCH=1")
	}
	docker := dockerClient(t)
	ctx := context.Background()
	conn := "bench-" + randomHex(4)
	t.Cleanup(func() {
		_ = volumes.RemoveVolumes(context.Background(), docker, map[string]string{volumes.LabelConnection: conn})
	})
	driver, err := volumes.Ensure(ctx, docker, testVersion)
	if err != nil {
		t.Fatal(err)
	}
	token := randomHex(32)
	srv := mounttest.NewServer(t, token)
	export := t.TempDir()
	if err := os.WriteFile(filepath.Join(export, "big"), make([]byte, 100<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := range 1000 {
		dir := filepath.Join(export, "tree", "d"+string(rune('a'+i%20)))
		_ = os.MkdirAll(dir, 0o755)
		if err := os.WriteFile(filepath.Join(dir, "f"+randomHex(4)), []byte("small file\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	v := create2(t, docker, driver, conn, driveropts.Options{Addr: srv.Addr(), Token: token, Path: export, ReadOnly: true})
	for _, args := range [][]string{{"read", "/data/big"}, {"walk", "/data/tree"}, {"smallreads", "/data/tree"}} {
		code, out := run(t, docker, v, append([]string{"fsbench"}, args...)...)
		if code != 0 {
			t.Errorf("fsbench %s: %d %s", args[0], code, out)
		}
		t.Logf("fsbench %s", strings.TrimSpace(out))
	}
}
