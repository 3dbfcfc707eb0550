package proxymod

import (
	"encoding/binary"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/cbproxy/cbproxy/healthcheck"
)

// slotCount is the length of the exact split's cycle and the number of sticky
// buckets: one per basis point, so every weight maps to whole slots.
const slotCount = int(state.Total)

// RoutingTable is the data plane's view of one service: everything a request
// needs to choose a pool. It is built off the hot path, from one replicated
// service and this node's view of backend health, and never changes after:
// requests load it with one atomic read.
type RoutingTable struct {
	// service is the replicated service the table was built from; nil when
	// the service is not (or no longer) in the replicated state.
	service *state.Service

	// pools in name order; the order fixes slot indexes and sticky ranges.
	pools []poolRoute

	// split is nil when no pool is left to take traffic: every request is
	// then refused with refusal.
	split   *exactSplit
	refusal []byte

	// owners is the exact split of the replicated weights, built only while
	// a pool with a share cannot take traffic (no available backend). The
	// request dealt slot k of split would have gone to owners' slot k had
	// every pool been up; when that pool is down the request counts against
	// it as displaced, so that a pool owed traffic it cannot carry fails its
	// SLO instead of falling silent. With no split (no pool left), owners
	// deals the refused requests to the pools that owed them.
	owners *exactSplit

	// none counts the requests refused because no pool was left.
	none *poolStats
}

// poolRoute is one pool of a RoutingTable.
type poolRoute struct {
	service, name string
	// source is the replicated service the table was built from.
	source *state.Service
	// weight is the replicated share, effective the share this node routes
	// after giving the share of pools without available backends to the
	// others; both in basis points.
	weight, effective state.Weight
	// Sticky buckets [lo, hi) belong to this pool; [ownLo, ownHi) are the
	// buckets its replicated weight gives it (the same unless some pool is
	// down).
	lo, hi       int
	ownLo, ownHi int

	// backends lists every backend of the pool (draining ones included, their
	// in-flight requests still count); available those that take new ones.
	backends  []poolBackend
	available []*backend
	tls       bool
	// robin is the fast path's round-robin cursor over available.
	robin atomic.Uint32

	// stats are the pool's figures, judged by the SLO; overridden counts
	// the requests sent to the pool with the override header, which are
	// tests, not its share: they show in the metrics but not in the SLO.
	stats, overridden *poolStats
	// slowAbort is the service's rollback P95: a client that gave up after
	// waiting that long on a backend of the pool saw a slow backend.
	slowAbort time.Duration
	// Precomputed so that the hot path does not allocate: the value of the
	// cbproxy_pool variable and of the X-Cbproxy-Pool header.
	nameVar    any
	nameHeader []string
}

// poolBackend is a backend as listed in a pool.
type poolBackend struct {
	*backend
	draining bool
}

// backend is one backend address of a service. It outlives table rebuilds so
// that what it learned from Caddy stays valid while a drain or an unrelated
// change rebuilds the table.
type backend struct {
	address string // as in the replicated state: host:port or https://host:port
	dial    string // host:port
	// host is Caddy's record of the address, learned when the address is
	// first selected; its NumRequests counts the backend's requests in
	// flight and its long-lived connections.
	host atomic.Pointer[reverseproxy.Host]
	// dialing is set while a passive check dials the backend after a failure.
	dialing atomic.Bool
	// inFlight counts the fast path's requests open to the backend
	// (Caddy's Host counts the others); conns are its idle connections.
	inFlight atomic.Int64
	conns    connPool
	// stats are the backend's own figures, made by its first request of a
	// handler with backend_metrics: nil for the backends of every other
	// service, which spend no memory on them.
	stats atomic.Pointer[poolStats]
}

// backendStats returns b's figures, making them on first use.
func (b *backend) backendStats() *poolStats {
	if s := b.stats.Load(); s != nil {
		return s
	}
	b.stats.CompareAndSwap(nil, newPoolStats())
	return b.stats.Load()
}

// requests returns the number of requests this node has open to b, long-lived
// connections included.
func (b *backend) requests() int64 {
	n := b.inFlight.Load()
	if h := b.host.Load(); h != nil {
		n += int64(h.NumRequests())
	}
	return n
}

// exactSplit deals the requests of the weighted split: request k goes to
// slots[k % slotCount]. The slots hold each pool exactly its effective weight
// times, spread by smooth weighted round robin. They depend on the weights
// alone and never change, so every split of the same weights shares one
// copy (splitCycles); the cursor is the split's own.
type exactSplit struct {
	weights []state.Weight // effective weights per pool it was built for
	slots   *splitCycle
	cursor  atomic.Uint64
}

