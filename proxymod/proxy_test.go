package proxymod

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// fetch sends GET url and returns the response with its body read.
func fetch(client *http.Client, url string, header http.Header) (*http.Response, string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return nil, "", err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, string(body), err
}

// get is fetch for the test's goroutine: it fails the test on error.
func get(t testing.TB, client *http.Client, url string, header http.Header) (*http.Response, string) {
	t.Helper()
	resp, body, err := fetch(client, url, header)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func TestProxyExactSplit(t *testing.T) {
	blue1, blue2 := newBackend(t, "blue1", nil), newBackend(t, "blue2", nil)
	var leaked sync.Map
	canary := newBackend(t, "canary", func(w http.ResponseWriter, r *http.Request) {
		if v := r.Header.Get("X-Cbproxy-Pool"); v != "" {
			leaked.Store(v, true)
		}
		io.WriteString(w, "canary\n")
	})
	cfg, addrs := caddyConfig(t, nil,
		map[string]any{"service": "split", "expose_pool": true},
		map[string]any{"service": "split", "override_header": map[string]any{"name": "X-Cbproxy-Pool"}},
	)
	runCaddy(t, cfg)
	applyService(service("split", map[string]state.Weight{"blue": 9900, "canary": 100}, map[string][]string{
		"blue": {blue1.addr(), blue2.addr()}, "canary": {canary.addr()},
	}))

	const requests, workers = 10000, 4
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	defer client.CloseIdleConnections()
	var wg sync.WaitGroup
	errs := make(chan string, workers)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < requests; i += workers {
				resp, body, err := fetch(client, "http://"+addrs[0]+"/", nil)
				if err != nil {
					errs <- err.Error()
					return
				}
				pool := resp.Header.Get("X-Cbproxy-Pool")
				if resp.StatusCode != http.StatusOK || !strings.HasPrefix(strings.TrimSpace(body), pool) || pool == "" {
					errs <- resp.Status + " pool=" + pool + " body=" + body
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	if n := canary.hits.Load(); n < 99 || n > 101 {
		t.Errorf("canary at 1 %% got %d of %d requests, want 100 ± 1", n, requests)
	}
	if b1, b2 := blue1.hits.Load(), blue2.hits.Load(); b1+b2+canary.hits.Load() != requests || b1 != b2 {
		t.Errorf("blue backends got %d and %d: want an even round robin of the rest", b1, b2)
	}

	// The second site does not expose the pool, and honours the override
	// header without passing it on.
	before := canary.hits.Load()
	for range 20 {
		resp, _ := get(t, client, "http://"+addrs[1]+"/", http.Header{"X-Cbproxy-Pool": {"canary"}})
		if resp.Header.Get("X-Cbproxy-Pool") != "" {
			t.Fatal("X-Cbproxy-Pool must not be set without expose_pool")
		}
		if resp.Header.Get("X-Backend") != "canary" {
			t.Fatalf("override to canary served by %s", resp.Header.Get("X-Backend"))
		}
	}
	if canary.hits.Load()-before != 20 {
		t.Errorf("override: canary got %d of 20", canary.hits.Load()-before)
	}
	leaked.Range(func(k, _ any) bool {
		t.Errorf("the override header reached the backend: %v", k)
		return true
	})
}

func TestProxyPerPoolRoundRobin(t *testing.T) {
	// 50/50 alternates the pools request by request: with one round-robin
	// cursor for both pools, one blue backend would get nothing.
	blue1, blue2, green := newBackend(t, "blue1", nil), newBackend(t, "blue2", nil), newBackend(t, "green", nil)
	cfg, addrs := caddyConfig(t, nil, map[string]any{"service": "halves"})
	runCaddy(t, cfg)
	applyService(service("halves", map[string]state.Weight{"blue": 5000, "green": 5000}, map[string][]string{
		"blue": {blue1.addr(), blue2.addr()}, "green": {green.addr()},
	}))
	client := &http.Client{}
	defer client.CloseIdleConnections()
	for range 400 {
		if resp, _ := get(t, client, "http://"+addrs[0]+"/", nil); resp.StatusCode != http.StatusOK {
			t.Fatal(resp.Status)
		}
	}
	if b1, b2, g := blue1.hits.Load(), blue2.hits.Load(), green.hits.Load(); b1 != 100 || b2 != 100 || g != 200 {
		t.Errorf("blue1 %d blue2 %d green %d, want 100/100/200", b1, b2, g)
	}
}

func TestProxyRetriesRefusedBackend(t *testing.T) {
	live := newBackend(t, "live", nil)
	dead := freeAddr(t) // nothing listens: connections are refused
	deadOnly := freeAddr(t)
	cfg, addrs := caddyConfig(t, nil,
		map[string]any{"service": "retry"},
		// "first" picks the refusing backend every time: only excluding
		// it on retry reaches the live one.
		map[string]any{"service": "retry", "lb_policy": map[string]any{"policy": "first"}},
		map[string]any{"service": "deadpool"},
	)
	runCaddy(t, cfg)
	applyService(service("retry", map[string]state.Weight{"blue": 10000}, map[string][]string{"blue": {dead, live.addr()}}))
	applyService(service("deadpool", map[string]state.Weight{"blue": 10000}, map[string][]string{"blue": {deadOnly}}))

	client := &http.Client{}
	defer client.CloseIdleConnections()
	slow := 0
	for i := range 100 {
		start := time.Now()
		resp, _ := get(t, client, "http://"+addrs[i%2]+"/", nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("a refused backend beside a live one must not reach the client: %s", resp.Status)
		}
		// A retry that waited Caddy's default try_interval would take 250 ms.
		if time.Since(start) >= 250*time.Millisecond {
			slow++
		}
	}
	if live.hits.Load() != 100 {
		t.Errorf("live backend got %d of 100", live.hits.Load())
	}
	if slow > 5 {
		t.Errorf("%d of 100 requests took 250 ms or more: retries must not sleep", slow)
	}

	// A pool whose only backend refuses: the client gets Caddy's 502 and
	// the request counts as a proxy error.
	stats := routes.lookup("deadpool").table.Load().pools[0].stats
	before := stats.snapshot().requests[classProxyError]
	if resp, _ := get(t, client, "http://"+addrs[2]+"/", nil); resp.StatusCode != http.StatusBadGateway {
		t.Errorf("only backend refused: %s, want 502", resp.Status)
	}
	if got := stats.snapshot().requests[classProxyError] - before; got != 1 {
		t.Errorf("proxy errors counted: %d, want 1", got)
	}
}

func TestProxyNoPoolLeft(t *testing.T) {
	cfg, addrs := caddyConfig(t, nil, map[string]any{"service": "drained"}, map[string]any{"service": "unknown"})
	runCaddy(t, cfg)
	applyService(service("drained", map[string]state.Weight{"blue": 10000}, map[string][]string{"blue": {"~127.0.0.1:9"}}))
	none := routes.lookup("drained").none
	before := none.snapshot().requests[class5xx]
	client := &http.Client{}
	defer client.CloseIdleConnections()
	for i, want := range []string{"no pool to route to", "not in the replicated state yet"} {
		resp, body := get(t, client, "http://"+addrs[i]+"/", nil)
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, want) || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
			t.Errorf("%s: %s %q, want 503 text saying %q", addrs[i], resp.Status, body, want)
		}
	}
	if n := none.snapshot().requests[class5xx] - before; n != 1 {
		t.Errorf("refused requests counted under none: %d, want 1", n)
	}
}

func TestProxyStreamingAndInFlight(t *testing.T) {
	release := make(chan struct{})
	stream := newBackend(t, "stream", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first\n")
		http.NewResponseController(w).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		io.WriteString(w, "second\n")
	})
	cfg, addrs := caddyConfig(t, nil, map[string]any{"service": "stream"})
	runCaddy(t, cfg)
	applyService(service("stream", map[string]state.Weight{"blue": 10000}, map[string][]string{"blue": {stream.addr()}}))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addrs[0]+"/", nil)
	client := &http.Client{}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); err != nil || line != "first\n" {
		t.Fatalf("first chunk: %q, %v (not flushed through the proxy?)", line, err)
	}
	// The backend is mid-response: the admin API sees one request in flight.
	if inFlight := (dataPlane{}).InFlight("stream", "blue", stream.addr()); inFlight != 1 {
		t.Errorf("InFlight mid-stream = %d; want 1", inFlight)
	}
	close(release)
	if line, err := br.ReadString('\n'); err != nil || line != "second\n" {
		t.Fatalf("second chunk: %q, %v", line, err)
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		t.Fatal(err)
	}
	if inFlight := (dataPlane{}).InFlight("stream", "blue", stream.addr()); inFlight != 0 {
		t.Errorf("in flight after the response: %d", inFlight)
	}
}

