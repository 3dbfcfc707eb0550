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
	// clock reads the time samples are taken and windows asked for, with mu
	// held; nil is time.Now (tests set their own).
	clock func() time.Time
	once  sync.Once

	mu     sync.Mutex
	taken  uint64                 // samples taken so far; sample i sits in slot i%windowSlots
	times  [windowSlots]time.Time // when each slot's sample was taken
	series map[poolKey]*series
}

func (s *sampler) now() time.Time {
	if s.clock != nil {
		return s.clock()
	}
	return time.Now()
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

// sampleOf reads a pool's counters as the SLO judges them: a displaced
// request (owed to the pool while it could take none) is a failed request of
// the pool, with no latency; a client abort is in no figure unless it had
// waited on the backend past the rollback P95, and then it is a slow request,
// not a failed one.
func sampleOf(s *poolStats) sample {
	snap := s.snapshot()
	return sample{
		requests: snap.total() - snap.requests[classClientAbort] + snap.slowAborts + snap.displaced,
		errors:   snap.requests[class5xx] + snap.requests[classProxyError] + snap.displaced,
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
	s.times[slot] = s.now()
	seen := make(map[poolKey]bool, len(pools))
	for _, p := range pools {
		seen[p.key] = true
		ser := s.series[p.key]
		if ser == nil || ser.stats != p.stats {
			// New, or its counters were reset (the service was deleted
			// and created again): the old samples belong to other counters.
			ser = &series{stats: p.stats}
			s.series[p.key] = ser
		}
		ser.ring[slot] = sampleOf(p.stats)
	}
	// The pools of deleted services are gone from the registry: so are
	// their samples.
	for key := range s.series {
		if !seen[key] {
			delete(s.series, key)
		}
	}
	s.taken++
}

// window returns a pool's traffic from the oldest sample taken at most d ago
// until now, the current partial second included: it covers between d-1 s
// and d, never more. A window must not reach back before what it judges
// began — the errors of the incident a rollout was just rolled back for are
// not the next rollout's — so it errs short. A window shorter than the time
// since the last sample is empty; a longer d than the ring holds gives the
// oldest sample; a pool younger than d gives all of its traffic.
func (s *sampler) window(service, pool string, d time.Duration) slo.Window {
	s.once.Do(s.start)
	// The pool's counters now: samples of other counters (a deleted
	// service's, not dropped yet) do not count.
	st := s.routes.stats(service, pool)
	s.mu.Lock()
	now := s.now()
	ser := s.series[poolKey{service, pool}]
	if ser != nil && ser.stats != st {
		ser = nil
	}
	var from sample // a pool born since the last sample starts from zero
	empty := false
	if ser != nil {
		cutoff := now.Add(-d)
		newest := s.taken - 1
		oldest := newest - min(windowSlots-1, newest)
		back := newest + 1 // no sample in the window yet
		for i := newest; ; i-- {
			if s.times[i%windowSlots].Before(cutoff) {
				break
			}
			back = i
			if i == oldest {
				break
			}
		}
		if back > newest {
			empty = true
		} else {
			from = ser.ring[back%windowSlots]
		}
	}
	s.mu.Unlock()
	if empty {
		return slo.Window{Buckets: make([]uint64, len(latencyBounds)+1)}
	}

	w := slo.Window{Buckets: make([]uint64, len(latencyBounds)+1)}
	if st == nil {
		return w
	}
	// Taken after the sample above, so every count is at least its own.
	cur := sampleOf(st)
	w.Requests = cur.requests - from.requests
	w.Errors = cur.errors - from.errors
	for i := range w.Buckets {
		w.Buckets[i] = cur.buckets[i] - from.buckets[i]
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
