package healthcheck

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

const (
	tick    = 20 * time.Millisecond
	timeout = 200 * time.Millisecond
)

// TestProbeVerdicts probes real backends on 127.0.0.1 and checks the status
// each kind of answer settles on.
func TestProbeVerdicts(t *testing.T) {
	huge := `{"status":"degraded","padding":"` + strings.Repeat("x", 2*maxBody) + `"}`
	tests := []struct {
		name      string
		handler   http.HandlerFunc
		closed    bool // the server is shut down before the first probe
		timeout   time.Duration
		want      Status
		wantError string // in LastError
	}{
		{name: "200", handler: ok, want: StatusHealthy},
		{name: "204 no body", handler: answer(http.StatusNoContent, "", ""), want: StatusHealthy},
		{name: "degraded JSON", handler: degraded, want: StatusDegraded},
		{name: "degraded without content type", handler: answer(http.StatusOK, "", ` {"Status":"DEGRADED"}`), want: StatusDegraded},
		{name: "ok JSON", handler: answer(http.StatusOK, "application/json", `{"status":"ok"}`), want: StatusHealthy},
		{name: "degraded body cut at the bound", handler: answer(http.StatusOK, "application/json", huge), want: StatusHealthy},
		{name: "500", handler: failing, want: StatusUnhealthy, wantError: "answered 500 Internal Server Error"},
		{name: "503 degraded JSON", handler: answer(http.StatusServiceUnavailable, "application/json", `{"status":"degraded"}`), want: StatusUnhealthy, wantError: "503"},
		{name: "redirect not followed", handler: func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/elsewhere", http.StatusFound) }, want: StatusUnhealthy, wantError: "302 Found"},
		{name: "timeout", handler: sleeping(time.Minute), timeout: 50 * time.Millisecond, want: StatusUnhealthy, wantError: "timeout"},
		{name: "refused", handler: ok, closed: true, want: StatusUnhealthy, wantError: "refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBackend(t, tt.handler)
			if tt.closed {
				b.srv.Close()
			}
			to := tt.timeout
			if to == 0 {
				to = timeout
			}
			c := New(Config{})
			defer c.Close()
			start := time.Now()
			c.Update(view(service("svc", hc(tick, to, 1, 1), map[string][]string{"blue": {b.addr()}})))
			got := waitStatus(t, c, "svc", "blue", b.addr(), tt.want)
			if tt.wantError == "" && got.LastError != "" {
				t.Errorf("LastError = %q, want none", got.LastError)
			}
			if !strings.Contains(got.LastError, tt.wantError) {
				t.Errorf("LastError = %q, want it to contain %q", got.LastError, tt.wantError)
			}
			if got.Checked.Before(start) || got.Checked.After(time.Now()) {
				t.Errorf("Checked = %v, want between %v and now", got.Checked, start)
			}
			if got.LatencyMs <= 0 {
				t.Errorf("LatencyMs = %v, want > 0", got.LatencyMs)
			}
			if tt.name == "timeout" && got.LatencyMs < 50 {
				t.Errorf("LatencyMs = %v for a timed-out probe, want at least the 50 ms timeout", got.LatencyMs)
			}
			if tt.closed {
				return
			}
			b.mu.Lock()
			defer b.mu.Unlock()
			for i := range b.agents {
				if b.agents[i] != userAgent || b.paths[i] != healthPath {
					t.Errorf("probe %d: GET %s with User-Agent %q, want GET %s with %q", i, b.paths[i], b.agents[i], healthPath, userAgent)
				}
			}
		})
	}
}

// recordedChecker returns a checker whose probes of one backend are logged by
// the returned recorder.
func recordedChecker(t *testing.T, svc, pool, addr string) (*Checker, *recorder) {
	t.Helper()
	client := defaultClient()
	rec := &recorder{base: client.Transport}
	client.Transport = rec
	c := New(Config{Client: client})
	t.Cleanup(c.Close)
	status := func() Status { return c.Get(svc, pool, addr).Status }
	rec.status.Store(&status)
	return c, rec
}

