package controlplane

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/slo"
)

// trafficPlane stands in for each node's data plane in these in-process
// tests: every node reports the same per-pool windows, set by the test. (The
// real data plane's windows are tested in proxymod and end to end.)
type trafficPlane struct {
	idlePlane
	mu      sync.Mutex
	windows map[string]slo.Window // by pool
	// declared lists the services the node serves, in name order; nil
	// means the one service most tests use, "svc".
	declared []string
}

// Declared names the services of the test: the nodes serve them (they create
// them through the API once ready), so the judge expects their figures.
func (p *trafficPlane) Declared() []string {
	if p.declared == nil {
		return []string{"svc"}
	}
	return p.declared
}

func (p *trafficPlane) Window(_, pool string, _ time.Duration) slo.Window {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.windows[pool]
}

func (p *trafficPlane) set(pool string, requests, errors uint64, latency time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	w := slo.Window{Requests: requests, Errors: errors, Buckets: make([]uint64, len(slo.Bounds)+1)}
	i := len(slo.Bounds)
	for b, bound := range slo.Bounds {
		if latency <= bound {
			i = b
			break
		}
	}
	w.Buckets[i] = requests
	if p.windows == nil {
		p.windows = map[string]slo.Window{}
	}
	p.windows[pool] = w
}

func rolloutCluster(t *testing.T) (*testCluster, *trafficPlane) {
	c := newCluster(t, 3, nil)
	tp := &trafficPlane{}
	for _, n := range c.nodes {
		n.SetDataPlane(tp)
	}
	tp.set("blue", 1000, 0, 10*time.Millisecond)
	tp.set("canary", 0, 0, 0)
	if code, _, b := c.client(0).do("PUT", "/v1/services/svc?wait=all", `{"pools":{"blue":{"backends":["127.0.0.1:9001"]},"canary":{"backends":["127.0.0.1:9003"]}},"weights":{"blue":100},"slo":{"min_requests":50,"consecutive":2}}`); code != 200 {
		t.Fatalf("put: %d %v", code, b)
	}
	return c, tp
}

