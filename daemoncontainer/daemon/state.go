package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// State is what the daemon keeps in its container's writable layer so that
// it comes back by itself when Docker restarts the container (the engine was
// restarted, Docker Desktop woke up, the daemon crashed): the kubeconfig that
// `tp connect` handed it, the session it holds (so that its intercepts stay)
// and its intercepts' mount tokens (so that tp's volumes mount again).
//
// The files are root's, mode 0600, in a directory of mode 0700, in the
// container's own layer: they go when the container is removed (`tp quit`,
// `docker rm`), never to a volume or the host. Whoever can read them can
// also `docker exec` into the daemon, so they widen no one's access.
type State struct{ Dir string }

// DefaultStateDir is the daemon container's state directory.
const DefaultStateDir = "/var/lib/tp"

const (
	kubeconfigFile = "kubeconfig"
	sessionFile    = "session.json"
	mountsFile     = "mounts.json"
)

// Kubeconfig returns the kubeconfig a previous start of this container
// saved, or an error satisfying os.ErrNotExist on its first start.
func (s State) Kubeconfig() ([]byte, error) {
	if s.Dir == "" {
		return nil, os.ErrNotExist
	}
	return os.ReadFile(filepath.Join(s.Dir, kubeconfigFile))
}

// SaveKubeconfig keeps the kubeconfig for the next start of the container.
func (s State) SaveKubeconfig(data []byte) error {
	return s.write(kubeconfigFile, data)
}

// savedSession is the session the daemon holds.
type savedSession struct {
	ID string `json:"id"`
}

// session returns the saved session id, "" when there is none.
func (s State) session() (string, error) {
	var v savedSession
	err := s.read(sessionFile, &v)
	return v.ID, err
}

func (s State) saveSession(id string) error {
	return s.writeJSON(sessionFile, savedSession{ID: id})
}

// savedMounts are the intercepts this daemon created (id by
// namespace/name) and their mount tokens (by intercept id).
type savedMounts struct {
	Owned  map[string]string `json:"owned"`
	Tokens map[string]string `json:"tokens"`
}

func (s State) mounts() (savedMounts, error) {
	var v savedMounts
	err := s.read(mountsFile, &v)
	return v, err
}

func (s State) saveMounts(v savedMounts) error { return s.writeJSON(mountsFile, v) }

// read decodes a state file into v; a missing file (or no state dir) leaves
// v as it is and is no error.
func (s State) read(name string, v any) error {
	if s.Dir == "" {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(s.Dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("daemon state: %w", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("daemon state %s: %w", name, err)
	}
	return nil
}

func (s State) writeJSON(name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("daemon state %s: %w", name, err)
	}
	return s.write(name, b)
}

// write replaces a state file atomically (a crash leaves the old or the new
// content, never half of one). Without a state dir it does nothing.
func (s State) write(name string, data []byte) error {
	if s.Dir == "" {
		return nil
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("daemon state: %w", err)
	}
	tmp, err := os.CreateTemp(s.Dir, "."+name+".*")
	if err != nil {
		return fmt.Errorf("daemon state: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("daemon state %s: %w", name, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("daemon state %s: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("daemon state %s: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(s.Dir, name)); err != nil {
		return fmt.Errorf("daemon state %s: %w", name, err)
	}
	return nil
}

// Forget removes the state: the connection ended (`tp quit`), and a restart
// of the container must not take it up again.
func (s State) Forget() error {
	if s.Dir == "" {
		return nil
	}
	var errs []error
	for _, name := range []string{sessionFile, mountsFile, kubeconfigFile} {
		if err := os.Remove(filepath.Join(s.Dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
