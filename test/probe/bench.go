package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sync/errgroup"
)

// benchResult is the one JSON line every bench mode prints. Counts and
// durations are raw; the bench program turns them into rates and ratios.
type benchResult struct {
	Mode     string   `json:"mode"`
	Target   string   `json:"target"`
	OK       int64    `json:"ok"`
	Failed   int64    `json:"failed"`
	Seconds  float64  `json:"seconds"`
	TimedOut bool     `json:"timedOut,omitempty"`
	Errors   []string `json:"errors,omitempty"` // the first few distinct failures

	Bytes   int64 `json:"bytes,omitempty"`   // bulk: bytes received
	Streams int   `json:"streams,omitempty"` // bulk: parallel streams

	Latency     *percentiles     `json:"latencyMicros,omitempty"` // per request / query / connection
	Connections int64            `json:"connections,omitempty"`   // latency: TCP connections the client opened
	Copies      map[string]int64 `json:"copies,omitempty"`        // echo replies by the copy that answered
	Rcodes      map[string]int64 `json:"rcodes,omitempty"`        // dns: answers by rcode

	// steady: replies, first and last reply (Unix ms) by copy and kind of
	// connection ("local/keepalive", "cluster/fresh", ...), and when each
	// failure happened.
	CopiesByConn map[string]int64 `json:"copiesByConn,omitempty"`
	LastByCopy   map[string]int64 `json:"lastByCopyUnixMs,omitempty"`
	FirstByCopy  map[string]int64 `json:"firstByCopyUnixMs,omitempty"`
	FailedAt     []int64          `json:"failedAtUnixMs,omitempty"`

	OpenSeconds float64 `json:"openSeconds,omitempty"` // hold: time until every connection was open
	Opened      int64   `json:"opened,omitempty"`      // hold: connections opened (first GET answered) and held
	// hold -hold-for: when every connection was open and idle, from and to (Unix ms).
	HeldFromUnixMs int64 `json:"heldFromUnixMs,omitempty"`
	HeldToUnixMs   int64 `json:"heldToUnixMs,omitempty"`
}

type percentiles struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
	// Over1s counts samples of a second or more: typically a lost SYN and
	// its retransmission.
	Over1s int `json:"over1s,omitempty"`
}

func summarize(d []time.Duration) *percentiles {
	if len(d) == 0 {
		return nil
	}
	slices.Sort(d)
	us := func(x time.Duration) float64 { return float64(x.Nanoseconds()) / 1e3 }
	pct := func(p float64) float64 { return us(d[int(p*float64(len(d)-1)+0.5)]) }
	var sum time.Duration
	over := 0
	for _, x := range d {
		sum += x
		if x >= time.Second {
			over++
		}
	}
	return &percentiles{N: len(d), P50: pct(0.50), P90: pct(0.90), P99: pct(0.99), Max: us(d[len(d)-1]),
		Mean: us(sum) / float64(len(d)), Over1s: over}
}

// errorLog keeps the first few distinct error messages and counts failures.
type errorLog struct {
	mu     sync.Mutex
	failed atomic.Int64
	seen   []string
}

func (e *errorLog) add(err error) {
	e.failed.Add(1)
	msg := err.Error()
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.seen) < 5 && !slices.Contains(e.seen, msg) {
		e.seen = append(e.seen, msg)
	}
}

