package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/util/rand"
)

// docker runs the docker CLI and returns its standard output (and standard
// error, appended, when it fails).
func docker(ctx context.Context, timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.WaitDelay = 5 * time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out) + stderr.String(), err
	}
	return string(out), nil
}

func dockerRemove(ctx context.Context, names ...string) error {
	out, err := docker(ctx, time.Minute, append([]string{"rm", "-f"}, names...)...)
	if err != nil && !strings.Contains(out, "No such container") {
		return fmt.Errorf("docker rm -f %v: %w: %s", names, err, out)
	}
	return nil
}

// dockerRemovePrefix removes every container whose name starts with prefix.
func dockerRemovePrefix(ctx context.Context, prefix string) error {
	out, err := docker(ctx, time.Minute, "ps", "-a", "--filter", "name=^/"+prefix, "--format", "{{.Names}}")
	if err != nil {
		return fmt.Errorf("docker ps: %w: %s", err, out)
	}
	names := strings.Fields(out)
	if len(names) == 0 {
		return nil
	}
	return dockerRemove(ctx, names...)
}

func randomSuffix() string { return rand.String(5) }

// portForward is a running `kubectl port-forward`, the baseline's transport.
type portForward struct {
	port int
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // its exit status, once done

	mu     sync.Mutex
	errors []string // kubectl's error lines (the first ones)
	nerr   int
	drain  sync.WaitGroup
}

// startPortForward runs kubectl port-forward pod/POD PORT:8080 on 127.0.0.1
// and returns once it forwards. PORT is port, or a free one when port is taken.
func startPortForward(ctx context.Context, kubectl, kubeconfig, ns, pod string, port int) (*portForward, error) {
	if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
		l.Close()
	} else if l, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		port = l.Addr().(*net.TCPAddr).Port
		l.Close()
	} else {
		return nil, fmt.Errorf("find a free local port: %w", err)
	}
	// Not CommandContext: the port-forward lives until stop, not until ctx.
	cmd := exec.Command(kubectl, "--kubeconfig", kubeconfig, "-n", ns, "port-forward", "--address", "127.0.0.1",
		"pod/"+pod, strconv.Itoa(port)+":8080")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the bench
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s port-forward: %w", kubectl, err)
	}
	pf := &portForward{port: port, cmd: cmd, done: make(chan struct{})}
	ready := make(chan struct{})
	pf.drain.Add(2)
	go func() { // "Forwarding from ...", then one "Handling connection" line per connection
		defer pf.drain.Done()
		sc := bufio.NewScanner(stdout)
		once := sync.Once{}
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "Forwarding from") {
				once.Do(func() { close(ready) })
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	go func() {
		defer pf.drain.Done()
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			pf.mu.Lock()
			pf.nerr++
			if len(pf.errors) < 5 {
				pf.errors = append(pf.errors, sc.Text())
			}
			pf.mu.Unlock()
		}
	}()
	go func() {
		pf.drain.Wait()
		pf.err = cmd.Wait()
		close(pf.done)
	}()
	select {
	case <-ready:
		return pf, nil
	case <-pf.done:
		return nil, fmt.Errorf("kubectl port-forward exited: %v: %s", pf.err, strings.Join(pf.errorLines(), "; "))
	case <-ctx.Done():
	case <-time.After(30 * time.Second):
	}
	_ = pf.stop()
	return nil, fmt.Errorf("kubectl port-forward not forwarding within 30s: %s", strings.Join(pf.errorLines(), "; "))
}

// alive reports an error once kubectl has exited.
func (pf *portForward) alive() error {
	select {
	case <-pf.done:
		return fmt.Errorf("kubectl port-forward exited: %v: %s", pf.err, strings.Join(pf.errorLines(), "; "))
	default:
		return nil
	}
}

// errorLines returns kubectl's first error lines and how many there were.
func (pf *portForward) errorLines() []string {
	pf.mu.Lock()
	defer pf.mu.Unlock()
	out := append([]string(nil), pf.errors...)
	if pf.nerr > len(out) {
		out = append(out, fmt.Sprintf("(%d error lines in all)", pf.nerr))
	}
	return out
}

// stop ends kubectl (our child, by its pid) and waits for it; stopping twice is fine.
func (pf *portForward) stop() error {
	select {
	case <-pf.done:
		return nil
	default:
	}
	_ = pf.cmd.Process.Signal(os.Interrupt)
	select {
	case <-pf.done:
		return nil
	case <-time.After(5 * time.Second):
	}
	_ = pf.cmd.Process.Kill()
	select {
	case <-pf.done:
		return nil
	case <-time.After(5 * time.Second):
		return errors.New("kubectl port-forward did not exit after SIGKILL")
	}
}
