//go:build linux

package agent

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// inNamespaceEnv tells the re-executed test binary that it runs in the
// network namespace TestInit made for it.
const inNamespaceEnv = "TP_AGENT_TEST_IN_NETNS"

// TestInit runs TestInitInNamespace in a fresh network namespace: the test
// binary re-executes itself with CLONE_NEWNET, so nothing touches the
// machine's own network.
func TestInit(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("agent-init needs root (CAP_NET_ADMIN) for nftables and network namespaces; run the agent tests as root to cover it")
	}
	if os.Getenv(inNamespaceEnv) != "" {
		t.Skip("already in the test namespace")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args := []string{"-test.run=^TestInitInNamespace$", "-test.count=1"}
	if testing.Verbose() {
		args = append(args, "-test.v")
	}
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), inNamespaceEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	out, err := cmd.CombinedOutput()
	if errors.Is(err, syscall.EPERM) && cmd.Process == nil {
		t.Skipf("cannot create a network namespace here (%v); run the agent tests as root with CAP_SYS_ADMIN to cover agent-init", err)
	}
	if err != nil {
		t.Fatalf("TestInitInNamespace in a new network namespace: %v\n%s", err, out)
	}
	t.Logf("in the namespace:\n%s", out)
}

// TestInitInNamespace checks Init's tables and rules and that they redirect
// traffic entering the namespace (from a second namespace through a veth
// pair, over IPv4 and IPv6) but not traffic to 127.0.0.1.
func TestInitInNamespace(t *testing.T) {
	if os.Getenv(inNamespaceEnv) == "" {
		t.Skip("runs only inside the network namespace TestInit creates")
	}
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := linkUp("lo"); err != nil {
		t.Fatal(err)
	}

	ports := []Port{
		{Name: "http", ContainerPort: 8080, AgentPort: 9900, Protocol: "TCP", Mechanism: MechanismRedirect},
		{Name: "grpc", ContainerPort: 8081, AgentPort: 9901, Protocol: "TCP", Mechanism: MechanismRename},
		{Name: "metrics", ContainerPort: 8082, AgentPort: 9902, Mechanism: MechanismRedirect},
	}
	// Twice: Init is idempotent.
	for range 2 {
		if err := Init(ctx, ports, log); err != nil {
			t.Fatalf("Init: %v", err)
		}
	}
	want := map[uint16]uint16{8080: 9900, 8082: 9902}
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		if got := listRedirects(t, fam); !equalMaps(got, want) {
			t.Errorf("family %d: redirects %v, want %v", fam, got, want)
		}
	}

	// Traffic: a "remote" namespace reaches this one through a veth pair.
	remote := newRemoteNamespace(t)
	ns4, ns6 := net.ParseIP("198.18.0.1"), net.ParseIP("2001:db8::1")
	remote4, remote6 := net.ParseIP("198.18.0.2"), net.ParseIP("2001:db8::2")
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "tpa0"}, PeerName: "tpb0"}); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	peer, err := netlink.LinkByName("tpb0")
	if err != nil {
		t.Fatalf("veth peer: %v", err)
	}
	if err := netlink.LinkSetNsFd(peer, remote.fd); err != nil {
		t.Fatalf("move veth peer: %v", err)
	}
	if err := configureLink("tpa0", ns4, ns6); err != nil {
		t.Fatal(err)
	}
	remote.do(t, func() error {
		if err := linkUp("lo"); err != nil {
			return err
		}
		return configureLink("tpb0", remote4, remote6)
	})

	listeners := map[int]net.Listener{}
	for _, port := range []int{8080, 8081, 8082, 9900, 9901, 9902} {
		l, err := net.Listen("tcp", ":"+strconv.Itoa(port))
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
		t.Cleanup(func() { l.Close() })
		listeners[port] = l
	}
	cases := []struct {
		from     string
		dst      net.IP
		port     int
		wantPort int
	}{
		{"remote", ns4, 8080, 9900},
		{"remote", ns6, 8080, 9900},
		{"remote", ns4, 8082, 9902},
		{"remote", ns6, 8082, 9902},
		{"remote", ns4, 8081, 8081}, // rename: no redirect
		{"remote", ns4, 9900, 9900},
		{"local", net.ParseIP("127.0.0.1"), 8080, 8080}, // the agent's own path to the app
		{"local", ns4, 8080, 8080},                      // locally generated: output hook
	}
	for _, tc := range cases {
		name := fmt.Sprintf("%s to %s", tc.from, net.JoinHostPort(tc.dst.String(), strconv.Itoa(tc.port)))
		dial := func() error {
			c, err := net.DialTimeout("tcp", net.JoinHostPort(tc.dst.String(), strconv.Itoa(tc.port)), 5*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte(name))
			return err
		}
		if tc.from == "remote" {
			remote.do(t, dial)
		} else if err := dial(); err != nil {
			t.Fatalf("%s: dial: %v", name, err)
		}
		l := listeners[tc.wantPort].(*net.TCPListener)
		l.SetDeadline(time.Now().Add(5 * time.Second))
		c, err := l.Accept()
		if err != nil {
			t.Fatalf("%s: accept on %d: %v", name, tc.wantPort, err)
		}
		buf := make([]byte, len(name))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(buf)
		c.Close()
		if err != nil || string(buf) != name {
			t.Errorf("%s: port %d read %q, %v; want %q", name, tc.wantPort, buf, err, name)
		}
	}
	// Nothing arrived where it should not have.
	for port, l := range listeners {
		l.(*net.TCPListener).SetDeadline(time.Now().Add(50 * time.Millisecond))
		if c, err := l.Accept(); err == nil {
			c.Close()
			t.Errorf("unexpected connection on port %d from %s", port, c.RemoteAddr())
		}
	}

	// The whole path of a redirect port: a client outside the pod, the
	// redirect, the agent, and the agent's own dial of 127.0.0.1, which is
	// not redirected again.
	web := Port{Name: "web", ContainerPort: 7070, AgentPort: 9910, Mechanism: MechanismRedirect}
	if err := Init(ctx, append(ports, web), log); err != nil {
		t.Fatalf("Init: %v", err)
	}
	newTestServerAt(t, "app", ":7070")
	startNamespaceAgent(t, web, netip.MustParseAddr("198.18.0.1"))
	for _, dst := range []net.IP{ns4, ns6} {
		var body string
		remote.do(t, func() error {
			var err error
			body, err = getOnThisThread(net.JoinHostPort(dst.String(), "7070"))
			return err
		})
		if !strings.HasPrefix(body, "app ") || !strings.Contains(body, " remote=127.0.0.1:") {
			t.Errorf("GET %s:7070 from outside: %q, want the app's answer to the agent (remote=127.0.0.1)", dst, body)
		}
	}

	// Without redirect ports Init removes its tables.
	if err := Init(ctx, ports[1:2], log); err != nil {
		t.Fatalf("Init with rename ports only: %v", err)
	}
	conn, err := nftables.New()
	if err != nil {
		t.Fatalf("nftables: %v", err)
	}
	tables, err := conn.ListTables()
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	for _, tb := range tables {
		if tb.Name == TableName {
			t.Errorf("table %d %s still there after Init without redirect ports", tb.Family, tb.Name)
		}
	}
}

