package proxymod

import (
	"io"
	"net/http"
	"testing"

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
