package proxymod

import (
	"fmt"
	"math"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/slo"
	"github.com/cbproxy/cbproxy/controlplane/state"
)

// testSampler is a sampler of rr whose clock the test drives by calling
// sample: it takes the first sample now and never starts its ticker. Sample
// i is taken at second i, and a window is asked for one second after the
// newest sample (just before the next tick would come).
func testSampler(rr *routeRegistry) *sampler {
	epoch := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := &sampler{routes: rr}
	s.clock = func() time.Time { return epoch.Add(time.Duration(s.taken) * time.Second) }
	s.once.Do(s.sample)
	return s
}

// registryWith returns a registry holding one service "svc" with the pools.
func registryWith(pools ...string) *routeRegistry {
	rr := newRouteRegistry()
	applyPools(rr, 1, pools...)
	return rr
}

func applyPools(rr *routeRegistry, index uint64, pools ...string) {
	weights := map[string]state.Weight{pools[0]: state.Total}
	backends := map[string][]string{}
	for i, p := range pools {
		backends[p] = []string{fmt.Sprintf("10.0.0.%d:80", i+1)}
	}
	rr.apply(&state.View{Index: index, Services: map[string]*state.Service{"svc": service("svc", weights, backends)}})
}

// traffic is what a test recorded into a pool, to compare windows with.
type traffic struct {
	requests, errors uint64
	buckets          [len(latencyBounds) + 1]uint64
}

// kinds of request, with the bucket their latency falls in (bounds 1 ms,
// 2.5, 5, 10, 25, 50, 100, 250, 500 ms, 1 s, 2, 5, 10 s, +Inf) and whether
// they are errors; status 0 is a proxy error.
var kinds = []struct {
	status  int
	latency time.Duration
	bucket  int
	err     bool
}{
	{200, 3 * time.Millisecond, 2, false},
	{404, 30 * time.Millisecond, 5, false},
	{503, 600 * time.Millisecond, 9, true},
	{0, 3 * time.Second, 11, true},
	{101, 20 * time.Second, 13, false},
	{500, 2 * time.Second, 10, true},
	{200, 1500 * time.Microsecond, 1, false},
}

// record counts n requests of kind k in st and in tr.
func record(st *poolStats, tr *traffic, k, n int) {
	kind := kinds[k%len(kinds)]
	class := classProxyError
	if kind.status != 0 {
		class = statusClass(kind.status)
	}
	for range n {
		st.record(class, kind.latency)
	}
	tr.requests += uint64(n)
	tr.buckets[kind.bucket] += uint64(n)
	if kind.err {
		tr.errors += uint64(n)
	}
}

// sum adds up the traffic of a list of intervals.
func sum(trs ...traffic) slo.Window {
	w := slo.Window{Buckets: make([]uint64, len(latencyBounds)+1)}
	for _, tr := range trs {
		w.Requests += tr.requests
		w.Errors += tr.errors
		for i, n := range tr.buckets {
			w.Buckets[i] += n
		}
	}
	return w
}

func sameWindow(a, b slo.Window) bool {
	return a.Requests == b.Requests && a.Errors == b.Errors && slices.Equal(a.Buckets, b.Buckets)
}

