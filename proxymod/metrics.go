package proxymod

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/cbproxy/cbproxy/healthcheck"
)

// collector exposes the data plane's figures (docs/api.md "Metrics"). It reads
// the routes' atomics at scrape time, so the hot path never touches Prometheus.
type collector struct{ routes *routeRegistry }

var (
	requestsDesc = prometheus.NewDesc("cbproxy_requests_total",
		"Requests proxied by this node, by pool and status class (proxy_error: no backend answered; client_abort: the client went away before the response header; pool none: refused because no pool was left).",
		[]string{"service", "pool", "code"}, nil)
	durationDesc = prometheus.NewDesc("cbproxy_request_duration_seconds",
		"Time the backend took to its response header (or the proxy's failure), from the dispatch or from the end of the request body, by pool; client aborts only when they had waited past the rollback P95.",
		[]string{"service", "pool"}, nil)
	displacedDesc = prometheus.NewDesc("cbproxy_requests_displaced_total",
		"Requests the pool's weight gave it while it had no available backend on this node: served by another pool, or refused when none was left. They count as failed requests of the pool in its SLO figures.",
		[]string{"service", "pool"}, nil)
	weightDesc = prometheus.NewDesc("cbproxy_pool_weight_percent",
		"The pool's replicated weight in percent.",
		[]string{"service", "pool"}, nil)
	effectiveDesc = prometheus.NewDesc("cbproxy_pool_effective_percent",
		"The share of new requests this node sends to the pool, in percent, after moving the share of pools without available backends to the others.",
		[]string{"service", "pool"}, nil)
	healthyDesc = prometheus.NewDesc("cbproxy_backend_healthy",
		"1 if this node sees the backend healthy or degraded, 0 otherwise (unhealthy, or not checked yet).",
		[]string{"service", "pool", "backend"}, nil)
	longLivedDesc = prometheus.NewDesc("cbproxy_backend_long_lived",
		"Upgraded connections (WebSockets) and event streams this node has open to the backend.",
		[]string{"service", "pool", "backend"}, nil)
	backendRequestsDesc = prometheus.NewDesc("cbproxy_backend_requests_total",
		"Requests of the pool this node sent to the backend (the last one tried), by status class as for cbproxy_requests_total. Only for services with backend_metrics.",
		[]string{"service", "pool", "backend", "code"}, nil)
	backendDurationDesc = prometheus.NewDesc("cbproxy_backend_request_duration_seconds",
		"Time the backend took to its response header (or the proxy's failure), as for cbproxy_request_duration_seconds. Only for services with backend_metrics.",
		[]string{"service", "pool", "backend"}, nil)
	streamsClosedDesc = prometheus.NewDesc("cbproxy_streams_closed_total",
		"Upgraded connections and event streams this node closed because their backend stopped taking new requests, by why: switch, rollback, drain, removed, reload.",
		[]string{"service", "pool", "reason"}, nil)
)

// latencyBucketBounds are latencyBounds in seconds, as Prometheus wants them.
var latencyBucketBounds = func() []float64 {
	b := make([]float64, len(latencyBounds))
	for i, d := range latencyBounds {
		b[i] = d.Seconds()
	}
	return b
}()

// Describe implements prometheus.Collector.
func (collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- requestsDesc
	ch <- durationDesc
	ch <- displacedDesc
	ch <- weightDesc
	ch <- effectiveDesc
	ch <- healthyDesc
	ch <- longLivedDesc
	ch <- backendRequestsDesc
	ch <- backendDurationDesc
	ch <- streamsClosedDesc
}

