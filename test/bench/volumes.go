package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"time"
)

const debianImage = "tp-debian:dev"

// volumeResults are the mount measurements: each through tp's volume (a
// container of the Debian image with the pod's emptyDir /var mounted, timed
// around `docker exec`) next to the same through `kubectl exec` into the
// app container (the baseline).
type volumeResults struct {
	Skipped string `json:"skipped,omitempty"`
	// MountReadySeconds: `docker run` of a container with the volume minus
	// the same run without it, i.e. the first FUSE mount.
	MountReadySeconds float64 `json:"mountReadySeconds,omitempty"`
	WriteMBps         float64 `json:"writeMBps,omitempty"` // 100 MB written through the mount
	ReadMBps          float64 `json:"readMBps,omitempty"`
	ReadBaselineMBps  float64 `json:"readBaselineMBps,omitempty"` // kubectl exec cat
	WalkSeconds       float64 `json:"walkSeconds,omitempty"`      // find + stat over 1000 files
	SmallSeconds      float64 `json:"smallSeconds,omitempty"`     // 1000 small files read
	SmallBaseline     float64 `json:"smallBaselineSeconds,omitempty"`
	Files             int     `json:"files"`
	BigMB             int     `json:"bigMB"`
}

// volumes measures the pod's volumes through tp's plugin, next to kubectl
// exec. kubectl cp needs tar in the container, which the FROM-scratch echo
// image has not; so kubectl exec cat is the baseline.
func (b *bench) volumes(ctx context.Context) {
	v := &b.res.Volumes
	v.Files, v.BigMB = 1000, 100
	if out, err := docker(ctx, time.Minute, "image", "inspect", "-f", "{{.Id}}", debianImage); err != nil {
		v.Skipped = fmt.Sprintf("image %s missing (make image): %.200s", debianImage, out)
		return
	}
	ns := b.res.Namespace
	var vol, pod string
	b.phase(ctx, "volumes/intercept", func(ctx context.Context) error {
		out, err := b.tp(ctx, 3*time.Minute, "intercept", "echo", "--name", b.o.name, "--service", "echo", "--port", "8080:http",
			"--mount-volumes", "--mount-path", "/var", "-o", "json")
		if err != nil {
			return fmt.Errorf("tp intercept --mount-volumes: %w\n%s", err, out)
		}
		b.onCleanup("tp leave echo (volumes)", func(ctx context.Context) error {
			_, err := b.tp(ctx, time.Minute, "leave", "echo", "--name", b.o.name, "-n", ns)
			return err
		})
		var res struct {
			PodName string `json:"podName"`
			Volumes []struct{ Name, Path string }
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Volumes) != 1 {
			return fmt.Errorf("tp intercept --mount-volumes -o json: %v, want one volume\n%s", err, out)
		}
		vol, pod = res.Volumes[0].Name, res.PodName
		return nil
	})
	if vol == "" {
		return
	}
	c := b.containerName("volumes")
	b.phase(ctx, "volumes/mount-ready", func(ctx context.Context) error {
		plainName := b.containerName("plain")
		t0 := time.Now()
		if out, err := docker(ctx, time.Minute, "run", "-d", "--name", plainName, debianImage, "sleep", "infinity"); err != nil {
			return fmt.Errorf("docker run: %w\n%s", err, out)
		}
		plain := time.Since(t0)
		_, _ = docker(ctx, time.Minute, "rm", "-f", plainName)
		t0 = time.Now()
		if out, err := docker(ctx, time.Minute, "run", "-d", "--name", c, "-v", vol+":/var", debianImage, "sleep", "infinity"); err != nil {
			return fmt.Errorf("docker run -v %s: %w\n%s", vol, err, out)
		}
		v.MountReadySeconds = max(0, (time.Since(t0) - plain).Seconds())
		return nil
	})
	exec1 := func(ctx context.Context, script string) (time.Duration, error) {
		t0 := time.Now()
		out, err := docker(ctx, 5*time.Minute, "exec", c, "sh", "-c", script)
		if err != nil {
			return 0, fmt.Errorf("docker exec %q: %w\n%.300s", script, err, out)
		}
		return time.Since(t0), nil
	}
	kexec := func(ctx context.Context, args ...string) (time.Duration, error) {
		cmd := exec.CommandContext(ctx, b.o.kubectl, append([]string{"--kubeconfig", b.o.kubeconfig, "-n", ns, "exec", pod, "-c", "echo", "--", "/echo", "cat"}, args...)...)
		t0 := time.Now()
		if err := cmd.Run(); err != nil {
			return 0, fmt.Errorf("kubectl exec cat: %w", err)
		}
		return time.Since(t0), nil
	}
	b.phase(ctx, "volumes/write", func(ctx context.Context) error {
		d, err := exec1(ctx, fmt.Sprintf("mkdir -p /var/bench/tree && head -c %dM /dev/urandom > /var/bench/big", v.BigMB))
		if err != nil {
			return err
		}
		v.WriteMBps = float64(v.BigMB) / d.Seconds()
		_, err = exec1(ctx, fmt.Sprintf("cd /var/bench/tree && for i in $(seq -w 1 %d); do echo file-$i > f$i; done", v.Files))
		return err
	})
	b.phase(ctx, "volumes/read", func(ctx context.Context) error {
		d, err := exec1(ctx, "cat /var/bench/big > /dev/null")
		if err != nil {
			return err
		}
		v.ReadMBps = float64(v.BigMB) / d.Seconds()
		kd, err := kexec(ctx, "/var/bench/big")
		if err != nil {
			return err
		}
		v.ReadBaselineMBps = float64(v.BigMB) / kd.Seconds()
		return nil
	})
	b.phase(ctx, "volumes/walk", func(ctx context.Context) error {
		d, err := exec1(ctx, "find /var/bench/tree -type f -exec stat -c %s {} + > /dev/null")
		v.WalkSeconds = d.Seconds()
		return err
	})
	b.phase(ctx, "volumes/small", func(ctx context.Context) error {
		d, err := exec1(ctx, "cat /var/bench/tree/* > /dev/null")
		if err != nil {
			return err
		}
		v.SmallSeconds = d.Seconds()
		var files []string
		for i := 1; i <= v.Files; i++ {
			files = append(files, fmt.Sprintf("/var/bench/tree/f%0*d", len(fmt.Sprint(v.Files)), i))
		}
		kd, err := kexec(ctx, files...)
		v.SmallBaseline = kd.Seconds()
		return err
	})
	_, _ = docker(ctx, time.Minute, "rm", "-f", c)
}