// splitCycle is one laid-out cycle of an exact split: the pool of each slot.
type splitCycle [slotCount]uint16

// next returns the pool of the next request of the split.
func (s *exactSplit) next() int {
	return int(s.slots[s.take()])
}

// take returns the slot of the next request of the split.
func (s *exactSplit) take() int {
	return int((s.cursor.Add(1) - 1) % uint64(slotCount))
}

// newExactSplit returns a split of the given weights with its cursor at 0.
func newExactSplit(weights []state.Weight) *exactSplit {
	return &exactSplit{weights: weights, slots: splitCycles.get(weights)}
}

// splitCycles holds the cycle of every weight vector some split uses, so
// that 1,000 services with the same weights hold one 20 kB cycle and lay it
// out once. Entries are weak: a cycle no split uses any more is collected,
// and its entry goes with it.
var splitCycles = &cycleCache{byWeights: make(map[string]weak.Pointer[splitCycle])}

type cycleCache struct {
	mu        sync.Mutex
	byWeights map[string]weak.Pointer[splitCycle]
}

// get returns the cycle of weights, laying it out if no split holds one.
func (c *cycleCache) get(weights []state.Weight) *splitCycle {
	key := make([]byte, 0, 2*len(weights))
	for _, w := range weights {
		key = binary.LittleEndian.AppendUint16(key, uint16(w))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if cycle := c.byWeights[string(key)].Value(); cycle != nil {
		return cycle
	}
	cycle := layOutCycle(weights)
	wp := weak.Make(cycle)
	c.byWeights[string(key)] = wp
	runtime.AddCleanup(cycle, func(key string) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.byWeights[key] == wp {
			delete(c.byWeights, key)
		}
	}, string(key))
	return cycle
}

// layOutCycle lays out the slots with smooth weighted round robin (as
// nginx does): each step, every pool gains its weight and the pool with the
// most credit (the first on ties) takes the slot and pays the total. Over
// any prefix a pool's count stays within a request or two of its share.
func layOutCycle(weights []state.Weight) *splitCycle {
	cycle := new(splitCycle)
	credit := make([]int, len(weights))
	for k := range cycle {
		best := -1
		for i, w := range weights {
			if w == 0 {
				continue
			}
			credit[i] += int(w)
			if best < 0 || credit[i] > credit[best] {
				best = i
			}
		}
		credit[best] -= slotCount
		cycle[k] = uint16(best)
	}
	return cycle
}

// effectiveWeights returns the shares this node routes: pools that cannot
// take traffic get 0 and their share goes to the other pools with a share,
// in proportion to those shares, rounded by largest remainder so that the
// sum stays exactly state.Total. It returns nil when no pool with a share can
// take traffic.
func effectiveWeights(weights []state.Weight, up []bool) []state.Weight {
	var receiving int64
	for i, w := range weights {
		if w > 0 && up[i] {
			receiving += int64(w)
		}
	}
	if receiving == 0 {
		return nil
	}
	eff := make([]state.Weight, len(weights))
	rem := make([]int64, len(weights))
	left := int64(state.Total)
	for i, w := range weights {
		if w > 0 && up[i] {
			scaled := int64(w) * int64(state.Total)
			eff[i] = state.Weight(scaled / receiving)
			rem[i] = scaled % receiving
			left -= int64(eff[i])
		}
	}
	// Hand out the basis points lost to rounding: largest remainder first,
	// the earlier pool on ties, so every node computes the same shares.
	order := make([]int, 0, len(weights))
	for i := range weights {
		if rem[i] > 0 {
			order = append(order, i)
		}
	}
	slices.SortStableFunc(order, func(a, b int) int { return int(rem[b] - rem[a]) })
	for _, i := range order[:left] {
		eff[i]++
	}
	return eff
}

