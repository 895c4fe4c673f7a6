// Package plugin is what runs inside tp's managed Docker volume plugin
// (`tp volumes plugin`, the entry point of the plugin's FROM-scratch rootfs):
// the Docker volume driver API (docker.volumedriver/1.0) on the unix socket
// that Docker gives the plugin, whose volumes are pure-Go FUSE mounts
// (go-fuse, direct mount) of an SFTP export. Each mount dials the daemon
// container's mount port, presents the volume's token ("TP-MOUNT 1 <token>")
// and then speaks SFTP to the traffic-agent through tp's tunnel.
//
// Every filesystem operation has a deadline: when the connection breaks or
// stalls, operations fail with EIO and unmounts never block, so `docker stop`
// and `docker rm` never hang on a tp volume. The host side (installing the
// plugin, creating volumes) is package volumes.
package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tp-run/tp/volumes/driveropts"
)

// Where the plugin works inside its rootfs. Docker mounts the directory of
// the socket; the mount root is the config's propagatedMount, whose mounts
// Docker sees; the state file stays in the plugin's rootfs across restarts.
const (
	SocketPath = "/run/docker/plugins/tp.sock"
	MountRoot  = driveropts.PropagatedMount
	StatePath  = "/var/lib/tp-volumes/state.json"
	// OpTimeout bounds every filesystem operation and the mount handshake:
	// a stalled connection fails reads within 10 s, with some margin.
	OpTimeout = 8 * time.Second
)

// Mounted is a live mount.
type Mounted interface {
	// Close unmounts, without blocking on a busy mount or a dead connection.
	Close() error
	// Err is nil while the mount's connection works, else why it broke.
	Err() error
}

// MountFunc mounts the volume with options o at dir.
type MountFunc func(ctx context.Context, dir string, o driveropts.Options, timeout time.Duration) (Mounted, error)

// Config is the driver's.
type Config struct {
	Socket    string        // the API's unix socket; SocketPath in the plugin
	MountRoot string        // where mounts go; MountRoot in the plugin
	StatePath string        // the volumes, kept across restarts; StatePath in the plugin
	Timeout   time.Duration // of each operation; OpTimeout by default
	Mount     MountFunc     // MountFUSE by default
	Unmount   func(dir string) error
	Log       *slog.Logger
}

// Driver is the volume driver: the volumes Docker created and their mounts.
type Driver struct {
	cfg Config

	mu   sync.Mutex
	vols map[string]*volume
}

type volume struct {
	name    string
	raw     map[string]string
	created time.Time
	opts    driveropts.Options

	mu  sync.Mutex // serializes mount, unmount and remove
	ids map[string]bool
	m   Mounted
}

// stateFile is the JSON of Config.StatePath.
type stateFile struct {
	Volumes []stateVolume `json:"volumes"`
}

type stateVolume struct {
	Name      string            `json:"name"`
	Options   map[string]string `json:"options"`
	CreatedAt time.Time         `json:"createdAt"`
}

