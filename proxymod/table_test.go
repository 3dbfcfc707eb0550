package proxymod

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// randomWeights returns n shares in basis points that sum to state.Total,
// some of them 0.
func randomWeights(rng *rand.Rand, n int) []state.Weight {
	cuts := make([]int, n-1)
	for i := range cuts {
		cuts[i] = rng.IntN(slotCount + 1)
	}
	slices.Sort(cuts)
	w := make([]state.Weight, n)
	prev := 0
	for i, c := range cuts {
		w[i] = state.Weight(c - prev)
		prev = c
	}
	w[n-1] = state.Weight(slotCount - prev)
	return w
}

// TestExactSplitPrefixes checks the exact split of docs/caddyfile.md "How a
// request finds its pool": after N requests each pool has had N·s of them to
// within one request (two pools) or two (more), for every N over two full
// cycles.
func TestExactSplitPrefixes(t *testing.T) {
	sets := [][]state.Weight{
		{9900, 100}, {100, 9900}, {5000, 5000}, {1, 9999}, {9999, 1}, {10000, 0}, {0, 10000},
		{3333, 3333, 3334}, {9800, 100, 100}, {1, 1, 9998}, {2500, 2500, 2500, 2500},
		{9500, 0, 500}, {1, 2, 3, 4, 9990}, {7000, 2000, 999, 1},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 60 {
		sets = append(sets, randomWeights(rng, 2+rng.IntN(5)))
	}
	for _, weights := range sets {
		t.Run(fmt.Sprint(weights), func(t *testing.T) {
			bound := int64(2)
			if len(weights) == 2 {
				bound = 1
			}
			s := newExactSplit(weights)
			counts := make([]int64, len(weights))
			for n := int64(1); n <= 2*int64(slotCount); n++ {
				counts[s.next()]++
				for i, w := range weights {
					// |count - n·w/Total| ≤ bound, in whole numbers.
					if dev := counts[i]*int64(slotCount) - n*int64(w); dev > bound*int64(slotCount) || -dev > bound*int64(slotCount) {
						t.Fatalf("after %d requests pool %d (weight %d) has %d, want %.2f ± %d", n, i, w, counts[i], float64(n*int64(w))/float64(slotCount), bound)
					}
				}
			}
			for i, w := range weights {
				if counts[i] != 2*int64(w) {
					t.Errorf("pool %d: %d requests in two cycles, want %d", i, counts[i], 2*w)
				}
			}
		})
	}
}

func TestEffectiveWeights(t *testing.T) {
	tests := []struct {
		name    string
		weights []state.Weight
		up      []bool
		want    []state.Weight
	}{
		{"all up", []state.Weight{9900, 100}, []bool{true, true}, []state.Weight{9900, 100}},
		{"canary down", []state.Weight{9900, 100}, []bool{true, false}, []state.Weight{10000, 0}},
		{"blue down", []state.Weight{9900, 100}, []bool{false, true}, []state.Weight{0, 10000}},
		{"zero pool does not receive", []state.Weight{5000, 5000, 0}, []bool{false, true, true}, []state.Weight{0, 10000, 0}},
		{"in proportion", []state.Weight{6000, 3000, 1000}, []bool{false, true, true}, []state.Weight{0, 7500, 2500}},
		// 1/3 each of 10000 → 3333.33: the remainder goes to the first.
		{"largest remainder, ties by order", []state.Weight{2500, 2500, 2500, 2500}, []bool{true, true, true, false}, []state.Weight{3334, 3333, 3333, 0}},
		// 1000·10000/7000 = 1428.57, 2000·… = 2857.14, 4000·… = 5714.29.
		{"largest remainder", []state.Weight{1000, 2000, 3000, 4000}, []bool{true, true, false, true}, []state.Weight{1429, 2857, 0, 5714}},
		{"none left", []state.Weight{10000, 0}, []bool{false, true}, nil},
		{"no backends anywhere", []state.Weight{5000, 5000}, []bool{false, false}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := effectiveWeights(tt.weights, tt.up)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("effectiveWeights(%v, %v) = %v, want %v", tt.weights, tt.up, got, tt.want)
			}
		})
	}
}

