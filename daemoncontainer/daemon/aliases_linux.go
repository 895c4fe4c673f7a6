package daemon

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tp-run/tp/daemoncontainer/dns"
	daemonv1 "github.com/tp-run/tp/rpc/daemon/v1"
)

// SetAliases implements daemonv1.DaemonServer: the DNS server answers each
// name as the cluster's service in the connection's namespace. The daemon
// keeps the sets in memory, for its life only, and gives them to every DNS
// server it starts (a new one after the network restarts).
func (d *daemon) SetAliases(_ context.Context, req *daemonv1.SetAliasesRequest) (*daemonv1.SetAliasesResponse, error) {
	owner := req.GetOwner()
	if owner == "" {
		return nil, status.Error(codes.InvalidArgument, "SetAliases: give the owner (the compose project)")
	}
	for name, svc := range req.GetAliases() {
		if !dns.IsLabel(svc) {
			return nil, status.Errorf(codes.InvalidArgument, "alias %s: the cluster's service %q is not a DNS label (lower-case letters, digits and '-', at most 63)", name, svc)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dns == nil {
		return nil, status.Errorf(codes.Unavailable, "connection %s: its network is not up yet; retry once tp status says connected", d.cfg.Connection)
	}
	if err := d.dns.SetAliases(owner, aliasTargets(req.GetAliases(), d.cfg.Namespace, d.dnsDomain)); err != nil {
		code := codes.InvalidArgument
		if errors.Is(err, dns.ErrAliasTaken) {
			code = codes.FailedPrecondition
		}
		return nil, status.Error(code, err.Error())
	}
	if d.aliases == nil {
		d.aliases = map[string]map[string]string{}
	}
	if len(req.GetAliases()) == 0 {
		delete(d.aliases, owner)
	} else {
		d.aliases[owner] = maps.Clone(req.GetAliases())
	}
	d.cfg.Log.Info("DNS aliases set", "connection", d.cfg.Connection, "owner", owner, "aliases", req.GetAliases())
	return &daemonv1.SetAliasesResponse{}, nil
}

// aliasTargets maps each name to the FQDN of its cluster service.
func aliasTargets(services map[string]string, namespace, domain string) map[string]string {
	out := make(map[string]string, len(services))
	for name, svc := range services {
		out[name] = fmt.Sprintf("%s.%s.svc.%s.", svc, namespace, strings.TrimSuffix(domain, "."))
	}
	return out
}

// restoreAliases gives a new DNS server the aliases the daemon holds.
// Callers hold d.mu.
func (d *daemon) restoreAliases(srv *dns.Server) {
	for owner, set := range d.aliases {
		if err := srv.SetAliases(owner, aliasTargets(set, d.cfg.Namespace, d.dnsDomain)); err != nil {
			d.cfg.Log.Warn("DNS aliases lost with the DNS server's restart; run tp compose up again", "connection", d.cfg.Connection, "owner", owner, "error", err)
		}
	}
}
