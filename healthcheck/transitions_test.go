package healthcheck

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestTransitions drives one actively checked backend through sequences of
// probe outcomes and passive signals, without network, and checks the status
// after every step.
func TestTransitions(t *testing.T) {
	const (
		okP   = "ok"       // a successful probe, healthy verdict
		degP  = "degraded" // a successful probe, degraded verdict
		failP = "fail"     // a failed probe
		ref   = "refused"  // ConnectionRefused
		p502  = "502"      // ProxyFailure 502
		p0    = "transport"
		p500  = "500" // ProxyFailure 500: ignored
	)
	const (
		U = StatusUnknown
		H = StatusHealthy
		D = StatusDegraded
		X = StatusUnhealthy
	)
	tests := []struct {
		name          string
		fails, passes int
		steps         []string
		want          []Status // status after each step
	}{
		{"first success is healthy at once", 2, 2, []string{okP}, []Status{H}},
		{"first success degraded at once", 2, 2, []string{degP}, []Status{D}},
		{"unknown needs fails failures", 2, 2, []string{failP, failP}, []Status{U, X}},
		{"unknown with fails 3", 3, 2, []string{failP, failP, failP}, []Status{U, U, X}},
		{"fails 1", 1, 1, []string{failP, okP}, []Status{X, H}},
		{"success resets the failure count", 2, 2, []string{failP, okP, failP, failP}, []Status{U, H, H, X}},
		{"healthy needs consecutive failures", 2, 2, []string{okP, failP, okP, failP, failP}, []Status{H, H, H, H, X}},
		{"recovery after passes", 2, 2, []string{failP, failP, okP, okP}, []Status{U, X, X, H}},
		{"recovery after 3 passes", 1, 3, []string{failP, okP, okP, okP}, []Status{X, X, X, H}},
		{"failure restarts the recovery", 2, 2, []string{failP, failP, okP, failP, okP, okP}, []Status{U, X, X, X, X, H}},
		{"recovery to degraded", 2, 2, []string{failP, failP, degP, degP}, []Status{U, X, X, D}},
		{"recovery counts degraded and healthy alike", 2, 2, []string{failP, failP, degP, okP}, []Status{U, X, X, H}},
		{"healthy and degraded switch at once", 2, 2, []string{okP, degP, okP}, []Status{H, D, H}},
		{"degraded fails like healthy", 2, 2, []string{degP, failP, failP}, []Status{D, D, X}},
		{"refused from unknown", 2, 2, []string{ref}, []Status{X}},
		{"refused from healthy with fails 5", 5, 2, []string{okP, ref}, []Status{H, X}},
		{"refused then probes recover", 2, 2, []string{okP, ref, okP, okP}, []Status{H, X, X, H}},
		{"proxy failures count like probes", 2, 2, []string{okP, p502, p502}, []Status{H, H, X}},
		{"proxy and probe failures add up", 2, 2, []string{okP, p502, failP}, []Status{H, H, X}},
		{"transport error counts", 2, 2, []string{okP, p0, p0}, []Status{H, H, X}},
		{"a 500 while proxying is ignored", 2, 2, []string{okP, p500, p500, p500}, []Status{H, H, H, H}},
		{"probe success between proxy failures", 2, 2, []string{okP, p502, okP, p502}, []Status{H, H, H, H}},
		{"proxy failure interrupts recovery", 2, 2, []string{failP, failP, okP, p502, okP, okP}, []Status{U, X, X, X, X, H}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(Config{})
			defer c.Close()
			k := key{"svc", "blue", "10.0.0.1:80"}
			e := &backend{key: k, Backend: Backend{Status: StatusUnknown}, check: hc(time.Second, time.Second, tt.fails, tt.passes)}
			c.backends[k] = e
			for i, step := range tt.steps {
				switch step {
				case okP:
					c.record(e, 0, outcome{status: StatusHealthy, latency: 3 * time.Millisecond})
				case degP:
					c.record(e, 0, outcome{status: StatusDegraded})
				case failP:
					c.record(e, 0, outcome{status: StatusUnhealthy, err: "GET x answered 500 Internal Server Error"})
				case ref:
					c.ConnectionRefused(k.service, k.pool, k.address)
				case p502:
					c.ProxyFailure(k.service, k.pool, k.address, http.StatusBadGateway)
				case p0:
					c.ProxyFailure(k.service, k.pool, k.address, 0)
				case p500:
					c.ProxyFailure(k.service, k.pool, k.address, http.StatusInternalServerError)
				}
				got := c.Get(k.service, k.pool, k.address)
				if got.Status != tt.want[i] {
					t.Fatalf("after steps %v: status %s, want %s", tt.steps[:i+1], got.Status, tt.want[i])
				}
				// LastError says why while the backend is down, and is
				// gone once a success leaves it serving.
				switch {
				case got.Status == StatusUnhealthy && got.LastError == "":
					t.Fatalf("after steps %v: unhealthy without LastError", tt.steps[:i+1])
				case (step == okP || step == degP) && got.Status != StatusUnhealthy && got.LastError != "":
					t.Fatalf("after steps %v: LastError %q on a serving backend", tt.steps[:i+1], got.LastError)
				}
			}
		})
	}
}

// TestRecordStaleProbe checks that the result of a probe that was told to
// stop (an older generation) changes nothing.
func TestRecordStaleProbe(t *testing.T) {
	c := New(Config{})
	defer c.Close()
	k := key{"svc", "blue", "10.0.0.1:80"}
	e := &backend{key: k, Backend: Backend{Status: StatusUnknown}, check: hc(time.Second, time.Second, 1, 1), probeGen: 3}
	c.backends[k] = e
	c.record(e, 2, outcome{status: StatusUnhealthy, err: "old"})
	if got := c.Get(k.service, k.pool, k.address); got.Status != StatusUnknown || !got.Checked.IsZero() {
		t.Fatalf("stale probe was recorded: %+v", got)
	}
	c.record(e, 3, outcome{status: StatusUnhealthy, err: "GET x: refused"})
	got := c.Get(k.service, k.pool, k.address)
	if got.Status != StatusUnhealthy || !strings.Contains(got.LastError, "refused") || got.Checked.IsZero() {
		t.Fatalf("current probe was not recorded: %+v", got)
	}
}
