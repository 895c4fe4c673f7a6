package plugin

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// remoteFile is the server's side of a read-ahead test: a file in memory
// whose fetches are recorded and can be held or fail.
type remoteFile struct {
	mu      sync.Mutex
	data    []byte
	fetches []span
	hold    chan struct{}        // non-nil: fetches wait for it to close
	holds   func(off int64) bool // non-nil: only the fetches at the offsets it names wait
	fail    error
}

type span struct{ off, n int64 }

func newRemoteFile(size int) *remoteFile {
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*7 + i/4096)
	}
	return &remoteFile{data: data}
}

func (f *remoteFile) fetch(buf []byte, off int64) (int, error) {
	f.mu.Lock()
	f.fetches = append(f.fetches, span{off, int64(len(buf))})
	hold, fail := f.hold, f.fail
	if f.holds != nil && !f.holds(off) {
		hold = nil
	}
	f.mu.Unlock()
	if hold != nil {
		<-hold
	}
	if fail != nil {
		return 0, fail
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if off >= int64(len(f.data)) {
		return 0, nil
	}
	return copy(buf, f.data[off:]), nil
}

// fetched returns the fetches since the last call.
func (f *remoteFile) fetched() []span {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.fetches
	f.fetches = nil
	return s
}

// extent is how far the fetches reach and how many bytes they asked for.
func extent(s []span) (end, total int64) {
	for _, x := range s {
		end = max(end, x.off+x.n)
		total += x.n
	}
	return end, total
}

func (f *remoteFile) bytesAt(off, n int64) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	end := min(off+n, int64(len(f.data)))
	if off >= end {
		return nil
	}
	return bytes.Clone(f.data[off:end])
}

func testReadAhead(t *testing.T, f *remoteFile, budget int64) (*readAhead, *atomic.Int64) {
	t.Helper()
	b := new(atomic.Int64)
	b.Store(budget)
	ra := newReadAhead(f.fetch, b)
	t.Cleanup(func() {
		f.mu.Lock()
		if f.hold != nil {
			close(f.hold)
			f.hold = nil
		}
		f.mu.Unlock()
		ra.Close()
		if got := b.Load(); got != budget {
			t.Errorf("budget after Close: got %d, want %d (all of it back)", got, budget)
		}
	})
	return ra, b
}

func read(t *testing.T, ra *readAhead, f *remoteFile, off, n int64, gen uint64) []byte {
	t.Helper()
	buf := make([]byte, n)
	got, err := ra.ReadAt(context.Background(), buf, off, gen)
	if err != nil {
		t.Fatalf("ReadAt(%d, %d): %v", off, n, err)
	}
	if want := f.bytesAt(off, n); !bytes.Equal(buf[:got], want) {
		t.Fatalf("ReadAt(%d, %d): got %d bytes, want %d (or other bytes)", off, n, got, len(want))
	}
	return buf[:got]
}

// waitIdle waits until the fetches in flight are done.
func waitIdle(t *testing.T, ra *readAhead) {
	t.Helper()
	ra.mu.Lock()
	chunks := append([]*chunk(nil), ra.chunks...)
	ra.mu.Unlock()
	for _, c := range chunks {
		select {
		case <-c.done:
		case <-time.After(5 * time.Second):
			t.Fatal("a fetch did not end")
		}
	}
}

const kb = 1 << 10

// TestReadAheadFirstReadFetchesOnlyItself: the first read of a file, and a
// small file's only read, cost no byte more than asked.
func TestReadAheadFirstReadFetchesOnlyItself(t *testing.T) {
	f := newRemoteFile(8 << 20)
	ra, _ := testReadAhead(t, f, raBudget)
	read(t, ra, f, 0, 128*kb, 0)
	waitIdle(t, ra)
	if got := f.fetched(); len(got) != 1 || got[0] != (span{0, 128 * kb}) {
		t.Errorf("fetches of the first read: got %v, want [{0 %d}]", got, 128*kb)
	}
}