// Collect implements prometheus.Collector. At 1,000 services a scrape sends
// about 13,000 series; each is cut from the scrape's slabs, whose
// label pairs point at names the routes and tables already hold, so that a
// scrape allocates a few slabs instead of several objects per series
// (docs/decisions.md, "A scrape of /metrics with little garbage").
func (c collector) Collect(ch chan<- prometheus.Metric) {
	var sc scrape
	for _, r := range *c.routes.byName.Load() {
		name := r.name
		t := r.table.Load()
		service := sc.labelPair(&labelService, &r.name)
		// "none" is not a pool: its series appears once a request was
		// refused, unless a real pool has that name and absorbs the count.
		refused := t.none.snapshot().requests[class5xx]
		longLived, closed := r.streams.snapshot()
		histograms := r.histograms.Load() > 0
		backendMetrics := r.backendMetrics.Load() > 0
		for k, n := range closed {
			ch <- prometheus.MustNewConstMetric(streamsClosedDesc, prometheus.CounterValue, float64(n), name, k.pool, k.reason)
		}
		for i := range t.pools {
			p := &t.pools[i]
			pool := sc.labelPair(&labelPool, &p.name)
			poolLabels := sc.labels(pool, service) // sorted by name: pool, service
			// The metrics count every request; only the SLO leaves the
			// override-header ones out.
			snap := p.stats.snapshot().add(p.overridden.snapshot())
			if p.name == "none" {
				snap.requests[class5xx] += refused
				refused = 0
			}
			// A counter's series appears with its first count, and the
			// latency histogram only where a handler asks for it: at 1,000
			// services the zeros and the buckets were most of /metrics
			// (docs/decisions.md, "Metrics of 1,000 services").
			for class, n := range snap.requests {
				if n > 0 {
					ch <- sc.counter(requestsDesc, float64(n), sc.labels(&classLabelPairs[class], pool, service))
				}
			}
			if histograms {
				ch <- prometheus.MustNewConstHistogram(durationDesc, snap.observed(), snap.sum.Seconds(), cumulativeBuckets(&snap), name, p.name)
			}
			if snap.displaced > 0 {
				ch <- sc.counter(displacedDesc, float64(snap.displaced), poolLabels)
			}
			ch <- sc.gauge(weightDesc, percent(p.weight), poolLabels)
			ch <- sc.gauge(effectiveDesc, percent(p.effective), poolLabels)
			for j := range p.backends {
				b := p.backends[j].backend
				backendLabels := sc.labels(sc.labelPair(&labelBackend, &b.address), pool, service)
				healthy := 0.0
				switch c.routes.backendHealth(t.service, p.name, b.address) {
				case healthcheck.StatusHealthy, healthcheck.StatusDegraded:
					healthy = 1
				}
				ch <- sc.gauge(healthyDesc, healthy, backendLabels)
				// From the backend's first long-lived connection on.
				if n, ok := longLived[b.address]; ok {
					ch <- sc.gauge(longLivedDesc, float64(n), backendLabels)
				}
				// From the backend's first request on. The figures are the
				// address's, so an address in two pools of the service
				// shows them under the first only: a sum over pools counts
				// each request once.
				if stats := b.stats.Load(); backendMetrics && stats != nil && !listedBefore(t, i, b) {
					bsnap := stats.snapshot()
					for class, n := range bsnap.requests {
						if n > 0 {
							ch <- sc.counter(backendRequestsDesc, float64(n), sc.labels(backendLabels[0], &classLabelPairs[class], pool, service))
						}
					}
					ch <- prometheus.MustNewConstHistogram(backendDurationDesc, bsnap.observed(), bsnap.sum.Seconds(), cumulativeBuckets(&bsnap), name, p.name, b.address)
				}
			}
		}
		if refused > 0 {
			ch <- prometheus.MustNewConstMetric(requestsDesc, prometheus.CounterValue, float64(refused), name, "none", classLabels[class5xx])
		}
	}
}

// listedBefore reports whether a pool before t.pools[i] lists b.
func listedBefore(t *RoutingTable, i int, b *backend) bool {
	for j := range t.pools[:i] {
		for _, pb := range t.pools[j].backends {
			if pb.backend == b {
				return true
			}
		}
	}
	return false
}

