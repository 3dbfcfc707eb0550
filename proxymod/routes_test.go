package proxymod

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/adminapi"
	"github.com/cbproxy/cbproxy/controlplane/state"
)

// TestRouteRegistryFollowsViewChanges: a registry that sees every view
// visits only the services a view says it changed, and one that missed
// views (as across a reload) compares everything; either way every route's
// table is built from its service in the last view, deleted services'
// routes leave, and new services get one. Views come from a real state
// machine applying batches, as Raft hands them over.
func TestRouteRegistryFollowsViewChanges(t *testing.T) {
	every := newRouteRegistry()
	missing := newRouteRegistry() // sees every other view only
	views := 0
	m := state.NewMachine(state.Options{OnApply: func(v *state.View, _ []state.Event) {
		every.apply(v)
		if views++; views%2 == 1 {
			missing.apply(v)
		}
	}})
	index := uint64(0)
	entry := func(name string, p state.Payload) state.Entry {
		index++
		c := state.NewCommand(name, "ops", p)
		c.Time = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC).Add(time.Duration(index) * time.Second)
		data, err := state.Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		return state.Entry{Index: index, Data: data}
	}
	spec := func(i int) state.ServiceSpec {
		return state.ServiceSpec{Pools: map[string]state.PoolSpec{
			"blue":  {Backends: []string{fmt.Sprintf("10.0.%d.1:80", i)}},
			"green": {Backends: []string{fmt.Sprintf("10.0.%d.2:80", i)}},
		}}
	}
	put := func(i int) state.Entry {
		s := spec(i)
		return entry(fmt.Sprintf("s%d", i), state.PutService{Spec: &s})
	}
	weights := func(i int, green state.Weight) state.Entry {
		return entry(fmt.Sprintf("s%d", i), state.SetWeights{Weights: state.Weights{"blue": state.Total - green, "green": green}})
	}
	held := every.hold("s9") // a handler of a service not created yet
	defer every.release(held)
	batches := [][]state.Entry{
		{put(0), put(1), put(2)},
		{weights(1, 5000)},
		{put(3), weights(0, 100), entry("s2", state.DeleteService{})},
		{weights(1, 2500), put(9)},
		{entry("s9", state.DeleteService{}), put(2)},
		{weights(3, 7000)},
	}
	for b, batch := range batches {
		for _, r := range m.ApplyBatch(batch) {
			if !r.OK() {
				t.Fatalf("batch %d: %+v", b, r)
			}
		}
		if b%2 == 1 {
			// The registry that misses views catches up at the next one.
			continue
		}
		v := m.View()
		for _, rr := range []*routeRegistry{every, missing} {
			which := "the registry that sees every view"
			if rr == missing {
				which = "the registry that missed views"
			}
			for name, svc := range v.Services {
				r := rr.lookup(name)
				if r == nil {
					t.Fatalf("batch %d, %s: no route for %s", b, which, name)
				}
				if got := r.table.Load().service; got != svc {
					t.Errorf("batch %d, %s: table of %s built from %p, the view has %p", b, which, name, got, svc)
				}
			}
			for name := range v.Deleted {
				if r := rr.lookup(name); r != nil && r.holders == 0 {
					t.Errorf("batch %d, %s: the route of deleted %s is still there", b, which, name)
				} else if r != nil && r.table.Load().service != nil {
					t.Errorf("batch %d, %s: the held route of deleted %s still routes", b, which, name)
				}
			}
		}
	}
	if every.lookup("s9") != held {
		t.Error("a held route must stay the service's route")
	}
}

// TestHeldRoutesPublishedWithTheFirstView: the routes handlers hold before
// the node's first view (a config's provisioning) are published together
// with that view, the same route objects the handlers hold; after it, a
// newly held route is visible at once.
func TestHeldRoutesPublishedWithTheFirstView(t *testing.T) {
	rr := newRouteRegistry()
	held := map[string]*route{}
	for i := range 5 {
		name := fmt.Sprintf("s%d", i)
		held[name] = rr.hold(name)
	}
	svc := service("s0", map[string]state.Weight{"blue": state.Total}, map[string][]string{"blue": {"10.0.0.1:80"}})
	rr.apply(&state.View{Index: 1, Services: map[string]*state.Service{"s0": svc}})
	for name, r := range held {
		if rr.lookup(name) != r {
			t.Errorf("after the first view, lookup(%s) is not the route its handler holds", name)
		}
	}
	if r := rr.hold("late"); rr.lookup("late") != r {
		t.Error("a route held after the first view must be visible at once")
	}
	if rr.lookup("s0").table.Load().service != svc {
		t.Error("the held route of s0 must route by the view")
	}
}

// TestServiceLoadsMatchesPerBackend: ServiceLoads lists every backend of
// the service's table, pools by name and backends in the service's order,
// with the counts InFlight and LongLived answer for each.
func TestServiceLoadsMatchesPerBackend(t *testing.T) {
	svc := service("loads-probe", map[string]state.Weight{"green": state.Total}, map[string][]string{
		"green": {"10.9.0.3:80", "10.9.0.1:80"},
		"blue":  {"10.9.0.2:80", "~10.9.0.4:80"},
	})
	applyService(svc)
	r := routes.lookup("loads-probe")
	t.Cleanup(func() {
		r.table.Load().pools[0].backends[0].inFlight.Add(-3)
		r.streams.mu.Lock()
		delete(r.streams.byAddress, "10.9.0.1:80")
		r.streams.mu.Unlock()
	})
	// Three requests open to blue's first backend, and a long-lived
	// connection to green's second.
	r.table.Load().pools[0].backends[0].inFlight.Add(3)
	r.streams.mu.Lock()
	if r.streams.byAddress == nil {
		r.streams.byAddress = make(map[string]int64)
	}
	r.streams.byAddress["10.9.0.1:80"]++
	r.streams.mu.Unlock()

	dp := dataPlane{}
	var want []adminapi.BackendLoad
	for _, pool := range svc.PoolNames() {
		for _, b := range svc.Pools[pool].Backends {
			want = append(want, adminapi.BackendLoad{Pool: pool, Address: b.Address,
				InFlight: dp.InFlight("loads-probe", pool, b.Address), LongLived: dp.LongLived("loads-probe", pool, b.Address)})
		}
	}
	if want[0].InFlight != 3 || want[3].LongLived != 1 {
		t.Fatalf("per backend: %v; want 3 in flight on blue's first backend, 1 long-lived on green's second", want)
	}
	if got := dp.ServiceLoads("loads-probe", nil); !slices.Equal(got, want) {
		t.Errorf("ServiceLoads = %v, want %v", got, want)
	}
	if got := dp.ServiceLoads("no-such-service", nil); len(got) != 0 {
		t.Errorf("unknown service: %v", got)
	}
}