// TestReadAheadSequentialWindow: sequential reads fetch ahead, the window
// grows to raMaxWindow and no further, and the reads it covers fetch
// nothing more.
func TestReadAheadSequentialWindow(t *testing.T) {
	f := newRemoteFile(64 << 20)
	ra, _ := testReadAhead(t, f, raBudget)
	const req = 128 * kb
	read(t, ra, f, 0, req, 0)
	read(t, ra, f, req, req, 0)
	waitIdle(t, ra)
	end, _ := extent(f.fetched())
	if want := int64(2*req + raFirstWindow); end != want {
		t.Errorf("after the second read the fetches reach %d, want %d (the first window ahead)", end, want)
	}
	// The next reads are in the window: each tops it up, none waits for a
	// fetch of its own range.
	var off int64 = 2 * req
	for range 100 {
		waitIdle(t, ra)
		ra.mu.Lock()
		_, hi := ra.spanLocked()
		ra.mu.Unlock()
		if hi < off+req {
			t.Fatalf("read at %d: the window ends at %d, before the read's end", off, hi)
		}
		read(t, ra, f, off, req, 0)
		off += req
	}
	waitIdle(t, ra)
	end, _ = extent(f.fetched())
	if end > off+raMaxWindow {
		t.Errorf("the fetches reach %d, more than raMaxWindow (%d) past the reader at %d", end, raMaxWindow, off)
	}
	if end < off+raMaxWindow/2 {
		t.Errorf("the fetches reach %d, the window did not grow toward raMaxWindow past %d", end, off)
	}
}

// TestReadAheadSeekDropsWindow: a read elsewhere drops the window, fetches
// only itself, and gives the budget back.
func TestReadAheadSeekDropsWindow(t *testing.T) {
	f := newRemoteFile(64 << 20)
	ra, b := testReadAhead(t, f, raBudget)
	for i := range int64(4) {
		read(t, ra, f, i*128*kb, 128*kb, 0)
	}
	waitIdle(t, ra)
	if b.Load() == raBudget {
		t.Fatal("the sequential reads hold no budget: no window was fetched")
	}
	f.fetched()
	read(t, ra, f, 40<<20, 4*kb, 0)
	waitIdle(t, ra)
	if got := f.fetched(); len(got) != 1 || got[0] != (span{40 << 20, 4 * kb}) {
		t.Errorf("fetches of the read elsewhere: got %v, want only [{%d %d}]", got, 40<<20, 4*kb)
	}
	if got := b.Load(); got != raBudget {
		t.Errorf("budget after the seek: got %d, want %d", got, raBudget)
	}
}

// TestReadAheadOutOfOrder: the kernel's reads of one window may arrive out
// of order; they are served from the window.
func TestReadAheadOutOfOrder(t *testing.T) {
	f := newRemoteFile(16 << 20)
	ra, _ := testReadAhead(t, f, raBudget)
	read(t, ra, f, 0, 128*kb, 0)
	read(t, ra, f, 128*kb, 128*kb, 0)
	waitIdle(t, ra)
	f.fetched()
	read(t, ra, f, 384*kb, 128*kb, 0)
	read(t, ra, f, 256*kb, 128*kb, 0) // behind the latest, inside the window
	waitIdle(t, ra)
	for _, s := range f.fetched() {
		if s.off < 512*kb {
			t.Errorf("fetch %v: the out-of-order reads were fetched again", s)
		}
	}
}

// TestReadAheadChangedFile: after a write or truncate through the mount
// (gen), nothing read ahead before it is served.
func TestReadAheadChangedFile(t *testing.T) {
	f := newRemoteFile(4 << 20)
	ra, _ := testReadAhead(t, f, raBudget)
	read(t, ra, f, 0, 128*kb, 0)
	read(t, ra, f, 128*kb, 128*kb, 0)
	waitIdle(t, ra)
	f.mu.Lock()
	copy(f.data[256*kb:], bytes.Repeat([]byte("new"), 1000))
	f.mu.Unlock()
	if got := read(t, ra, f, 256*kb, 3, 1); string(got) != "new" { // read checks against the new bytes too
		t.Errorf("after the change: got %q, want %q", got, "new")
	}
}

