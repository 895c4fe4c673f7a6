package plugin

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Read-ahead: the kernel reads a FUSE file in requests of at most 128 KiB
// (its read-ahead window for FUSE), one or two at a time, so that a
// sequential read costs a tunnel round trip per 128 KiB. readAhead keeps a
// window of chunks in flight ahead of a sequential reader instead: the
// kernel's reads are then answered from memory as soon as their bytes
// arrive.
//
// The rules:
//   - A read is sequential when it starts where the previous one ended or
//     inside the chunks held. The first read of a file, and a read elsewhere,
//     fetch only what they ask for (and drop the window): a small file, or a
//     file read at random, costs no byte more than it did.
//   - Each sequential read grows the window (raFirstWindow, doubling up to
//     raMaxWindow) and tops it up; chunks more than raBehind behind the
//     reader are dropped (the kernel's reads may arrive out of order).
//   - Chunks are never older than raMaxAge when served (the attribute
//     timeout's bound on staleness), nor fetched before the latest write,
//     truncate or O_TRUNC open of the file through this mount (gen).
//   - A mount holds at most raBudget bytes ahead of its readers, counting
//     the dropped chunks whose fetches are still running (they fill their
//     buffers all the same); chunks a read waits for are not counted: a
//     read never waits for the budget.
//   - Every fetch is one remote read bounded by the connection's deadline;
//     a read waiting for a chunk returns when it arrives, fails, or the
//     request is interrupted. The fetches end by themselves (at the latest
//     with the connection); close waits for them.
const (
	raChunk       = 128 << 10
	raFirstWindow = 512 << 10
	raMaxWindow   = 4 << 20
	raBehind      = 1 << 20
	raMaxAge      = time.Second
	raBudget      = 64 << 20
)

// fetchFunc reads len(buf) bytes at off from the remote file into buf,
// fewer only at the end of the file. It may use buf until it returns.
type fetchFunc func(buf []byte, off int64) (int, error)

// readAhead is the read-ahead of one open file.
type readAhead struct {
	fetch  fetchFunc
	budget *atomic.Int64 // bytes the mount may still fetch ahead of its readers
	now    func() time.Time

	mu     sync.Mutex
	chunks []*chunk // contiguous, by offset
	next   int64    // where a sequential read starts: the end of the latest read; -1 before the first
	window int64    // how far ahead of next to fetch
	eof    int64    // the end of the file as a chunk held found it; -1 unknown
	gen    uint64   // the file's change count the chunks were fetched at
	epoch  uint64   // counts the drops: a chunk fetched before the latest tells nothing
	wg     sync.WaitGroup
}

type chunk struct {
	off   int64
	size  int
	ahead bool // counted in the budget until dropped and fetched
	epoch uint64

	// Under readAhead.mu: the chunk's bytes go back to the budget when both
	// are true.
	dropped, fetched bool

	done chan struct{}
	buf  []byte // after done: buf[:n] are the file's bytes at off
	n    int
	err  error
	at   time.Time // when it arrived
}

func (c *chunk) end() int64 { return c.off + int64(c.size) }

func newReadAhead(fetch fetchFunc, budget *atomic.Int64) *readAhead {
	return &readAhead{fetch: fetch, budget: budget, now: time.Now, next: -1, eof: -1}
}

// newBudget is a mount's read-ahead budget.
func newBudget() *atomic.Int64 {
	b := new(atomic.Int64)
	b.Store(raBudget)
	return b
}

