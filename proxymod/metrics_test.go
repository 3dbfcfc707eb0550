package proxymod

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

func TestMetrics(t *testing.T) {
	rr := newRouteRegistry()
	r := rr.hold("shop")
	r.histograms.Add(1) // a handler of shop has latency_histogram
	// canary has no available backend: its 0.5 % goes to blue on this node.
	rr.apply(&state.View{Index: 7, Services: map[string]*state.Service{
		"shop": service("shop", map[string]state.Weight{"blue": 9950, "canary": 50}, map[string][]string{
			"blue": {"10.0.0.1:80"}, "canary": {"~10.0.0.2:80"},
		}),
	}})
	blue := r.table.Load().pools[0].stats
	for _, rec := range []struct {
		class int
		d     time.Duration
	}{{1, 3 * time.Millisecond}, {1, 40 * time.Millisecond}, {1, 600 * time.Millisecond}, {4, 2 * time.Second}, {classProxyError, 11 * time.Second}} {
		blue.record(rec.class, rec.d)
	}
	r.none.record(class5xx, 0)
	r.none.record(class5xx, 0)
	canary := r.table.Load().pools[1].stats
	canary.displace()
	canary.displace()
	r.streams.byAddress = map[string]int64{"10.0.0.1:80": 3}
	r.streams.closed = map[closeKey]uint64{{"blue", closeSwitch}: 4, {"canary", closeRollback}: 1}

	want := `
# HELP cbproxy_backend_healthy 1 if this node sees the backend healthy or degraded, 0 otherwise (unhealthy, or not checked yet).
# TYPE cbproxy_backend_healthy gauge
cbproxy_backend_healthy{backend="10.0.0.1:80",pool="blue",service="shop"} 1
cbproxy_backend_healthy{backend="10.0.0.2:80",pool="canary",service="shop"} 1
# HELP cbproxy_backend_long_lived Upgraded connections (WebSockets) and event streams this node has open to the backend.
# TYPE cbproxy_backend_long_lived gauge
cbproxy_backend_long_lived{backend="10.0.0.1:80",pool="blue",service="shop"} 3
# HELP cbproxy_pool_effective_percent The share of new requests this node sends to the pool, in percent, after moving the share of pools without available backends to the others.
# TYPE cbproxy_pool_effective_percent gauge
cbproxy_pool_effective_percent{pool="blue",service="shop"} 100
cbproxy_pool_effective_percent{pool="canary",service="shop"} 0
# HELP cbproxy_pool_weight_percent The pool's replicated weight in percent.
# TYPE cbproxy_pool_weight_percent gauge
cbproxy_pool_weight_percent{pool="blue",service="shop"} 99.5
cbproxy_pool_weight_percent{pool="canary",service="shop"} 0.5
# HELP cbproxy_request_duration_seconds Time the backend took to its response header (or the proxy's failure), from the dispatch or from the end of the request body, by pool; client aborts only when they had waited past the rollback P95.
# TYPE cbproxy_request_duration_seconds histogram
cbproxy_request_duration_seconds_bucket{pool="blue",service="shop",le="0.001"} 0
cbproxy_request_duration_seconds_bucket{pool="blue",service="shop",le="0.0025"} 0
cbproxy_request_duration_seconds_bucket{pool="blue",service="shop",le="0.005"} 1
cbproxy_request_duration_seconds_bucket{pool="blue",service="shop",le="0.01"} 1
cbproxy_request_duration_seconds_bucket{pool="blue",service="shop",le="0.025"} 1
cbproxy_request_duration_seconds_bucket{pool="blue",service="shop",le="0.05"} 2
cbproxy_request_duration_seconds_bucket{pool="blue",service="shop",le="0.1"} 2
cbproxy_request_duration_seconds_bucket{pool="blue",service="shop",le="0.25"} 2
cbproxy_request_duration_seconds_bucket{pool="blue",service="shop",le="0.5"} 2
cbproxy_request_duration_seconds_bucket{pool="blue",service="shop",le="1"} 3
cbproxy_request_duration_seconds_bucket{pool="blue",service="shop",le="2"} 4
cbproxy_request_duration_seconds_bucket{pool="blue",service="shop",le="5"} 4
cbproxy_request_duration_seconds_bucket{pool="blue",service="shop",le="10"} 4
cbproxy_request_duration_seconds_bucket{pool="blue",service="shop",le="+Inf"} 5
cbproxy_request_duration_seconds_sum{pool="blue",service="shop"} 13.643
cbproxy_request_duration_seconds_count{pool="blue",service="shop"} 5
cbproxy_request_duration_seconds_bucket{pool="canary",service="shop",le="0.001"} 0
cbproxy_request_duration_seconds_bucket{pool="canary",service="shop",le="0.0025"} 0
cbproxy_request_duration_seconds_bucket{pool="canary",service="shop",le="0.005"} 0
cbproxy_request_duration_seconds_bucket{pool="canary",service="shop",le="0.01"} 0
cbproxy_request_duration_seconds_bucket{pool="canary",service="shop",le="0.025"} 0
cbproxy_request_duration_seconds_bucket{pool="canary",service="shop",le="0.05"} 0
cbproxy_request_duration_seconds_bucket{pool="canary",service="shop",le="0.1"} 0
cbproxy_request_duration_seconds_bucket{pool="canary",service="shop",le="0.25"} 0
cbproxy_request_duration_seconds_bucket{pool="canary",service="shop",le="0.5"} 0
cbproxy_request_duration_seconds_bucket{pool="canary",service="shop",le="1"} 0
cbproxy_request_duration_seconds_bucket{pool="canary",service="shop",le="2"} 0
cbproxy_request_duration_seconds_bucket{pool="canary",service="shop",le="5"} 0
cbproxy_request_duration_seconds_bucket{pool="canary",service="shop",le="10"} 0
cbproxy_request_duration_seconds_bucket{pool="canary",service="shop",le="+Inf"} 0
cbproxy_request_duration_seconds_sum{pool="canary",service="shop"} 0
cbproxy_request_duration_seconds_count{pool="canary",service="shop"} 0
# HELP cbproxy_requests_displaced_total Requests the pool's weight gave it while it had no available backend on this node: served by another pool, or refused when none was left. They count as failed requests of the pool in its SLO figures.
# TYPE cbproxy_requests_displaced_total counter
cbproxy_requests_displaced_total{pool="canary",service="shop"} 2
# HELP cbproxy_requests_total Requests proxied by this node, by pool and status class (proxy_error: no backend answered; client_abort: the client went away before the response header; pool none: refused because no pool was left).
# TYPE cbproxy_requests_total counter
cbproxy_requests_total{code="2xx",pool="blue",service="shop"} 3
cbproxy_requests_total{code="5xx",pool="blue",service="shop"} 1
cbproxy_requests_total{code="proxy_error",pool="blue",service="shop"} 1
cbproxy_requests_total{code="5xx",pool="none",service="shop"} 2
# HELP cbproxy_streams_closed_total Upgraded connections and event streams this node closed because their backend stopped taking new requests, by why: switch, rollback, drain, removed, reload.
# TYPE cbproxy_streams_closed_total counter
cbproxy_streams_closed_total{pool="blue",reason="switch",service="shop"} 4
cbproxy_streams_closed_total{pool="canary",reason="rollback",service="shop"} 1
`
	if err := testutil.CollectAndCompare(collector{rr}, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}

	mfs := gather(t, rr)
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

func TestMetricsPoolNamedNone(t *testing.T) {
	rr := newRouteRegistry()
	r := rr.hold("odd")
	rr.apply(&state.View{Index: 1, Services: map[string]*state.Service{
		"odd": service("odd", map[string]state.Weight{"none": 10000}, map[string][]string{"none": {"10.0.0.1:80"}}),
	}})
	r.table.Load().pools[0].stats.record(class5xx, 0)
	r.none.record(class5xx, 0)
	// A real pool named "none" absorbs the refused count rather than clash.
	want := `
# HELP cbproxy_requests_total Requests proxied by this node, by pool and status class (proxy_error: no backend answered; client_abort: the client went away before the response header; pool none: refused because no pool was left).
# TYPE cbproxy_requests_total counter
cbproxy_requests_total{code="5xx",pool="none",service="odd"} 2
`
	if err := testutil.CollectAndCompare(collector{rr}, strings.NewReader(want), "cbproxy_requests_total"); err != nil {
		t.Fatal(err)
	}
}

func TestRegisterCollectorTwice(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	for range 2 {
		if err := registerCollector(reg); err != nil {
			t.Fatalf("registering again must be a no-op: %v", err)
		}
	}
}

// TestMetricsSeriesAtScale: /metrics carries, by default, one weight and one
// effective share per pool and one health per backend, and a counter only
// once it counted something; the latency histogram only for services whose
// handler asks for it (latency_histogram), so 1,000 idle services of 3 pools
// x 2 backends stay well under 1 MB. Before: 24 series per idle pool and 2
// per backend (84,000 for 1,000 such services).
func TestMetricsSeriesAtScale(t *testing.T) {
	rr := newRouteRegistry()
	quiet, busy := rr.hold("quiet"), rr.hold("busy")
	busy.histograms.Add(1) // a handler of busy has latency_histogram
	pools := map[string][]string{"blue": {"10.0.0.1:80", "10.0.0.2:80"}, "canary": {"10.0.0.3:80", "10.0.0.4:80"}, "green": {"10.0.0.5:80", "10.0.0.6:80"}}
	weights := map[string]state.Weight{"blue": 5000, "canary": 2500, "green": 2500}
	rr.apply(&state.View{Index: 1, Services: map[string]*state.Service{
		"quiet": service("quiet", weights, pools), "busy": service("busy", weights, pools),
	}})
	busy.table.Load().pools[0].stats.record(1, 3*time.Millisecond)
	quiet.table.Load().pools[0].stats.record(1, 3*time.Millisecond)
	quiet.table.Load().pools[0].stats.record(4, 3*time.Millisecond)

	families := map[string]map[string]int{} // family → service → series
	mfs := gather(t, rr)
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "service" {
					if families[mf.GetName()] == nil {
						families[mf.GetName()] = map[string]int{}
					}
					families[mf.GetName()][l.GetValue()]++
				}
			}
		}
	}
	want := map[string]map[string]int{
		"cbproxy_pool_weight_percent":      {"quiet": 3, "busy": 3},
		"cbproxy_pool_effective_percent":   {"quiet": 3, "busy": 3},
		"cbproxy_backend_healthy":          {"quiet": 6, "busy": 6},
		"cbproxy_requests_total":           {"quiet": 2, "busy": 1}, // 2xx and 5xx of quiet's blue, 2xx of busy's blue
		"cbproxy_request_duration_seconds": {"busy": 3},             // one histogram per pool, only where asked for
	}
	for name, byService := range families {
		for svc, n := range byService {
			if want[name][svc] != n {
				t.Errorf("%s of %s: %d series, want %d", name, svc, n, want[name][svc])
			}
		}
	}
	for name, byService := range want {
		for svc, n := range byService {
			if families[name][svc] != n {
				t.Errorf("%s of %s: %d series, want %d", name, svc, families[name][svc], n)
			}
		}
	}
}