// listRedirects reads back Init's table of a family and returns its
// redirects (containerPort -> agentPort), checking the chain and the rules'
// shape on the way.
func listRedirects(t *testing.T, fam nftables.TableFamily) map[uint16]uint16 {
	t.Helper()
	conn, err := nftables.New()
	if err != nil {
		t.Fatalf("nftables: %v", err)
	}
	table, err := conn.ListTableOfFamily(TableName, fam)
	if err != nil {
		t.Fatalf("family %d: table %s: %v", fam, TableName, err)
	}
	chains, err := conn.ListChainsOfTableFamily(fam)
	if err != nil {
		t.Fatalf("list chains: %v", err)
	}
	var chain *nftables.Chain
	for _, c := range chains {
		if c.Table.Name == TableName {
			if chain != nil {
				t.Fatalf("family %d: more than one chain in table %s", fam, TableName)
			}
			chain = c
		}
	}
	if chain == nil {
		t.Fatalf("family %d: no chain in table %s", fam, TableName)
	}
	if chain.Name != chainName || chain.Type != nftables.ChainTypeNAT ||
		chain.Hooknum == nil || *chain.Hooknum != *nftables.ChainHookPrerouting ||
		chain.Priority == nil || *chain.Priority != *nftables.ChainPriorityNATDest {
		t.Errorf("family %d: chain %q type %q hook %v priority %v, want %q nat prerouting dstnat (-100)",
			fam, chain.Name, chain.Type, deref(chain.Hooknum), deref(chain.Priority), chainName)
	}
	rules, err := conn.GetRules(table, chain)
	if err != nil {
		t.Fatalf("rules: %v", err)
	}
	got := map[uint16]uint16{}
	for _, r := range rules {
		var dport, to uint16
		var tcp, redir bool
		for i, e := range r.Exprs {
			switch e := e.(type) {
			case *expr.Cmp:
				if len(e.Data) == 1 && e.Data[0] == unix.IPPROTO_TCP {
					tcp = true
				}
				if i > 0 && len(e.Data) == 2 {
					if _, ok := r.Exprs[i-1].(*expr.Payload); ok {
						dport = binary.BigEndian.Uint16(e.Data)
					}
				}
			case *expr.Immediate:
				to = binary.BigEndian.Uint16(e.Data)
			case *expr.Redir:
				redir = e.RegisterProtoMin == 1
			}
		}
		if !tcp || !redir || dport == 0 || to == 0 {
			t.Errorf("family %d: rule %+v is not `tcp dport N redirect to :M`", fam, r.Exprs)
			continue
		}
		got[dport] = to
	}
	if len(rules) != len(got) {
		t.Errorf("family %d: %d rules for %d redirects", fam, len(rules), len(got))
	}
	return got
}

