//go:build linux

package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table agent-init owns, in the ip and ip6
// families.
const TableName = "tp"

// chainName is the NAT chain of TableName hooked at prerouting.
const chainName = "prerouting"

// Init is agent-init: in the pod's network namespace it (re)creates the
// tables `ip tp` and `ip6 tp`, each with a NAT chain at the prerouting hook
// (priority dstnat) that redirects TCP to each "redirect" port's
// containerPort to its agentPort, like
//
//	table ip tp {
//		chain prerouting {
//			type nat hook prerouting priority dstnat; policy accept;
//			tcp dport 8080 counter redirect to :9900
//		}
//	}
//
// Only traffic entering the pod is redirected: what the agent sends to
// 127.0.0.1:containerPort is locally generated and reaches the app. Init is
// idempotent: it replaces its own tables in one transaction per family and
// touches nothing else. It needs CAP_NET_ADMIN. Without "redirect" ports
// it only removes its tables. A failure on ip6 is logged and tolerated
// when the pod has no IPv6 address besides loopback and link-local ones.
func Init(ctx context.Context, ports []Port, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	if err := validatePorts(ports); err != nil {
		return fmt.Errorf("agent-init: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	var redirect []Port
	for _, p := range ports {
		if p.Mechanism == MechanismRedirect {
			redirect = append(redirect, p)
		}
	}
	if err := installRedirects(nftables.TableFamilyIPv4, redirect); err != nil {
		return fmt.Errorf("agent-init: nftables table ip %s: %w%s", TableName, err, permissionHint(err))
	}
	if err := installRedirects(nftables.TableFamilyIPv6, redirect); err != nil {
		if !podHasIPv6() {
			log.Warn("agent-init: cannot redirect IPv6, and the pod has no IPv6 address; only IPv4 traffic is redirected", "err", err)
		} else {
			return fmt.Errorf("agent-init: nftables table ip6 %s: %w%s", TableName, err, permissionHint(err))
		}
	}
	for _, p := range redirect {
		log.Info("agent-init: redirecting TCP", "containerPort", p.ContainerPort, "agentPort", p.AgentPort, "name", p.Name)
	}
	if len(redirect) == 0 {
		log.Info("agent-init: no port uses the redirect mechanism; nothing to redirect")
	}
	return nil
}

// installRedirects replaces the family's tp table in one transaction.
func installRedirects(family nftables.TableFamily, ports []Port) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	table := &nftables.Table{Name: TableName, Family: family}
	// Adding then deleting removes the table whether or not it existed.
	c.AddTable(table)
	c.DelTable(table)
	if len(ports) > 0 {
		c.AddTable(table)
		chain := c.AddChain(&nftables.Chain{
			Name:     chainName,
			Table:    table,
			Type:     nftables.ChainTypeNAT,
			Hooknum:  nftables.ChainHookPrerouting,
			Priority: nftables.ChainPriorityNATDest,
		})
		for _, p := range ports {
			c.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: redirectExprs(p)})
		}
	}
	return c.Flush()
}

// redirectExprs is `tcp dport <containerPort> counter redirect to :<agentPort>`.
func redirectExprs(p Port) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(p.ContainerPort))},
		&expr.Counter{},
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(p.AgentPort))},
		&expr.Redir{RegisterProtoMin: 1},
	}
}

// podHasIPv6 reports whether the pod has an IPv6 address other than
// loopback and link-local ones, i.e. whether IPv6 traffic can reach it.
func podHasIPv6() bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return true // cannot tell: do not hide the failure
	}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		if ip := ipn.IP; ip.To4() == nil && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() {
			return true
		}
	}
	return false
}

func permissionHint(err error) string {
	if errors.Is(err, unix.EPERM) || errors.Is(err, os.ErrPermission) {
		return " (the tp-agent-init container needs the NET_ADMIN capability and must run as root)"
	}
	return ""
}
