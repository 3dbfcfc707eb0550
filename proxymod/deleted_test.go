package proxymod

import (
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// seriesOf gathers the collector's series and returns, per service label,
// the value of cbproxy_requests_total summed over pools and codes and how
// many series name the service at all.
func seriesOf(t *testing.T, rr *routeRegistry) (requests map[string]float64, series map[string]int) {
	t.Helper()
	mfs := gather(t, rr)
	requests, series = map[string]float64{}, map[string]int{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() != "service" {
					continue
				}
				series[l.GetValue()]++
				if mf.GetName() == "cbproxy_requests_total" {
					requests[l.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	return requests, series
}

// TestDeletedServiceForgetsFigures: once a service is deleted, /metrics
// lists none of its series, the SLO sampler drops its samples, and a service
// created again under the same name starts from zero. The route of a
// service a handler still routes stays (it refuses requests) with its
// figures reset; the route of one no handler routes leaves the registry.
func TestDeletedServiceForgetsFigures(t *testing.T) {
	rr := newRouteRegistry()
	held := rr.hold("kept") // a Caddyfile handler routes "kept"; "api" only exists through the API
	pools := map[string][]string{"blue": {"10.0.0.1:80"}, "canary": {"10.0.0.2:80"}}
	weights := map[string]state.Weight{"blue": 9000, "canary": 1000}
	other := service("other", weights, pools)
	live := func(index uint64) *state.View {
		return &state.View{Index: index, Services: map[string]*state.Service{
			"kept": service("kept", weights, pools), "api": service("api", weights, pools), "other": other,
		}}
	}
	rr.apply(live(1))
	s := testSampler(rr)
	for _, name := range []string{"kept", "api", "other"} {
		r := rr.lookup(name)
		for _, pool := range []string{"blue", "canary"} {
			record(r.stats[pool], &traffic{}, 2, 50) // 503s
		}
		r.table.Load().none.record(class5xx, 0)
		r.streams.mu.Lock()
		r.streams.closed = map[closeKey]uint64{{"blue", closeSwitch}: 1}
		r.streams.mu.Unlock()
	}
	s.sample()
	if w := s.window("api", "blue", time.Minute); w.Requests != 50 || w.Errors != 50 {
		t.Fatalf("window of api/blue before the delete: %+v", w)
	}

	rr.apply(&state.View{Index: 2, Services: map[string]*state.Service{"other": other}, Deleted: map[string]uint64{"kept": 2, "api": 2}})
	s.sample()
	if rr.lookup("api") != nil {
		t.Error("the route of a deleted service no handler routes is still in the registry")
	}
	if r := rr.lookup("kept"); r != held || r.table.Load().split != nil {
		t.Error("the route a handler holds must stay, refusing requests")
	}
	requests, series := seriesOf(t, rr)
	for _, name := range []string{"kept", "api"} {
		if series[name] != 0 {
			t.Errorf("/metrics still lists %d series of deleted service %s", series[name], name)
		}
		for _, pool := range []string{"blue", "canary"} {
			if _, ok := s.series[poolKey{name, pool}]; ok {
				t.Errorf("the sampler still keeps samples of %s/%s", name, pool)
			}
			if w := s.window(name, pool, time.Minute); w.Requests != 0 {
				t.Errorf("window of deleted %s/%s: %+v", name, pool, w)
			}
		}
	}
	if requests["other"] != 101 {
		t.Errorf("the service left alone lost its counts: %v requests", requests["other"])
	}

	// The names are used again: every figure starts from zero.
	rr.apply(live(3))
	s.sample()
	requests, series = seriesOf(t, rr)
	for _, name := range []string{"kept", "api"} {
		if series[name] == 0 || requests[name] != 0 {
			t.Errorf("re-created %s: %d series, %v requests; want its pools listed from zero", name, series[name], requests[name])
		}
		for _, pool := range []string{"blue", "canary"} {
			if w := s.window(name, pool, time.Hour); w.Requests != 0 || w.Errors != 0 {
				t.Errorf("window of re-created %s/%s holds the old traffic: %+v", name, pool, w)
			}
		}
	}
	if w := s.window("other", "blue", time.Hour); w.Requests != 50 {
		t.Errorf("window of the service left alone: %+v", w)
	}

	// The last handler goes while the service is deleted: so does the route.
	rr.apply(&state.View{Index: 4, Services: map[string]*state.Service{"other": other}, Deleted: map[string]uint64{"kept": 4, "api": 4}})
	if rr.lookup("kept") != held {
		t.Fatal("a held route left the registry")
	}
	rr.release(held)
	if rr.lookup("kept") != nil {
		t.Error("the route of a deleted service stayed after its last handler went")
	}
}
