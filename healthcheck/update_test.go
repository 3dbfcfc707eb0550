package healthcheck

import (
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// TestUpdateFollowsViewChanges: a checker that sees every view looks only at
// the services a view says it changed, one that missed views compares
// everything; either way it ends with the backends of the last view, no
// more, no fewer. Views come from a real state machine applying batches.
func TestUpdateFollowsViewChanges(t *testing.T) {
	every, missing := New(Config{}), New(Config{})
	defer every.Close()
	defer missing.Close()
	views := 0
	m := state.NewMachine(state.Options{OnApply: func(v *state.View, _ []state.Event) {
		every.Update(v)
		if views++; views%2 == 1 {
			missing.Update(v)
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
	put := func(i int, backends ...string) state.Entry {
		s := state.ServiceSpec{Pools: map[string]state.PoolSpec{"blue": {Backends: backends}}}
		return entry(fmt.Sprintf("s%d", i), state.PutService{Spec: &s})
	}
	batches := [][]state.Entry{
		{put(0, "10.0.0.1:80"), put(1, "10.0.1.1:80"), put(2, "10.0.2.1:80")},
		{put(1, "10.0.1.1:80", "10.0.1.2:80")},
		{put(3, "10.0.3.1:80"), entry("s2", state.DeleteService{})},
		{put(0, "10.0.0.9:80")},
		{put(2, "10.0.2.5:80"), entry("s3", state.DeleteService{})},
		{put(1, "10.0.1.3:80")},
	}
	for b, batch := range batches {
		for _, r := range m.ApplyBatch(batch) {
			if !r.OK() {
				t.Fatalf("batch %d: %+v", b, r)
			}
		}
		if b%2 == 1 {
			continue // the checker that misses views catches up at the next one
		}
		want := map[key]struct{}{}
		for name, svc := range m.View().Services {
			maps.Copy(want, backendKeys(name, svc))
		}
		for _, c := range []*Checker{every, missing} {
			c.mu.Lock()
			got := map[key]struct{}{}
			for k := range c.backends {
				got[k] = struct{}{}
			}
			c.mu.Unlock()
			if !maps.Equal(got, want) {
				t.Errorf("batch %d (missing views: %v): backends %v, want %v", b, c == missing, got, want)
			}
		}
	}
}

// TestServiceHealthMatchesGet: ServiceHealth lists every backend of a
// service, in the order of the replicated service (pools by name, then
// each pool's backends), with the status Get answers for it, also after
// the service changed and once a backend's status moved.
func TestServiceHealthMatchesGet(t *testing.T) {
	c := New(Config{})
	defer c.Close()
	svc := service("shop", nil, map[string][]string{
		"green": {"10.0.0.3:80", "10.0.0.1:80"},
		"blue":  {"10.0.0.2:80", "10.0.0.9:80"},
	})
	check := func(step string, svc *state.Service) {
		t.Helper()
		var want []BackendStatus
		for _, pool := range svc.PoolNames() {
			for _, b := range svc.Pools[pool].Backends {
				want = append(want, BackendStatus{Pool: pool, Address: b.Address, Status: c.Get("shop", pool, b.Address).Status})
			}
		}
		if got := c.ServiceHealth("shop", nil); !slices.Equal(got, want) {
			t.Errorf("%s: ServiceHealth = %v, want %v", step, got, want)
		}
	}
	c.Update(view(svc))
	check("created", svc)
	c.ConnectionRefused("shop", "green", "10.0.0.1:80")
	if c.Get("shop", "green", "10.0.0.1:80").Status != StatusUnhealthy {
		t.Fatal("a refused connection must make the backend unhealthy")
	}
	check("a backend unhealthy", svc)
	svc2 := service("shop", nil, map[string][]string{"green": {"10.0.0.1:80", "10.0.0.4:80"}})
	c.Update(view(svc2))
	check("changed", svc2)
	c.Update(view())
	if got := c.ServiceHealth("shop", nil); len(got) != 0 {
		t.Errorf("deleted service: ServiceHealth = %v, want nothing", got)
	}
}