// NewDriver loads the volumes of an earlier run and detaches the mounts that
// it left behind (a plugin restart ends their FUSE connections).
func NewDriver(cfg Config) (*Driver, error) {
	if cfg.MountRoot == "" || cfg.StatePath == "" {
		return nil, errors.New("volume driver: MountRoot and StatePath are required")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = OpTimeout
	}
	if cfg.Mount == nil {
		cfg.Mount = MountFUSE
	}
	if cfg.Unmount == nil {
		cfg.Unmount = Unmount
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	d := &Driver{cfg: cfg, vols: map[string]*volume{}}
	if err := os.MkdirAll(cfg.MountRoot, 0o755); err != nil {
		return nil, err
	}
	if err := d.load(); err != nil {
		return nil, err
	}
	entries, _ := os.ReadDir(cfg.MountRoot)
	for _, e := range entries {
		dir := filepath.Join(cfg.MountRoot, e.Name())
		if err := cfg.Unmount(dir); err != nil {
			cfg.Log.Warn("stale mount", "dir", dir, "err", err)
		}
		_ = os.Remove(dir)
	}
	return d, nil
}

func (d *Driver) load() error {
	b, err := os.ReadFile(d.cfg.StatePath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var st stateFile
	if err := json.Unmarshal(b, &st); err != nil {
		d.cfg.Log.Warn("state file unreadable; starting without volumes", "path", d.cfg.StatePath, "err", err)
		return nil
	}
	for _, sv := range st.Volumes {
		o, err := driveropts.Parse(sv.Options)
		if err != nil {
			d.cfg.Log.Warn("dropping a volume of the state file", "volume", sv.Name, "err", err)
			continue
		}
		d.vols[sv.Name] = &volume{name: sv.Name, raw: sv.Options, created: sv.CreatedAt, opts: o, ids: map[string]bool{}}
	}
	return nil
}

// save writes the volumes; d.mu is held.
func (d *Driver) save() error {
	var st stateFile
	for _, name := range slices.Sorted(maps.Keys(d.vols)) {
		v := d.vols[name]
		st.Volumes = append(st.Volumes, stateVolume{Name: v.name, Options: v.raw, CreatedAt: v.created})
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(d.cfg.StatePath), 0o700); err != nil {
		return err
	}
	tmp := d.cfg.StatePath + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, d.cfg.StatePath)
}

var validName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// Create records a volume; its options are checked now, so that `docker
// volume create` shows what is wrong.
func (d *Driver) Create(name string, raw map[string]string) error {
	if !validName.MatchString(name) {
		return fmt.Errorf("volume name %q: use letters, digits, '_', '.' and '-'", name)
	}
	o, err := driveropts.Parse(raw)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.vols[name]; ok {
		return fmt.Errorf("volume %s exists", name)
	}
	d.vols[name] = &volume{name: name, raw: maps.Clone(raw), created: time.Now().UTC(), opts: o, ids: map[string]bool{}}
	if err := d.save(); err != nil {
		delete(d.vols, name)
		return fmt.Errorf("save the plugin's state: %w", err)
	}
	d.cfg.Log.Info("created", "volume", name, "addr", o.Addr, "path", o.Path, "ro", o.ReadOnly)
	return nil
}

func (d *Driver) lookup(name string) (*volume, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.vols[name]
	if !ok {
		return nil, fmt.Errorf("no tp volume %s", name)
	}
	return v, nil
}

func (d *Driver) dir(name string) string { return filepath.Join(d.cfg.MountRoot, name) }

// Remove unmounts and forgets a volume. An unknown volume is no error, so
// that Docker can always drop a volume whose state this plugin lost.
func (d *Driver) Remove(name string) error {
	d.mu.Lock()
	v, ok := d.vols[name]
	d.mu.Unlock()
	if !ok {
		return nil
	}
	v.mu.Lock()
	d.unmountLocked(v)
	v.mu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.vols, name)
	if err := d.save(); err != nil {
		d.cfg.Log.Warn("save the plugin's state", "err", err)
	}
	d.cfg.Log.Info("removed", "volume", name)
	return nil
}

// Mount mounts the volume for the container mount id; a second id shares
// the mount. A mount whose connection broke is made anew.
func (d *Driver) Mount(ctx context.Context, name, id string) (string, error) {
	v, err := d.lookup(name)
	if err != nil {
		return "", err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	dir := d.dir(name)
	if v.m != nil && v.m.Err() != nil {
		d.cfg.Log.Info("remounting a broken mount", "volume", name, "err", v.m.Err())
		d.closeMount(v)
	}
	if v.m == nil {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", err
		}
		ctx, cancel := context.WithTimeout(ctx, 3*d.cfg.Timeout)
		defer cancel()
		m, err := d.cfg.Mount(ctx, dir, v.opts, d.cfg.Timeout)
		if err != nil {
			_ = os.Remove(dir)
			d.cfg.Log.Warn("mount failed", "volume", name, "err", err)
			return "", fmt.Errorf("mount tp volume %s: %w", name, err)
		}
		v.m = m
		d.cfg.Log.Info("mounted", "volume", name, "dir", dir)
	}
	v.ids[id] = true
	return dir, nil
}

