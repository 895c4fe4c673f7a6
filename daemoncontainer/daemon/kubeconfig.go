package daemon

import (
	"errors"
	"fmt"
	"io"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// maxKubeconfigSize bounds what ReadKubeconfig accepts.
const maxKubeconfigSize = 16 << 20

// ReadKubeconfig reads the kubeconfig that `tp connect` writes to the daemon's
// stdin and then closes. The daemon keeps it in memory only: it never lies in
// a file of the container, so it is gone with the process (see
// daemoncontainer). When the CLI does not deliver within timeout (it died
// after starting the container), ReadKubeconfig fails, so that the daemon
// exits instead of waiting forever.
func ReadKubeconfig(stdin io.ReadCloser, timeout time.Duration) ([]byte, error) {
	type result struct {
		data []byte
		err  error
	}
	done := make(chan result, 1)
	go func() { // ends at stdin's EOF or error; after a timeout the daemon exits with it
		b, err := io.ReadAll(io.LimitReader(stdin, maxKubeconfigSize+1))
		done <- result{b, err}
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case r := <-done:
		switch {
		case r.err != nil:
			return nil, fmt.Errorf("read the kubeconfig from stdin: %w", r.err)
		case len(r.data) == 0:
			return nil, errors.New("no kubeconfig on stdin: the daemon is started by `tp connect`, which writes it there")
		case len(r.data) > maxKubeconfigSize:
			return nil, fmt.Errorf("kubeconfig on stdin is larger than %d bytes", maxKubeconfigSize)
		}
		return r.data, nil
	case <-timer.C:
		_ = stdin.Close()
		return nil, fmt.Errorf("no kubeconfig on stdin within %s: `tp connect` did not deliver it; run it again", timeout)
	}
}

// restConfig loads the kubeconfig: the in-memory KubeconfigData when set
// (the daemon container's case), otherwise the file Kubeconfig.
func restConfig(cfg Config) (*rest.Config, error) {
	overrides := &clientcmd.ConfigOverrides{CurrentContext: cfg.Context}
	if cfg.KubeconfigData != nil {
		raw, err := clientcmd.Load(cfg.KubeconfigData)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig: %w", err)
		}
		rc, err := clientcmd.NewNonInteractiveClientConfig(*raw, cfg.Context, overrides, nil).ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("kubeconfig: %w", err)
		}
		return rc, nil
	}
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: cfg.Kubeconfig}, overrides).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", cfg.Kubeconfig, err)
	}
	return rc, nil
}
