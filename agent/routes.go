package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"sort"
	"strings"
	"time"

	managerv1 "github.com/tp-run/tp/rpc/manager/v1"
)

// routes is what the agent does with new connections and requests: a
// read-only view of one InterceptSnapshot. The agent swaps it atomically;
// connections read it when they are accepted, requests when they arrive.
type routes struct {
	ports map[int32]*portRoutes // by container port
	// byHost finds an intercept by the host name its HTTP transports use.
	byHost map[string]*intercept
}

// portRoutes are the intercepts of one container port.
type portRoutes struct {
	global   *intercept   // the whole port goes to its client
	personal []*intercept // matching requests go to their clients; most specific first
}

// intercept is one intercept of the workload, as the agent routes it.
type intercept struct {
	id            string
	name          string
	owner         string // host/user of the client, for logs
	containerPort int32
	headers       []headerMatch // sorted by name
	pathPrefix    string
	// ownerConnected: the owner's daemon can take connections now.
	ownerConnected bool
	// awaySince is when the agent learned that the owner is away (zero
	// while connected): the owner grace runs from then.
	awaySince time.Time
	// host is the host name of the URLs the agent's HTTP transports use for
	// this intercept: it keys their connection pools, so connections to
	// different intercepts are never mixed up.
	host string
}

type headerMatch struct {
	name  string // canonical (http.CanonicalHeaderKey)
	value string
}

var noRoutes = &routes{}

// newRoutes builds routes from a snapshot; intercepts of container ports the
// agent does not serve are returned in ignored.
func newRoutes(snap *managerv1.InterceptSnapshot, served map[int32]bool) (r *routes, ignored []*managerv1.InterceptInfo) {
	r = &routes{ports: map[int32]*portRoutes{}, byHost: map[string]*intercept{}}
	for _, info := range snap.GetIntercepts() {
		if info.GetSpec().GetIngest() {
			continue // its owner takes the pod's env and mounts, never its traffic
		}
		cp := info.GetContainerPort()
		if !served[cp] {
			ignored = append(ignored, info)
			continue
		}
		ic := newIntercept(info)
		pr := r.ports[cp]
		if pr == nil {
			pr = &portRoutes{}
			r.ports[cp] = pr
		}
		if len(ic.headers) == 0 {
			// The manager grants a global intercept only to one session
			// and never next to personal ones; should it send two anyway,
			// the one with the smallest id wins, on every agent alike.
			if pr.global == nil || ic.id < pr.global.id {
				pr.global = ic
			}
		} else {
			pr.personal = append(pr.personal, ic)
		}
		r.byHost[ic.host] = ic
	}
	for _, pr := range r.ports {
		sort.Slice(pr.personal, func(i, j int) bool { return moreSpecific(pr.personal[i], pr.personal[j]) })
	}
	return r, ignored
}

func newIntercept(info *managerv1.InterceptInfo) *intercept {
	ic := &intercept{
		id:             info.GetId(),
		name:           info.GetSpec().GetName(),
		containerPort:  info.GetContainerPort(),
		pathPrefix:     info.GetSpec().GetPathPrefix(),
		ownerConnected: info.GetOwnerConnected(),
	}
	if o := info.GetOwner(); o != nil {
		ic.owner = o.GetUser() + "@" + o.GetHost()
	}
	for name, value := range info.GetSpec().GetHeaders() {
		ic.headers = append(ic.headers, headerMatch{name: http.CanonicalHeaderKey(strings.TrimSpace(name)), value: trimOWS(value)})
	}
	sort.Slice(ic.headers, func(i, j int) bool { return ic.headers[i].name < ic.headers[j].name })
	sum := sha256.Sum256([]byte(ic.id))
	ic.host = "i" + hex.EncodeToString(sum[:10]) + ".intercept.tp.invalid"
	return ic
}

// moreSpecific orders personal intercepts: when several match a request,
// the one with more headers wins, then the longer path prefix, then the
// smaller id (so every agent picks the same).
func moreSpecific(a, b *intercept) bool {
	if len(a.headers) != len(b.headers) {
		return len(a.headers) > len(b.headers)
	}
	if len(a.pathPrefix) != len(b.pathPrefix) {
		return len(a.pathPrefix) > len(b.pathPrefix)
	}
	return a.id < b.id
}

// port returns the intercepts of a container port (nil when none).
func (r *routes) port(containerPort int32) *portRoutes {
	return r.ports[containerPort]
}

// route picks the intercept a request goes to, or nil for the app. A
// global intercept takes every request (a connection served as HTTP while
// personal intercepts existed keeps following the latest snapshot).
func (pr *portRoutes) route(req *http.Request) *intercept {
	if pr == nil {
		return nil
	}
	if pr.global != nil {
		return pr.global
	}
	for _, ic := range pr.personal {
		if ic.matches(req) {
			return ic
		}
	}
	return nil
}

// matches: every header of the intercept is in the request with exactly
// its value (any of the request's values for that name; names are
// case-insensitive; leading and trailing whitespace is not part of a value),
// and the path starts with the prefix.
func (ic *intercept) matches(req *http.Request) bool {
	if !strings.HasPrefix(req.URL.Path, ic.pathPrefix) {
		return false
	}
	for _, h := range ic.headers {
		if !headerHas(req, h) {
			return false
		}
	}
	return true
}

func headerHas(req *http.Request, h headerMatch) bool {
	if h.name == "Host" { // net/http moves it out of Header
		return req.Host == h.value
	}
	for _, v := range req.Header[h.name] {
		if trimOWS(v) == h.value {
			return true
		}
	}
	return false
}

// trimOWS removes the whitespace around a header value, which is not part
// of it (RFC 9110, section 5.5): HTTP/1.1 parsing drops it, HTTP/2 carries
// it, and an intercept's value with it would never match over HTTP/1.1.
func trimOWS(v string) string { return strings.Trim(v, " \t") }