// Unmount releases the container mount id; the last one unmounts. It
// always succeeds, so that stopping a container never fails or hangs here.
func (d *Driver) Unmount(name, id string) error {
	v, err := d.lookup(name)
	if err != nil {
		return nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.ids, id)
	if len(v.ids) == 0 {
		d.unmountLocked(v)
	}
	return nil
}

// unmountLocked unmounts v; v.mu is held.
func (d *Driver) unmountLocked(v *volume) {
	clear(v.ids)
	if v.m != nil {
		d.closeMount(v)
		d.cfg.Log.Info("unmounted", "volume", v.name)
	}
}

func (d *Driver) closeMount(v *volume) {
	if err := v.m.Close(); err != nil {
		d.cfg.Log.Warn("unmount", "volume", v.name, "err", err)
	}
	v.m = nil
	_ = os.Remove(d.dir(v.name))
}

// Info is a volume as Get and List answer.
type Info struct {
	Name       string         `json:"Name"`
	Mountpoint string         `json:"Mountpoint,omitempty"`
	CreatedAt  string         `json:"CreatedAt,omitempty"`
	Status     map[string]any `json:"Status,omitempty"`
}

func (d *Driver) info(v *volume, status bool) Info {
	v.mu.Lock()
	defer v.mu.Unlock()
	i := Info{Name: v.name, CreatedAt: v.created.Format(time.RFC3339)}
	if v.m != nil {
		i.Mountpoint = d.dir(v.name)
	}
	if status { // never the token: `docker volume inspect` shows this
		s := map[string]any{"addr": v.opts.Addr, "path": v.opts.Path, "readOnly": v.opts.ReadOnly, "mounted": v.m != nil}
		if v.m != nil && v.m.Err() != nil {
			s["error"] = v.m.Err().Error()
		}
		i.Status = s
	}
	return i
}

// Get describes one volume.
func (d *Driver) Get(name string) (Info, error) {
	v, err := d.lookup(name)
	if err != nil {
		return Info{}, err
	}
	return d.info(v, true), nil
}

// List describes every volume.
func (d *Driver) List() []Info {
	d.mu.Lock()
	vs := slices.Collect(maps.Values(d.vols))
	d.mu.Unlock()
	slices.SortFunc(vs, func(a, b *volume) int { return strings.Compare(a.name, b.name) })
	out := make([]Info, 0, len(vs))
	for _, v := range vs {
		out = append(out, d.info(v, false))
	}
	return out
}

// Path is the mount point of a mounted volume, "" otherwise.
func (d *Driver) Path(name string) (string, error) {
	i, err := d.Get(name)
	return i.Mountpoint, err
}

// Close unmounts every volume; the volumes stay recorded.
func (d *Driver) Close() {
	d.mu.Lock()
	vs := slices.Collect(maps.Values(d.vols))
	d.mu.Unlock()
	for _, v := range vs {
		v.mu.Lock()
		d.unmountLocked(v)
		v.mu.Unlock()
	}
}

// Run serves the driver API on cfg.Socket until ctx ends, then unmounts.
func Run(ctx context.Context, cfg Config) error {
	d, err := NewDriver(cfg)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := os.MkdirAll(filepath.Dir(cfg.Socket), 0o755); err != nil {
		return err
	}
	_ = os.Remove(cfg.Socket)
	l, err := net.Listen("unix", cfg.Socket)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: d.Handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	d.cfg.Log.Info("tp volume plugin serving", "socket", cfg.Socket, "volumes", len(d.vols))
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	<-errc
	return nil
}
