// Command probe is the network client the e2e tests and benchmarks run in
// containers (joined to tp or not). Each subcommand prints one result line and
// exits non-zero when the probe fails, so a test can tell reach from no-reach.
//
//	probe http URL                 GET URL, print the body
//	probe http -n N URL            GET URL N times, each on a new connection; print one line per
//	                               request: the body, or {"error": "..."} (exits 0 either way)
//	probe tcp HOST:PORT            open a TCP connection
//	probe udp HOST:PORT MESSAGE    send a datagram, print the answer
//	probe dns NAME                 resolve NAME with the container's resolver, print the addresses
//	probe grpc HOST:PORT [KEY=VALUE...]  call the echo example's Who with that metadata, print the reply as JSON
//	probe manager-session ADDR...  try to open a traffic-manager session at each ADDR; fails if one opens
//	probe sftp ADDR...             try to get an SSH banner or an SFTP session (and a file) at each ADDR; fails if one opens
//	probe dns-server NAME=IP...    serve DNS on :53 (UDP) answering A queries for NAMEs, NXDOMAIN otherwise
//	probe agent-arrive [-ca FILE] [-claim NS/KIND/WORKLOAD/POD] ADDR ATTEMPT...
//	                               pose as a traffic-agent (ATTEMPT: plain, tls, tls:TOKENFILE), print each status as JSON
//	probe route DEV PREFIX...      route PREFIXes to the device DEV (needs NET_ADMIN), e.g. more of a
//	                               joined container's destinations into tp's TUN
//	probe kill ARGV...             SIGTERM every process whose command line is ARGV (e.g. /tp agent)
//	probe bench MODE [flags]       run a benchmark (bulk, latency, connrate, hold, dns, steady), print JSON; see bench.go
//	probe load -url URL [flags]    a steady load until SIGTERM, one JSON line of ok/failed requests per second; see load.go
//	probe cat PATH                 print a file (e.g. through a tp volume)
//	probe write PATH CONTENT       write a file
//	probe readloop PATH            read a file again and again, "ok N" or "error ..." per read, until killed
//	probe fsbench read|walk|smallreads PATH  time a sequential read of a file, a find + stat of a tree, or reading its every file; print JSON
//
// Every probe honours -timeout (default 5s).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/tp-run/tp/examples/echo/echopb"
)

func main() {
	fs := flag.NewFlagSet("probe", flag.ExitOnError)
	timeout := fs.Duration("timeout", 5*time.Second, "deadline for the probe")
	fs.Var(&headers, "H", "HTTP header KEY=VALUE for http (repeatable)")
	count := fs.Int("n", 0, "http: this many requests, each on a new connection, one line each")
	caFile := fs.String("ca", "", "agent-arrive: PEM CA bundle of the manager's certificate")
	claim := fs.String("claim", "", "agent-arrive: the namespace/kind/workload/pod to claim")
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: probe http|tcp|udp|dns ARGS"))
	}
	cmd := os.Args[1]
	if cmd == "bench" {
		if err := bench(os.Args[2:]); err != nil {
			fail(err)
		}
		return
	}
	if cmd == "load" {
		if err := load(os.Args[2:]); err != nil {
			fail(err)
		}
		return
	}
	_ = fs.Parse(os.Args[2:])
	args := fs.Args()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var err error
	switch {
	case cmd == "http" && len(args) == 1 && *count > 0:
		err = probeHTTPRepeated(ctx, args[0], *count)
	case cmd == "http" && len(args) == 1:
		err = probeHTTP(ctx, args[0])
	case cmd == "tcp" && len(args) == 1:
		err = probeTCP(ctx, args[0])
	case cmd == "udp" && len(args) == 2:
		err = probeUDP(ctx, args[0], args[1])
	case cmd == "dns" && len(args) == 1:
		err = probeDNS(ctx, args[0])
	case cmd == "grpc" && len(args) >= 1:
		err = probeGRPC(ctx, args[0], args[1:])
	case cmd == "manager-session" && len(args) > 0:
		err = probeManagerSession(ctx, args)
	case cmd == "sftp" && len(args) > 0:
		err = probeSFTP(ctx, args)
	case cmd == "agent-arrive" && len(args) >= 2:
		err = agentArrive(ctx, *caFile, *claim, args[0], args[1:])
	case cmd == "dns-server" && len(args) > 0:
		err = dnsServer(args)
	case cmd == "route" && len(args) > 1:
		err = addRoutes(args[0], args[1:])
	case cmd == "kill" && len(args) > 0:
		err = killProcesses(args)
	case cmd == "cat" && len(args) == 1:
		err = probeCat(args[0])
	case cmd == "write" && len(args) == 2:
		err = probeWrite(args[0], args[1])
	case cmd == "readloop" && len(args) == 1:
		err = probeReadLoop(args[0])
	case cmd == "fsbench" && len(args) == 2:
		err = probeFSBench(args[0], args[1])
	default:
		err = fmt.Errorf("usage: probe http URL | tcp HOST:PORT | udp HOST:PORT MSG | dns NAME | grpc HOST:PORT [K=V] | dns-server NAME=IP [NAME=IP] | route DEV PREFIX | kill NAME | manager-session ADDR | agent-arrive ADDR ATTEMPT; see the package doc")
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "probe:", err)
	os.Exit(1)
}

