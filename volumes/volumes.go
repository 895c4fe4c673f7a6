// Package volumes is the host side of tp's volume mounts: it installs and
// upgrades tp's managed Docker volume plugin (tp-volumes:<version>) and creates
// and removes the Docker volumes that mount an intercepted pod's files into
// local containers. It talks only to the Docker API, so it works the same from
// a Linux, macOS or Windows CLI: the mounts happen inside Docker's host or VM.
//
// What runs inside the plugin is package volumes/plugin: a Docker volume driver
// whose volumes are pure-Go FUSE mounts of an SFTP export, reached through the
// daemon container's mount port (9022) after a token handshake. docs/volumes.md
// has the whole picture.
package volumes

import (
	"fmt"
	"net"
	"path"
	"strconv"
	"strings"
)

// The volume options (docker volume create -o KEY=VALUE) that the plugin
// understands. Every volume needs addr, token and path; ro is optional.
const (
	// OptAddr is host:port of the daemon container's mount listener.
	OptAddr = "addr"
	// OptToken is the secret that the mount handshake presents.
	OptToken = "token"
	// OptPath is the path to mount in the agent's export: the app
	// container's mountPath.
	OptPath = "path"
	// OptReadOnly is "true" for a read-only mount (default "false").
	OptReadOnly = "ro"
)

// Labels that tp puts on its volumes, so that cleanup finds them.
const (
	// LabelManaged marks every volume tp created ("true").
	LabelManaged = "tp.run/volume"
	// LabelConnection is the tp connection (daemon container) the volume belongs to.
	LabelConnection = "tp.run/connection"
	// LabelIntercept is the intercept id the volume mounts files of.
	LabelIntercept = "tp.run/intercept"
	// LabelPath is the app container's mountPath that the volume mounts.
	LabelPath = "tp.run/path"
)

// Options are a volume's validated driver options.
type Options struct {
	Addr     string // host:port of the daemon container's mount listener
	Token    string // the mount token (OpenMountResponse.token)
	Path     string // absolute path in the agent's export (the app's mountPath)
	ReadOnly bool
}

// ParseOptions validates the options of `docker volume create` for a tp
// volume. Its errors are what the user sees from docker, so they say what to fix.
func ParseOptions(m map[string]string) (Options, error) {
	var o Options
	for k, v := range m {
		switch k {
		case OptAddr:
			o.Addr = v
		case OptToken:
			o.Token = v
		case OptPath:
			o.Path = v
		case OptReadOnly:
			b, err := strconv.ParseBool(v)
			if err != nil {
				return Options{}, fmt.Errorf("option %s=%q: want true or false", OptReadOnly, v)
			}
			o.ReadOnly = b
		default:
			return Options{}, fmt.Errorf("unknown option %q: a tp volume takes %s, %s, %s and %s", k, OptAddr, OptToken, OptPath, OptReadOnly)
		}
	}
	if err := o.Validate(); err != nil {
		return Options{}, err
	}
	return o, nil
}

// Validate checks that o names a mount the plugin can make.
func (o Options) Validate() error {
	var missing []string
	for _, kv := range [][2]string{{OptAddr, o.Addr}, {OptToken, o.Token}, {OptPath, o.Path}} {
		if kv[1] == "" {
			missing = append(missing, kv[0])
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing option %s: a tp volume needs -o %s=HOST:PORT -o %s=TOKEN -o %s=/PATH (tp creates these volumes; see `tp intercept --mount-volumes`)",
			strings.Join(missing, ", "), OptAddr, OptToken, OptPath)
	}
	if _, port, err := net.SplitHostPort(o.Addr); err != nil || port == "" {
		return fmt.Errorf("option %s=%q: want HOST:PORT", OptAddr, o.Addr)
	}
	if strings.ContainsAny(o.Token, " \t\r\n") {
		return fmt.Errorf("option %s: the token has white space", OptToken)
	}
	if !path.IsAbs(o.Path) || path.Clean(o.Path) != o.Path {
		return fmt.Errorf("option %s=%q: want a clean absolute path", OptPath, o.Path)
	}
	return nil
}

// Map returns o as driver options for VolumeCreate.
func (o Options) Map() map[string]string {
	return map[string]string{
		OptAddr: o.Addr, OptToken: o.Token, OptPath: o.Path, OptReadOnly: strconv.FormatBool(o.ReadOnly),
	}
}

// PropagatedMount is the plugin's propagatedMount: the directory inside the
// plugin under which it mounts volumes, and whose mounts Docker sees.
const PropagatedMount = "/mnt/volumes"
