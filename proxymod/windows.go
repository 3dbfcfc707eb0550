package proxymod

import (
	"sync"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/slo"
)

// windowSlots is how many one-second samples a pool keeps: windows of up to
// five minutes, plus the sample they start from.
const windowSlots = 301

// windows samples the route registry's counters for the SLO watcher.
var windows = &sampler{
	routes: routes,
	ticks:  func() <-chan time.Time { return time.NewTicker(time.Second).C },
}

// sampler keeps, per (service, pool), a ring of cumulative snapshots of the
// pool's counters, one per tick, so that the traffic of any recent window is
// the difference of two snapshots. It reads the hot path's atomics; the hot
// path does nothing for it.
type sampler struct {
	routes *routeRegistry
	// ticks is the tick source, called once when the sampler starts: a
	// one-second ticker, a channel in tests.
	ticks func() <-chan time.Time
	once  sync.Once

	mu     sync.Mutex
	taken  uint64 // samples taken so far; sample i sits in slot i%windowSlots
	series map[poolKey]*series
}

type poolKey struct{ service, pool string }

// series is one pool's ring of samples. The slots of samples taken before
// the pool was found stay zero, which is right: a pool found after the first
// sample had no counters before it.
type series struct {
	stats *poolStats
	ring  [windowSlots]sample
}

// sample is a pool's cumulative counts at one tick.
type sample struct {
	requests, errors uint64
	buckets          [len(latencyBounds) + 1]uint64
}

func sampleOf(s *poolStats) sample {
	snap := s.snapshot()
	return sample{
		requests: snap.total(),
		errors:   snap.requests[class5xx] + snap.requests[classProxyError],
		buckets:  snap.buckets,
	}
}

// start takes the first sample, so that windows have a start at once, and
// runs the ticks. The goroutine lives as long as the process, like the
// counters it reads.
func (s *sampler) start() {
	s.sample()
	go s.run(s.ticks())
}

// run takes a sample on every tick until the tick channel closes.
func (s *sampler) run(ticks <-chan time.Time) {
	for range ticks {
		s.sample()
	}
}

// sample records every pool's counters in the next slot.
func (s *sampler) sample() {
	type found struct {
		key   poolKey
		stats *poolStats
	}
	// Pool counters are created under the registry's lock; collect them
	// there and read them outside it.
	var pools []found
	s.routes.mu.Lock()
	for name, r := range *s.routes.byName.Load() {
		for pool, st := range r.stats {
			pools = append(pools, found{poolKey{name, pool}, st})
		}
	}
	s.routes.mu.Unlock()

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.series == nil {
		s.series = make(map[poolKey]*series)
	}
	slot := s.taken % windowSlots
	for _, p := range pools {
		ser := s.series[p.key]
		if ser == nil {
			ser = &series{stats: p.stats}
			s.series[p.key] = ser
		}
		ser.ring[slot] = sampleOf(p.stats)
	}
	s.taken++
}

// window returns a pool's traffic from the sample d ago (counted in ticks,
// rounded up) until now, the current partial second included: it covers
// between d and d+1 s. A longer d than the ring holds gives the oldest
// sample; a pool younger than d gives all of its traffic.
func (s *sampler) window(service, pool string, d time.Duration) slo.Window {
	s.once.Do(s.start)
	s.mu.Lock()
	ser := s.series[poolKey{service, pool}]
	var from sample // a pool born since the last sample starts from zero
	if ser != nil {
		var back uint64 // in ticks, rounded up
		if d > 0 {
			back = uint64((d-1)/time.Second + 1)
		}
		newest := s.taken - 1
		back = min(back, windowSlots-1, newest)
		from = ser.ring[(newest-back)%windowSlots]
	}
	s.mu.Unlock()

	var st *poolStats
	if ser != nil {
		st = ser.stats
	} else {
		// Born since the last sample, or unknown.
		st = s.routes.stats(service, pool)
	}
	w := slo.Window{Buckets: make([]uint64, len(latencyBounds)+1)}
	if st == nil {
		return w
	}
	// Taken after the sample above, so every count is at least its own.
	now := sampleOf(st)
	w.Requests = now.requests - from.requests
	w.Errors = now.errors - from.errors
	for i := range w.Buckets {
		w.Buckets[i] = now.buckets[i] - from.buckets[i]
	}
	return w
}

// stats returns a pool's counters, or nil if the pool never had any.
func (rr *routeRegistry) stats(service, pool string) *poolStats {
	r := rr.lookup(service)
	if r == nil {
		return nil
	}
	rr.mu.Lock()
	defer rr.mu.Unlock()
	return r.stats[pool]
}

// Window is the traffic of one pool of a service on this node over about the
// last d (see sampler.window), for the SLO watcher.
func (dataPlane) Window(service, pool string, d time.Duration) slo.Window {
	return windows.window(service, pool, d)
}