func TestEffectiveWeightsSumExactly(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		n := 2 + rng.IntN(6)
		weights := randomWeights(rng, n)
		up := make([]bool, n)
		anyUp := false
		for i := range up {
			up[i] = rng.IntN(3) > 0
			anyUp = anyUp || up[i] && weights[i] > 0
		}
		eff := effectiveWeights(weights, up)
		if !anyUp {
			if eff != nil {
				t.Fatalf("%v up %v: want none left, got %v", weights, up, eff)
			}
			continue
		}
		var sum state.Weight
		for i, e := range eff {
			sum += e
			if (weights[i] == 0 || !up[i]) && e != 0 {
				t.Fatalf("%v up %v: pool %d gets %d", weights, up, i, e)
			}
			if up[i] && e < weights[i] {
				t.Fatalf("%v up %v: pool %d shrank to %d", weights, up, i, e)
			}
		}
		if sum != state.Total {
			t.Fatalf("%v up %v: effective %v sums to %d", weights, up, eff, sum)
		}
	}
}

// service builds a replicated service for tests: pools map to backends, a
// backend prefixed with "~" is draining.
func service(name string, weights map[string]state.Weight, pools map[string][]string) *state.Service {
	svc := &state.Service{Name: name, Pools: map[string]*state.Pool{}, Weights: state.Weights{}}
	for pool, addrs := range pools {
		p := &state.Pool{}
		for _, a := range addrs {
			b := state.Backend{Address: a}
			if a[0] == '~' {
				b = state.Backend{Address: a[1:], Draining: true}
			}
			p.Backends = append(p.Backends, b)
		}
		svc.Pools[pool] = p
		svc.Weights[pool] = weights[pool]
	}
	return svc
}

func TestBuildTable(t *testing.T) {
	r := newRoute("svc")
	svc := service("svc", map[string]state.Weight{"blue": 9900, "canary": 100, "green": 0}, map[string][]string{
		"blue":   {"10.0.0.1:80", "~10.0.0.2:80"},
		"canary": {"https://10.0.0.3:443"},
		"green":  {},
	})
	tbl := r.buildTable(svc, false, nil, newRouteRegistry().backendHealth)
	if tbl.split == nil {
		t.Fatalf("no split: %s", tbl.refusal)
	}
	if got := tbl.poolNames(); !slices.Equal(got, []string{"blue", "canary", "green"}) {
		t.Fatalf("pools %v, want name order", got)
	}
	blue, canary, green := &tbl.pools[0], &tbl.pools[1], &tbl.pools[2]
	if len(blue.backends) != 2 || len(blue.available) != 1 || blue.available[0].dial != "10.0.0.1:80" {
		t.Errorf("blue: draining backend must be listed but not available: %+v", blue)
	}
	if !canary.tls || canary.available[0].dial != "10.0.0.3:443" || blue.tls {
		t.Errorf("https:// backends: canary tls=%v dial=%q, blue tls=%v", canary.tls, canary.available[0].dial, blue.tls)
	}
	if blue.lo != 0 || blue.hi != 9900 || canary.lo != 9900 || canary.hi != 10000 || green.lo != green.hi {
		t.Errorf("sticky ranges blue [%d,%d) canary [%d,%d) green [%d,%d)", blue.lo, blue.hi, canary.lo, canary.hi, green.lo, green.hi)
	}

	// A drain elsewhere leaves the effective weights: the split and its
	// cursor carry over, and so do the backend records.
	tbl.split.next()
	svc2 := service("svc", map[string]state.Weight{"blue": 9900, "canary": 100, "green": 0}, map[string][]string{
		"blue":   {"~10.0.0.1:80", "10.0.0.2:80"},
		"canary": {"https://10.0.0.3:443"},
		"green":  {},
	})
	tbl2 := r.buildTable(svc2, false, tbl, newRouteRegistry().backendHealth)
	if tbl2.split != tbl.split {
		t.Error("unchanged effective weights must keep the split and its cursor")
	}
	if tbl2.pools[0].backends[0].backend != blue.backends[0].backend {
		t.Error("backend records must survive a rebuild")
	}
	if tbl2.pools[0].stats != blue.stats {
		t.Error("pool counters must survive a rebuild")
	}

	// Canary loses its only backend: blue gets its share.
	svc3 := service("svc", map[string]state.Weight{"blue": 9900, "canary": 100, "green": 0}, map[string][]string{
		"blue": {"10.0.0.1:80"}, "canary": {"~https://10.0.0.3:443"}, "green": {},
	})
	tbl3 := r.buildTable(svc3, false, tbl2, newRouteRegistry().backendHealth)
	if tbl3.split == tbl2.split || tbl3.pools[0].effective != 10000 || tbl3.pools[1].effective != 0 {
		t.Errorf("canary without backends: effective blue %d canary %d", tbl3.pools[0].effective, tbl3.pools[1].effective)
	}
	if tbl3.pools[1].weight != 100 {
		t.Errorf("the replicated weight stays: %d", tbl3.pools[1].weight)
	}

	// Nothing left: refuse with a clear message.
	svc4 := service("svc", map[string]state.Weight{"blue": 10000, "green": 0}, map[string][]string{
		"blue": {"~10.0.0.1:80"}, "green": {"10.0.0.9:80"},
	})
	if tbl4 := r.buildTable(svc4, false, tbl3, newRouteRegistry().backendHealth); tbl4.split != nil || len(tbl4.refusal) == 0 {
		t.Errorf("no pool left must refuse, got split=%v refusal=%q", tbl4.split != nil, tbl4.refusal)
	}
	if _, ok := r.backends["https://10.0.0.3:443"]; ok || len(r.backends) != 2 {
		t.Errorf("records of removed addresses must be dropped: %v", r.backends)
	}
	for _, tc := range []struct {
		deleted bool
		want    string
	}{{false, "not in the replicated state yet"}, {true, "was deleted"}} {
		tbl := r.buildTable(nil, tc.deleted, nil, newRouteRegistry().backendHealth)
		if tbl.split != nil || !strings.Contains(string(tbl.refusal), tc.want) {
			t.Errorf("unknown service (deleted=%v): refusal %q, want it to say %q", tc.deleted, tbl.refusal, tc.want)
		}
	}
}