// buildTable builds the table of one route from the replicated service svc
// (nil when the service is unknown; deleted tells why). prev is the route's
// current table: when the effective weights did not change, the new table
// keeps its split and cursor, so a drain or a change of backends does not
// restart the split's cycle.
func (rt *route) buildTable(svc *state.Service, deleted bool, prev *RoutingTable, health func(svc *state.Service, pool, address string) healthcheck.Status) *RoutingTable {
	t := &RoutingTable{service: svc, none: rt.none}
	// Backend records carry over to the new table; those of addresses the
	// service no longer has are dropped.
	kept := make(map[string]*backend)
	defer func() {
		for address, b := range rt.backends {
			if kept[address] == nil {
				b.conns.shut()
			}
		}
		rt.backends = kept
	}()
	if svc == nil {
		if deleted {
			t.refusal = fmt.Appendf(nil, "cbproxy: service %q was deleted through the admin API\n", rt.name)
		} else {
			t.refusal = fmt.Appendf(nil, "cbproxy: service %q is not in the replicated state yet: seed it with pools in the Caddyfile or create it with the admin API\n", rt.name)
		}
		return t
	}
	names := svc.PoolNames()
	if len(names) > math.MaxUint16 {
		t.refusal = fmt.Appendf(nil, "cbproxy: service %q has %d pools; at most %d can be routed\n", svc.Name, len(names), math.MaxUint16)
		return t
	}
	t.pools = make([]poolRoute, len(names))
	weights := make([]state.Weight, len(names))
	up := make([]bool, len(names))
	for i, name := range names {
		p := &t.pools[i]
		p.service, p.name, p.source = svc.Name, name, svc
		p.weight = svc.Weights[name]
		p.stats, p.overridden = rt.poolStats(name)
		p.slowAbort = time.Duration(svc.SLO.Rollback.P95ms * float64(time.Millisecond))
		p.nameVar = name
		p.nameHeader = []string{name}
		for _, b := range svc.Pools[name].Backends {
			// One backend per address of the service, in every pool that
			// lists it, on the first build too.
			be := kept[b.Address]
			if be == nil {
				be = rt.backends[b.Address]
			}
			if be == nil {
				be = &backend{address: b.Address, dial: strings.TrimPrefix(b.Address, "https://")}
			}
			kept[b.Address] = be
			p.backends = append(p.backends, poolBackend{backend: be, draining: b.Draining})
			p.tls = isTLS(b.Address)
			if !b.Draining && takesTraffic(health(svc, name, b.Address)) {
				p.available = append(p.available, be)
			}
		}
		weights[i] = p.weight
		up[i] = len(p.available) > 0
	}
	samePools := prev != nil && slices.Equal(prev.poolNames(), names)
	own, owed := 0, false
	for i := range t.pools {
		p := &t.pools[i]
		p.ownLo, p.ownHi = own, own+int(p.weight)
		own = p.ownHi
		owed = owed || p.weight > 0 && !up[i]
	}
	if owed {
		// Kept across rebuilds like the split, so that the refused requests
		// of a service with no pool left keep their proportions.
		if samePools && prev.owners != nil && slices.Equal(prev.owners.weights, weights) {
			t.owners = prev.owners
		} else {
			t.owners = newExactSplit(weights)
		}
	}
	eff := effectiveWeights(weights, up)
	if eff == nil {
		t.refusal = fmt.Appendf(nil, "cbproxy: service %q has no pool to route to: every pool with a weight above 0 has no backend that is up and not drained\n", svc.Name)
		return t
	}
	lo := 0
	for i := range t.pools {
		p := &t.pools[i]
		p.effective = eff[i]
		p.lo, p.hi = lo, lo+int(eff[i])
		lo = p.hi
	}
	if samePools && prev.split != nil && slices.Equal(prev.split.weights, eff) {
		t.split = prev.split
	} else {
		t.split = newExactSplit(eff)
	}
	return t
}

// nextFromSplit deals the next request of the exact split and, while a pool
// with a share is down, counts the request against the pool that owed it.
func (t *RoutingTable) nextFromSplit() int {
	k := t.split.take()
	if t.owners != nil {
		t.owed(int(t.owners.slots[k]))
	}
	return int(t.split.slots[k])
}

// owed notes that pool i was owed a request: if it cannot take traffic, the
// request is displaced.
func (t *RoutingTable) owed(i int) {
	if p := &t.pools[i]; len(p.available) == 0 {
		p.stats.displace()
	}
}

// owedBucket notes that the pool whose replicated share holds a sticky
// bucket was owed the request.
func (t *RoutingTable) owedBucket(bucket int) {
	for i := range t.pools {
		if p := &t.pools[i]; bucket >= p.ownLo && bucket < p.ownHi {
			t.owed(i)
			return
		}
	}
}

func (t *RoutingTable) poolNames() []string {
	names := make([]string, len(t.pools))
	for i := range t.pools {
		names[i] = t.pools[i].name
	}
	return names
}

// poolForBucket returns the pool whose sticky range holds bucket. The ranges
// cover [0, slotCount) whenever the table has a split.
func (t *RoutingTable) poolForBucket(bucket int) int {
	for i := range t.pools {
		if bucket < t.pools[i].hi {
			return i
		}
	}
	return len(t.pools) - 1
}

// pool returns the index of the pool with the given name, or -1.
func (t *RoutingTable) pool(name string) int {
	for i := range t.pools {
		if t.pools[i].name == name {
			return i
		}
	}
	return -1
}