// bench runs one benchmark mode and prints its benchResult as JSON. Each mode
// stops at -timeout and reports what it did until then.
//
//	probe bench bulk     -url URL -bytes N -streams S      download N bytes from URL?n= over S connections
//	probe bench latency  -url URL -n N [-wait-copy C]      N sequential GETs over one keep-alive connection
//	probe bench connrate -url URL -n N -c C                N GETs, a new connection each, C at a time
//	probe bench hold     -url URL -n N -c C [-hold-for D]  open N connections, all at once, a GET on each before and after (and D in between, with all open)
//	probe bench dns      -server ADDR -cold T -cold-n N -cached NAME -cached-n M
//	probe bench steady   -url URL -duration D -c C -fresh F -pause P  GETs until D (F of the C workers on a new connection each time, the others keep-alive), recording which copy answered
func bench(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("usage: probe bench bulk|latency|connrate|hold|dns|steady [flags]")
	}
	mode := args[0]
	fs := flag.NewFlagSet("bench "+mode, flag.ContinueOnError)
	var (
		target   = fs.String("url", "", "URL to GET (bulk appends ?n=)")
		timeout  = fs.Duration("timeout", time.Minute, "stop and report after this long")
		n        = fs.Int("n", 1000, "requests or connections")
		conc     = fs.Int("c", 32, "concurrency")
		size     = fs.Int64("bytes", 1<<30, "bulk: total bytes over all streams")
		streams  = fs.Int("streams", 1, "bulk: parallel streams (connections)")
		waitCopy = fs.String("wait-copy", "", "latency/steady: first wait until a reply comes from this copy of echo")
		server   = fs.String("server", "127.0.0.1:53", "dns: server address")
		cold     = fs.String("cold", "", "dns: name template for cold queries; {i} is the index, {r} a random token")
		coldN    = fs.Int("cold-n", 200, "dns: cold queries")
		cached   = fs.String("cached", "", "dns: name asked repeatedly")
		cachedN  = fs.Int("cached-n", 2000, "dns: cached queries")
		duration = fs.Duration("duration", 20*time.Second, "steady: how long to send")
		pause    = fs.Duration("pause", 10*time.Millisecond, "steady: pause between a worker's requests")
		fresh    = fs.Int("fresh", 0, "steady: workers (of -c) that open a new connection for each request")
		holdFor  = fs.Duration("hold-for", 0, "hold: once every connection is open, keep them all open this long before the second GET (for memory samples)")
	)
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	// SIGTERM (docker kill -s TERM, the bench stopping a hold before the
	// traffic-manager's memory limit) ends a mode early like its timeout:
	// it reports what it did until then.
	sctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(sctx, *timeout)
	defer cancel()
	var (
		res *benchResult
		err error
	)
	switch mode {
	case "bulk":
		res, err = benchBulk(ctx, *target, *size, *streams)
	case "latency":
		res, err = benchLatency(ctx, *target, *n, *waitCopy)
	case "connrate":
		res, err = benchConnRate(ctx, *target, *n, *conc)
	case "hold":
		res, err = benchHold(ctx, *target, *n, *conc, *holdFor)
	case "dns":
		res, err = benchDNS(ctx, *server, *cold, *coldN, *cached, *cachedN)
	case "steady":
		res, err = benchSteady(ctx, *target, *duration, *conc, *fresh, *pause, *waitCopy)
	default:
		return fmt.Errorf("unknown bench mode %q", mode)
	}
	if err != nil {
		return err
	}
	res.Mode = mode
	res.TimedOut = res.TimedOut || ctx.Err() != nil
	return json.NewEncoder(os.Stdout).Encode(res)
}

// newTransport returns a transport of its own (its own connections), without
// compression or proxies.
func newTransport(maxConns int) *http.Transport {
	return &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		DisableCompression:  true,
		MaxIdleConnsPerHost: maxConns,
		MaxConnsPerHost:     maxConns,
		ForceAttemptHTTP2:   false,
	}
}

// countingWriter counts what it discards.
type countingWriter struct{ n *atomic.Int64 }

func (w countingWriter) Write(p []byte) (int, error) { w.n.Add(int64(len(p))); return len(p), nil }