func TestWatcherPromotesHealthyCanary(t *testing.T) {
	c, tp := rolloutCluster(t)
	cl := c.client(c.follower())
	code, _, body := cl.do("POST", "/v1/services/svc/rollout", `{"to":"canary","steps":[{"weight":1,"hold":"1s"},{"weight":50,"hold":"1s"},{"weight":100}],"force":true}`)
	if code != 200 || body["state"] != "running" || body["step"] != 1.0 {
		t.Fatalf("start: %d %v", code, body)
	}
	// Too little traffic holds the step.
	tp.set("canary", 10, 0, 10*time.Millisecond)
	time.Sleep(3 * time.Second) // past the 1 s hold: only the figures hold it
	var ro map[string]any
	for deadline := time.Now().Add(30 * time.Second); ; {
		// The follower shows the leader's verdict; on a busy machine the
		// leader's first evaluation, or the call for it, may lag.
		if _, _, ro = cl.do("GET", "/v1/services/svc/rollout", ""); ro["verdict"] != nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if ro["step"] != 1.0 || ro["verdict"] == nil || ro["verdict"].(map[string]any)["result"] != "hold" {
		t.Fatalf("with 10 requests the step moved or did not hold: %v", ro)
	}
	tp.set("canary", 500, 0, 10*time.Millisecond)
	// Kill the leader in the middle of step 2: the new leader holds the step
	// while the dead node's figures are missing, and continues it from its
	// replicated start time once the node is back.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, _, ro = cl.do("GET", "/v1/services/svc/rollout?consistent", "")
		if ro["step"] == 2.0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never reached step 2: %v", ro)
		}
		time.Sleep(50 * time.Millisecond)
	}
	l := c.leader(10 * time.Second)
	c.kill(l)
	cl = c.client(c.leader(30 * time.Second))
	// Without the dead node's figures the step holds, naming it: the leader
	// cannot tell a node that is down from one that serves traffic it does
	// not hear about.
	dead := c.cfgs[l].NodeID
	deadline = time.Now().Add(30 * time.Second)
	for {
		_, _, ro = cl.do("GET", "/v1/services/svc/rollout", "")
		if v, _ := ro["verdict"].(map[string]any); v != nil && v["result"] == "hold" && strings.Contains(v["reason"].(string), dead) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no hold naming the dead %s: %v", dead, ro)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // two holds
	if _, _, ro = cl.do("GET", "/v1/services/svc/rollout?consistent", ""); ro["step"] != 2.0 || ro["state"] != "running" {
		t.Fatalf("the step moved on without %s's figures: %v", dead, ro)
	}
	// It comes back: every node reports, and the new leader finishes the
	// rollout from the replicated step.
	c.start(l)
	c.nodes[l].SetDataPlane(tp)
	deadline = time.Now().Add(30 * time.Second)
	for {
		_, _, ro = cl.do("GET", "/v1/services/svc/rollout", "")
		if ro["state"] == "promoted" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not promoted: %v", ro)
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, _, svc := cl.do("GET", "/v1/services/svc?consistent", "")
	if w := svc["weights"].(map[string]any); w["canary"] != 100.0 {
		t.Fatalf("weights after promotion: %v", w)
	}
	if code, _, _ := cl.do("GET", "/metrics", ""); code != 200 {
		t.Fatal("metrics")
	}
}

func TestWatcherRollsBackOnceAcrossLeaderChange(t *testing.T) {
	c, tp := rolloutCluster(t)
	tp.set("canary", 20, 0, 10*time.Millisecond)
	cl := c.client(c.follower())
	if code, _, b := cl.do("POST", "/v1/services/svc/rollout", `{"to":"canary","steps":[{"weight":5,"hold":"1h"},{"weight":100}],"force":true}`); code != 200 {
		t.Fatalf("start: %d %v", code, b)
	}
	// A failing stable pool as well: inconclusive, no rollback.
	tp.set("blue", 1000, 900, 10*time.Millisecond)
	tp.set("canary", 40, 40, 10*time.Millisecond)
	time.Sleep(3 * time.Second)
	_, _, ro := cl.do("GET", "/v1/services/svc/rollout", "")
	if ro["state"] != "running" || ro["verdict"].(map[string]any)["result"] != "inconclusive" {
		t.Fatalf("with a failing baseline: %v", ro)
	}
	// Only the canary fails now; kill the leader in the middle of the incident.
	tp.set("blue", 1000, 0, 10*time.Millisecond)
	time.Sleep(1100 * time.Millisecond)
	c.kill(c.leader(10 * time.Second))
	f := c.leader(30 * time.Second)
	cl = c.client(f)
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, _, ro = cl.do("GET", "/v1/services/svc/rollout", "")
		if ro["state"] == "rolled_back" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not rolled back: %v", ro)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(3 * time.Second) // a second leader decision would land by now
	_, _, ev := cl.do("GET", "/v1/events?service=svc&consistent", "")
	rollbacks := 0
	for _, e := range ev["events"].([]any) {
		if e.(map[string]any)["action"] == "rollback" {
			rollbacks++
			if e.(map[string]any)["actor"] != "watcher" || e.(map[string]any)["figures"] == nil {
				t.Fatalf("rollback event %v", e)
			}
		}
	}
	if rollbacks != 1 {
		t.Fatalf("%d rollback events, want exactly 1", rollbacks)
	}
	_, _, svc := cl.do("GET", "/v1/services/svc", "")
	if w := svc["weights"].(map[string]any); w["blue"] != 100.0 {
		t.Fatalf("weights after rollback: %v", w)
	}
}

// TestWatcherGuardRollsBackAWeightsChange: after a plain weights change, the
// pool that gained share stays under the rollback SLO for the guard period; a
// breach rolls back to the LKG, once.
func TestWatcherGuardRollsBackAWeightsChange(t *testing.T) {
	c, tp := rolloutCluster(t)
	cl := c.client(0)
	if code, _, b := cl.do("PUT", "/v1/services/svc/weights", `{"weights":{"blue":90,"canary":10},"force":true}`); code != 200 {
		t.Fatalf("weights: %d %v", code, b)
	}
	tp.set("canary", 100, 60, 10*time.Millisecond)
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, _, svc := cl.do("GET", "/v1/services/svc?consistent", "")
		if svc["weights"].(map[string]any)["canary"] == 0.0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guard did not roll back: %v", svc["weights"])
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	_, _, ev := cl.do("GET", "/v1/events?service=svc&consistent", "")
	rollbacks := 0
	for _, e := range ev["events"].([]any) {
		if e.(map[string]any)["action"] == "rollback" {
			rollbacks++
		}
	}
	if rollbacks != 1 {
		t.Fatalf("%d rollbacks", rollbacks)
	}
}
