package controlplane

import (
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
	"go.uber.org/zap/zaptest"
)

// declaredPlane stands in for the data plane of proxymod (whose Routes is
// tested there and end to end): it declares services, and routes them all
// once the test says so.
type declaredPlane struct {
	idlePlane
	declared []string
	routes   atomic.Bool
}

func (p *declaredPlane) Declared() []string { return p.declared }
func (p *declaredPlane) Routes(string) bool { return p.routes.Load() }

// startUnready starts a single node with dp as its data plane and waits until
// it has caught up with itself, not until it is ready.
func startUnready(t *testing.T, dp DataPlane) *Node {
	t.Helper()
	n, err := Start(Config{
		NodeID: "node1", DataDir: t.TempDir(), ClusterListen: "127.0.0.1:0", AdminListen: "127.0.0.1:0",
		Logger: zaptest.NewLogger(t), DataPlane: dp,
		raft: singleNodeRaft,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Shutdown() })
	waitUntil(t, "caught up", func() bool { return n.caughtUp.Load() })
	return n
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not %s within 30 s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// readyAnswer returns the status of /health/ready and its waiting_for.
func readyAnswer(c *client) (int, []string) {
	code, _, body := c.do("GET", "/health/ready", "")
	var why []string
	list, _ := body["waiting_for"].([]any)
	for _, w := range list {
		why = append(why, w.(string))
	}
	if body["waiting_for"] != nil && code == 200 {
		c.t.Errorf("a 200 with waiting_for %v", body["waiting_for"])
	}
	return code, why
}

// TestReadyWaitsForDeclaredServices: a caught-up node stays 503 until every
// service its data plane declares exists and is routed; a seedless one must
// be created through the API, a deleted one does not hold readiness, and the
// 503 says what it waits for.
func TestReadyWaitsForDeclaredServices(t *testing.T) {
	dp := &declaredPlane{declared: []string{"api-only", "gone", "seeded"}}
	n := startUnready(t, dp)
	c := newClient(t, n)
	spec := state.ServiceSpec{Pools: map[string]state.PoolSpec{"blue": {Backends: []string{"127.0.0.1:9001"}}}}
	n.Seed("seeded", spec)
	waitUntil(t, "seeded", func() bool { return n.View().Services["seeded"] != nil })

	code, why := readyAnswer(c)
	want := []string{
		"service api-only: not in the replicated state yet: its Caddyfile seed is not committed yet, or (a cbproxy block without pools) create it with the admin API",
		"service gone: not in the replicated state yet: its Caddyfile seed is not committed yet, or (a cbproxy block without pools) create it with the admin API",
		"service seeded: the proxy has no routing table for it yet",
	}
	if code != 503 || !slices.Equal(why, want) || n.Ready() {
		t.Fatalf("caught up, api-only and gone missing, nothing routed: %d %q", code, why)
	}

	for _, req := range []struct{ method, path, body string }{{"PUT", "/v1/services/api-only", demoService}, {"PUT", "/v1/services/gone", demoService}, {"DELETE", "/v1/services/gone", ""}} {
		if code, _, body := c.do(req.method, req.path, req.body); code != 200 {
			t.Fatalf("%s %s: %d %v", req.method, req.path, code, body)
		}
	}
	time.Sleep(200 * time.Millisecond) // four readiness rounds
	code, why = readyAnswer(c)
	want = []string{"service api-only: the proxy has no routing table for it yet", "service seeded: the proxy has no routing table for it yet"}
	if code != 503 || !slices.Equal(why, want) {
		t.Fatalf("all exist or are deleted, nothing routed: %d %q", code, why)
	}

	dp.routes.Store(true)
	waitUntil(t, "ready", n.Ready)
	if code, why := readyAnswer(c); code != 200 || len(why) != 0 {
		t.Fatalf("ready: %d %q", code, why)
	}
}

// TestReadyFollowsTheDataPlane: a seed the cluster refuses holds readiness
// and the 503 says why; a reload whose data plane no longer declares the
// service (SetDataPlane) releases it.
func TestReadyFollowsTheDataPlane(t *testing.T) {
	dp := &declaredPlane{declared: []string{"bad"}}
	dp.routes.Store(true)
	n := startUnready(t, dp)
	c := newClient(t, n)
	n.Seed("bad", state.ServiceSpec{})
	waitUntil(t, "the refusal said", func() bool {
		code, why := readyAnswer(c)
		return code == 503 && len(why) == 1 && strings.HasPrefix(why[0], "service bad: its Caddyfile seed was refused: ")
	})
	time.Sleep(200 * time.Millisecond)
	if n.Ready() {
		t.Fatal("ready with a declared service whose seed was refused")
	}
	n.SetDataPlane(&declaredPlane{})
	waitUntil(t, "ready", n.Ready)
	if code, _ := readyAnswer(c); code != 200 {
		t.Fatalf("ready: %d", code)
	}
	// Once ready, always ready (docs/api.md "Health"), whatever a later reload says.
	n.SetDataPlane(dp)
	time.Sleep(200 * time.Millisecond)
	if code, why := readyAnswer(c); code != 200 {
		t.Fatalf("after a reload declaring bad again: %d %q", code, why)
	}
}
