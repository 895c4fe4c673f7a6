package compose

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"
)

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestPickSubnets(t *testing.T) {
	tests := []struct {
		name     string
		networks types.Networks
		cluster  []netip.Prefix
		taken    []netip.Prefix
		existing map[string]bool
		want     map[string]string // network -> subnet set by tp ("" none)
		wantErr  string
	}{
		{
			name:     "no overlap: Docker picks",
			networks: types.Networks{"default": {Name: "p_default"}},
			cluster:  prefixes("10.244.0.0/16", "10.96.0.0/12"),
			taken:    prefixes("172.17.0.0/16"),
			want:     map[string]string{"default": ""},
		},
		{
			name:     "Docker's next pool is the cluster's: the next free one",
			networks: types.Networks{"default": {Name: "p_default"}},
			cluster:  prefixes("172.18.0.0/16", "172.20.0.0/14"),
			taken:    prefixes("172.17.0.0/16", "172.19.0.0/16"),
			want:     map[string]string{"default": "172.24.0.0/16"},
		},
		{
			name:     "two networks: the second counts the first's",
			networks: types.Networks{"a": {Name: "p_a"}, "b": {Name: "p_b"}},
			cluster:  prefixes("172.19.0.0/16"),
			taken:    prefixes("172.17.0.0/16"),
			want:     map[string]string{"a": "", "b": "172.20.0.0/16"},
		},
		{
			name:     "existing and external networks are left alone",
			networks: types.Networks{"default": {Name: "p_default"}, "ext": {Name: "ext", External: true}},
			cluster:  prefixes("172.16.0.0/12"),
			existing: map[string]bool{"p_default": true},
			want:     map[string]string{"default": "", "ext": ""},
		},
		{
			name:     "every 172 pool is the cluster's: 192.168",
			networks: types.Networks{"default": {Name: "p_default"}},
			cluster:  prefixes("172.16.0.0/12"),
			want:     map[string]string{"default": "192.168.0.0/20"},
		},
		{
			name: "a subnet of the file inside the cluster is an error",
			networks: types.Networks{"default": {Name: "p_default",
				Ipam: types.IPAMConfig{Config: []*types.IPAMPool{{Subnet: "10.96.5.0/24"}}}}},
			cluster: prefixes("10.96.0.0/12"),
			wantErr: "network default: subnet 10.96.5.0/24 overlaps the cluster's range 10.96.0.0/12",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &types.Project{Networks: tt.networks}
			notes, err := pickSubnets(p, tt.cluster, tt.taken, tt.existing)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error: got %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			picked := 0
			for name, want := range tt.want {
				got := ""
				if c := p.Networks[name].Ipam.Config; len(c) > 0 {
					got = c[0].Subnet
				}
				if got != want {
					t.Errorf("network %s: got subnet %q, want %q", name, got, want)
				}
				if want != "" {
					picked++
				}
			}
			if len(notes) != picked {
				t.Errorf("notes: got %q, want %d", notes, picked)
			}
		})
	}
}
