// Package driveropts is the contract between the host side (package volumes,
// which creates tp's Docker volumes) and tp's volume plugin (package
// volumes/plugin, which mounts them): the driver options of a volume and the
// plugin's propagated mount. It imports only the standard library, so the
// plugin links none of the host side's Docker client.
package driveropts

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

// Options are a volume's validated driver options.
type Options struct {
	Addr     string // host:port of the daemon container's mount listener
	Token    string // the mount token (OpenMountResponse.token)
	Path     string // absolute path in the agent's export (the app's mountPath)
	ReadOnly bool
}

// Parse validates the options of `docker volume create` for a tp
// volume. Its errors are what the user sees from docker, so they say what to fix.
func Parse(m map[string]string) (Options, error) {
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