// cumulativeBuckets are snap's latency buckets as Prometheus wants them.
func cumulativeBuckets(snap *statSnapshot) map[float64]uint64 {
	buckets := make(map[float64]uint64, len(latencyBucketBounds))
	var cumulative uint64
	for b, bound := range latencyBucketBounds {
		cumulative += snap.buckets[b]
		buckets[bound] = cumulative
	}
	return buckets
}

// Label names, and the code label of every status class, shared by every
// scrape: label pairs are read-only once sent.
var (
	labelService, labelPool, labelBackend, labelCode = "service", "pool", "backend", "code"

	classLabelPairs [len(classLabels)]dto.LabelPair
)

func init() {
	for i := range classLabels {
		classLabelPairs[i].Name, classLabelPairs[i].Value = &labelCode, &classLabels[i]
	}
}

// scrape cuts one scrape's series and label pairs from slabs. The registry
// holds them until the response is written; the next scrape starts afresh,
// so concurrent scrapes share nothing they write.
type scrape struct {
	samples  slab[scraped]
	counters slab[dto.Counter]
	gauges   slab[dto.Gauge]
	pairs    slab[dto.LabelPair]
	pointers []*dto.LabelPair
}

// labelPair is a label pair over strings that outlive the scrape.
func (sc *scrape) labelPair(name, value *string) *dto.LabelPair {
	lp := sc.pairs.next()
	lp.Name, lp.Value = name, value
	return lp
}

// labels is a series' label pairs, which must come sorted by name (the
// registry copies and sorts them otherwise).
func (sc *scrape) labels(pairs ...*dto.LabelPair) []*dto.LabelPair {
	if cap(sc.pointers)-len(sc.pointers) < len(pairs) {
		sc.pointers = make([]*dto.LabelPair, 0, slabSize)
	}
	start := len(sc.pointers)
	sc.pointers = append(sc.pointers, pairs...)
	return sc.pointers[start:len(sc.pointers):len(sc.pointers)]
}

func (sc *scrape) counter(desc *prometheus.Desc, v float64, labels []*dto.LabelPair) prometheus.Metric {
	s := sc.samples.next()
	s.desc, s.value, s.labels = desc, v, labels
	s.counter = sc.counters.next()
	s.counter.Value = &s.value
	return s
}

func (sc *scrape) gauge(desc *prometheus.Desc, v float64, labels []*dto.LabelPair) prometheus.Metric {
	s := sc.samples.next()
	s.desc, s.value, s.labels = desc, v, labels
	s.gauge = sc.gauges.next()
	s.gauge.Value = &s.value
	return s
}

// scraped is one counter or gauge series of one scrape.
type scraped struct {
	desc    *prometheus.Desc
	labels  []*dto.LabelPair
	value   float64
	counter *dto.Counter
	gauge   *dto.Gauge
}

// Desc implements prometheus.Metric.
func (s *scraped) Desc() *prometheus.Desc { return s.desc }

// Write implements prometheus.Metric.
func (s *scraped) Write(m *dto.Metric) error {
	m.Label, m.Counter, m.Gauge = s.labels, s.counter, s.gauge
	return nil
}

// slabSize is how many values a slab hands out before it allocates the next
// array: a few hundred allocations per scrape at 1,000 services.
const slabSize = 256

// slab hands out pointers into arrays of slabSize values.
type slab[T any] struct{ free []T }

func (s *slab[T]) next() *T {
	if len(s.free) == 0 {
		s.free = make([]T, slabSize)
	}
	v := &s.free[0]
	s.free = s.free[1:]
	return v
}

func percent(w state.Weight) float64 { return float64(w) / 100 }

// registerCollector adds the data plane's collector to reg, the node's
// registry. It outlives config loads, so finding the collector registered
// already is expected.
func registerCollector(reg *prometheus.Registry) error {
	err := reg.Register(collector{routes})
	if _, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
		return nil
	}
	return err
}

// Interface guards
var (
	_ prometheus.Collector = collector{}
	_ prometheus.Metric    = (*scraped)(nil)
)