// ReadAt reads len(dest) bytes at off into dest, fewer at the end of the
// file. gen is the file's change count (writes, truncates through this
// mount): chunks fetched at another count are not used.
func (ra *readAhead) ReadAt(ctx context.Context, dest []byte, off int64, gen uint64) (int, error) {
	end := off + int64(len(dest))
	need := ra.plan(off, end, gen)
	n := 0
	for _, c := range need {
		select {
		case <-c.done:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		if c.err != nil {
			ra.drop()
			return 0, c.err
		}
		from, to := max(off, c.off), min(end, c.off+int64(c.n))
		if to > from {
			n += copy(dest[from-off:to-off], c.buf[from-c.off:to-c.off])
		}
		if c.n < c.size { // the end of the file
			break
		}
	}
	return n, nil
}

// plan decides what a read of [off, end) needs, starts the fetches and
// returns the chunks that cover it, in order.
func (ra *readAhead) plan(off, end int64, gen uint64) []*chunk {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	if gen != ra.gen || ra.staleLocked() || (ra.eof >= 0 && off >= ra.eof) {
		// Changed, old, or a read past the end that a chunk found (the
		// file may have grown since): ask the server.
		ra.dropLocked()
		ra.gen, ra.window = gen, 0
	}
	lo, hi := ra.spanLocked()
	inside := len(ra.chunks) > 0 && off >= lo && off <= hi
	if inside || off == ra.next {
		ra.window = min(max(2*ra.window, raFirstWindow), raMaxWindow)
	} else {
		ra.dropLocked()
		ra.window = 0
	}
	if inside {
		ra.next = max(ra.next, end)
	} else {
		lo, hi = off, off
		ra.next = end
	}
	if ra.eof >= 0 && end > ra.eof && hi >= ra.eof {
		end = ra.eof // the chunks reach the end of the file: nothing to fetch past it
	}
	// The chunks this read waits for.
	for hi < end {
		ra.startLocked(hi, int(min(raChunk, end-hi)), false)
		hi = ra.chunks[len(ra.chunks)-1].end()
	}
	var need []*chunk
	for _, c := range ra.chunks {
		if c.end() > off && c.off < end {
			need = append(need, c)
		}
	}
	// The window ahead of the reader.
	for ra.window > 0 && hi < ra.next+ra.window && (ra.eof < 0 || hi < ra.eof) {
		if ra.budget.Add(-raChunk) < 0 {
			ra.budget.Add(raChunk)
			break
		}
		ra.startLocked(hi, raChunk, true)
		hi += raChunk
	}
	// Behind the reader.
	i := 0
	for i < len(ra.chunks) && ra.chunks[i].end() <= ra.next-raBehind {
		ra.releaseLocked(ra.chunks[i])
		i++
	}
	ra.chunks = ra.chunks[i:]
	return need
}

// startLocked fetches size bytes at off and appends the chunk.
func (ra *readAhead) startLocked(off int64, size int, ahead bool) {
	c := &chunk{off: off, size: size, ahead: ahead, epoch: ra.epoch, done: make(chan struct{}), buf: make([]byte, size)}
	ra.chunks = append(ra.chunks, c)
	ra.wg.Add(1)
	go func() {
		defer ra.wg.Done()
		n, err := ra.fetch(c.buf, c.off)
		c.n, c.err, c.at = n, err, ra.now()
		ra.mu.Lock()
		if err == nil && n < size && c.epoch == ra.epoch && (ra.eof < 0 || c.off+int64(n) < ra.eof) {
			ra.eof = c.off + int64(n)
		}
		c.fetched = true
		if c.dropped {
			ra.unbudgetLocked(c)
		}
		ra.mu.Unlock()
		close(c.done)
	}()
}

func (ra *readAhead) spanLocked() (lo, hi int64) {
	if len(ra.chunks) == 0 {
		return 0, 0
	}
	return ra.chunks[0].off, ra.chunks[len(ra.chunks)-1].end()
}

// staleLocked tells whether a chunk arrived longer than raMaxAge ago.
func (ra *readAhead) staleLocked() bool {
	now := ra.now()
	for _, c := range ra.chunks {
		select {
		case <-c.done:
			if now.Sub(c.at) > raMaxAge {
				return true
			}
		default:
		}
	}
	return false
}

// releaseLocked takes c out of the chunks held: its bytes go back to the
// budget now, or when its fetch ends.
func (ra *readAhead) releaseLocked(c *chunk) {
	c.dropped = true
	if c.fetched {
		ra.unbudgetLocked(c)
	}
}

func (ra *readAhead) unbudgetLocked(c *chunk) {
	if c.ahead {
		ra.budget.Add(raChunk)
		c.ahead = false
	}
}

func (ra *readAhead) dropLocked() {
	for _, c := range ra.chunks {
		ra.releaseLocked(c)
	}
	ra.chunks, ra.eof = nil, -1
	ra.epoch++
}

func (ra *readAhead) drop() {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	ra.dropLocked()
}

// Close drops the chunks and waits for the fetches in flight, which end
// within the connection's deadline.
func (ra *readAhead) Close() {
	ra.mu.Lock()
	ra.dropLocked()
	ra.mu.Unlock()
	ra.wg.Wait()
}