// A scrape of 1,000 services of 3 pools x 2 backends (13,000 series, one
// counter per service) allocates a few slabs, not objects per series: label
// pairs point at names the routes already hold. Before: about 9 allocations
// and 400 bytes per series.
func TestScrapeAllocations(t *testing.T) {
	rr := newRouteRegistry()
	view := &state.View{Index: 1, Services: map[string]*state.Service{}}
	weights := map[string]state.Weight{"blue": 5000, "canary": 2500, "green": 2500}
	for i := range 1000 {
		name := fmt.Sprintf("s%04d", i)
		pools := map[string][]string{}
		for j, pool := range []string{"blue", "canary", "green"} {
			pools[pool] = []string{fmt.Sprintf("10.%d.%d.1:80", i/250, i%250*3+j), fmt.Sprintf("10.%d.%d.2:80", i/250, i%250*3+j)}
		}
		view.Services[name] = service(name, weights, pools)
	}
	rr.apply(view)
	for _, r := range *rr.byName.Load() {
		r.table.Load().pools[0].stats.record(1, 3*time.Millisecond)
	}
	const want = 13000
	ch := make(chan prometheus.Metric, 2*want)
	var series int
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	collector{rr}.Collect(ch)
	runtime.ReadMemStats(&after)
	close(ch)
	for m := range ch {
		if m.Write(&dto.Metric{}) != nil {
			t.Fatalf("%s: Write failed", m.Desc())
		}
		series++
	}
	if series != want {
		t.Fatalf("%d series, want %d", series, want)
	}
	allocs, bytes := after.Mallocs-before.Mallocs, after.TotalAlloc-before.TotalAlloc
	t.Logf("a scrape of %d series: %d allocations, %d bytes", series, allocs, bytes)
	// The snapshots of the streams and a slab every 256 values.
	if perSeries := float64(allocs) / float64(series); perSeries > 0.5 {
		t.Errorf("%.2f allocations per series (%d for %d series), want at most 0.5", perSeries, allocs, series)
	}
	if perSeries := float64(bytes) / float64(series); perSeries > 250 {
		t.Errorf("%.0f bytes per series (%d for %d series), want at most 250", perSeries, bytes, series)
	}
}

