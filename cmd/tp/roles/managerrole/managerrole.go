// Package managerrole holds the traffic-manager's command (`tp manager`, in
// the cluster). The image's /tp-manager links it alone.
package managerrole

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/tp-run/tp/cmd/tp/roles/rolecmd"
	"github.com/tp-run/tp/internal/version"
	"github.com/tp-run/tp/manager"
)

func newManagerCommand() *cobra.Command {
	return &cobra.Command{
		Use:    "manager",
		Short:  "Run the traffic-manager (inside the cluster)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := rolecmd.NewLogger(rolecmd.EnvOr("TP_LOG_LEVEL", "info"), os.Stderr)
			if err != nil {
				return err
			}
			// The chart passes the container's memory limit (downward API):
			// the collector works harder before the OOM killer would end
			// every developer's flows at once.
			soft, err := rolecmd.SoftLimitOfContainer(os.Getenv("TP_MEMORY_LIMIT"))
			if err != nil {
				return fmt.Errorf("TP_MEMORY_LIMIT: %w", err)
			}
			if soft > 0 {
				log.Info("soft memory limit", "bytes", rolecmd.SetSoftMemoryLimit(soft), "containerLimit", os.Getenv("TP_MEMORY_LIMIT"))
			}
			ttl, err := time.ParseDuration(rolecmd.EnvOr("TP_SESSION_TTL", "10m"))
			if err != nil {
				return fmt.Errorf("TP_SESSION_TTL: %w", err)
			}
			allow, err := manager.ParseCIDRs(os.Getenv("TP_TUNNEL_ALLOW_CIDRS"))
			if err != nil {
				return fmt.Errorf("TP_TUNNEL_ALLOW_CIDRS (chart value %s): %w", manager.AllowCIDRsValue, err)
			}
			readNodes, err := strconv.ParseBool(rolecmd.EnvOr("TP_READ_NODES", "true"))
			if err != nil {
				return fmt.Errorf("TP_READ_NODES: %w", err)
			}
			var hostIP netip.Addr
			if s := os.Getenv("TP_HOST_IP"); s != "" {
				if hostIP, err = netip.ParseAddr(s); err != nil {
					return fmt.Errorf("TP_HOST_IP: %w", err)
				}
			}
			rc, err := rest.InClusterConfig()
			if err != nil {
				return fmt.Errorf("the traffic-manager runs in a pod: %w", err)
			}
			kc, err := kubernetes.NewForConfig(rc)
			if err != nil {
				return err
			}
			m, err := manager.New(manager.Config{
				Namespace: os.Getenv("TP_NAMESPACE"), SessionTTL: ttl, Version: version.Version, Log: log,
				AgentImage:           os.Getenv("TP_AGENT_IMAGE"),
				AgentImagePullPolicy: os.Getenv("TP_AGENT_IMAGE_PULL_POLICY"),
				WebhookCertDir:       os.Getenv("TP_WEBHOOK_CERT_DIR"),
				ManagedNamespaces:    splitList(os.Getenv("TP_MANAGED_NAMESPACES")),
				AllowCIDRs:           allow, NoNodes: !readNodes, HostIP: hostIP,
			}, kc)
			if err != nil {
				return err
			}
			return m.Run(cmd.Context())
		},
	}
}

// splitList splits a comma-separated list, dropping empty entries.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// Commands returns the traffic-manager's command, hidden.
func Commands() []*cobra.Command {
	return []*cobra.Command{newManagerCommand()}
}