func benchBulk(ctx context.Context, target string, size int64, streams int) (*benchResult, error) {
	if streams < 1 || size < int64(streams) {
		return nil, fmt.Errorf("bulk: want streams >= 1 and bytes >= streams")
	}
	res := &benchResult{Target: target, Streams: streams}
	var got atomic.Int64
	var errs errorLog
	start := time.Now()
	var g errgroup.Group
	for i := range streams {
		part := size / int64(streams)
		if i == 0 {
			part += size % int64(streams)
		}
		g.Go(func() error {
			client := &http.Client{Transport: newTransport(1)}
			defer client.CloseIdleConnections()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, target+"?n="+strconv.FormatInt(part, 10), nil)
			if err != nil {
				return err
			}
			resp, err := client.Do(req)
			if err != nil {
				errs.add(err)
				return nil
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				errs.add(fmt.Errorf("status %s", resp.Status))
				return nil
			}
			buf := make([]byte, 256<<10)
			n, err := io.CopyBuffer(countingWriter{&got}, resp.Body, buf)
			if err == nil && n != part {
				err = fmt.Errorf("got %d bytes, want %d", n, part)
			}
			if err != nil {
				errs.add(err)
				return nil
			}
			return nil
		})
	}
	err := g.Wait()
	res.Seconds = time.Since(start).Seconds()
	res.Bytes = got.Load()
	res.OK = int64(streams) - errs.failed.Load()
	res.Failed, res.Errors = errs.failed.Load(), errs.seen
	return res, err
}

// copyOf returns the "copy" field of an echo reply ("" when the body is not one).
func copyOf(body []byte) string {
	var r struct {
		Copy string `json:"copy"`
	}
	_ = json.Unmarshal(body, &r)
	return r.Copy
}

// getOnce GETs target and returns the body; the response must be 200.
func getOnce(ctx context.Context, client *http.Client, target string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	return body, nil
}

