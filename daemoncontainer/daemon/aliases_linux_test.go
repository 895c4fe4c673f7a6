package daemon

import (
	"context"
	"log/slog"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tp-run/tp/daemoncontainer/dns"
	daemonv1 "github.com/tp-run/tp/rpc/daemon/v1"
)

// TestSetAliases: the daemon answers Unavailable before its DNS runs,
// maps services to FQDNs in its namespace, refuses bad names and taken
// ones with their codes, and gives a new DNS server the sets it holds.
func TestSetAliases(t *testing.T) {
	d := &daemon{cfg: Config{Connection: "dev", Namespace: "shop", Log: slog.New(slog.DiscardHandler)}}
	req := &daemonv1.SetAliasesRequest{Owner: "compose:p", Aliases: map[string]string{"backend": "echo"}}
	ctx := context.Background()
	if _, err := d.SetAliases(ctx, req); status.Code(err) != codes.Unavailable {
		t.Errorf("before the network: got %v, want Unavailable", err)
	}
	newServer := func() *dns.Server {
		s, err := dns.NewServer(dns.Config{Cluster: dns.ExchangerFunc(nil), ClusterDomain: "cluster.local."})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	d.dns, d.dnsDomain = newServer(), "cluster.local."
	if _, err := d.SetAliases(ctx, req); err != nil {
		t.Fatalf("SetAliases: %v", err)
	}
	if got := d.dns.Aliases()["compose:p"]["backend"]; got != "echo.shop.svc.cluster.local." {
		t.Errorf("backend: got %q, want echo.shop.svc.cluster.local.", got)
	}
	for _, tc := range []struct {
		req  *daemonv1.SetAliasesRequest
		code codes.Code
	}{
		{&daemonv1.SetAliasesRequest{Aliases: map[string]string{"db": "pg"}}, codes.InvalidArgument},
		{&daemonv1.SetAliasesRequest{Owner: "q", Aliases: map[string]string{"db": "pg.other"}}, codes.InvalidArgument},
		{&daemonv1.SetAliasesRequest{Owner: "q", Aliases: map[string]string{"my_db": "pg"}}, codes.InvalidArgument},
		{&daemonv1.SetAliasesRequest{Owner: "q", Aliases: map[string]string{"backend": "pg"}}, codes.FailedPrecondition},
	} {
		if _, err := d.SetAliases(ctx, tc.req); status.Code(err) != tc.code {
			t.Errorf("SetAliases(%v): got %v, want %v", tc.req, err, tc.code)
		}
	}
	// The network restarts: the new DNS server gets the sets again.
	srv := newServer()
	d.mu.Lock()
	d.dns = srv
	d.restoreAliases(srv)
	d.mu.Unlock()
	if got := srv.Aliases()["compose:p"]["backend"]; got != "echo.shop.svc.cluster.local." {
		t.Errorf("after a new DNS server: backend %q, want echo.shop.svc.cluster.local.", got)
	}
	if _, err := d.SetAliases(ctx, &daemonv1.SetAliasesRequest{Owner: "compose:p"}); err != nil {
		t.Fatal(err)
	}
	if len(srv.Aliases()) != 0 || len(d.aliases) != 0 {
		t.Errorf("after removal: server %v, daemon %v, want none", srv.Aliases(), d.aliases)
	}
}