// headers are the -H KEY=VALUE flags.
var headers headerFlags

type headerFlags []string

func (h *headerFlags) String() string     { return strings.Join(*h, ",") }
func (h *headerFlags) Set(v string) error { *h = append(*h, v); return nil }

func probeHTTP(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, "=")
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, body)
	}
	fmt.Print(string(body))
	return nil
}

// probeHTTPRepeated GETs url n times, each on a new connection (so that
// each goes through the service's load balancing anew), and prints one line
// per request.
func probeHTTPRepeated(ctx context.Context, url string, n int) error {
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for range n {
		body, err := getBody(ctx, client, url)
		if err != nil {
			b, _ := json.Marshal(map[string]string{"error": err.Error()})
			body = b
		}
		fmt.Println(strings.TrimSpace(string(body)))
	}
	return nil
}

func getBody(ctx context.Context, client *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, "=")
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s: %s", resp.Status, body)
	}
	return body, err
}

// addRoutes routes the prefixes to the device dev in the current network
// namespace (replacing routes to the same prefixes).
func addRoutes(dev string, prefixes []string) error {
	link, err := netlink.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("device %s: %w", dev, err)
	}
	for _, s := range prefixes {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return err
		}
		dst := &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: dst, Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("route %s dev %s: %w", p, dev, err)
		}
		fmt.Println("routed", p, "to", dev)
	}
	return nil
}

func probeTCP(ctx context.Context, addr string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	fmt.Println("connected", c.RemoteAddr())
	return c.Close()
}

func probeUDP(ctx context.Context, addr, msg string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	fmt.Println(string(buf[:n]))
	return nil
}

func probeDNS(ctx context.Context, name string) error {
	addrs, err := net.DefaultResolver.LookupHost(ctx, name)
	if err != nil {
		return err
	}
	fmt.Println(strings.Join(addrs, " "))
	return nil
}

// dnsServer answers A queries for the given names (a stand-in for a
// corporate or public resolver in tests), NXDOMAIN for anything else.
func dnsServer(entries []string) error {
	answers := map[string]netip.Addr{}
	for _, e := range entries {
		name, ip, ok := strings.Cut(e, "=")
		addr, err := netip.ParseAddr(ip)
		if !ok || err != nil || !addr.Is4() {
			return fmt.Errorf("dns-server: want NAME=IPv4, got %q", e)
		}
		answers[strings.ToLower(dns.Fqdn(name))] = addr
	}
	dns.HandleFunc(".", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		q := r.Question[0]
		addr, ok := answers[strings.ToLower(q.Name)]
		switch {
		case !ok:
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30},
				A:   addr.AsSlice(),
			})
		}
		_ = w.WriteMsg(m)
	})
	fmt.Println("dns-server listening on :53")
	return (&dns.Server{Addr: ":53", Net: "udp"}).ListenAndServe()
}

func probeGRPC(ctx context.Context, addr string, md []string) error {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	for _, kv := range md {
		k, v, _ := strings.Cut(kv, "=")
		ctx = metadata.AppendToOutgoingContext(ctx, k, v)
	}
	reply, err := echopb.NewEchoClient(cc).Who(ctx, &echopb.WhoRequest{Message: "probe"})
	if err != nil {
		return err
	}
	b, err := json.Marshal(map[string]string{"service": reply.GetService(), "copy": reply.GetCopy(), "pod": reply.GetPod()})
	if err != nil {
		return err
	}
	fmt.Println(string(b))
	return nil
}
