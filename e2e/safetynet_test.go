package e2e

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ownBackend starts one backend in a process of its own, so that the test
// can kill or freeze it alone; it returns the process and its address.
func ownBackend(t *testing.T, name string) (*proc, string) {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := start(t, bins.backend, "-backends", name+"="+addr)
	t.Cleanup(func() { _ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGCONT) })
	waitFor(t, name+" backend up", 10*time.Second, func() bool { return getOK(httpClient, "http://"+addr+"/") })
	return p, addr
}

// rollbacksSince counts the rollback events of codingbrain after index.
func rollbacksSince(t *testing.T, n *clusterNode, index float64) []map[string]any {
	t.Helper()
	_, ev := api(t, "GET", n.admin()+"/v1/events?service=codingbrain&consistent&limit=1000", "")
	var out []map[string]any
	for _, x := range ev["events"].([]any) {
		e := x.(map[string]any)
		if e["action"] == "rollback" && e["index"].(float64) > index {
			out = append(out, e)
		}
	}
	return out
}

// deadPools is a three-node cluster routing codingbrain to blue (shared
// backend process) and to green and canary, each with a backend process of
// its own that a test can kill or freeze, under steady load, with an active
// health check and a short response header timeout (so that a frozen backend
// fails requests within a test's patience; the default is 30 s).
type deadPools struct {
	c    *testCluster
	load *steadyLoad
}

func newDeadPools(t *testing.T) *deadPools {
	c := newTestCluster(t, "response_header_timeout 2s")
	_, greenAddr := ownBackend(t, "green")
	_, canaryAddr := ownBackend(t, "canary")
	body := fmt.Sprintf(`{"pools":{"blue":{"backends":[%q]},"green":{"backends":[%q]},"canary":{"backends":[%q]}},"weights":{"blue":100},"guard":"10m",
		"health":{"path":"/health/ready","interval":"300ms","timeout":"1s","fails":2,"passes":2},"slo":{"min_requests":20}}`,
		c.backends["blue"], greenAddr, canaryAddr)
	if code, b := api(t, "PUT", c.nodes[0].admin()+"/v1/services/codingbrain?wait=all", body); code != 200 {
		t.Fatalf("put service: %d %v", code, b)
	}
	d := &deadPools{c: c, load: startSteadyLoad(c.proxyURLs(), 300, 10*time.Minute)}
	t.Cleanup(func() { d.load.finish() })
	return d
}

// everywhere waits until every node routes blue=100 again.
func (d *deadPools) everywhere(t *testing.T, what string, within time.Duration) {
	t.Helper()
	waitFor(t, what+": blue=100 on every node", within, func() bool {
		for _, n := range d.c.nodes {
			if w := d.c.weights(t, n); w["blue"] != 100 {
				return false
			}
		}
		return true
	})
}

// fresh gives a pool a new, healthy backend process and waits until every
// node sees it healthy (the gate of switch and rollout start).
func (d *deadPools) fresh(t *testing.T, pool string) *proc {
	t.Helper()
	p, addr := ownBackend(t, pool)
	if code, b := api(t, "PUT", d.c.nodes[1].admin()+"/v1/services/codingbrain/pools/"+pool+"?wait=all", fmt.Sprintf(`{"backends":[%q]}`, addr)); code != 200 {
		t.Fatalf("pool set %s: %d %v", pool, code, b)
	}
	waitFor(t, pool+" healthy on every node", 20*time.Second, func() bool {
		for _, n := range d.c.nodes {
			_, s := api(t, "GET", n.admin()+"/v1/services/codingbrain", "")
			for _, be := range s["pools"].(map[string]any)[pool].(map[string]any)["backends"].([]any) {
				if be.(map[string]any)["health"] != "healthy" {
					return false
				}
			}
		}
		return true
	})
	return p
}

func (d *deadPools) version(t *testing.T) float64 {
	_, s := api(t, "GET", d.c.nodes[0].admin()+"/v1/services/codingbrain?consistent", "")
	return s["version"].(float64)
}

func (d *deadPools) addrOf(t *testing.T, pool string) string {
	_, s := api(t, "GET", d.c.nodes[0].admin()+"/v1/services/codingbrain", "")
	return s["pools"].(map[string]any)[pool].(map[string]any)["backends"].([]any)[0].(map[string]any)["address"].(string)
}

// A fault makes a pool unable to take traffic.
type fault func(t *testing.T, d *deadPools, pool string, p *proc)

var (
	killed fault = func(t *testing.T, _ *deadPools, _ string, p *proc) { p.stop(syscall.SIGKILL) }
	// failingChecks: the backend still answers requests, but its health
	// checks fail, so no node sends it any: no client sees an error.
	failingChecks fault = func(t *testing.T, d *deadPools, pool string, _ *proc) {
		setBackend(t, d.addrOf(t, pool), `{"health":"unhealthy"}`)
	}
	// frozen: stopped, its listener still accepts (the kernel's backlog)
	// and nothing answers: a hang.
	frozen fault = func(t *testing.T, _ *deadPools, _ string, p *proc) {
		if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
	}
)

