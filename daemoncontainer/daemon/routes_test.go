//go:build linux

package daemon

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// clusterStream is a WatchCluster stream fed by the test: the infos sent
// on infos, then err.
type clusterStream struct {
	grpc.ClientStream
	infos chan *managerv1.ClusterInfo
	err   error
}

func (s *clusterStream) Recv() (*managerv1.ClusterInfo, error) {
	if info, ok := <-s.infos; ok {
		return info, nil
	}
	return nil, s.err
}

type watchClusterClient struct {
	managerv1.ManagerClient
	stream *clusterStream
}

func (c watchClusterClient) WatchCluster(context.Context, *managerv1.SessionRef, ...grpc.CallOption) (grpc.ServerStreamingClient[managerv1.ClusterInfo], error) {
	return c.stream, nil
}

// waitFeed waits until the feed holds want.
func waitFeed(t *testing.T, f *clusterFeed, want *managerv1.ClusterInfo) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		info, changed := f.get()
		if proto.Equal(info, want) {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("feed: got %v, want %v", info, want)
		}
	}
}

func TestWatchClusterFeedsChanges(t *testing.T) {
	first := &managerv1.ClusterInfo{PodCidrs: []string{"10.244.0.0/24"}, ServiceCidrs: []string{"10.96.0.0/12"}, DnsIp: "10.96.0.10"}
	second := proto.CloneOf(first)
	second.PodCidrs = append(second.PodCidrs, "10.244.1.0/24")
	for _, tc := range []struct {
		name    string
		end     error // how the stream ends
		wantErr bool
	}{
		{"stream breaks: the session reconnects", status.Error(codes.Unavailable, "transport closing"), true},
		{"older manager: routes stay", status.Error(codes.Unimplemented, "unknown method WatchCluster"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &connector{cluster: newClusterFeed()}
			stream := &clusterStream{infos: make(chan *managerv1.ClusterInfo), err: tc.end}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			sess := &managerv1.SessionInfo{SessionId: "s", Cluster: first}
			go func() {
				done <- c.watchCluster(ctx, watchClusterClient{stream: stream}, sess, slog.New(slog.DiscardHandler))
			}()
			waitFeed(t, c.cluster, first) // the session's own, at once
			stream.infos <- second
			waitFeed(t, c.cluster, second)
			close(stream.infos)
			if !tc.wantErr {
				select {
				case err := <-done:
					t.Fatalf("watchCluster returned %v before its session ended, want it to wait", err)
				case <-time.After(50 * time.Millisecond):
				}
				cancel()
			}
			select {
			case err := <-done:
				if (err != nil) != tc.wantErr {
					t.Errorf("watchCluster: got %v, want error %v", err, tc.wantErr)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("watchCluster did not return")
			}
			waitFeed(t, c.cluster, second) // the last info stays
		})
	}
}

func TestClusterRoutes(t *testing.T) {
	got, err := clusterRoutes(&managerv1.ClusterInfo{PodCidrs: []string{"10.244.0.0/24", "10.244.0.1/24"}, ServiceCidrs: []string{"10.96.0.0/12"}})
	want := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24"), netip.MustParsePrefix("10.96.0.0/12")}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("clusterRoutes: got %v, %v, want %v", got, err, want)
	}
	if _, err := clusterRoutes(&managerv1.ClusterInfo{PodCidrs: []string{"10.244.0.0"}}); err == nil {
		t.Error("clusterRoutes of a bare address: got nil error, want one")
	}
	if got, want := diffPrefixes(want, want[1:]), want[:1]; !slices.Equal(got, want) {
		t.Errorf("diffPrefixes: got %v, want %v", got, want)
	}
}

func TestRoutesFor(t *testing.T) {
	p := netip.MustParsePrefix
	ps := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, x := range s {
			out = append(out, p(x))
		}
		return out
	}
	cluster := ps("10.244.0.0/16", "10.96.0.0/12")
	for _, tc := range []struct {
		name        string
		also, never []netip.Prefix
		want        []netip.Prefix
	}{
		{name: "cluster only", want: cluster},
		{name: "also-proxy a VPN subnet", also: ps("192.168.100.0/24", "10.96.0.0/12"),
			want: ps("10.244.0.0/16", "10.96.0.0/12", "192.168.100.0/24")},
		{name: "never-proxy a whole range", never: ps("10.244.0.0/16"), want: ps("10.96.0.0/12")},
		{name: "never-proxy a range covering one", never: ps("10.0.0.0/8"), want: nil},
		{name: "never-proxy inside a range splits it", never: ps("10.244.128.0/18"),
			want: ps("10.244.0.0/17", "10.244.192.0/18", "10.96.0.0/12")},
		{name: "never-proxy one address", never: ps("10.96.0.10/32"),
			want: ps("10.244.0.0/16", "10.104.0.0/13", "10.100.0.0/14", "10.98.0.0/15", "10.97.0.0/16",
				"10.96.128.0/17", "10.96.64.0/18", "10.96.32.0/19", "10.96.16.0/20", "10.96.8.0/21",
				"10.96.4.0/22", "10.96.2.0/23", "10.96.1.0/24", "10.96.0.128/25", "10.96.0.64/26",
				"10.96.0.32/27", "10.96.0.16/28", "10.96.0.0/29", "10.96.0.12/30", "10.96.0.8/31", "10.96.0.11/32")},
		{name: "never-proxy elsewhere", never: ps("172.16.0.0/12"), want: cluster},
		{name: "IPv6", also: ps("fd00:10::/64"), never: ps("fd00:10::/65"),
			want: ps("10.244.0.0/16", "10.96.0.0/12", "fd00:10:0:0:8000::/65")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := routesFor(cluster, tc.also, tc.never)
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
			for _, n := range tc.never {
				for _, r := range got {
					if r.Overlaps(n) {
						t.Errorf("route %v overlaps never-proxy %v", r, n)
					}
				}
			}
		})
	}
}
