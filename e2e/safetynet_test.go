package e2e

import (
	"fmt"
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

// TestDeadTargetRolledBack: a pool that should carry traffic and cannot —
// its only backend killed, failing its health checks (so that no client ever
// reaches it), or frozen so that it accepts connections and never answers —
// is rolled back on every node, once: after a switch (the guard), during a
// blue-green bake, and at a canary step. Before, the pool with no available
// backend showed "no data" (its requests were refused under "none" or moved
// to blue) and the judge held: the guard never rolled back, a bake ended
// promoted, a canary step held forever.
func TestDeadTargetRolledBack(t *testing.T) {
	// A short response header timeout, so that a frozen backend fails
	// requests within the test's patience (the default is 30 s).
	c := newTestCluster(t, "response_header_timeout 2s")
	var urls []string
	for _, n := range c.nodes {
		urls = append(urls, n.proxy()+"/")
	}
	_, greenAddr := ownBackend(t, "green")
	_, canaryAddr := ownBackend(t, "canary")
	body := fmt.Sprintf(`{"pools":{"blue":{"backends":[%q]},"green":{"backends":[%q]},"canary":{"backends":[%q]}},"weights":{"blue":100},"guard":"10m",
		"health":{"path":"/health/ready","interval":"300ms","timeout":"1s","fails":2,"passes":2},"slo":{"min_requests":20}}`,
		c.backends["blue"], greenAddr, canaryAddr)
	if code, b := api(t, "PUT", c.nodes[0].admin()+"/v1/services/codingbrain?wait=all", body); code != 200 {
		t.Fatalf("put service: %d %v", code, b)
	}
	l := startSteadyLoad(urls, 300, 5*time.Minute)
	t.Cleanup(func() { l.finish() })

	// everywhere waits until every node routes blue=100 again.
	everywhere := func(t *testing.T, what string, within time.Duration) {
		t.Helper()
		waitFor(t, what+": blue=100 on every node", within, func() bool {
			for _, n := range c.nodes {
				if w := c.weights(n); w["blue"] != 100 {
					return false
				}
			}
			return true
		})
	}
	// fresh gives a pool a new, healthy backend process and waits until
	// every node sees it healthy (the gate of switch and rollout start).
	fresh := func(t *testing.T, pool string) *proc {
		t.Helper()
		p, addr := ownBackend(t, pool)
		if code, b := api(t, "PUT", c.nodes[1].admin()+"/v1/services/codingbrain/pools/"+pool+"?wait=all", fmt.Sprintf(`{"backends":[%q]}`, addr)); code != 200 {
			t.Fatalf("pool set %s: %d %v", pool, code, b)
		}
		waitFor(t, pool+" healthy on every node", 20*time.Second, func() bool {
			for _, n := range c.nodes {
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
	// stillRunning checks that the rollout is not judged harmful before the
	// fault: the breach must come from the fault, not from the last incident.
	stillRunning := func(t *testing.T, id any) {
		t.Helper()
		_, ro := api(t, "GET", c.nodes[0].admin()+"/v1/services/codingbrain/rollout?consistent", "")
		if ro["id"] != id || ro["state"] != "running" {
			t.Fatalf("before the fault the rollout is %v: %v", ro["state"], ro["verdict"])
		}
	}
	version := func(t *testing.T) float64 {
		_, s := api(t, "GET", c.nodes[0].admin()+"/v1/services/codingbrain?consistent", "")
		return s["version"].(float64)
	}
	// The faults: each makes the pool unable to take traffic.
	kill := func(t *testing.T, p *proc) { p.stop(syscall.SIGKILL) }
	failChecks := func(t *testing.T, addr string) { setBackend(t, addr, `{"health":"unhealthy"}`) }
	freeze := func(t *testing.T, p *proc) {
		// Stopped, its listener still accepts (the kernel's backlog) and
		// nothing answers: a hang.
		if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
	}
	addrOf := func(t *testing.T, pool string) string {
		_, s := api(t, "GET", c.nodes[0].admin()+"/v1/services/codingbrain", "")
		return s["pools"].(map[string]any)[pool].(map[string]any)["backends"].([]any)[0].(map[string]any)["address"].(string)
	}

	guardCase := func(name string, fault func(t *testing.T, p *proc)) {
		t.Run("guard after a switch, target "+name, func(t *testing.T) {
			green := fresh(t, "green")
			if code, b := api(t, "POST", c.nodes[2].admin()+"/v1/services/codingbrain/switch?wait=all", `{"to":"green"}`); code != 200 {
				t.Fatalf("switch: %d %v", code, b)
			}
			since := version(t)
			time.Sleep(3 * time.Second)
			onset := time.Now()
			fault(t, green)
			everywhere(t, "guard rollback", 30*time.Second)
			t.Logf("target %s after a switch: rolled back on every node %s after the onset", name, time.Since(onset))
			rb := rollbacksSince(t, c.nodes[1], since)
			if len(rb) != 1 || rb[0]["actor"] != "watcher" || !strings.Contains(fmt.Sprint(rb[0]["figures"]), "green") {
				t.Fatalf("want one rollback by the watcher with green's figures, got %v", rb)
			}
		})
	}
	guardCase("killed", kill)
	guardCase("failing its checks", func(t *testing.T, _ *proc) { failChecks(t, addrOf(t, "green")) })

	rolloutCase := func(name, pool, start string, fault func(t *testing.T, p *proc)) {
		t.Run(name, func(t *testing.T) {
			p := fresh(t, pool)
			code, ro := api(t, "POST", c.nodes[0].admin()+"/v1/services/codingbrain/rollout", start)
			if code != 200 {
				t.Fatalf("rollout start: %d %v", code, ro)
			}
			time.Sleep(3 * time.Second)
			stillRunning(t, ro["id"])
			onset := time.Now()
			fault(t, p)
			end := waitRollout(t, c.nodes[2], 60*time.Second)
			if end["state"] != "rolled_back" || end["id"] != ro["id"] {
				t.Fatalf("%s: rollout ended %v: %v", name, end["state"], end)
			}
			everywhere(t, name, 30*time.Second)
			t.Logf("%s: rolled back on every node %s after the onset", name, time.Since(onset))
		})
	}
	// A 15 s bake: judged "hold" on no data, the old judge promoted it.
	rolloutCase("blue-green bake, target failing its checks", "green", `{"strategy":"blue-green","to":"green","bake":"15s"}`,
		func(t *testing.T, _ *proc) { failChecks(t, addrOf(t, "green")) })
	rolloutCase("blue-green bake, target killed", "green", `{"strategy":"blue-green","to":"green","bake":"1m"}`, kill)
	const canaryStep = `{"to":"canary","steps":[{"weight":5,"hold":"1h"},{"weight":100}]}`
	rolloutCase("canary step, canary failing its checks", "canary", canaryStep, func(t *testing.T, _ *proc) { failChecks(t, addrOf(t, "canary")) })
	rolloutCase("canary step, canary killed", "canary", canaryStep, kill)
	rolloutCase("canary step, canary frozen", "canary", canaryStep, freeze)

	t.Logf("load: %d requests, %d failed", l.sent.Load(), l.failed.Load())
	for _, e := range rollbacksSince(t, c.nodes[0], 0) {
		t.Logf("rollback event %v: %v", e["index"], e["figures"])
	}
}
