package healthcheck

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
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
