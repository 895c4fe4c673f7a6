//go:build linux

package daemon

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/tp-run/tp/tunnel"
)

// Parked flows (manager/parking.go): once the daemon created an intercept,
// or the intercept sent it a connection, the daemon keeps parkSlots flows with the pairing id
// "park/<intercept id>/<random>" open to the traffic-manager, which pairs the
// intercept's next connections with them at once instead of sending a
// DialRequest and waiting for this side to open a flow (a round trip through
// the port-forward per connection). A parked flow that is answered dials the
// local port and is replaced at once. A refused park (the intercept ended,
// the manager has enough, or it is older and knows no parking) ends the
// slot; DialRequests of the intercept start it again, at most every
// parkRetry. A reconnect starts without parked flows until then.

const (
	// parkSlots is how many flows each intercept keeps parked.
	parkSlots = 2
	// parkRetry is how long after a refused park the intercept's
	// DialRequests leave parking alone.
	parkRetry = 10 * time.Second
)

// parker runs the parked flows of one watchDials stream.
type parker struct {
	ctx      context.Context // parked flows wait until it ends (the watchDials stream)
	serveCtx context.Context // bounds the connections they serve
	wg       *sync.WaitGroup // watchDials waits for every slot and connection
	dialer   *tunnel.Dialer
	log      *slog.Logger
	now      func() time.Time
	// serve connects an answered flow to the local port (acceptParked).
	serve func(ctx context.Context, flow tunnel.Conn, target netip.AddrPort, log *slog.Logger)

	mu         sync.Mutex
	intercepts map[string]*parkedIntercept
}

type parkedIntercept struct {
	target  netip.AddrPort // 127.0.0.1:local port, from the latest DialRequest
	slots   int            // running slot goroutines
	retryAt time.Time      // no new slots before (after a refused park)
}

// ensure starts the intercept's missing slots (after a DialRequest for it).
func (p *parker) ensure(interceptID string, target netip.AddrPort) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pi := p.intercepts[interceptID]
	if pi == nil {
		pi = &parkedIntercept{}
		p.intercepts[interceptID] = pi
	}
	pi.target = target
	if p.now().Before(pi.retryAt) {
		return
	}
	for ; pi.slots < parkSlots; pi.slots++ {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.slot(interceptID, pi)
		}()
	}
}

// slot keeps one flow of the intercept parked until a park fails.
func (p *parker) slot(interceptID string, pi *parkedIntercept) {
	log := p.log.With("intercept", interceptID)
	for {
		flow, err := p.dialer.DialFlow(p.ctx, tunnel.Flow{
			Network: "tcp", PairingID: "park/" + interceptID + "/" + randomHex(8),
		})
		p.mu.Lock()
		target := pi.target
		if err != nil {
			pi.slots--
			if p.ctx.Err() == nil {
				pi.retryAt = p.now().Add(parkRetry)
			}
		}
		p.mu.Unlock()
		if err != nil {
			if p.ctx.Err() == nil {
				log.Debug("intercepted connections: parked flow refused; connections take the DialRequest path", "error", err)
			}
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.serve(p.serveCtx, flow, target, log.With("localPort", target.Port(), "parked", true))
		}()
	}
}

// localTarget is where intercepted connections of local port go: the
// daemon's network namespace, which joined containers share.
func localTarget(port int32) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(port))
}

// acceptParked connects an answered flow (parked or DialRequest's) to target.
func acceptParked(ctx context.Context, flow tunnel.Conn, target netip.AddrPort, log *slog.Logger) {
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	local, err := d.DialContext(dctx, "tcp", target.String())
	cancel()
	if err != nil {
		// Reset the cluster side at once rather than let it time out.
		log.Warn("intercepted connection: nothing listens on the local port; is the intercept's container running?",
			"target", target, "error", err)
		flow.Close()
		return
	}
	if err := tunnel.Splice(ctx, flow, local); err != nil {
		log.Debug("intercepted connection ended", "error", err)
	}
}
