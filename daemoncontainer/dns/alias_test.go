package dns

import (
	"errors"
	"slices"
	"testing"

	"github.com/miekg/dns"
)

// TestAliases: an alias answers, bare and with the joined containers'
// search domains, as a CNAME to its cluster name followed by the cluster's
// records for that name; other names and unrelated suffixes are not
// aliased; removing the owner's set removes the answers.
func TestAliases(t *testing.T) {
	f := newRoutingFixture(t)
	const target = "echo.shop.svc.cluster.local."
	if err := f.srv.SetAliases("compose:p", map[string]string{"backend": target}); err != nil {
		t.Fatalf("SetAliases: %v", err)
	}
	addr := f.srv.addrString("udp")
	for _, name := range []string{
		"backend.", "backend.shop.svc.cluster.local.", "backend.svc.cluster.local.",
		"backend.cluster.local.", "backend.corp.example.", "BACKEND.",
	} {
		r := query(t, "udp", addr, name, dns.TypeA, 0)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 2 {
			t.Errorf("%s A: got %v, want a CNAME and an A", name, r)
			continue
		}
		cn, ok := r.Answer[0].(*dns.CNAME)
		if !ok || cn.Hdr.Name != name || cn.Target != target {
			t.Errorf("%s A: first record %v, want CNAME %s -> %s", name, r.Answer[0], name, target)
		}
		a, ok := r.Answer[1].(*dns.A)
		if !ok || a.Hdr.Name != target || a.A.String() != clusterIP {
			t.Errorf("%s A: second record %v, want %s A %s", name, r.Answer[1], target, clusterIP)
		}
	}
	if asked := f.cluster.asked(); !slices.Contains(asked, target) || slices.Contains(asked, "backend.") {
		t.Errorf("the cluster was asked %v, want the target %s and never the alias", asked, target)
	}
	r := query(t, "udp", addr, "backend.", dns.TypeCNAME, 0)
	if len(r.Answer) != 1 || r.Answer[0].Header().Rrtype != dns.TypeCNAME {
		t.Errorf("backend. CNAME: got %v, want the CNAME only", r)
	}
	// Not aliases: another label, another namespace's suffix, a deeper name.
	for _, name := range []string{"frontend.", "backend.other.svc.cluster.local.", "x.backend."} {
		r := query(t, "udp", addr, name, dns.TypeA, 0)
		for _, rr := range r.Answer {
			if rr.Header().Rrtype == dns.TypeCNAME {
				t.Errorf("%s A: got %v, want no alias", name, r)
			}
		}
	}
	if got := f.srv.Stats().Aliased; got != 7 {
		t.Errorf("Stats().Aliased: got %d, want 7", got)
	}

	if err := f.srv.SetAliases("compose:p", nil); err != nil {
		t.Fatalf("SetAliases(nil): %v", err)
	}
	r = query(t, "udp", addr, "backend.shop.svc.cluster.local.", dns.TypeA, 0)
	if len(r.Answer) != 1 || r.Answer[0].Header().Rrtype != dns.TypeA || r.Answer[0].Header().Name != "backend.shop.svc.cluster.local." {
		t.Errorf("backend.shop.svc.cluster.local. after removal: got %v, want the cluster's own answer", r)
	}
	if got := f.srv.Aliases(); len(got) != 0 {
		t.Errorf("Aliases after removal: got %v, want none", got)
	}
}

// TestAliasesOwners: each owner replaces only its own set, and a name
// another owner holds is refused.
func TestAliasesOwners(t *testing.T) {
	f := newRoutingFixture(t)
	if err := f.srv.SetAliases("a", map[string]string{"db": "postgres.ns.svc.cluster.local."}); err != nil {
		t.Fatal(err)
	}
	if err := f.srv.SetAliases("b", map[string]string{"db": "mysql.ns.svc.cluster.local."}); !errors.Is(err, ErrAliasTaken) {
		t.Errorf("b takes a's db: got %v, want ErrAliasTaken", err)
	}
	if err := f.srv.SetAliases("b", map[string]string{"cache": "redis.ns.svc.cluster.local"}); err != nil {
		t.Fatal(err)
	}
	if err := f.srv.SetAliases("a", map[string]string{"queue": "rabbit.ns.svc.cluster.local."}); err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]string{
		"a": {"queue": "rabbit.ns.svc.cluster.local."},
		"b": {"cache": "redis.ns.svc.cluster.local."},
	}
	got := f.srv.Aliases()
	for o, set := range want {
		if len(got[o]) != len(set) || got[o][firstKey(set)] != set[firstKey(set)] {
			t.Errorf("Aliases: got %v, want %v", got, want)
		}
	}
	if len(got) != len(want) {
		t.Errorf("Aliases: got %v, want %v", got, want)
	}
}

func firstKey(m map[string]string) string {
	for k := range m {
		return k
	}
	return ""
}

func TestAliasesInvalid(t *testing.T) {
	f := newRoutingFixture(t)
	for _, tc := range []struct {
		owner string
		set   map[string]string
	}{
		{"", map[string]string{"db": "pg.ns.svc.cluster.local."}},
		{"p", map[string]string{"my_db": "pg.ns.svc.cluster.local."}},
		{"p", map[string]string{"db.x": "pg.ns.svc.cluster.local."}},
		{"p", map[string]string{"Db": "pg.ns.svc.cluster.local."}},
		{"p", map[string]string{"-db": "pg.ns.svc.cluster.local."}},
		{"p", map[string]string{"db": "example.com."}},
		{"p", map[string]string{"db": "cluster.local."}},
	} {
		if err := f.srv.SetAliases(tc.owner, tc.set); !errors.Is(err, ErrInvalidAlias) {
			t.Errorf("SetAliases(%q, %v): got %v, want ErrInvalidAlias", tc.owner, tc.set, err)
		}
	}
	if got := f.srv.Aliases(); len(got) != 0 {
		t.Errorf("Aliases after refused sets: got %v, want none", got)
	}
}