func TestProxyUpgrade(t *testing.T) {
	echo := newBackend(t, "echo", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "upgrade expected", http.StatusBadRequest)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		io.Copy(conn, brw)
	})
	cfg, addrs := caddyConfig(t, nil, map[string]any{"service": "upgrade"})
	runCaddy(t, cfg)
	applyService(service("upgrade", map[string]state.Weight{"blue": 10000}, map[string][]string{"blue": {echo.addr()}}))
	stats := routes.lookup("upgrade").table.Load().pools[0].stats
	before := stats.snapshot().requests[0]

	conn, err := net.DialTimeout("tcp", addrs[0], 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(conn, "GET / HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %s", resp.Status)
	}
	io.WriteString(conn, "ping\n")
	if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("echo through the upgraded connection: %q, %v", line, err)
	}
	if n := stats.snapshot().requests[0] - before; n != 1 {
		t.Errorf("1xx count after an upgrade: %d, want 1", n)
	}
}

func TestProxyTLSPool(t *testing.T) {
	plain := newBackend(t, "plain", nil)
	var tlsHits sync.Map
	secure := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tlsHits.Store(r.Host, true)
		w.Header().Set("X-Backend", "secure")
	}))
	defer secure.Close()
	cfg, addrs := caddyConfig(t, nil, map[string]any{
		"service":     "tlspool",
		"backend_tls": map[string]any{"insecure_skip_verify": true},
	})
	runCaddy(t, cfg)
	applyService(service("tlspool", map[string]state.Weight{"blue": 5000, "green": 5000}, map[string][]string{
		"blue": {plain.addr()}, "green": {"https://" + secure.Listener.Addr().String()},
	}))
	client := &http.Client{}
	defer client.CloseIdleConnections()
	served := map[string]int{}
	for range 10 {
		resp, _ := get(t, client, "http://"+addrs[0]+"/", nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s", resp.Status)
		}
		served[resp.Header.Get("X-Backend")]++
	}
	if served["plain"] != 5 || served["secure"] != 5 {
		t.Errorf("50/50 over a plain and a TLS pool: %v", served)
	}
	// Like reverse_proxy to https://, the Host sent is the backend's.
	if _, ok := tlsHits.Load(secure.Listener.Addr().String()); !ok {
		t.Error("the TLS backend did not see its own host:port as Host")
	}
}