// TestBackendMetrics: with backend_metrics, each backend that took a
// request has its counts by class and its latency histogram, labelled with
// its pool; an address listed in two pools shows its figures once (a sum
// over pools counts each request once); without backend_metrics, none.
func TestBackendMetrics(t *testing.T) {
	rr := newRouteRegistry()
	r := rr.hold("shop")
	rr.apply(&state.View{Index: 1, Services: map[string]*state.Service{
		"shop": service("shop", map[string]state.Weight{"blue": 5000, "green": 5000}, map[string][]string{
			"blue": {"10.0.0.1:80", "10.0.0.9:80"}, "green": {"10.0.0.2:80", "10.0.0.9:80"},
		}),
	}})
	tbl := r.table.Load()
	byAddress := map[string]*backend{}
	for i := range tbl.pools {
		for _, b := range tbl.pools[i].backends {
			byAddress[b.address] = b.backend
		}
	}
	byAddress["10.0.0.1:80"].backendStats().record(1, 3*time.Millisecond)
	byAddress["10.0.0.1:80"].backendStats().recordAbort(time.Millisecond, false)
	byAddress["10.0.0.9:80"].backendStats().record(4, 600*time.Millisecond)

	names := []string{"cbproxy_backend_requests_total", "cbproxy_backend_request_duration_seconds"}
	if n, err := testutil.GatherAndCount(gatherer(t, rr), names...); err != nil || n != 0 {
		t.Fatalf("without backend_metrics: %d per-backend series (%v), want none", n, err)
	}
	r.backendMetrics.Add(1) // a handler of shop has backend_metrics
	want := `
# HELP cbproxy_backend_requests_total Requests of the pool this node sent to the backend (the last one tried), by status class as for cbproxy_requests_total. Only for services with backend_metrics.
# TYPE cbproxy_backend_requests_total counter
cbproxy_backend_requests_total{backend="10.0.0.1:80",code="2xx",pool="blue",service="shop"} 1
cbproxy_backend_requests_total{backend="10.0.0.1:80",code="client_abort",pool="blue",service="shop"} 1
cbproxy_backend_requests_total{backend="10.0.0.9:80",code="5xx",pool="blue",service="shop"} 1
`
	if err := testutil.GatherAndCompare(gatherer(t, rr), strings.NewReader(want), "cbproxy_backend_requests_total"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(gatherer(t, rr), "cbproxy_backend_request_duration_seconds"); err != nil || n != 2 {
		t.Errorf("%d per-backend histograms (%v), want 2 (the backends that took a request)", n, err)
	}
	problems, err := testutil.GatherAndLint(gatherer(t, rr), names...)
	if err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

// gatherer is a pedantic registry with rr's collector.
func gatherer(t *testing.T, rr *routeRegistry) prometheus.Gatherer {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(collector{rr}); err != nil {
		t.Fatal(err)
	}
	return reg
}

// gather is one scrape of rr's collector through a pedantic registry
// (Caddy's is pedantic: Describe must cover what Collect sends).
func gather(t *testing.T, rr *routeRegistry) []*dto.MetricFamily {
	t.Helper()
	mfs, err := gatherer(t, rr).Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}