// awaitCopy GETs target over fresh connections until the given copy of echo
// answers (a rollout or intercept may still be settling).
func awaitCopy(ctx context.Context, target, want string) error {
	client := &http.Client{Transport: newTransport(1), Timeout: 5 * time.Second}
	client.Transport.(*http.Transport).DisableKeepAlives = true
	var last string
	for {
		body, err := getOnce(ctx, client, target)
		if err == nil {
			if last = copyOf(body); last == want {
				return nil
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no reply from copy %q before the deadline (last: %s)", want, last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func benchLatency(ctx context.Context, target string, n int, waitCopy string) (*benchResult, error) {
	if waitCopy != "" {
		if err := awaitCopy(ctx, target, waitCopy); err != nil {
			return nil, err
		}
	}
	res := &benchResult{Target: target, Copies: map[string]int64{}}
	client := &http.Client{Transport: newTransport(1), Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	var conns atomic.Int64
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		if !i.Reused {
			conns.Add(1)
		}
	}}
	tctx := httptrace.WithClientTrace(ctx, trace)
	if _, err := getOnce(tctx, client, target); err != nil { // warm up: connect, first request
		return nil, fmt.Errorf("warm-up request: %w", err)
	}
	var errs errorLog
	lat := make([]time.Duration, 0, n)
	start := time.Now()
	for range n {
		if ctx.Err() != nil {
			break
		}
		t0 := time.Now()
		body, err := getOnce(tctx, client, target)
		if err != nil {
			errs.add(err)
			continue
		}
		lat = append(lat, time.Since(t0))
		res.Copies[copyOf(body)]++
	}
	res.Seconds = time.Since(start).Seconds()
	res.OK, res.Failed, res.Errors = int64(len(lat)), errs.failed.Load(), errs.seen
	res.Latency = summarize(lat)
	res.Connections = conns.Load()
	return res, nil
}

// hostPort returns the dial address and request path of an http:// URL.
func hostPort(target string) (addr, path, host string, err error) {
	u, err := url.Parse(target)
	if err != nil || u.Scheme != "http" {
		return "", "", "", fmt.Errorf("want an http:// URL, got %q", target)
	}
	addr = u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	return addr, u.RequestURI(), u.Host, nil
}

// rawGet sends one GET on c and reads the whole response.
func rawGet(c net.Conn, br *bufio.Reader, path, host string, closeAfter bool) error {
	req := "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\n"
	if closeAfter {
		req += "Connection: close\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %s", resp.Status)
	}
	return err
}

func benchConnRate(ctx context.Context, target string, n, conc int) (*benchResult, error) {
	addr, path, host, err := hostPort(target)
	if err != nil {
		return nil, err
	}
	res := &benchResult{Target: target}
	var (
		next atomic.Int64
		errs errorLog
		mu   sync.Mutex
		lat  = make([]time.Duration, 0, n)
	)
	d := net.Dialer{Timeout: 5 * time.Second}
	start := time.Now()
	var g errgroup.Group
	for range conc {
		g.Go(func() error {
			for next.Add(1) <= int64(n) && ctx.Err() == nil {
				t0 := time.Now()
				err := func() error {
					c, err := d.DialContext(ctx, "tcp", addr)
					if err != nil {
						return err
					}
					defer c.Close()
					_ = c.SetDeadline(time.Now().Add(10 * time.Second))
					return rawGet(c, bufio.NewReader(c), path, host, true)
				}()
				if err != nil {
					errs.add(err)
					continue
				}
				mu.Lock()
				lat = append(lat, time.Since(t0))
				mu.Unlock()
			}
			return nil
		})
	}
	_ = g.Wait()
	res.Seconds = time.Since(start).Seconds()
	res.OK, res.Failed, res.Errors = int64(len(lat)), errs.failed.Load(), errs.seen
	res.Latency = summarize(lat)
	return res, nil
}

func benchHold(ctx context.Context, target string, n, conc int, holdFor time.Duration) (*benchResult, error) {
	addr, path, host, err := hostPort(target)
	if err != nil {
		return nil, err
	}
	res := &benchResult{Target: target}
	var (
		errs   errorLog
		opened sync.WaitGroup // every connection is open (or failed)
		allIn  = make(chan struct{})
		sem    = make(chan struct{}, conc)
		ok     atomic.Int64
		held   atomic.Int64
	)
	d := net.Dialer{Timeout: 10 * time.Second}
	start := time.Now()
	opened.Add(n)
	var g errgroup.Group
	for range n {
		g.Go(func() error {
			sem <- struct{}{}
			c, err := d.DialContext(ctx, "tcp", addr)
			var br *bufio.Reader
			if err == nil {
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				br = bufio.NewReader(c)
				err = rawGet(c, br, path, host, false)
			}
			<-sem
			opened.Done()
			if err != nil {
				if c != nil {
					c.Close()
				}
				errs.add(fmt.Errorf("open: %w", err))
				return nil
			}
			held.Add(1)
			defer c.Close()
			select { // hold until every connection is open, then use it again
			case <-allIn:
			case <-ctx.Done():
				errs.add(fmt.Errorf("hold: %w", ctx.Err()))
				return nil
			}
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			if err := rawGet(c, br, path, host, true); err != nil {
				errs.add(fmt.Errorf("reuse while all open: %w", err))
				return nil
			}
			ok.Add(1)
			return nil
		})
	}
	opened.Wait()
	res.OpenSeconds = time.Since(start).Seconds()
	if holdFor > 0 {
		res.HeldFromUnixMs = time.Now().UnixMilli()
		sleepCtx(ctx, holdFor)
		res.HeldToUnixMs = time.Now().UnixMilli()
	}
	close(allIn)
	_ = g.Wait()
	res.Seconds = time.Since(start).Seconds()
	res.OK, res.Failed, res.Errors = ok.Load(), errs.failed.Load(), errs.seen
	res.Opened = held.Load()
	return res, nil
}

func randomToken() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func benchDNS(ctx context.Context, server, coldTmpl string, coldN int, cached string, cachedN int) (*benchResult, error) {
	client := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
	conn, err := client.DialContext(ctx, server)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	res := &benchResult{Target: server, Rcodes: map[string]int64{}}
	var errs errorLog
	ask := func(name string) (time.Duration, error) {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), dns.TypeA)
		r, rtt, err := client.ExchangeWithConnContext(ctx, m, conn)
		if err != nil {
			return 0, err
		}
		res.Rcodes[dns.RcodeToString[r.Rcode]]++
		return rtt, nil
	}
	var lat []time.Duration
	start := time.Now()
	switch {
	case coldTmpl != "":
		token := randomToken()
		for i := range coldN {
			if ctx.Err() != nil {
				break
			}
			name := strings.NewReplacer("{i}", strconv.Itoa(i+1), "{r}", token).Replace(coldTmpl)
			d, err := ask(name)
			if err != nil {
				errs.add(err)
				continue
			}
			lat = append(lat, d)
		}
		res.Target += " cold " + coldTmpl
	case cached != "":
		if _, err := ask(cached); err != nil { // warm the cache
			return nil, fmt.Errorf("warm-up query: %w", err)
		}
		for range cachedN {
			if ctx.Err() != nil {
				break
			}
			d, err := ask(cached)
			if err != nil {
				errs.add(err)
				continue
			}
			lat = append(lat, d)
		}
		res.Target += " cached " + cached
	default:
		return nil, errors.New("dns: want -cold or -cached")
	}
	res.Seconds = time.Since(start).Seconds()
	res.OK, res.Failed, res.Errors = int64(len(lat)), errs.failed.Load(), errs.seen
	res.Latency = summarize(lat)
	return res, nil
}