// TestProxyBackendMetrics: with backend_metrics, a request counts for the
// backend that answered it, on Caddy's proxy path (lb_policy first) and on
// the fast path alike: a retried request for the backend tried last, never
// for the refusing one it skipped; a pool whose only backend refuses counts
// the proxy error for that backend.
func TestProxyBackendMetrics(t *testing.T) {
	ok := newBackend(t, "ok", nil)
	failing := newBackend(t, "failing", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	dead := freeAddr(t)
	cfg, addrs := caddyConfig(t, nil,
		map[string]any{"service": "perbackend", "backend_metrics": true, "lb_policy": map[string]any{"policy": "first"}},
		map[string]any{"service": "perbackend", "backend_metrics": true},
		map[string]any{"service": "deadonly", "backend_metrics": true},
	)
	runCaddy(t, cfg)
	applyService(service("perbackend", map[string]state.Weight{"blue": 5000, "green": 5000}, map[string][]string{
		"blue": {dead, ok.addr()}, "green": {failing.addr()},
	}))
	applyService(service("deadonly", map[string]state.Weight{"blue": 10000}, map[string][]string{"blue": {dead}}))

	client := &http.Client{}
	defer client.CloseIdleConnections()
	for i := range 40 {
		get(t, client, "http://"+addrs[i%2]+"/", nil)
	}
	if resp, _ := get(t, client, "http://"+addrs[2]+"/", nil); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("only backend refused: %s, want 502", resp.Status)
	}
	figures := func(service, address string) [len(classLabels)]uint64 {
		for i := range routes.lookup(service).table.Load().pools {
			for _, b := range routes.lookup(service).table.Load().pools[i].backends {
				if b.address == address {
					if s := b.stats.Load(); s != nil {
						return s.snapshot().requests
					}
				}
			}
		}
		return [len(classLabels)]uint64{}
	}
	okHits, failingHits := ok.hits.Load(), failing.hits.Load()
	if okHits+failingHits != 40 {
		t.Fatalf("backends got %d + %d of 40", okHits, failingHits)
	}
	if got := figures("perbackend", ok.addr()); got[1] != uint64(okHits) || total(got) != uint64(okHits) {
		t.Errorf("ok backend: %v, want %d 2xx and nothing else", got, okHits)
	}
	if got := figures("perbackend", failing.addr()); got[class5xx] != uint64(failingHits) || total(got) != uint64(failingHits) {
		t.Errorf("failing backend: %v, want %d 5xx and nothing else", got, failingHits)
	}
	if got := figures("perbackend", dead); total(got) != 0 {
		t.Errorf("refusing backend of perbackend: %v, want nothing (every request went on to ok)", got)
	}
	if got := figures("deadonly", dead); got[classProxyError] != 1 || total(got) != 1 {
		t.Errorf("refusing only backend: %v, want one proxy_error", got)
	}
}

// total is the number of requests of all classes.
func total(requests [len(classLabels)]uint64) uint64 {
	var n uint64
	for _, c := range requests {
		n += c
	}
	return n
}
