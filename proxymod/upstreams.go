package proxymod

import (
	"maps"
	"net/http"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// poolVarKey is the request variable that tells the inner proxy's upstream
// source and selector which pool the handler chose: a *poolRoute, or a
// *retryState once a retry has started.
const poolVarKey = "cbproxy.route"

// retryState replaces the chosen pool in the request's variables when the
// first retry starts; it remembers the backends that failed for this request.
type retryState struct {
	pool  *poolRoute
	tried []string // dial addresses
}

// requestPool returns the pool chosen for r and the dial addresses that
// already failed for it.
func requestPool(r *http.Request) (*poolRoute, []string) {
	switch v := caddyhttp.GetVar(r.Context(), poolVarKey).(type) {
	case *poolRoute:
		return v, nil
	case *retryState:
		return v.pool, v.tried
	}
	return nil, nil
}

// poolUpstreams is the inner proxy's upstream source: the available backends
// of the pool the handler chose. Backends live in the replicated state, not
// in the Caddy config, so a static upstream list cannot follow them; a
// dynamic source reads them from the routing table on every attempt.
type poolUpstreams struct{}

// GetUpstreams implements reverseproxy.UpstreamSource. Caddy writes to the
// upstreams it gets (their Host, health policy), so every call returns new
// ones.
func (poolUpstreams) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	p, tried := requestPool(r)
	if p == nil {
		return nil, nil
	}
	ups := make([]*reverseproxy.Upstream, 0, len(p.available))
	for _, b := range p.available {
		if !slices.Contains(tried, b.dial) {
			ups = append(ups, &reverseproxy.Upstream{Dial: b.dial})
		}
	}
	return ups, nil
}

// ResetCache implements reverseproxy.CachingUpstreamSource. Caddy calls it
// before each retry; it is where we learn which backend just failed (the
// proxy's upstream.hostport placeholder) so that the retry goes to another
// backend of the same pool, as nginx's proxy_next_upstream does.
func (poolUpstreams) ResetCache(r *http.Request) error {
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return nil
	}
	failed, _ := repl.GetString("http.reverse_proxy.upstream.hostport")
	switch v := caddyhttp.GetVar(r.Context(), poolVarKey).(type) {
	case *poolRoute:
		caddyhttp.SetVar(r.Context(), poolVarKey, &retryState{pool: v, tried: []string{failed}})
		v.reportFailure(failed, 0)
	case *retryState:
		if !slices.Contains(v.tried, failed) {
			v.tried = append(v.tried, failed)
			v.pool.reportFailure(failed, 0)
		}
	}
	return nil
}

// poolSelector balances requests inside the chosen pool with the configured
// policy, and tells each backend which Caddy Host tracks it (the Host's
// request count is the backend's in-flight figure in the admin API).
//
// Each pool gets its own copy of the policy: policies keep state (the
// round_robin cursor), and one instance shared by pools that take turns
// would starve backends; with a 50/50 split the two pools alternate, and a
// shared round-robin cursor would give one pool only its even positions.
type poolSelector struct {
	// proto is provisioned but never selects: it stays pristine to be copied.
	proto  reverseproxy.Selector
	mu     sync.Mutex
	byPool atomic.Pointer[map[string]reverseproxy.Selector]
}

func newPoolSelector(proto reverseproxy.Selector) *poolSelector {
	s := &poolSelector{proto: proto}
	s.byPool.Store(&map[string]reverseproxy.Selector{})
	return s
}

// Select implements reverseproxy.Selector.
func (s *poolSelector) Select(ups reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter) *reverseproxy.Upstream {
	p, _ := requestPool(r)
	if p == nil {
		return nil
	}
	u := s.forPool(p.name).Select(ups, r, w)
	if u != nil {
		if b := p.learnHost(u); b != nil {
			sentTo(w, b)
		}
	}
	return u
}

// forPool returns the pool's own copy of the policy, making it on first use.
func (s *poolSelector) forPool(pool string) reverseproxy.Selector {
	if sel, ok := (*s.byPool.Load())[pool]; ok {
		return sel
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if sel, ok := (*s.byPool.Load())[pool]; ok {
		return sel
	}
	next := maps.Clone(*s.byPool.Load())
	sel := copySelector(s.proto)
	next[pool] = sel
	s.byPool.Store(&next)
	return sel
}

// copySelector returns a shallow copy of a provisioned selection policy. A
// copy rather than a second provisioning because provisioning needs the
// config's context, which may not load modules once requests are served.
func copySelector(sel reverseproxy.Selector) reverseproxy.Selector {
	v := reflect.ValueOf(sel)
	if v.Kind() != reflect.Pointer || v.IsNil() {
		return sel
	}
	c := reflect.New(v.Elem().Type())
	c.Elem().Set(v.Elem())
	return c.Interface().(reverseproxy.Selector)
}

// learnHost records which Caddy Host tracks the selected backend. Hosts of
// dynamic upstreams are evicted after an hour unseen and made anew, so the
// pointer is compared on every selection, not stored once.
// It returns the selected backend.
func (p *poolRoute) learnHost(u *reverseproxy.Upstream) *backend {
	for _, b := range p.available {
		if b.dial == u.Dial {
			if b.host.Load() != u.Host {
				b.host.Store(u.Host)
			}
			return b
		}
	}
	return nil
}

// Interface guards
var (
	_ reverseproxy.CachingUpstreamSource = poolUpstreams{}
	_ reverseproxy.Selector              = (*poolSelector)(nil)
)