func TestRouteRegistryApply(t *testing.T) {
	rr := newRouteRegistry()
	r := rr.hold("svc")
	if tbl := r.table.Load(); tbl == nil || tbl.service != nil {
		t.Fatal("a route made before any view must refuse, not be nil")
	}
	svc := service("svc", map[string]state.Weight{"blue": 10000}, map[string][]string{"blue": {"10.0.0.1:80"}})
	other := service("other", map[string]state.Weight{"a": 10000}, map[string][]string{"a": {"10.0.0.2:80"}})
	rr.apply(&state.View{Index: 1, Services: map[string]*state.Service{"svc": svc, "other": other}})
	first := r.table.Load()
	if first.service != svc {
		t.Fatal("apply must build the table from the view")
	}
	if rr.lookup("other") == nil {
		t.Error("every service of the view gets a route")
	}
	rr.apply(&state.View{Index: 2, Services: map[string]*state.Service{"svc": svc, "other": other}})
	if r.table.Load() != first {
		t.Error("an unchanged service must not rebuild its table")
	}
	rr.apply(&state.View{Index: 3, Services: map[string]*state.Service{"other": other}, Deleted: map[string]uint64{"svc": 3}})
	if tbl := r.table.Load(); tbl.service != nil || !strings.Contains(string(tbl.refusal), "deleted") {
		t.Errorf("deleted service: refusal %q", tbl.refusal)
	}
}

// TestSplitSlotsShared: services with the same effective weights share one
// laid-out cycle of slots (20 kB each; 1,000 services held 26 MB of them,
// nearly half the live heap), each with its own cursor, and the cycle is
// laid out once, not per service.
func TestSplitSlotsShared(t *testing.T) {
	w := map[string]state.Weight{"blue": 5000, "canary": 2500, "green": 2500}
	pools := map[string][]string{"blue": {"10.0.0.1:80"}, "canary": {"10.0.0.2:80"}, "green": {"10.0.0.3:80"}}
	health := newRouteRegistry().backendHealth
	a := newRoute("a").buildTable(service("a", w, pools), false, nil, health)
	b := newRoute("b").buildTable(service("b", w, pools), false, nil, health)
	if a.split == b.split {
		t.Fatal("two services must not share a cursor")
	}
	if &a.split.slots[0] != &b.split.slots[0] {
		t.Error("two services with the same effective weights hold two copies of the same slots")
	}
	a.split.next()
	if b.split.cursor.Load() != 0 {
		t.Error("a request of one service moved the other's cursor")
	}
	other := newRoute("c").buildTable(service("c", map[string]state.Weight{"blue": 10000}, pools), false, nil, health)
	if &other.split.slots[0] == &a.split.slots[0] {
		t.Error("different weights must not share slots")
	}
}