func TestWindows(t *testing.T) {
	for _, ticks := range []int{0, 3, 10, 400} {
		t.Run(fmt.Sprintf("%d ticks", ticks), func(t *testing.T) {
			rr := registryWith("blue", "canary")
			r := rr.lookup("svc")
			canary, blue := r.stats["canary"], r.stats["blue"]
			// Traffic before the sampler starts is in no window.
			record(canary, &traffic{}, 2, 1000)
			s := testSampler(rr)

			// intervals[i] is the traffic between sample i and i+1; the
			// last one is the current partial second.
			intervals := make([]traffic, ticks+1)
			for i := range intervals {
				record(canary, &intervals[i], i, 1+i%5)
				record(canary, &intervals[i], i+3, i%3)
				record(blue, &traffic{}, i, 7) // another pool's traffic
				if i < ticks {
					s.sample()
				}
			}
			for _, d := range []time.Duration{-time.Second, 0, 500 * time.Millisecond, time.Second, 1500 * time.Millisecond, 5 * time.Second,
				30 * time.Second, 300 * time.Second, 301 * time.Second, time.Hour, math.MaxInt64} {
				// The window starts at the oldest sample at most d ago
				// (sample j at second j, asked at second ticks+1), at most
				// the 300 the ring holds back; the partial second counts.
				// With no sample that recent it is empty: never longer than d.
				first := max(int(math.Ceil(float64(ticks+1)-min(d.Seconds(), 1e9))), ticks-(windowSlots-1), 0)
				want := slo.Window{Buckets: make([]uint64, len(latencyBounds)+1)}
				if first <= ticks {
					want = sum(intervals[first:]...)
				}
				if got := s.window("svc", "canary", d); !sameWindow(got, want) {
					t.Errorf("window %v: got %+v, want %+v", d, got, want)
				}
			}
		})
	}
}

func TestWindowsNewPools(t *testing.T) {
	rr := registryWith("blue")
	s := testSampler(rr)
	for range windowSlots + 50 { // green is born after the ring wrapped
		s.sample()
	}

	// green appears, with traffic before its first sample and after.
	applyPools(rr, 2, "blue", "green")
	green := rr.lookup("svc").stats["green"]
	var before, after, partial traffic
	record(green, &before, 0, 4)
	t.Run("not sampled yet", func(t *testing.T) {
		if got, want := s.window("svc", "green", 30*time.Second), sum(before); !sameWindow(got, want) {
			t.Errorf("got %+v, want %+v", got, want)
		}
	})
	s.sample()
	record(green, &after, 2, 3)
	s.sample()
	record(green, &partial, 3, 2)

	empty := slo.Window{Buckets: make([]uint64, len(latencyBounds)+1)}
	for _, tt := range []struct {
		d    time.Duration
		want slo.Window
	}{
		{0, empty}, // no sample in the last 0 s
		{time.Second, sum(partial)},
		{2 * time.Second, sum(after, partial)},
		{3 * time.Second, sum(before, after, partial)},
		// Older than the pool: all of its traffic, from zero.
		{30 * time.Second, sum(before, after, partial)},
		{time.Hour, sum(before, after, partial)},
	} {
		if got := s.window("svc", "green", tt.d); !sameWindow(got, tt.want) {
			t.Errorf("window %v: got %+v, want %+v", tt.d, got, tt.want)
		}
	}

	for _, key := range []poolKey{{"svc", "nope"}, {"nope", "blue"}, {"", ""}} {
		if got := s.window(key.service, key.pool, time.Minute); !sameWindow(got, empty) {
			t.Errorf("window of unknown %v: %+v", key, got)
		}
	}
}