// startNamespaceAgent runs an agent for one port with its real listeners
// (all addresses) and no manager.
func startNamespaceAgent(t *testing.T, p Port, podIP netip.Addr) {
	t.Helper()
	a, err := newAgent(Config{ManagerAddr: dead, ManagerCA: trustedCA(t), TokenFile: "/nonexistent", Workload: "echo", Kind: "Deployment", Namespace: "default", PodName: "echo-1",
		PodIP: podIP, Ports: []Port{p}, HealthAddr: "127.0.0.1:0", DrainTimeout: -1, Log: testLogger(t)})
	if err != nil {
		t.Fatalf("newAgent: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	waitFor(t, "the agent to listen", a.listened.Load)
}

// getOnThisThread sends GET / to addr over a socket created on the calling
// thread (so in its network namespace) and returns the body.
func getOnThisThread(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

func equalMaps(a, b map[uint16]uint16) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func linkUp(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("link %s up: %w", name, err)
	}
	return nil
}

// configureLink gives a link an IPv4 /24 and an IPv6 /64 (without duplicate
// address detection, so it is usable at once) and brings it up.
func configureLink(name string, ip4, ip6 net.IP) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	for _, a := range []*netlink.Addr{
		{IPNet: &net.IPNet{IP: ip4, Mask: net.CIDRMask(24, 32)}},
		{IPNet: &net.IPNet{IP: ip6, Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD},
	} {
		if err := netlink.AddrAdd(l, a); err != nil {
			return fmt.Errorf("link %s: add %s: %w", name, a.IPNet, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("link %s up: %w", name, err)
	}
	return nil
}

// remoteNamespace is a second network namespace, entered by one locked OS
// thread that runs the functions given to do.
type remoteNamespace struct {
	fd    int
	funcs chan func()
}

func newRemoteNamespace(t *testing.T) *remoteNamespace {
	t.Helper()
	r := &remoteNamespace{funcs: make(chan func())}
	ready := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The thread never leaves the namespace: as the goroutine ends
		// locked, the runtime ends the thread too.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ready <- fmt.Errorf("unshare: %w", err)
			return
		}
		fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ready <- err
			return
		}
		r.fd = fd
		ready <- nil
		for f := range r.funcs {
			f()
		}
	}()
	if err := <-ready; err != nil {
		t.Fatalf("remote namespace: %v", err)
	}
	t.Cleanup(func() {
		close(r.funcs)
		<-done
		unix.Close(r.fd)
	})
	return r
}

// do runs f in the remote namespace.
func (r *remoteNamespace) do(t *testing.T, f func() error) {
	t.Helper()
	errc := make(chan error, 1)
	r.funcs <- func() {
		defer func() {
			if p := recover(); p != nil {
				errc <- fmt.Errorf("panic: %v", p)
			}
		}()
		errc <- f()
	}
	if err := <-errc; err != nil {
		t.Fatalf("in the remote namespace: %v", err)
	}
}