// TestReadAheadMaxAge: chunks older than raMaxAge are fetched again.
func TestReadAheadMaxAge(t *testing.T) {
	f := newRemoteFile(4 << 20)
	ra, _ := testReadAhead(t, f, raBudget)
	var mu sync.Mutex
	now := time.Unix(1000, 0)
	ra.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	read(t, ra, f, 0, 128*kb, 0)
	read(t, ra, f, 128*kb, 128*kb, 0)
	waitIdle(t, ra)
	f.fetched()
	read(t, ra, f, 256*kb, 128*kb, 0)
	waitIdle(t, ra)
	if got := f.fetched(); slices.Contains(got, span{256 * kb, 128 * kb}) {
		t.Fatalf("a read in a fresh window fetched its range again: %v", got)
	}
	mu.Lock()
	now = now.Add(raMaxAge + time.Millisecond)
	mu.Unlock()
	read(t, ra, f, 384*kb, 128*kb, 0)
	waitIdle(t, ra)
	if got := f.fetched(); !slices.Contains(got, span{384 * kb, 128 * kb}) {
		t.Errorf("a read in an old window: fetches %v, want its range fetched again", got)
	}
}

// TestReadAheadEndOfFile: reads at the end are short, the window stops at
// the end, and a read past the end that a chunk found asks the server (the
// file may have grown).
func TestReadAheadEndOfFile(t *testing.T) {
	const size = 300*kb + 17
	f := newRemoteFile(size)
	ra, _ := testReadAhead(t, f, raBudget)
	read(t, ra, f, 0, 128*kb, 0)
	read(t, ra, f, 128*kb, 128*kb, 0)
	waitIdle(t, ra)
	if got := read(t, ra, f, 256*kb, 128*kb, 0); len(got) != size-256*kb {
		t.Errorf("the read at the end: got %d bytes, want %d", len(got), size-256*kb)
	}
	waitIdle(t, ra)
	f.fetched()
	read(t, ra, f, 256*kb, 128*kb, 0) // again, in the window: no fetch
	waitIdle(t, ra)
	if got := f.fetched(); len(got) != 0 {
		t.Errorf("a read up to the end found: fetched %v, want nothing", got)
	}
	f.mu.Lock()
	f.data = append(f.data, []byte("grown")...)
	f.mu.Unlock()
	if got := read(t, ra, f, size, 128*kb, 0); string(got) != "grown" {
		t.Errorf("a read past the end found: got %q, want %q", got, "grown")
	}
}

// TestReadAheadFetchError: a failed fetch fails the read that needs it and
// drops the window; the next read asks again.
func TestReadAheadFetchError(t *testing.T) {
	f := newRemoteFile(4 << 20)
	ra, _ := testReadAhead(t, f, raBudget)
	read(t, ra, f, 0, 128*kb, 0)
	broken := errors.New("broken")
	f.mu.Lock()
	f.fail = broken
	f.mu.Unlock()
	_, err := ra.ReadAt(context.Background(), make([]byte, 128*kb), 128*kb, 0)
	if !errors.Is(err, broken) {
		t.Fatalf("read with a failing fetch: got %v, want %v", err, broken)
	}
	f.mu.Lock()
	f.fail = nil
	f.mu.Unlock()
	read(t, ra, f, 128*kb, 128*kb, 0)
}

