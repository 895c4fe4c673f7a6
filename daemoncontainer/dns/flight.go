package dns

import (
	"errors"
	"sync"
)

var errForwardPanicked = errors.New("forward panicked")

// flight lets concurrent identical questions share one forward.
type flight struct {
	mu    sync.Mutex
	calls map[cacheKey]*call
}

type call struct {
	done chan struct{}
	ans  *answer
	err  error
}

// do runs fn for k unless a call for k is in flight, in which case it waits
// for that call's result; shared reports the latter. fn must return: every
// forward has a deadline.
func (f *flight) do(k cacheKey, fn func() (*answer, error)) (a *answer, shared bool, err error) {
	f.mu.Lock()
	if c, ok := f.calls[k]; ok {
		f.mu.Unlock()
		<-c.done
		return c.ans, true, c.err
	}
	c := &call{done: make(chan struct{}), err: errForwardPanicked}
	f.calls[k] = c
	f.mu.Unlock()

	defer func() {
		f.mu.Lock()
		delete(f.calls, k)
		f.mu.Unlock()
		close(c.done)
	}()
	c.ans, c.err = fn()
	return c.ans, false, c.err
}