// guardCase switches everything to a fresh green, then breaks it: the guard
// must roll back to blue on every node, once. It returns the time from the
// fault until every node routes blue again.
func (d *deadPools) guardCase(t *testing.T, f fault) time.Duration {
	green := d.fresh(t, "green")
	if code, b := api(t, "POST", d.c.nodes[2].admin()+"/v1/services/codingbrain/switch?wait=all", `{"to":"green"}`); code != 200 {
		t.Fatalf("switch: %d %v", code, b)
	}
	since := d.version(t)
	time.Sleep(3 * time.Second)
	onset := time.Now()
	f(t, d, "green", green)
	d.everywhere(t, "guard rollback", 30*time.Second)
	took := time.Since(onset)
	rb := rollbacksSince(t, d.c.nodes[1], since)
	if len(rb) != 1 || rb[0]["actor"] != "watcher" || !strings.Contains(fmt.Sprint(rb[0]["figures"]), "green") {
		t.Fatalf("want one rollback by the watcher with green's figures, got %v", rb)
	}
	return took
}

// rolloutCase starts a rollout to a fresh pool, breaks the pool: the
// rollout must end rolled back. It returns the time from the fault until
// every node routes blue again.
func (d *deadPools) rolloutCase(t *testing.T, pool, start string, f fault) time.Duration {
	p := d.fresh(t, pool)
	code, ro := api(t, "POST", d.c.nodes[0].admin()+"/v1/services/codingbrain/rollout", start)
	if code != 200 {
		t.Fatalf("rollout start: %d %v", code, ro)
	}
	time.Sleep(3 * time.Second)
	// The breach must come from the fault, not from the last incident.
	if _, now := api(t, "GET", d.c.nodes[0].admin()+"/v1/services/codingbrain/rollout?consistent", ""); now["id"] != ro["id"] || now["state"] != "running" {
		t.Fatalf("before the fault the rollout is %v: %v", now["state"], now["verdict"])
	}
	onset := time.Now()
	f(t, d, pool, p)
	end := waitRollout(t, d.c.nodes[2], 60*time.Second)
	if end["state"] != "rolled_back" || end["id"] != ro["id"] {
		t.Fatalf("rollout ended %v: %v", end["state"], end)
	}
	d.everywhere(t, "rollback", 30*time.Second)
	return time.Since(onset)
}

const canaryStep = `{"to":"canary","steps":[{"weight":5,"hold":"1h"},{"weight":100}]}`

// TestDeadTargetRolledBack: a pool that should carry traffic and cannot —
// its only backend killed, failing its health checks (so that no client ever
// reaches it), or frozen so that it accepts connections and never answers —
// is rolled back on every node, once: after a switch (the guard), during a
// blue-green bake, and at a canary step. Before, the pool with no available
// backend showed "no data" (its requests were refused under "none" or moved
// to blue) and the judge held: the guard never rolled back, a bake ended
// promoted, a canary step held forever.
func TestDeadTargetRolledBack(t *testing.T) {
	d := newDeadPools(t)
	for _, tc := range []struct {
		name string
		run  func(t *testing.T) time.Duration
	}{
		{"guard after a switch, target killed", func(t *testing.T) time.Duration { return d.guardCase(t, killed) }},
		{"guard after a switch, target failing its checks", func(t *testing.T) time.Duration { return d.guardCase(t, failingChecks) }},
		// A 15 s bake: judged "hold" on no data, the old judge promoted it.
		{"blue-green bake, target failing its checks", func(t *testing.T) time.Duration {
			return d.rolloutCase(t, "green", `{"strategy":"blue-green","to":"green","bake":"15s"}`, failingChecks)
		}},
		{"blue-green bake, target killed", func(t *testing.T) time.Duration {
			return d.rolloutCase(t, "green", `{"strategy":"blue-green","to":"green","bake":"1m"}`, killed)
		}},
		{"canary step, canary failing its checks", func(t *testing.T) time.Duration { return d.rolloutCase(t, "canary", canaryStep, failingChecks) }},
		{"canary step, canary killed", func(t *testing.T) time.Duration { return d.rolloutCase(t, "canary", canaryStep, killed) }},
		{"canary step, canary frozen", func(t *testing.T) time.Duration { return d.rolloutCase(t, "canary", canaryStep, frozen) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Logf("%s: rolled back on every node %s after the fault", tc.name, tc.run(t))
		})
	}
	t.Logf("load: %d requests, %d failed", d.load.sent.Load(), d.load.failed.Load())
}

// TestDeadTargetTrials repeats the two worst cases to report the
// distribution of the time to rollback of a dead target (make bench-rollback;
// CBPROXY_SOAK=1): everything switched to green and green killed (every
// client refused until the rollback), and a canary at 5 % killed.
func TestDeadTargetTrials(t *testing.T) {
	if os.Getenv("CBPROXY_SOAK") == "" {
		t.Skip("set CBPROXY_SOAK=1 (make bench-rollback) to run the dead-target trials")
	}
	d := newDeadPools(t)
	for _, tc := range []struct {
		name string
		run  func(t *testing.T) time.Duration
	}{
		{"switched target killed", func(t *testing.T) time.Duration { return d.guardCase(t, killed) }},
		{"canary at 5 % killed", func(t *testing.T) time.Duration { return d.rolloutCase(t, "canary", canaryStep, killed) }},
	} {
		var times []time.Duration
		for trial := 1; trial <= 10; trial++ {
			took := tc.run(t)
			t.Logf("%s, trial %d: rolled back on every node %s after the kill", tc.name, trial, took)
			times = append(times, took)
		}
		slices.Sort(times)
		t.Logf("dead target, %s: time to rollback over %d trials: min %s, p50 %s, p90 %s, max %s",
			tc.name, len(times), times[0], times[len(times)/2], times[len(times)*9/10-1], times[len(times)-1])
	}
}