// TestKilledBackend closes a healthy backend's server: it must turn unhealthy
// with exactly the fails-th failed probe, and recover with exactly the
// passes-th successful probe once it is back on the same address.
func TestKilledBackend(t *testing.T) {
	const fails, passes = 3, 2
	b := newBackend(t, ok)
	addr := b.addr()
	c, rec := recordedChecker(t, "svc", "blue", addr)
	c.Update(view(service("svc", hc(tick, timeout, fails, passes), map[string][]string{"blue": {addr}})))
	waitStatus(t, c, "svc", "blue", addr, StatusHealthy)

	b.srv.Close()
	got := waitStatus(t, c, "svc", "blue", addr, StatusUnhealthy)
	if !strings.Contains(got.LastError, "refused") {
		t.Errorf("LastError = %q, want a refused connection", got.LastError)
	}
	eventually(t, "one more probe", func() bool {
		r := rec.records()
		return len(r) > 0 && r[len(r)-1].before == StatusUnhealthy
	})
	checkRun(t, rec.records(), true, StatusHealthy, StatusUnhealthy, fails)

	// Bring a server back on the same address.
	srv := httptest.NewUnstartedServer(ok)
	if err := srv.Listener.Close(); err != nil {
		t.Fatal(err)
	}
	l, err := listenRetry(addr)
	if err != nil {
		t.Skipf("cannot listen on %s again: %v", addr, err)
	}
	srv.Listener = l
	srv.Start()
	defer srv.Close()
	waitStatus(t, c, "svc", "blue", addr, StatusHealthy)
	eventually(t, "one more probe", func() bool {
		r := rec.records()
		return r[len(r)-1].before == StatusHealthy
	})
	checkRun(t, rec.records(), false, StatusUnhealthy, StatusHealthy, passes)
}

// TestFailingAndRecovering switches a backend between 500 and 200 and checks
// the thresholds against the probe log.
func TestFailingAndRecovering(t *testing.T) {
	for _, th := range []struct{ fails, passes int }{{1, 1}, {2, 2}, {3, 1}, {1, 3}} {
		b := newBackend(t, ok)
		c, rec := recordedChecker(t, "svc", "blue", b.addr())
		c.Update(view(service("svc", hc(tick, timeout, th.fails, th.passes), map[string][]string{"blue": {b.addr()}})))
		waitStatus(t, c, "svc", "blue", b.addr(), StatusHealthy)
		b.set(failing)
		waitStatus(t, c, "svc", "blue", b.addr(), StatusUnhealthy)
		b.set(ok)
		waitStatus(t, c, "svc", "blue", b.addr(), StatusHealthy)
		eventually(t, "one more probe", func() bool {
			r := rec.records()
			return r[len(r)-1].before == StatusHealthy
		})
		r := rec.records()
		checkRun(t, r, true, StatusHealthy, StatusUnhealthy, th.fails)
		checkRun(t, r, false, StatusUnhealthy, StatusHealthy, th.passes)
		c.Close()
	}
}

// checkRun finds the last run of probes that failed (or succeeded) and
// started while the backend was from, and checks that exactly n such probes
// came before the first one that saw the status to.
func checkRun(t *testing.T, log []probeRecord, failed bool, from, to Status, n int) {
	t.Helper()
	end := -1
	for i := len(log) - 1; i >= 0; i-- {
		if log[i].before == from && log[i].failed == failed {
			end = i
			break
		}
	}
	if end < 0 {
		t.Fatalf("no %v probe while %s in %v", failed, from, log)
	}
	run := 0
	for i := end; i >= 0 && log[i].before == from && log[i].failed == failed; i-- {
		run++
	}
	if run != n || end+1 >= len(log) || log[end+1].before != to {
		t.Fatalf("want exactly %d probes (failed=%v) while %s, then %s; log %v", n, failed, from, to, log)
	}
}

