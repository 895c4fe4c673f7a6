package daemon

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"

	"github.com/tp-run/tp/daemoncontainer/dns"
)

// PointResolvConf rewrites the resolv.conf at path so that its readers
// resolve through the daemon's DNS server at nameserver, with a pod's search
// list for namespace and clusterDomain (see dns.RenderResolvConf). It is
// idempotent: a file it already rewrote keeps the original it recorded.
//
// The daemon container's root filesystem is read-only, and Docker mounts its
// /etc/resolv.conf read-only with it; the containers joined to it share that
// very file (Docker bind-mounts the daemon container's resolv.conf into
// them). So the daemon does not write it itself: `tp connect` runs this as
// `tp daemon resolvconf` in a short-lived container joined to the daemon's
// network namespace, without capabilities or credentials. The file is
// written in place, as it is a bind mount.
func PointResolvConf(path string, nameserver netip.Addr, namespace, clusterDomain string) error {
	old, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	orig, err := dns.ParseResolvConf(bytes.NewReader(old))
	if err != nil {
		return err
	}
	rendered := dns.RenderResolvConf(orig, nameserver, namespace, clusterDomain)
	if bytes.Equal(rendered, old) {
		return nil
	}
	if err := os.WriteFile(path, rendered, 0o644); err != nil {
		return fmt.Errorf("point %s at the cluster DNS: %w", path, err)
	}
	return nil
}
