package proxymod

import (
	"iter"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cbproxy/cbproxy/controlplane"
	"github.com/cbproxy/cbproxy/controlplane/adminapi"
	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/cbproxy/cbproxy/healthcheck"
)

// routes is the process's registry of routes, one per service. It lives
// outside any Caddy config so that tables and counters survive reloads.
var routes = newRouteRegistry()

// route is the data plane's long-lived object for one service: handlers keep
// a pointer to it, the table inside is swapped when the service changes.
type route struct {
	name  string
	table atomic.Pointer[RoutingTable]

	// Only the registry touches the fields below, under its lock.
	//
	// holders counts the handlers that keep a pointer to the route (hold,
	// release). A route nobody holds leaves the registry when its service
	// is deleted; one still held stays, with its figures reset.
	holders int
	built   struct {
		service *state.Service
		deleted bool
		// healthGen is the registry's healthGen[service] the table saw.
		healthGen uint64
	}
	// stats counts the requests of each pool, by pool name, kept while the
	// service lives (a pool removed from it keeps its counts); a delete of
	// the service resets them, so that a name used again starts from zero.
	stats map[string]*poolStats
	// overridden counts the override-header requests of each pool, kept
	// like stats.
	overridden map[string]*poolStats
	backends   map[string]*backend // by address, those of the current table
	none       *poolStats

	// streams are the service's open long-lived connections.
	streams streamSet

	// histograms counts the provisioned handlers of the service that ask
	// for its latency histograms on /metrics (latency_histogram): a
	// reload provisions the new config's handlers before it cleans up the
	// old ones, so the series never drop out across a reload.
	histograms atomic.Int32
	// backendMetrics counts them for the per-backend series
	// (backend_metrics) likewise.
	backendMetrics atomic.Int32
}

// routeRegistry holds the routes. Readers (the admin API, the metrics
// collector) take the map without a lock; writers change all under mu and
// publish a copy of it.
type routeRegistry struct {
	mu     sync.Mutex
	byName atomic.Pointer[map[string]*route]
	// all is every route, what byName shows once published. Before the
	// first view, routes that handlers hold are published only with that
	// view: the 1,000 handlers of a config each copied the map to add
	// their route (a quarter of a million entries copied), and before a
	// view no route serves or counts anything a reader would show.
	all         map[string]*route
	unpublished bool
	view        *state.View // the last view applied
	// health is the node's view of backend health (nil before a node runs:
	// backends then count as the contract's defaults say). healthGen counts
	// health changes per service, so a change rebuilds only that table.
	health    atomic.Pointer[healthcheck.Checker]
	healthGen map[string]uint64
	// seal seals and opens sticky cookies with the node's sticky key (nil
	// before a node runs: no cookie is given or honoured).
	seal atomic.Pointer[cookieSeal]
}

// useStickyKey sets the key sticky cookies are sealed with.
func (rr *routeRegistry) useStickyKey(key []byte) error {
	seal, err := newCookieSeal(key)
	if err != nil {
		return err
	}
	rr.seal.Store(seal)
	return nil
}

func newRouteRegistry() *routeRegistry {
	rr := &routeRegistry{healthGen: map[string]uint64{}, all: map[string]*route{}}
	rr.byName.Store(&map[string]*route{})
	return rr
}

// lookup returns the route of a service, or nil.
func (rr *routeRegistry) lookup(service string) *route {
	return (*rr.byName.Load())[service]
}

// hold returns the route of a service, creating it (with a table built from
// the last view) if needed, and counts the caller as one of its holders
// until it calls release: a held route stays in the registry even while its
// service is deleted, so the holder's pointer stays the service's route.
func (rr *routeRegistry) hold(service string) *route {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	r := rr.getLocked(service)
	r.holders++
	return r
}

// release undoes one hold. The last release of a deleted service's route
// takes it out of the registry.
func (rr *routeRegistry) release(r *route) {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	r.holders--
	rr.dropDeletedLocked()
}

func (rr *routeRegistry) getLocked(service string) *route {
	if r := rr.all[service]; r != nil {
		return r
	}
	r := newRoute(service)
	// Publish the route only with a table: readers never see a nil one.
	rr.rebuildLocked(r)
	rr.all[service] = r
	rr.unpublished = true
	if rr.view != nil {
		rr.publishLocked()
	}
	return r
}

// publishLocked shows readers the routes as they are now.
func (rr *routeRegistry) publishLocked() {
	next := maps.Clone(rr.all)
	rr.byName.Store(&next)
	rr.unpublished = false
}

