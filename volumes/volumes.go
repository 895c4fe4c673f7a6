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
