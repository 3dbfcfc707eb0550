package proxymod

import (
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// TestWindowsCountDisplaced: a pool that has a share but cannot take it (no
// available backend) shows, in its SLO window, every request its share
// would have had as a failed one — whether another pool served the request
// or, with no pool left, the client was refused. Silence from a pool that
// should carry traffic must never read as a healthy pool.
func TestWindowsCountDisplaced(t *testing.T) {
	blue := newBackend(t, "blue", nil)
	cfg, addrs := caddyConfig(t, nil, map[string]any{"service": "displaced"}, map[string]any{"service": "refused"})
	runCaddy(t, cfg)
	// Canary has 5 % but its only backend is drained: blue serves everything.
	applyService(service("displaced", map[string]state.Weight{"blue": 9500, "canary": 500}, map[string][]string{
		"blue": {blue.addr()}, "canary": {"~127.0.0.1:9"},
	}))
	// Green has everything and nothing to send it to: every client is refused.
	applyService(service("refused", map[string]state.Weight{"blue": 0, "green": state.Total}, map[string][]string{
		"blue": {blue.addr()}, "green": {"~127.0.0.1:9"},
	}))
	old := windows
	windows = testSampler(routes)
	t.Cleanup(func() { windows = old })

	client := &http.Client{}
	defer client.CloseIdleConnections()
	for range 200 {
		if resp, body := get(t, client, "http://"+addrs[0]+"/", nil); resp.StatusCode != 200 {
			t.Fatalf("displaced: %s %q", resp.Status, body)
		}
	}
	for range 20 {
		if resp, _ := get(t, client, "http://"+addrs[1]+"/", nil); resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("refused: %s", resp.Status)
		}
	}
	for _, tt := range []struct {
		service, pool    string
		requests, errors uint64
	}{
		{"displaced", "blue", 200, 0},
		{"displaced", "canary", 10, 10}, // exactly its 5 % of 200
		{"refused", "green", 20, 20},
		{"refused", "blue", 0, 0}, // no share, nothing owed
	} {
		w := dataPlane{}.Window(tt.service, tt.pool, 30*time.Second)
		if w.Requests != tt.requests || w.Errors != tt.errors {
			t.Errorf("%s/%s: window has %d requests, %d errors; want %d, %d", tt.service, tt.pool, w.Requests, w.Errors, tt.requests, tt.errors)
		}
	}
}

// TestDisplacedStickyClients: a sticky client whose bucket lies in the share
// of a pool that cannot take traffic is served by another pool, and the
// request counts against the pool that owed it.
func TestDisplacedStickyClients(t *testing.T) {
	r := testRoute("svc")
	svc := service("svc", map[string]state.Weight{"blue": 9000, "canary": 1000}, map[string][]string{
		"blue": {"10.0.0.1:80"}, "canary": {"~10.0.0.2:80"},
	})
	tbl := r.buildTable(svc, false, nil, newRouteRegistry().backendHealth)
	h := provisioned(t, &Handler{Sticky: &Sticky{Mode: stickyHeader, Name: "X-User"}})
	owed, served := 0, map[string]int{}
	for i := range 2000 {
		key := "user-" + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676))
		if keyBucket(key) >= 9000 {
			owed++ // canary's buckets under the replicated weights
		}
		req, _ := http.NewRequest(http.MethodGet, "/", nil)
		req.Header.Set("X-User", key)
		p, _ := h.choosePool(tbl, req)
		served[tbl.pools[p].name]++
	}
	if served["canary"] != 0 || served["blue"] != 2000 {
		t.Fatalf("served %v, want everything on blue", served)
	}
	if got := r.stats["canary"].snapshot().displaced; got != uint64(owed) {
		t.Errorf("canary displaced %d, want the %d clients whose buckets it owns", got, owed)
	}
	if got := r.stats["blue"].snapshot().displaced; got != 0 {
		t.Errorf("blue displaced %d, want 0", got)
	}
}

// hungBackend accepts connections and never answers.
func hungBackend(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// TestProxyHungBackend: a backend that accepts the connection and never
// answers becomes a failed request of its pool once the response header
// timeout passes, and counts against the backend like a failed probe.
func TestProxyHungBackend(t *testing.T) {
	cfg, addrs := caddyConfig(t, nil, map[string]any{"service": "hung", "response_header_timeout": "300ms"})
	runCaddy(t, cfg)
	applyService(service("hung", map[string]state.Weight{"canary": state.Total}, map[string][]string{"canary": {hungBackend(t)}}))
	old := windows
	windows = testSampler(routes)
	t.Cleanup(func() { windows = old })

	client := &http.Client{Timeout: 20 * time.Second}
	defer client.CloseIdleConnections()
	resp, _ := get(t, client, "http://"+addrs[0]+"/", nil)
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("hung backend: %s, want 504", resp.Status)
	}
	if w := (dataPlane{}).Window("hung", "canary", 30*time.Second); w.Requests != 1 || w.Errors != 1 {
		t.Errorf("window: %d requests, %d errors; want the timed-out request as a failure", w.Requests, w.Errors)
	}
}

// TestUpstreamTimeoutDefaults: without settings the inner proxies still time
// out a backend that never answers (a hang must show in the figures).
func TestUpstreamTimeoutDefaults(t *testing.T) {
	cfg, _ := caddyConfig(t, nil, map[string]any{"service": "defaults"})
	runCaddy(t, cfg)
	h := &Handler{Service: "defaults"}
	if err := h.setTimeoutDefaults(); err != nil {
		t.Fatal(err)
	}
	if time.Duration(h.DialTimeout) != defaultDialTimeout || time.Duration(h.ResponseHeaderTimeout) != defaultResponseHeaderTimeout {
		t.Errorf("defaults: dial %s, response header %s", time.Duration(h.DialTimeout), time.Duration(h.ResponseHeaderTimeout))
	}
}