// newRoute returns a route with no table yet.
func newRoute(service string) *route {
	return &route{
		name:       service,
		stats:      make(map[string]*poolStats),
		overridden: make(map[string]*poolStats),
		backends:   make(map[string]*backend),
		none:       newPoolStats(),
	}
}

// apply brings every route up to date with a new view: it is what the app
// subscribes to node.OnChange. Every service of the view gets a route (so
// the admin API and metrics see all of them); a table is rebuilt only when
// its service changed. The routes of deleted services that no handler holds
// leave the registry, so that /metrics and the SLO windows forget them.
//
// When the view lists what it changed from the view this registry applied
// last (state.View.Changes), only those services are visited: the work is
// in proportion to the change, not to the number of services (a walk over
// 1,000 routes cost twenty times the rebuild of the changed table).
// Otherwise (the first view, a restored one, views missed across a reload)
// every service of the view and every route is.
func (rr *routeRegistry) apply(v *state.View) {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	last := rr.view
	rr.view = v
	if ch := v.Changes; ch != nil && last != nil && last.Index == ch.Since {
		rr.updateLocked(slices.Values(ch.Services))
		return
	}
	rr.updateLocked(func(yield func(string) bool) {
		for name := range v.Services {
			if !yield(name) {
				return
			}
		}
		for name := range rr.all {
			if v.Services[name] == nil && !yield(name) {
				return
			}
		}
	})
}

// updateLocked brings the routes of names (each once) up to date with
// rr.view: a service without a route gets one, a changed one its table,
// and the route of a deleted service that nobody holds leaves the
// registry. The routes are published once, if any came or went.
func (rr *routeRegistry) updateLocked(names iter.Seq[string]) {
	for name := range names {
		r := rr.all[name]
		switch {
		case r == nil && rr.view.Services[name] == nil:
		case r == nil:
			r = newRoute(name)
			// Publish the route only with a table: readers never see a nil one.
			rr.rebuildLocked(r)
			rr.all[name] = r
			rr.unpublished = true
		default:
			rr.rebuildLocked(r)
			if r.holders == 0 && rr.view.Deleted[name] != 0 {
				delete(rr.all, name)
				delete(rr.healthGen, name)
				rr.unpublished = true
			}
		}
	}
	if rr.unpublished {
		rr.publishLocked()
	}
}

// dropDeletedLocked takes the routes of deleted services that nobody holds
// out of the registry. Streams still open on them close on their timers.
func (rr *routeRegistry) dropDeletedLocked() {
	if rr.view == nil {
		return
	}
	for name, r := range rr.all {
		if r.holders > 0 || rr.view.Deleted[name] == 0 {
			continue
		}
		delete(rr.all, name)
		delete(rr.healthGen, name)
		rr.unpublished = true
	}
	if rr.unpublished {
		rr.publishLocked()
	}
}

// rebuildLocked rebuilds r's table if its service differs from the one the
// table was built from. Services are immutable once published, so pointer
// equality means no change.
func (rr *routeRegistry) rebuildLocked(r *route) {
	var svc *state.Service
	var deleted bool
	if rr.view != nil {
		svc = rr.view.Services[r.name]
		deleted = rr.view.Deleted[r.name] != 0
	}
	prev := r.table.Load()
	gen := rr.healthGen[r.name]
	if prev != nil && r.built.service == svc && r.built.deleted == deleted && r.built.healthGen == gen {
		return
	}
	if deleted && !r.built.deleted {
		r.forgetFigures()
	}
	r.built.service, r.built.deleted, r.built.healthGen = svc, deleted, gen
	// Streams first: a stream that registers after this line but chose its
	// pool from the old table is judged against the new service.
	r.streams.serviceChanged(svc)
	r.table.Store(r.buildTable(svc, deleted, prev, rr.backendHealth))
}

// forgetFigures resets the counters of a deleted service: a service created
// later under the same name starts from zero, and /metrics lists no pool
// of the deleted one. The SLO sampler drops its samples of the old counters
// at its next tick (it follows the counters' identity).
func (r *route) forgetFigures() {
	r.stats = make(map[string]*poolStats)
	r.overridden = make(map[string]*poolStats)
	r.none = newPoolStats()
	r.streams.forgetClosed()
}

// poolStats returns the counters of one pool, its judged ones and those of
// its override-header requests, creating them once: they outlive tables so
// that counts never reset.
func (r *route) poolStats(pool string) (judged, overridden *poolStats) {
	if r.stats[pool] == nil {
		r.stats[pool], r.overridden[pool] = newPoolStats(), newPoolStats()
	}
	return r.stats[pool], r.overridden[pool]
}