// TestReadAheadInterrupted: a read waiting for a fetch returns when its
// request is interrupted; Close waits for the fetch.
func TestReadAheadInterrupted(t *testing.T) {
	f := newRemoteFile(4 << 20)
	ra, _ := testReadAhead(t, f, raBudget)
	hold := make(chan struct{})
	f.mu.Lock()
	f.hold = hold
	f.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := ra.ReadAt(ctx, make([]byte, 4*kb), 0, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("interrupted read: got %v, want %v", err, context.DeadlineExceeded)
	}
	closed := make(chan struct{})
	go func() { ra.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned while a fetch was in flight")
	case <-time.After(50 * time.Millisecond):
	}
	f.mu.Lock()
	close(hold)
	f.hold = nil
	f.mu.Unlock()
	<-closed
}

// TestReadAheadBudget: the window stays within the mount's budget; reads
// go on without it.
func TestReadAheadBudget(t *testing.T) {
	f := newRemoteFile(16 << 20)
	ra, b := testReadAhead(t, f, 2*raChunk)
	var off int64
	for range 20 {
		read(t, ra, f, off, 128*kb, 0)
		off += 128 * kb
		if got := b.Load(); got < 0 {
			t.Fatalf("budget %d: overdrawn", got)
		}
		waitIdle(t, ra)
		end, _ := extent(f.fetched())
		if end > off+2*raChunk {
			t.Fatalf("fetches reach %d, more than the budget of 2 chunks past %d", end, off)
		}
	}
}

// TestReadAheadBudgetHeldByDroppedFetches: a window dropped while its
// fetches run keeps its bytes in the budget until they end (they fill their
// buffers all the same), so that seeking readers cannot hold more than the
// budget in memory.
func TestReadAheadBudgetHeldByDroppedFetches(t *testing.T) {
	f := newRemoteFile(64 << 20)
	ra, b := testReadAhead(t, f, raBudget)
	hold := make(chan struct{})
	f.mu.Lock()
	f.hold, f.holds = hold, func(off int64) bool { return off >= 256*kb && off < 16<<20 }
	f.mu.Unlock()
	read(t, ra, f, 0, 128*kb, 0)
	read(t, ra, f, 128*kb, 128*kb, 0) // the window ahead of it waits for hold
	windowed := raBudget - b.Load()
	if windowed == 0 {
		t.Fatal("the sequential reads hold no budget: no window was fetched")
	}
	read(t, ra, f, 40<<20, 4*kb, 0) // drops the window, whose fetches still run
	if got := raBudget - b.Load(); got != windowed {
		t.Errorf("budget held after the seek: %d bytes, want %d (the window's fetches still run)", got, windowed)
	}
	f.mu.Lock()
	close(hold)
	f.hold, f.holds = nil, nil
	f.mu.Unlock()
	for deadline := time.Now().Add(5 * time.Second); b.Load() != raBudget; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("budget %d after the dropped fetches ended, want %d", b.Load(), raBudget)
		}
	}
}

// TestReadAheadRandomPattern: whatever the order, every read returns the
// file's bytes.
func TestReadAheadRandomPattern(t *testing.T) {
	const size = 3<<20 + 1234
	f := newRemoteFile(size)
	ra, _ := testReadAhead(t, f, raBudget)
	rng := rand.New(rand.NewPCG(1, 2))
	var off int64
	for range 2000 {
		switch rng.IntN(4) {
		case 0: // seek
			off = rng.Int64N(size + 4*kb)
		case 1: // a bit back (out of order)
			off = max(0, off-rng.Int64N(256*kb))
		}
		n := 4*kb + rng.Int64N(128*kb)
		read(t, ra, f, off, n, 0)
		off += n
	}
	// Concurrent readers of one handle.
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			buf := make([]byte, 128*kb)
			for i := range int64(24) {
				o := (i*4 + int64(w)) * 128 * kb
				n, err := ra.ReadAt(context.Background(), buf, o, 0)
				if err != nil || !bytes.Equal(buf[:n], f.bytesAt(o, 128*kb)) {
					t.Errorf("concurrent read at %d: %d bytes, %v, or other bytes", o, n, err)
				}
			}
		})
	}
	wg.Wait()
}
