package proxymod

import (
	"maps"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cbproxy/cbproxy/controlplane"
	"github.com/cbproxy/cbproxy/controlplane/state"
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
	built struct {
		service *state.Service
		deleted bool
	}
	stats    map[string]*poolStats // by pool name, kept for good
	backends map[string]*backend   // by address, those of the current table
	none     *poolStats
}

// routeRegistry holds the routes. Readers (the admin API, the metrics
// collector) take the map without a lock; writers copy it under mu.
type routeRegistry struct {
	mu     sync.Mutex
	byName atomic.Pointer[map[string]*route]
	view   *state.View // the last view applied
}

func newRouteRegistry() *routeRegistry {
	rr := new(routeRegistry)
	rr.byName.Store(&map[string]*route{})
	return rr
}

// lookup returns the route of a service, or nil.
func (rr *routeRegistry) lookup(service string) *route {
	return (*rr.byName.Load())[service]
}

// get returns the route of a service, creating it (with a table built from
// the last view) if needed.
func (rr *routeRegistry) get(service string) *route {
	if r := rr.lookup(service); r != nil {
		return r
	}
	rr.mu.Lock()
	defer rr.mu.Unlock()
	return rr.getLocked(service)
}

func (rr *routeRegistry) getLocked(service string) *route {
	old := *rr.byName.Load()
	if r := old[service]; r != nil {
		return r
	}
	r := &route{
		name:     service,
		stats:    make(map[string]*poolStats),
		backends: make(map[string]*backend),
		none:     new(poolStats),
	}
	// Publish the route only with a table: readers never see a nil one.
	rr.rebuildLocked(r)
	next := maps.Clone(old)
	next[service] = r
	rr.byName.Store(&next)
	return r
}

// apply brings every route up to date with a new view: it is what the app
// subscribes to node.OnChange. Every service of the view gets a route (so
// the admin API and metrics see all of them); a table is rebuilt only when
// its service changed.
func (rr *routeRegistry) apply(v *state.View) {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	rr.view = v
	for name := range v.Services {
		rr.getLocked(name)
	}
	for _, r := range *rr.byName.Load() {
		rr.rebuildLocked(r)
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
	if prev != nil && r.built.service == svc && r.built.deleted == deleted {
		return
	}
	r.built.service, r.built.deleted = svc, deleted
	r.table.Store(r.buildTable(svc, deleted, prev))
}

// poolStats returns the counters of one pool, creating them once: they
// outlive tables so that counts never reset.
func (r *route) poolStats(pool string) *poolStats {
	s := r.stats[pool]
	if s == nil {
		s = new(poolStats)
		r.stats[pool] = s
	}
	return s
}

func isTLS(address string) bool { return strings.HasPrefix(address, "https://") }

// Backend health as this node sees it (CONTRACT §4).
const (
	healthHealthy   = "healthy"
	healthUnhealthy = "unhealthy"
	healthUnknown   = "unknown"
)

// backendHealth is the one place that decides a backend's health on this
// node; the table builder and BackendStatus both ask it. Without a health
// check only passive checks run and backends count as healthy (CONTRACT §3).
// With one, the answer is "unknown" until active checks (a later issue) plug
// their view in here.
func backendHealth(svc *state.Service, pool, address string) string {
	if svc.Health == nil {
		return healthHealthy
	}
	return healthUnknown
}

// takesTraffic reports whether a backend in the given health receives new
// requests: healthy, degraded and unknown ones do (CONTRACT §4).
func takesTraffic(health string) bool { return health != healthUnhealthy }

// dataPlane answers the admin API's questions about backends from the routes.
type dataPlane struct{}

// BackendStatus implements controlplane.DataPlane.
func (dataPlane) BackendStatus(service, pool, address string) (health string, inFlight int64) {
	r := routes.lookup(service)
	if r == nil {
		return healthUnknown, 0
	}
	t := r.table.Load()
	if t.service == nil {
		return healthUnknown, 0
	}
	health = backendHealth(t.service, pool, address)
	if i := t.pool(pool); i >= 0 {
		for _, b := range t.pools[i].backends {
			if b.address == address {
				return health, b.inFlight()
			}
		}
	}
	return health, 0
}

// Interface guards
var _ controlplane.DataPlane = dataPlane{}