func isTLS(address string) bool { return strings.HasPrefix(address, "https://") }

// useHealth plugs the node's health checker in: from now on tables follow
// it, and a health change rebuilds the table of its service.
func (rr *routeRegistry) useHealth(h *healthcheck.Checker) (cancel func()) {
	rr.health.Store(h)
	cancel = h.OnChange(rr.healthChanged)
	rr.healthChanged("")
	return cancel
}

// healthChanged rebuilds the table of service ("" = every service).
func (rr *routeRegistry) healthChanged(service string) {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	for name, r := range rr.all {
		if service == "" || name == service {
			rr.healthGen[name]++
			rr.rebuildLocked(r)
		}
	}
}

// backendHealth is the one place that decides a backend's health on this
// node for routing. Without a checker (no node yet), backends of a service
// without a health check count as healthy and the others as unknown.
func (rr *routeRegistry) backendHealth(svc *state.Service, pool, address string) healthcheck.Status {
	if h := rr.health.Load(); h != nil {
		return h.Get(svc.Name, pool, address).Status
	}
	if svc.Health == nil {
		return healthcheck.StatusHealthy
	}
	return healthcheck.StatusUnknown
}

// takesTraffic reports whether a backend in the given health receives new
// requests: healthy, degraded and unknown ones do (docs/caddyfile.md "Routing
// around unhealthy backends").
func takesTraffic(health healthcheck.Status) bool { return health != healthcheck.StatusUnhealthy }

// dataPlane answers the control plane's questions about backends and
// services from the routes, for one config: declared lists the services its
// handlers route, in name order.
type dataPlane struct {
	declared []string
}

// Declared implements controlplane.DataPlane.
func (dp dataPlane) Declared() []string { return dp.declared }

// Routes implements controlplane.DataPlane: the service's route holds a table
// built from the replicated service, so the handler routes its requests
// instead of answering 503 "not in the replicated state yet".
func (dataPlane) Routes(service string) bool {
	r := routes.lookup(service)
	return r != nil && r.table.Load().service != nil
}

// backend returns the route of a service and its record of a pool's backend,
// or nil.
func (dataPlane) backend(service, pool, address string) (*route, *backend) {
	r := routes.lookup(service)
	if r == nil {
		return nil, nil
	}
	t := r.table.Load()
	if i := t.pool(pool); i >= 0 {
		for _, b := range t.pools[i].backends {
			if b.address == address {
				return r, b.backend
			}
		}
	}
	return nil, nil
}

// InFlight implements controlplane.DataPlane: the ordinary requests open to
// the backend. Caddy's count includes long-lived connections for their
// lifetime; they are taken out, so that a drained backend reaches 0 once
// its ordinary requests are done.
func (dp dataPlane) InFlight(service, pool, address string) int64 {
	r, b := dp.backend(service, pool, address)
	if b == nil {
		return 0
	}
	// The two counts are read apart and a stream leaves them a moment apart.
	return max(0, b.requests()-r.streams.longLived(address))
}

// LongLived implements controlplane.DataPlane: the upgraded connections and
// event streams open to the backend.
func (dp dataPlane) LongLived(service, pool, address string) int64 {
	r, b := dp.backend(service, pool, address)
	if b == nil {
		return 0
	}
	return r.streams.longLived(address)
}

// ServiceLoads implements adminapi.ServiceLoads: InFlight and LongLived of
// every backend of the service's table, pools by name and backends in the
// service's order, with one look-up of the route and one lock of its
// streams.
func (dataPlane) ServiceLoads(service string, dst []adminapi.BackendLoad) []adminapi.BackendLoad {
	r := routes.lookup(service)
	if r == nil {
		return dst
	}
	t := r.table.Load()
	r.streams.mu.Lock()
	defer r.streams.mu.Unlock()
	// Most services never had a stream: no look-up per backend then.
	streams := r.streams.byAddress
	for i := range t.pools {
		p := &t.pools[i]
		for _, b := range p.backends {
			var long int64
			if len(streams) > 0 {
				long = streams[b.address]
			}
			dst = append(dst, adminapi.BackendLoad{Pool: p.name, Address: b.address, InFlight: max(0, b.requests()-long), LongLived: long})
		}
	}
	return dst
}

// Interface guards
var (
	_ controlplane.DataPlane = dataPlane{}
	_ adminapi.ServiceLoads  = dataPlane{}
)