// listenRetry listens on addr again after its server closed.
func listenRetry(addr string) (net.Listener, error) {
	var err error
	for range 50 {
		var l net.Listener
		if l, err = net.Listen("tcp", addr); err == nil {
			return l, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil, err
}

// TestUpdate adds and removes services, pools and backends and checks that
// probes start and stop with them, and that no goroutine is left.
func TestUpdate(t *testing.T) {
	blue1, blue2, green := newBackend(t, ok), newBackend(t, degraded), newBackend(t, ok)
	other := newBackend(t, ok)
	base := runtime.NumGoroutine()

	c := New(Config{})
	check := hc(tick, timeout, 1, 1)
	svc := service("svc", check, map[string][]string{"blue": {blue1.addr(), blue2.addr()}, "green": {green.addr()}})
	c.Update(view(svc, service("other", check, map[string][]string{"blue": {other.addr()}})))
	waitStatus(t, c, "svc", "blue", blue1.addr(), StatusHealthy)
	waitStatus(t, c, "svc", "blue", blue2.addr(), StatusDegraded)
	waitStatus(t, c, "svc", "green", green.addr(), StatusHealthy)
	waitStatus(t, c, "other", "blue", other.addr(), StatusHealthy)
	if got := c.Get("svc", "green", blue1.addr()); got.Status != StatusUnknown {
		t.Errorf("Get of an address in another pool = %s, want unknown", got.Status)
	}

	// Drop blue2, the green pool and the other service.
	c.Update(view(service("svc", check, map[string][]string{"blue": {blue1.addr()}})))
	for _, k := range []key{{"svc", "blue", blue2.addr()}, {"svc", "green", green.addr()}, {"other", "blue", other.addr()}} {
		if got := c.Get(k.service, k.pool, k.address); got.Status != StatusUnknown {
			t.Errorf("removed backend %v: status %s, want unknown", k, got.Status)
		}
	}
	stopped := []*testBackend{blue2, green, other}
	counts := make([]int64, len(stopped))
	time.Sleep(timeout) // a probe under way may still arrive
	for i, b := range stopped {
		counts[i] = b.requests.Load()
	}
	before := blue1.requests.Load()
	time.Sleep(5 * tick)
	for i, b := range stopped {
		if n := b.requests.Load(); n != counts[i] {
			t.Errorf("removed backend %s still probed: %d probes, was %d", b.addr(), n, counts[i])
		}
	}
	if blue1.requests.Load() <= before {
		t.Errorf("kept backend %s no longer probed", blue1.addr())
	}
	// The kept backend's goroutine and the notifier are all that run.
	settleGoroutines(t, base+2)

	c.Update(view())
	settleGoroutines(t, base+1)
	c.Close()
	settleGoroutines(t, base)
	if got := c.Get("svc", "blue", blue1.addr()); got.Status != StatusUnknown {
		t.Errorf("backend of a deleted service: status %s, want unknown", got.Status)
	}
}

// TestUpdateRestartsOnlyChangedChecks uses an interval of an hour, so that
// every probe is the immediate one of a (re)started probe loop.
func TestUpdateRestartsOnlyChangedChecks(t *testing.T) {
	b := newBackend(t, ok)
	c := New(Config{})
	defer c.Close()
	check := hc(time.Hour, timeout, 2, 2)
	pools := map[string][]string{"blue": {b.addr()}}
	svc := service("svc", check, pools)
	c.Update(view(svc))
	waitStatus(t, c, "svc", "blue", b.addr(), StatusHealthy)

	steps := []struct {
		name       string
		svc        *state.Service
		wantProbes int64
	}{
		{"same service in a new view", svc, 1},
		{"new service value, same check", service("svc", hc(time.Hour, timeout, 2, 2), pools), 1},
		{"new path", &state.Service{Name: "svc", Pools: svc.Pools, Health: &state.HealthCheck{Path: "/ready", Interval: check.Interval, Timeout: check.Timeout, Fails: 2, Passes: 2}}, 2},
		{"new interval", service("svc", hc(2*time.Hour, timeout, 2, 2), pools), 3},
		{"new thresholds", service("svc", hc(2*time.Hour, timeout, 3, 1), pools), 4},
	}
	for _, s := range steps {
		c.Update(view(s.svc))
		eventually(t, s.name+": probes", func() bool { return b.requests.Load() >= s.wantProbes })
		time.Sleep(5 * tick)
		if n := b.requests.Load(); n != s.wantProbes {
			t.Fatalf("%s: %d probes, want %d", s.name, n, s.wantProbes)
		}
		if got := c.Get("svc", "blue", b.addr()); got.Status != StatusHealthy {
			t.Fatalf("%s: status %s, want healthy kept", s.name, got.Status)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if want := []string{healthPath, "/ready", healthPath, healthPath}; !slices.Equal(b.paths, want) {
		t.Errorf("probed paths %v, want %v", b.paths, want)
	}
}

// TestCheckAddedAndRemoved switches a service between passive only and an
// active check.
func TestCheckAddedAndRemoved(t *testing.T) {
	b := newBackend(t, failing)
	c := New(Config{})
	defer c.Close()
	pools := map[string][]string{"blue": {b.addr()}}
	c.Update(view(service("svc", nil, pools)))
	if got := c.Get("svc", "blue", b.addr()); got.Status != StatusHealthy {
		t.Fatalf("without a check: status %s, want healthy", got.Status)
	}
	time.Sleep(3 * tick)
	if n := b.requests.Load(); n != 0 {
		t.Fatalf("without a check: %d probes, want none", n)
	}

	c.Update(view(service("svc", hc(tick, timeout, 2, 1), pools)))
	got := waitStatus(t, c, "svc", "blue", b.addr(), StatusUnhealthy)
	if got.LastError == "" {
		t.Error("unhealthy without LastError")
	}

	c.Update(view(service("svc", nil, pools)))
	got = c.Get("svc", "blue", b.addr())
	if got.Status != StatusHealthy {
		t.Fatalf("check removed: status %s, want healthy", got.Status)
	}
	time.Sleep(timeout)
	n := b.requests.Load()
	time.Sleep(5 * tick)
	if m := b.requests.Load(); m != n {
		t.Fatalf("check removed: still probed (%d, then %d probes)", n, m)
	}
}

// TestConnectionRefusedWhileProxying marks a backend that passes its probes
// unhealthy at once, and checks the probes bring it back.
func TestConnectionRefusedWhileProxying(t *testing.T) {
	b := newBackend(t, ok)
	c := New(Config{})
	defer c.Close()
	var ch changes
	defer c.OnChange(ch.fn)()
	// A long interval: the refused signal must not depend on a probe.
	c.Update(view(service("svc", hc(300*time.Millisecond, timeout, 3, 2), map[string][]string{"blue": {b.addr()}})))
	waitStatus(t, c, "svc", "blue", b.addr(), StatusHealthy)
	eventually(t, "the first change to be reported", func() bool { return ch.count("svc") == 1 })

	c.ConnectionRefused("svc", "blue", b.addr())
	got := c.Get("svc", "blue", b.addr())
	if got.Status != StatusUnhealthy || !strings.Contains(got.LastError, "refused") {
		t.Fatalf("after ConnectionRefused: %+v, want unhealthy at once, refused", got)
	}
	probes := b.requests.Load()
	waitStatus(t, c, "svc", "blue", b.addr(), StatusHealthy)
	if n := b.requests.Load() - probes; n < 2 {
		t.Errorf("healthy again after %d probes, want passes (2)", n)
	}
	eventually(t, "three changes to be reported", func() bool { return ch.count("svc") == 3 })

	// Signals about unknown backends are ignored.
	c.ConnectionRefused("svc", "green", b.addr())
	c.ProxyFailure("nosuch", "blue", b.addr(), http.StatusBadGateway)
	if got := c.Get("svc", "green", b.addr()); got.Status != StatusUnknown {
		t.Errorf("signal for an unknown backend created it: %+v", got)
	}
}

// TestPassiveOnly checks a service without an active check: healthy, held
// down by passive failures for the cool-down, never probed.
func TestPassiveOnly(t *testing.T) {
	// Long enough that the sleep inside it below ends well before it on a
	// loaded machine (at 150 ms, a sleep of 75 ms once overran it).
	const cooldown = 600 * time.Millisecond
	b := newBackend(t, ok)
	addr := b.addr()
	c := New(Config{PassiveCooldown: cooldown})
	defer c.Close()
	var ch changes
	defer c.OnChange(ch.fn)()
	c.Update(view(service("svc", nil, map[string][]string{"blue": {addr}})))
	get := func() Status { return c.Get("svc", "blue", addr).Status }

	if s := get(); s != StatusHealthy {
		t.Fatalf("status %s, want healthy", s)
	}
	c.ProxyFailure("svc", "blue", addr, http.StatusInternalServerError)
	c.ProxyFailure("svc", "blue", addr, http.StatusInternalServerError)
	if s := get(); s != StatusHealthy {
		t.Fatalf("after two 500s: %s, want healthy (ignored)", s)
	}
	c.ProxyFailure("svc", "blue", addr, http.StatusGatewayTimeout)
	if s := get(); s != StatusHealthy {
		t.Fatalf("after one 504: %s, want healthy (default fails is 2)", s)
	}
	start := time.Now()
	c.ProxyFailure("svc", "blue", addr, 0)
	if s := get(); s != StatusUnhealthy {
		t.Fatalf("after a 504 and a transport error: %s, want unhealthy", s)
	}
	got := waitStatus(t, c, "svc", "blue", addr, StatusHealthy)
	if d := time.Since(start); d < cooldown {
		t.Errorf("healthy again after %v, want the cool-down %v", d, cooldown)
	}
	if got.LastError != "" {
		t.Errorf("LastError %q after the cool-down, want none", got.LastError)
	}
	eventually(t, "two changes to be reported", func() bool { return ch.count("svc") == 2 })

	// The failure count was forgotten with the cool-down.
	c.ProxyFailure("svc", "blue", addr, http.StatusBadGateway)
	if s := get(); s != StatusHealthy {
		t.Fatalf("one 502 after the cool-down: %s, want healthy", s)
	}

	// A refusal: down at once, and each new failure extends the cool-down.
	c.ConnectionRefused("svc", "blue", addr)
	if s := get(); s != StatusUnhealthy {
		t.Fatalf("after ConnectionRefused: %s, want unhealthy", s)
	}
	time.Sleep(cooldown / 4)
	if s := get(); s != StatusUnhealthy {
		t.Fatalf("%v into the cool-down of %v: %s, want still unhealthy", cooldown/4, cooldown, s)
	}
	last := time.Now()
	c.ProxyFailure("svc", "blue", addr, http.StatusServiceUnavailable)
	waitStatus(t, c, "svc", "blue", addr, StatusHealthy)
	if d := time.Since(last); d < cooldown {
		t.Errorf("healthy again %v after the last failure, want the cool-down %v", d, cooldown)
	}
	if n := b.requests.Load(); n != 0 {
		t.Errorf("passive-only backend probed %d times", n)
	}
	eventually(t, "four changes to be reported", func() bool { return ch.count("svc") == 4 })
}

// TestOnChange checks that listeners hear of every status change once, may
// call Get, survive a panicking neighbour, and stop after cancel.
func TestOnChange(t *testing.T) {
	b := newBackend(t, ok)
	core, logs := observer.New(zap.ErrorLevel)
	c := New(Config{Logger: zap.New(core)})
	defer c.Close()
	var ch, canceled changes
	var (
		mu   sync.Mutex
		seen []Status // statuses read from inside the listener
	)
	cancelPanic := c.OnChange(func(string) { panic("listener bug") })
	defer cancelPanic()
	defer c.OnChange(func(service string) {
		mu.Lock()
		seen = append(seen, c.Get("svc", "blue", b.addr()).Status)
		mu.Unlock()
		ch.fn(service)
	})()
	cancel := c.OnChange(canceled.fn)

	c.Update(view(service("svc", hc(tick, timeout, 1, 1), map[string][]string{"blue": {b.addr()}})))
	eventually(t, "healthy to be reported", func() bool { return ch.count("svc") == 1 })
	cancel()
	b.set(failing)
	eventually(t, "unhealthy to be reported", func() bool { return ch.count("svc") == 2 })
	b.set(degraded)
	eventually(t, "degraded to be reported", func() bool { return ch.count("svc") == 3 })

	// No more calls while nothing changes.
	time.Sleep(10 * tick)
	if n := ch.count("svc"); n != 3 {
		t.Errorf("%d calls for 3 changes", n)
	}
	if n := canceled.count("svc"); n != 1 {
		t.Errorf("canceled listener called %d times, want 1 (before cancel)", n)
	}
	want := []Status{StatusHealthy, StatusUnhealthy, StatusDegraded}
	mu.Lock()
	defer mu.Unlock()
	for i := range want {
		if i >= len(seen) || seen[i] != want[i] {
			t.Fatalf("statuses seen by the listener %v, want %v", seen, want)
		}
	}
	if n := logs.FilterMessage("health change listener panicked").Len(); n != 3 {
		t.Errorf("%d panics logged, want 3", n)
	}
}

// TestWaitChecked waits for a pool with a slow backend, and gives up with
// the context on a pool that gets no verdict.
func TestWaitChecked(t *testing.T) {
	fast, slow := newBackend(t, ok), newBackend(t, sleeping(100*time.Millisecond))
	dead := newBackend(t, ok)
	dead.srv.Close()
	c := New(Config{})
	defer c.Close()
	c.Update(view(
		service("svc", hc(time.Hour, time.Second, 1, 1), map[string][]string{"blue": {fast.addr(), slow.addr()}}),
		// fails 2 with an hour's interval: one failed probe leaves it unknown.
		service("stuck", hc(time.Hour, time.Second, 2, 1), map[string][]string{"blue": {dead.addr()}}),
	))

	start := time.Now()
	c.WaitChecked(context.Background(), "svc", "blue")
	if d := time.Since(start); d < 80*time.Millisecond {
		t.Errorf("WaitChecked returned after %v, before the slow backend answered", d)
	}
	for _, a := range []string{fast.addr(), slow.addr()} {
		if s := c.Get("svc", "blue", a).Status; s != StatusHealthy {
			t.Errorf("%s: %s after WaitChecked, want healthy", a, s)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start = time.Now()
	c.WaitChecked(ctx, "stuck", "blue")
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Errorf("WaitChecked on an unknown backend returned after %v, before ctx ended", d)
	}
	if s := c.Get("stuck", "blue", dead.addr()).Status; s != StatusUnknown {
		t.Errorf("dead backend after one failed probe with fails 2: %s, want unknown", s)
	}

	for _, p := range [][2]string{{"nosuch", "blue"}, {"svc", "nosuch"}} {
		done := make(chan struct{})
		go func() { c.WaitChecked(context.Background(), p[0], p[1]); close(done) }()
		select {
		case <-done:
		case <-time.After(time.Second):
			t.Fatalf("WaitChecked(%s, %s) blocks on something unknown", p[0], p[1])
		}
	}

	// Removing the unknown backend, or closing, ends a wait.
	done := make(chan struct{})
	go func() { c.WaitChecked(context.Background(), "stuck", "blue"); close(done) }()
	c.Update(view(service("svc", hc(time.Hour, time.Second, 1, 1), map[string][]string{"blue": {fast.addr(), slow.addr()}})))
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("WaitChecked still waits for a removed service")
	}
	c.Update(view(service("stuck", hc(time.Hour, time.Second, 2, 1), map[string][]string{"blue": {dead.addr()}})))
	done = make(chan struct{})
	go func() { c.WaitChecked(context.Background(), "stuck", "blue"); close(done) }()
	c.Close()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("WaitChecked still waits after Close")
	}
}

// TestTLS probes an https:// backend: the default client verifies its
// certificate (a test certificate fails), a client that trusts it passes.
func TestTLS(t *testing.T) {
	srv := httptest.NewUnstartedServer(ok)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the failed handshake is the point
	srv.StartTLS()
	defer srv.Close()
	addr := srv.URL // https://127.0.0.1:port
	for _, tc := range []struct {
		name      string
		client    *http.Client
		want      Status
		wantError string
	}{
		{"default client verifies", nil, StatusUnhealthy, "certificate"},
		{"client trusting the server", srv.Client(), StatusHealthy, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := New(Config{Client: tc.client})
			defer c.Close()
			// A generous probe timeout: a TLS handshake under -race on a
			// busy machine can take longer than the 200 ms of the other
			// tests, and a probe cut by its timeout fails for the wrong
			// reason (seen in make test).
			c.Update(view(service("svc", hc(tick, 10*time.Second, 1, 1), map[string][]string{"blue": {addr}})))
			got := waitStatus(t, c, "svc", "blue", addr, tc.want)
			if !strings.Contains(got.LastError, tc.wantError) {
				t.Errorf("LastError = %q, want it to contain %q", got.LastError, tc.wantError)
			}
		})
	}
}

type panicTransport struct{}

func (panicTransport) RoundTrip(*http.Request) (*http.Response, error) { panic("transport bug") }

// TestProbePanic checks that a panic during a probe is logged, counts as a
// failed check and does not stop the probes.
func TestProbePanic(t *testing.T) {
	core, logs := observer.New(zap.ErrorLevel)
	c := New(Config{Logger: zap.New(core), Client: &http.Client{Transport: panicTransport{}}})
	defer c.Close()
	c.Update(view(service("svc", hc(tick, timeout, 1, 1), map[string][]string{"blue": {"127.0.0.1:9"}})))
	got := waitStatus(t, c, "svc", "blue", "127.0.0.1:9", StatusUnhealthy)
	if !strings.Contains(got.LastError, "internal error") {
		t.Errorf("LastError = %q, want an internal error", got.LastError)
	}
	eventually(t, "a second probe", func() bool { return logs.FilterMessage("health probe panicked").Len() >= 2 })
}

// TestClose checks that Close stops the probes, ends every goroutine, may be
// called twice, and leaves the checker inert.
func TestClose(t *testing.T) {
	b := newBackend(t, ok)
	base := runtime.NumGoroutine()
	c := New(Config{PassiveCooldown: time.Hour})
	var ch changes
	c.OnChange(ch.fn)
	c.Update(view(
		service("svc", hc(tick, timeout, 1, 1), map[string][]string{"blue": {b.addr()}}),
		service("passive", nil, map[string][]string{"blue": {b.addr()}}),
	))
	waitStatus(t, c, "svc", "blue", b.addr(), StatusHealthy)
	c.ConnectionRefused("passive", "blue", b.addr()) // arms a cool-down timer
	eventually(t, "changes to be reported", func() bool { return ch.count("svc") == 1 && ch.count("passive") == 1 })
	c.Close()
	c.Close()
	settleGoroutines(t, base)
	n := b.requests.Load()
	time.Sleep(5 * tick)
	if m := b.requests.Load(); m != n {
		t.Errorf("probes after Close: %d, then %d", n, m)
	}

	c.Update(view(service("new", hc(tick, timeout, 1, 1), map[string][]string{"blue": {b.addr()}})))
	c.ProxyFailure("svc", "blue", b.addr(), 0)
	c.ConnectionRefused("svc", "blue", b.addr())
	if got := c.Get("svc", "blue", b.addr()); got.Status != StatusHealthy {
		t.Errorf("after Close: %s, want the last status (healthy)", got.Status)
	}
	if got := c.Get("new", "blue", b.addr()); got.Status != StatusUnknown {
		t.Errorf("Update after Close added a backend: %s", got.Status)
	}
	settleGoroutines(t, base)
}
