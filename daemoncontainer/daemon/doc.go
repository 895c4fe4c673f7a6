// Package daemon is the process inside the daemon container (`tp daemon run`).
// It connects to the traffic-manager through the Kubernetes API's
// port-forward, opens a session and keeps it alive, routes the cluster's
// subnets into a TUN device whose flows the netstack carries through the
// tunnel, serves cluster DNS to every container joined to its network
// namespace, and serves the CLI's API on a unix socket (see
// wire.DaemonSocket). It reconnects by itself when the
// port-forward or the manager goes away.
package daemon

import (
	"log/slog"
	"net/netip"
	"time"
)

// Config configures the daemon.
type Config struct {
	// Connection is the connection's name (the container is named after it).
	Connection string
	// Context and Namespace of the kubeconfig; short names resolve in Namespace.
	Context   string
	Namespace string
	// ManagerNamespace is where the traffic-manager runs.
	ManagerNamespace string
	// KubeconfigData is the kubeconfig handed in by the CLI on stdin (see
	// ReadKubeconfig), or saved by a previous start of the container (State).
	KubeconfigData []byte
	// Kubeconfig is a kubeconfig file, read when KubeconfigData is nil.
	Kubeconfig string
	Version    string
	// Socket is the API's unix socket; default wire.DaemonSocket.
	Socket string
	// ResolvConf holds the original resolvers (read once; `tp connect`
	// rewrites it afterwards, see PointResolvConf); default /etc/resolv.conf.
	ResolvConf string
	// TUN device name; default "tp0".
	TUNName string
	// DNSAddr is where the DNS server listens; default 127.0.0.1:53.
	DNSAddr string
	// MountAddr is where the daemon serves its intercepts' volume mounts;
	// default ":9022" (wire.MountPort, all interfaces).
	MountAddr string
	// State is where the daemon keeps what a restart of its container needs
	// (kubeconfig, session, mount tokens); a zero State keeps nothing.
	State State
	// AlsoProxy are subnets routed into the tunnel besides the cluster's
	// (`tp connect --also-proxy`: a VPN's or a database's that the cluster
	// reaches; the traffic-manager dials them when its chart value
	// tunnel.allowCIDRs allows them). NeverProxy are subnets kept out of
	// the tunnel even inside the cluster's ranges (`--never-proxy`: they
	// leave through the container's own network). See routesFor.
	AlsoProxy, NeverProxy []netip.Prefix
	// Heartbeat overrides the session heartbeat interval (default TTL/3).
	Heartbeat time.Duration
	Log       *slog.Logger
}