// TestWindowsTicker starts a sampler the way the data plane does, on first
// use, with a tick source the test controls.
func TestWindowsTicker(t *testing.T) {
	rr := registryWith("blue")
	blue := rr.lookup("svc").stats["blue"]
	ticks := make(chan time.Time)
	defer close(ticks) // ends the sampler's goroutine
	s := &sampler{routes: rr, ticks: func() <-chan time.Time { return ticks }}

	record(blue, &traffic{}, 0, 10)
	if got := s.window("svc", "blue", time.Minute); got.Requests != 0 {
		t.Fatalf("first use counts traffic from before it: %+v", got)
	}
	var first, second traffic
	record(blue, &first, 1, 5)
	// Unbuffered: the second send returns only once the sampler is done
	// with the first tick and waits for the next.
	ticks <- time.Now()
	ticks <- time.Now()
	s.mu.Lock()
	taken := s.taken
	s.mu.Unlock()
	if taken < 2 {
		t.Fatalf("%d samples after start and a tick, want at least 2", taken)
	}
	record(blue, &second, 2, 3)
	if got, want := s.window("svc", "blue", time.Minute), sum(first, second); !sameWindow(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

// TestWindowsConcurrent records, samples and reads at once (run it with
// -race), then checks that nothing was lost.
func TestWindowsConcurrent(t *testing.T) {
	rr := registryWith("blue", "canary")
	r := rr.lookup("svc")
	pools := []*poolStats{r.stats["blue"], r.stats["canary"]}
	s := testSampler(rr)

	ticks := make(chan time.Time)
	ran := make(chan struct{})
	go func() {
		s.run(ticks)
		close(ran)
	}()

	const writers, perWriter = 4, 5000
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				class := class5xx
				if i%10 != 0 {
					class = statusClass(200)
				}
				pools[w%2].record(class, time.Duration(i)*time.Millisecond)
			}
		})
	}
	var readers sync.WaitGroup
	for range 2 {
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				for _, d := range []time.Duration{time.Second, 5 * time.Second, time.Minute} {
					w := s.window("svc", "canary", d)
					if w.Errors > w.Requests || len(w.Buckets) != len(latencyBounds)+1 {
						t.Errorf("window %v: %+v", d, w)
						return
					}
				}
			}
		})
	}
	tickers := sync.WaitGroup{}
	tickers.Go(func() {
		// Fewer ticks than the ring holds, so that the last window still
		// reaches back to the start.
		for range windowSlots - 1 {
			select {
			case <-stop:
				return
			case ticks <- time.Now():
			}
			time.Sleep(100 * time.Microsecond)
		}
	})
	wg.Wait()
	close(stop)
	readers.Wait()
	tickers.Wait()
	close(ticks)
	<-ran

	for _, pool := range []string{"blue", "canary"} {
		w := s.window("svc", pool, time.Hour)
		var inBuckets uint64
		for _, n := range w.Buckets {
			inBuckets += n
		}
		const want = writers / 2 * perWriter
		if w.Requests != want || inBuckets != want || w.Errors != want/10 {
			t.Errorf("%s: %d requests, %d in buckets, %d errors; want %d, %d, %d", pool, w.Requests, inBuckets, w.Errors, want, want, want/10)
		}
	}
}

// TestWindowsProxied counts real requests through Caddy: the data plane's
// Window sees every answer, 5xx and proxy errors as errors.
func TestWindowsProxied(t *testing.T) {
	failing := newBackend(t, "canary", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	cfg, addrs := caddyConfig(t, nil, map[string]any{"service": "windowed", "override_header": map[string]any{"name": "X-Cbproxy-Pool"}})
	runCaddy(t, cfg)
	dead := freeAddr(t) // nothing listens: a proxy error
	applyService(service("windowed", map[string]state.Weight{"canary": state.Total}, map[string][]string{
		"canary": {failing.addr()}, "dead": {dead},
	}))

	old := windows
	windows = testSampler(routes)
	t.Cleanup(func() { windows = old })

	client := &http.Client{}
	defer client.CloseIdleConnections()
	toDead := http.Header{"X-Cbproxy-Pool": {"dead"}}
	for i := range 30 {
		path := "/ok"
		if i%3 == 0 {
			path = "/fail"
		}
		get(t, client, "http://"+addrs[0]+path, nil)
		if i == 0 {
			// Once: the refusal marks the backend unhealthy.
			get(t, client, "http://"+addrs[0]+"/", toDead)
		}
		if i == 15 {
			windows.sample()
		}
	}

	for _, tt := range []struct {
		pool             string
		requests, errors uint64
	}{
		{"canary", 30, 10},
		// Sent there with the override header: a test, not its share.
		{"dead", 0, 0},
	} {
		w := dataPlane{}.Window("windowed", tt.pool, 30*time.Second)
		if w.Requests != tt.requests || w.Errors != tt.errors {
			t.Errorf("%s: %d requests, %d errors; want %d, %d", tt.pool, w.Requests, w.Errors, tt.requests, tt.errors)
		}
	}
}
