package manager

import (
	"context"
	"fmt"
	"maps"
	"sort"
	"strings"
	"sync"
	"time"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// workloadRef names a workload: Kind is Deployment, StatefulSet or ReplicaSet.
type workloadRef struct {
	Namespace string `json:"namespace"`
	Kind      string `json:"kind"`
	Name      string `json:"name"`
}

func (w workloadRef) String() string {
	return fmt.Sprintf("%s %s in namespace %s", strings.ToLower(w.Kind), w.Name, w.Namespace)
}

// intercept is a registered intercept: the client's spec and what the manager
// resolved it to.
type intercept struct {
	ID string
	// Owner is the public id of the owner's session.
	Owner string
	// User is who the API server authenticated when the owner asked for
	// the intercept (the admission request's userInfo), never the client's word.
	User string
	// Spec with Name and Namespace filled in.
	Spec     *managerv1.InterceptSpec
	Workload workloadRef
	// Container that declares ContainerPort (the first container when none does).
	Container       string
	ServiceName     string
	ServicePortName string
	ServicePort     int32
	ContainerPort   int32
	Created         time.Time
}

func (ic *intercept) global() bool { return len(ic.Spec.GetHeaders()) == 0 }

// sameRouting reports whether a and b ask for the same traffic of the same port.
func (ic *intercept) sameRouting(o *intercept) bool {
	return ic.Workload == o.Workload && ic.ContainerPort == o.ContainerPort && ic.Spec.GetIngest() == o.Spec.GetIngest() &&
		ic.Spec.GetLocalPort() == o.Spec.GetLocalPort() && ic.Spec.GetPathPrefix() == o.Spec.GetPathPrefix() &&
		maps.Equal(foldHeaders(ic.Spec.GetHeaders()), foldHeaders(o.Spec.GetHeaders()))
}

// conflicts applies the ownership rules of docs/intercepts.md: on the same
// port of a workload, a global intercept excludes every other intercept, and
// personal ones coexist unless they match the same requests (equal headers,
// names compared case-insensitively, and equal path prefix).
// An ingest takes no traffic, so it conflicts with nothing.
func (ic *intercept) conflicts(o *intercept) bool {
	if ic.Spec.GetIngest() || o.Spec.GetIngest() || ic.Workload != o.Workload || ic.ContainerPort != o.ContainerPort {
		return false
	}
	if ic.global() || o.global() {
		return true
	}
	return ic.Spec.GetPathPrefix() == o.Spec.GetPathPrefix() &&
		maps.Equal(foldHeaders(ic.Spec.GetHeaders()), foldHeaders(o.Spec.GetHeaders()))
}

func foldHeaders(h map[string]string) map[string]string {
	out := make(map[string]string, len(h))
	for k, v := range h {
		out[strings.ToLower(k)] = v
	}
	return out
}

// interceptStore keeps the registered intercepts. The registry serializes
// calls. sessionRecords (records.go) keeps them in the cluster, with their
// sessions, so that a restarted manager takes them up.
type interceptStore interface {
	Put(ctx context.Context, ic *intercept) error
	Delete(ctx context.Context, id string) error
	List(ctx context.Context) ([]*intercept, error)
}

// registry is the set of intercepts with the ownership rules applied. It
// reports every change to changes.
type registry struct {
	store   interceptStore
	changes *changes

	mu sync.Mutex
}

func newRegistry(store interceptStore, c *changes) *registry {
	return &registry{store: store, changes: c}
}

// conflictError says who holds what a new intercept asks for. Same is true
// when the holder is an intercept of the same session and name.
type conflictError struct {
	Holder *intercept
	Same   bool
}

func (e *conflictError) Error() string {
	return fmt.Sprintf("conflicts with intercept %q (%s)", e.Holder.Spec.GetName(), e.Holder.ID)
}

// create registers ic unless it conflicts with another intercept. When the
// session already holds an intercept of that name routing the same traffic,
// create returns that one and created=false (a retried request).
func (r *registry) create(ctx context.Context, ic *intercept) (got *intercept, created bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	all, err := r.store.List(ctx)
	if err != nil {
		return nil, false, err
	}
	sortIntercepts(all)
	for _, o := range all {
		if o.Owner == ic.Owner && o.Spec.GetName() == ic.Spec.GetName() && o.Spec.GetNamespace() == ic.Spec.GetNamespace() {
			if o.sameRouting(ic) {
				return o, false, nil
			}
			return nil, false, &conflictError{Holder: o, Same: true}
		}
	}
	for _, o := range all {
		if ic.conflicts(o) {
			return nil, false, &conflictError{Holder: o}
		}
	}
	if err := r.store.Put(ctx, ic); err != nil {
		return nil, false, err
	}
	r.changes.notify()
	return ic, true, nil
}

// remove removes the intercepts for which match is true and returns them.
func (r *registry) remove(ctx context.Context, match func(*intercept) bool) ([]*intercept, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	all, err := r.store.List(ctx)
	if err != nil {
		return nil, err
	}
	var gone []*intercept
	for _, ic := range all {
		if !match(ic) {
			continue
		}
		if err := r.store.Delete(ctx, ic.ID); err != nil {
			return gone, err
		}
		gone = append(gone, ic)
	}
	if len(gone) > 0 {
		r.changes.notify()
	}
	sortIntercepts(gone)
	return gone, nil
}

// list returns the intercepts for which match is true (all for nil), oldest first.
func (r *registry) list(ctx context.Context, match func(*intercept) bool) ([]*intercept, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	all, err := r.store.List(ctx)
	if err != nil {
		return nil, err
	}
	var out []*intercept
	for _, ic := range all {
		if match == nil || match(ic) {
			out = append(out, ic)
		}
	}
	sortIntercepts(out)
	return out, nil
}

func (r *registry) get(ctx context.Context, id string) (*intercept, bool) {
	l, err := r.list(ctx, func(ic *intercept) bool { return ic.ID == id })
	if err != nil || len(l) == 0 {
		return nil, false
	}
	return l[0], true
}

func sortIntercepts(l []*intercept) {
	sort.Slice(l, func(i, j int) bool {
		if !l[i].Created.Equal(l[j].Created) {
			return l[i].Created.Before(l[j].Created)
		}
		return l[i].ID < l[j].ID
	})
}

// changes broadcasts "something changed" (intercepts, sessions) to watchers.
// A watcher takes wait() before it looks at the state, then blocks on it.
type changes struct {
	mu sync.Mutex
	ch chan struct{}
}

func newChanges() *changes { return &changes{ch: make(chan struct{})} }

// wait returns a channel closed by the next notify.
func (c *changes) wait() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ch
}

func (c *changes) notify() {
	c.mu.Lock()
	defer c.mu.Unlock()
	close(c.ch)
	c.ch = make(chan struct{})
}
