package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

const (
	// ednsSize is the UDP payload size advertised upstream and to clients
	// (DNS flag day 2020: avoids IP fragmentation).
	ednsSize = 1232
	// upstreamStagger is how long the forwarder waits for one upstream
	// before also asking the next one.
	upstreamStagger = 400 * time.Millisecond
)

// errTruncated marks a UDP answer too large for UDP: ask again over TCP.
var errTruncated = errors.New("truncated answer")

// errNoAnswer is returned by an Exchanger that returned neither an answer nor an error.
var errNoAnswer = errors.New("no answer")

// forwarder asks the original resolvers. It implements Exchanger: one query
// goes to the resolver that answered last; if it has not answered within
// upstreamStagger (or failed), the next one is asked too, and the first
// usable answer wins. UDP answers with the TC bit are asked again over TCP.
type forwarder struct {
	addrs     []string
	preferred atomic.Uint32 // index in addrs of the last resolver that answered
	stagger   time.Duration
}

func newForwarder(addrs []string) *forwarder {
	return &forwarder{addrs: addrs, stagger: upstreamStagger}
}

// Exchange asks the resolvers for q until ctx is done. It returns the last
// error answer (SERVFAIL, REFUSED...) if no resolver gave a better one.
func (f *forwarder) Exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	if len(f.addrs) == 0 {
		return nil, errors.New("no upstream resolvers")
	}
	wire, err := q.Pack()
	if err != nil {
		return nil, fmt.Errorf("pack query: %w", err)
	}

	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()

	type result struct {
		i   int
		m   *dns.Msg
		err error
	}
	results := make(chan result, len(f.addrs))
	start := int(f.preferred.Load())
	launched, pending := 0, 0
	launch := func() {
		i := (start + launched) % len(f.addrs)
		launched++
		pending++
		wg.Go(func() {
			m, err := exchangeOne(ctx, f.addrs[i], q, wire)
			results <- result{i, m, err}
		})
	}

	launch()
	timer := time.NewTimer(f.stagger)
	defer timer.Stop()
	var (
		lastErr  error
		fallback *dns.Msg
	)
	for pending > 0 {
		select {
		case r := <-results:
			pending--
			switch {
			case r.err != nil:
				lastErr = r.err
			case r.m.Rcode != dns.RcodeSuccess && r.m.Rcode != dns.RcodeNameError:
				fallback = r.m // SERVFAIL, REFUSED, FORMERR...: another resolver may do better
			default:
				f.preferred.Store(uint32(r.i))
				return r.m, nil
			}
			if launched < len(f.addrs) {
				launch()
				timer.Reset(f.stagger)
			}
		case <-timer.C:
			if launched < len(f.addrs) {
				launch()
				timer.Reset(f.stagger)
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if fallback != nil {
		return fallback, nil
	}
	return nil, lastErr
}

// exchangeOne asks one resolver over UDP, then over TCP if the answer is truncated.
func exchangeOne(ctx context.Context, addr string, q *dns.Msg, wire []byte) (*dns.Msg, error) {
	m, err := exchangeUDP(ctx, addr, q, wire)
	if errors.Is(err, errTruncated) {
		m, err = exchangeTCP(ctx, addr, q, wire)
	}
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
			err = fmt.Errorf("%w (%w)", ctxErr, err)
		}
		return nil, fmt.Errorf("upstream %s: %w", addr, err)
	}
	return m, nil
}

// dialContext dials addr and arranges for its I/O to end when ctx is done.
func dialContext(ctx context.Context, network, addr string) (net.Conn, func(), error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	return c, func() { stop(); _ = c.Close() }, nil
}

func exchangeUDP(ctx context.Context, addr string, q *dns.Msg, wire []byte) (*dns.Msg, error) {
	c, done, err := dialContext(ctx, "udp", addr)
	if err != nil {
		return nil, err
	}
	defer done()
	if _, err := c.Write(wire); err != nil {
		return nil, err
	}
	buf := make([]byte, dns.DefaultMsgSize)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		m := new(dns.Msg)
		if err := m.Unpack(buf[:n]); err != nil {
			// A server may cut a large answer anywhere: trust the TC bit.
			if n >= 4 && binary.BigEndian.Uint16(buf) == q.Id && buf[2]&0x02 != 0 {
				return nil, errTruncated
			}
			return nil, fmt.Errorf("unpack answer: %w", err)
		}
		if !answers(m, q) {
			continue // a late answer to an earlier query on this port
		}
		if m.Truncated {
			return nil, errTruncated
		}
		return m, nil
	}
}

func exchangeTCP(ctx context.Context, addr string, q *dns.Msg, wire []byte) (*dns.Msg, error) {
	c, done, err := dialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer done()
	framed := make([]byte, 2+len(wire))
	binary.BigEndian.PutUint16(framed, uint16(len(wire)))
	copy(framed[2:], wire)
	if _, err := c.Write(framed); err != nil {
		return nil, err
	}
	var size [2]byte
	if _, err := io.ReadFull(c, size[:]); err != nil {
		return nil, err
	}
	buf := make([]byte, binary.BigEndian.Uint16(size[:]))
	if _, err := io.ReadFull(c, buf); err != nil {
		return nil, err
	}
	m := new(dns.Msg)
	if err := m.Unpack(buf); err != nil {
		return nil, fmt.Errorf("unpack answer: %w", err)
	}
	if !answers(m, q) {
		return nil, errors.New("answer does not match the query")
	}
	return m, nil
}

// answers reports whether m is a response to q. Error responses may omit
// the question (RFC 6891 section 7).
func answers(m, q *dns.Msg) bool {
	if !m.Response || m.Id != q.Id {
		return false
	}
	return sameQuestion(m, q) || (len(m.Question) == 0 && m.Rcode != dns.RcodeSuccess)
}

// sameQuestion reports whether m carries q's question (names ignoring case).
func sameQuestion(m, q *dns.Msg) bool {
	if len(m.Question) != 1 || len(q.Question) != 1 {
		return false
	}
	a, b := m.Question[0], q.Question[0]
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}
