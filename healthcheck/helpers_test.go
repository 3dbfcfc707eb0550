package healthcheck

import (
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

const healthPath = "/health/ready"

// hc is an active check on healthPath.
func hc(interval, timeout time.Duration, fails, passes int) *state.HealthCheck {
	return &state.HealthCheck{Path: healthPath, Interval: state.Duration(interval), Timeout: state.Duration(timeout), Fails: fails, Passes: passes}
}

// service builds a replicated service; pools maps pool names to addresses.
func service(name string, check *state.HealthCheck, pools map[string][]string) *state.Service {
	s := &state.Service{Name: name, Pools: map[string]*state.Pool{}, Health: check}
	for pool, addrs := range pools {
		p := &state.Pool{}
		for _, a := range addrs {
			p.Backends = append(p.Backends, state.Backend{Address: a})
		}
		s.Pools[pool] = p
	}
	return s
}

func view(svcs ...*state.Service) *state.View {
	v := &state.View{Services: map[string]*state.Service{}}
	for _, s := range svcs {
		v.Services[s.Name] = s
	}
	return v
}

// testBackend is a real HTTP server on 127.0.0.1 whose answer to the health
// path can be switched while it runs.
type testBackend struct {
	srv      *httptest.Server
	handler  atomic.Pointer[http.HandlerFunc]
	requests atomic.Int64
	mu       sync.Mutex
	agents   []string
	paths    []string
}

func newBackend(t *testing.T, h http.HandlerFunc) *testBackend {
	t.Helper()
	b := &testBackend{}
	b.set(h)
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.requests.Add(1)
		b.mu.Lock()
		b.agents = append(b.agents, r.UserAgent())
		b.paths = append(b.paths, r.URL.Path)
		b.mu.Unlock()
		(*b.handler.Load())(w, r)
	}))
	t.Cleanup(b.srv.Close)
	return b
}

func (b *testBackend) set(h http.HandlerFunc) { b.handler.Store(&h) }
func (b *testBackend) addr() string           { return strings.TrimPrefix(b.srv.URL, "http://") }

func answer(code int, contentType, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if contentType != "" {
			w.Header().Set("Content-Type", contentType)
		}
		w.WriteHeader(code)
		w.Write([]byte(body))
	}
}

var (
	ok       = answer(http.StatusOK, "text/plain", "ok")
	degraded = answer(http.StatusOK, "application/json", `{"status":"degraded","dependencies":{"db":"slow"}}`)
	failing  = answer(http.StatusInternalServerError, "text/plain", "boom")
)

// sleeping answers 200 after d, or gives up when the client leaves.
func sleeping(d time.Duration) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(d):
			w.WriteHeader(http.StatusOK)
		case <-r.Context().Done():
		}
	}
}

// eventually polls cond until it holds or 5 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func waitStatus(t *testing.T, c *Checker, svc, pool, addr string, want Status) Backend {
	t.Helper()
	var got Backend
	eventually(t, svc+"/"+pool+"/"+addr+" to be "+string(want), func() bool {
		got = c.Get(svc, pool, addr)
		return got.Status == want
	})
	return got
}

// settleGoroutines fails the test unless the number of goroutines comes back
// to at most want (the servers' connection goroutines take a moment to end).
func settleGoroutines(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= want {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, want at most %d:\n%s", n, want, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// probeRecord is one probe seen by recorder: the status the checker showed
// when the probe started, and whether the probe failed.
type probeRecord struct {
	before Status
	failed bool
}

// recorder is an http.RoundTripper that logs every probe of one backend
// with the status the checker showed when it started. Probes of one backend
// never overlap, so the log tells exactly after how many probes a status
// changed.
type recorder struct {
	base   http.RoundTripper
	status atomic.Pointer[func() Status]
	mu     sync.Mutex
	log    []probeRecord
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	before := (*r.status.Load())()
	resp, err := r.base.RoundTrip(req)
	failed := err != nil || resp.StatusCode < 200 || resp.StatusCode > 299
	r.mu.Lock()
	r.log = append(r.log, probeRecord{before, failed})
	r.mu.Unlock()
	return resp, err
}

func (r *recorder) records() []probeRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]probeRecord(nil), r.log...)
}

// changes counts OnChange calls per service.
type changes struct {
	mu    sync.Mutex
	calls map[string]int
}

func (ch *changes) fn(service string) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.calls == nil {
		ch.calls = map[string]int{}
	}
	ch.calls[service]++
}

func (ch *changes) count(service string) int {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return ch.calls[service]
}
