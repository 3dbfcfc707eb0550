package proxymod

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/slo"
	"github.com/cbproxy/cbproxy/controlplane/state"
)

// TestSLOFiguresAreTheBackends: what clients do must not move a pool's SLO
// figures, only what its backends do. Requests sent to a pool with the
// override header are tests, not the pool's share; a slow upload is the
// client's time, not the backend's; a client that gives up is not a backend
// error — unless it gave up on a backend that kept it waiting past the
// rollback P95, which is the backend's slowness.
func TestSLOFiguresAreTheBackends(t *testing.T) {
	svc, url := steeringSetup(t, "steered", map[string]state.Weight{"blue": state.Total, "canary": 0})
	client := &http.Client{}
	defer client.CloseIdleConnections()
	window := func() slo.Window { return dataPlane{}.Window("steered", "canary", 30*time.Second) }

	t.Run("override header", func(t *testing.T) {
		for range 20 {
			if resp, _ := get(t, client, url, http.Header{"X-Cbproxy-Pool": {"canary"}}); resp.StatusCode != 200 {
				t.Fatalf("override: %s", resp.Status)
			}
		}
		if w := window(); w.Requests != 0 {
			t.Errorf("override-header requests in canary's SLO window: %d, want 0", w.Requests)
		}
		if n := routes.lookup("steered").table.Load().pools[1].overridden.snapshot().requests[1]; n != 20 {
			t.Errorf("override-header requests counted for the metrics: %d, want 20", n)
		}
	})

	t.Run("slow upload", func(t *testing.T) {
		body, pw := io.Pipe()
		go func() {
			for range 6 {
				time.Sleep(250 * time.Millisecond)
				pw.Write([]byte(strings.Repeat("x", 100)))
			}
			pw.Close()
		}()
		// Canary's own share from here on: no override header.
		applyWeights(t, svc, map[string]state.Weight{"canary": state.Total})
		req, _ := http.NewRequest(http.MethodPost, url, body)
		before := window()
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		w := window()
		if w.Requests-before.Requests != 1 {
			t.Fatalf("upload not counted once: %d", w.Requests-before.Requests)
		}
		// The 1.5 s upload is the client's: the backend answered at once.
		if p95, _ := (slo.Window{Buckets: diffBuckets(w, before)}).P95(); p95 > 100 {
			t.Errorf("slow upload counted as %v ms of backend latency", p95)
		}
	})

	t.Run("client aborts", func(t *testing.T) {
		before := window()
		abort := func(sleep, after time.Duration) {
			ctx, cancel := context.WithTimeout(context.Background(), after)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"?sleep="+sleep.String(), nil)
			if resp, err := client.Do(req); err == nil {
				resp.Body.Close()
				t.Fatalf("request finished before the client gave up")
			}
		}
		// Gave up at once: not the backend's doing, in no figure.
		for range 5 {
			abort(2*time.Second, 50*time.Millisecond)
		}
		waitQuiet(t, func() bool { return abortsOf("steered", "canary") >= 5 })
		w := window()
		if w.Requests != before.Requests || w.Errors != before.Errors {
			t.Errorf("quick client aborts moved the figures: %d→%d requests, %d→%d errors", before.Requests, w.Requests, before.Errors, w.Errors)
		}
		// Gave up after 600 ms on a backend that had not answered: slower
		// than the 300 ms rollback P95, so a slow request, not an error.
		abort(5*time.Second, 600*time.Millisecond)
		waitQuiet(t, func() bool { return abortsOf("steered", "canary") >= 6 })
		w2 := window()
		if w2.Requests != w.Requests+1 || w2.Errors != w.Errors {
			t.Errorf("slow abort: %d→%d requests, %d→%d errors; want one more request, no error", w.Requests, w2.Requests, w.Errors, w2.Errors)
		}
		if p95, _ := (slo.Window{Buckets: diffBuckets(w2, w)}).P95(); p95 < 500 {
			t.Errorf("slow abort counted with %v ms, want its wait (≥ 500 ms)", p95)
		}
	})
}

// TestSteeringAttackLeavesVerdict: the attack the steering rules stop, as a
// verdict. While a healthy canary takes everything, an attacker sends slow
// uploads (each 600 ms, twice the rollback P95) and gives up on requests at
// once; without the rules its slow uploads alone make the canary's P95 breach
// and roll a healthy release back.
func TestSteeringAttackLeavesVerdict(t *testing.T) {
	svc, url := steeringSetup(t, "attacked", map[string]state.Weight{"canary": state.Total})
	client := &http.Client{}
	defer client.CloseIdleConnections()

	var wg sync.WaitGroup
	for range 30 {
		wg.Go(func() { // a slow upload: 600 ms of trickle, then an instant answer
			body, pw := io.Pipe()
			go func() {
				for range 3 {
					time.Sleep(200 * time.Millisecond)
					pw.Write([]byte("x"))
				}
				pw.Close()
			}()
			req, _ := http.NewRequest(http.MethodPost, url, body)
			if resp, err := client.Do(req); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	for range 10 { // honest traffic
		get(t, client, url, nil)
	}
	w := dataPlane{}.Window("attacked", "canary", 30*time.Second)
	v := slo.Judge(svc.SLO, "canary", w, slo.Nodes{Reporting: 1}, "", slo.Window{}, slo.Nodes{})
	if v.Result == slo.Breach {
		t.Fatalf("the attack moved the verdict: %s (%d requests)", v.Reason, w.Requests)
	}
	t.Logf("verdict under attack: %s", v.Reason)
}

// steeringSetup serves a service whose blue and canary pools share one
// backend (it reads the whole body, then answers, after ?sleep= if given),
// with the override header and a rollback P95 of 300 ms, and counts windows
// with a test sampler. It returns the service and the proxy's URL.
func steeringSetup(t *testing.T, name string, weights map[string]state.Weight) (*state.Service, string) {
	t.Helper()
	backend := newBackend(t, "canary", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if d, err := time.ParseDuration(r.URL.Query().Get("sleep")); err == nil {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		io.WriteString(w, "canary\n")
	})
	cfg, addrs := caddyConfig(t, nil, map[string]any{"service": name, "override_header": map[string]any{"name": "X-Cbproxy-Pool"}})
	runCaddy(t, cfg)
	svc := service(name, weights, map[string][]string{"blue": {backend.addr()}, "canary": {backend.addr()}})
	svc.SLO = state.DefaultSLO
	svc.SLO.Rollback.P95ms = 300
	svc.SLO.MinRequests = 20
	applyService(svc)
	old := windows
	windows = testSampler(routes)
	t.Cleanup(func() { windows = old })
	return svc, "http://" + addrs[0] + "/"
}

// applyWeights publishes svc with new weights.
func applyWeights(t *testing.T, svc *state.Service, w map[string]state.Weight) {
	t.Helper()
	next := *svc
	next.Weights = state.Weights{}
	for p := range svc.Pools {
		next.Weights[p] = w[p]
	}
	applyService(&next)
}

func diffBuckets(a, b slo.Window) []uint64 {
	out := make([]uint64, len(a.Buckets))
	for i := range out {
		out[i] = a.Buckets[i] - b.Buckets[i]
	}
	return out
}

// abortsOf reads the client aborts counted for a pool.
func abortsOf(service, pool string) uint64 {
	t := routes.lookup(service).table.Load()
	return t.pools[t.pool(pool)].stats.snapshot().requests[classClientAbort]
}

// waitQuiet polls cond for up to 5 s (the proxy counts an abort when it
// notices it, just after the client's side gave up).
func waitQuiet(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
	}
}
