package proxymod

import (
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// BenchmarkServeHTTP proxies through a real Caddy to a loopback backend, for
// information: cbproxy at 99/1 against a plain reverse_proxy with the same
// keep-alive pool, in the same process. Compare the two side by side only.
func BenchmarkServeHTTP(b *testing.B) {
	blue, canary := newBackend(b, "blue", nil), newBackend(b, "canary", nil)
	cfg, addrs := caddyConfig(b, nil,
		map[string]any{"service": "bench"},
		map[string]any{
			"handler":        "reverse_proxy",
			"upstreams":      []any{map[string]any{"dial": blue.addr()}, map[string]any{"dial": canary.addr()}},
			"transport":      map[string]any{"protocol": "http", "keep_alive": map[string]any{"max_idle_conns_per_host": maxIdleConnsPerHost}},
			"load_balancing": map[string]any{"selection_policy": map[string]any{"policy": "weighted_round_robin", "weights": []int{99, 1}}},
		},
	)
	runCaddy(b, cfg)
	applyService(service("bench", map[string]state.Weight{"blue": 9900, "canary": 100}, map[string][]string{
		"blue": {blue.addr()}, "canary": {canary.addr()},
	}))
	for i, name := range []string{"cbproxy", "reverse_proxy"} {
		b.Run(name, func(b *testing.B) {
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			defer client.CloseIdleConnections()
			url := "http://" + addrs[i] + "/"
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := client.Get(url)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Errorf("%s: %s", name, resp.Status)
						return
					}
				}
			})
		})
	}
}

// BenchmarkRebuildOneService is the data plane's share of one applied change
// at 1,000 services of 3 pools x 2 backends (bench/scale.sh, goal ≤ 1 ms):
// the registry gets a view in which one service changed its weights, as
// node.OnChange hands it after a weight change.
func BenchmarkRebuildOneService(b *testing.B) {
	const services = 1000
	rr := newRouteRegistry()
	views := [2]*state.View{{Services: map[string]*state.Service{}}, {Services: map[string]*state.Service{}}}
	pools := map[string][]string{}
	for i := range services {
		name := fmt.Sprintf("s%04d", i)
		for j, pool := range []string{"blue", "canary", "green"} {
			pools[pool] = []string{fmt.Sprintf("10.%d.%d.1:80", i/250, i%250*3+j), fmt.Sprintf("10.%d.%d.2:80", i/250, i%250*3+j)}
		}
		svc := service(name, map[string]state.Weight{"blue": 5000, "canary": 2500, "green": 2500}, pools)
		views[0].Services[name], views[1].Services[name] = svc, svc
	}
	// The changed service alternates between two weight sets, so every
	// apply rebuilds its table with a new split.
	views[1].Services["s0500"] = service("s0500", map[string]state.Weight{"blue": 2500, "canary": 5000, "green": 2500}, pools)
	rr.apply(views[0])
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		// As the state machine publishes them: each view says what it
		// changed from the one before.
		v := *views[(i+1)%2]
		v.Index = uint64(i + 1)
		v.Changes = &state.ViewChanges{Since: uint64(i), Services: []string{"s0500"}}
		rr.apply(&v)
	}
}

// BenchmarkApplyUnchangedView is the part of BenchmarkRebuildOneService
// that does not depend on the change: what the route registry spends on a
// new view among 1,000 services when no service changed (a membership
// change, a refused command), i.e. finding what to rebuild (it walked
// every route before views said what they changed).
func BenchmarkApplyUnchangedView(b *testing.B) {
	const services = 1000
	rr := newRouteRegistry()
	v := &state.View{Services: map[string]*state.Service{}}
	pools := map[string][]string{}
	for i := range services {
		name := fmt.Sprintf("s%04d", i)
		for j, pool := range []string{"blue", "canary", "green"} {
			pools[pool] = []string{fmt.Sprintf("10.%d.%d.1:80", i/250, i%250*3+j), fmt.Sprintf("10.%d.%d.2:80", i/250, i%250*3+j)}
		}
		v.Services[name] = service(name, map[string]state.Weight{"blue": 5000, "canary": 2500, "green": 2500}, pools)
	}
	rr.apply(v)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		next := *v
		next.Index = uint64(i + 1)
		next.Changes = &state.ViewChanges{Since: uint64(i)}
		rr.apply(&next)
	}
}

// BenchmarkRecord is the handler's accounting of one answered request, from
// all cores at once: a random shard of the pool's counters, no lock, no
// allocation.
func BenchmarkRecord(b *testing.B) {
	s := newPoolStats()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s.record(1, 3*time.Millisecond)
		}
	})
}