// benchSteady sends GETs from conc workers (fresh of them on a new connection
// each time, the others keep-alive; a pause between requests) until duration
// ends and records which copy answered when, so a run across `tp intercept` or
// `tp leave` shows failed requests and when each kind of connection switched.
func benchSteady(ctx context.Context, target string, duration time.Duration, conc, fresh int, pause time.Duration, waitCopy string) (*benchResult, error) {
	if waitCopy != "" {
		if err := awaitCopy(ctx, target, waitCopy); err != nil {
			return nil, err
		}
	}
	res := &benchResult{Target: target, Copies: map[string]int64{}, CopiesByConn: map[string]int64{},
		LastByCopy: map[string]int64{}, FirstByCopy: map[string]int64{}}
	var (
		mu   sync.Mutex
		errs errorLog
		lat  []time.Duration
	)
	sctx, cancel := context.WithTimeout(ctx, duration)
	defer cancel()
	start := time.Now()
	var g errgroup.Group
	for w := range conc {
		kind := "keepalive"
		client := &http.Client{Transport: newTransport(1), Timeout: 5 * time.Second}
		if w < fresh {
			kind = "fresh"
			client.Transport.(*http.Transport).DisableKeepAlives = true
		}
		g.Go(func() error {
			defer client.CloseIdleConnections()
			for sctx.Err() == nil {
				t0 := time.Now()
				body, err := getOnce(ctx, client, target)
				now := time.Now()
				mu.Lock()
				if err != nil {
					errs.add(err)
					if len(res.FailedAt) < 1000 {
						res.FailedAt = append(res.FailedAt, now.UnixMilli())
					}
				} else {
					c := copyOf(body)
					res.Copies[c]++
					res.CopiesByConn[c+"/"+kind]++
					for _, key := range []string{c, c + "/" + kind} {
						res.LastByCopy[key] = now.UnixMilli()
						if _, ok := res.FirstByCopy[key]; !ok {
							res.FirstByCopy[key] = now.UnixMilli()
						}
					}
					lat = append(lat, now.Sub(t0))
				}
				mu.Unlock()
				select {
				case <-sctx.Done():
				case <-time.After(pause):
				}
			}
			return nil
		})
	}
	_ = g.Wait()
	res.Seconds = time.Since(start).Seconds()
	res.OK, res.Failed, res.Errors = int64(len(lat)), errs.failed.Load(), errs.seen
	res.Latency = summarize(lat)
	return res, nil
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
