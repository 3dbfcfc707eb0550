package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestClusterRecover: `cbproxy cluster recover` is refused on a node of a
// healthy cluster (running, or stopped while the others answer); with two of
// three nodes killed and their data dirs wiped, it turns the stopped
// survivor into a one-node cluster that keeps every weight, version and
// event, takes writes, and grows back with two fresh nodes that get the
// whole state.
func TestClusterRecover(t *testing.T) {
	c := newTestCluster(t)
	leader, followers := c.roles(t, c.nodes...)
	survivor := c.nodes[2]
	var services, events string // what the recovery must keep

	step(t, "refused on a running node", func(t *testing.T) {
		// Safe against accidental use: a running node's data dir is in use.
		_, errOut, code := cli(t, leader.admin(), "cluster", "recover", "--config", leader.caddyfile)
		if code != 1 || !strings.Contains(errOut, "is in use") {
			t.Fatalf("recover of a running node: exit %d, %q", code, errOut)
		}
	})

	step(t, "refused on a stopped node whose cluster answers", func(t *testing.T) {
		// Refused, and the node rejoins after.
		f := followers[0]
		f.proc.stop(syscall.SIGTERM)
		_, errOut, code := cli(t, leader.admin(), "cluster", "recover", "--config", f.caddyfile)
		if code != 1 || !strings.Contains(errOut, "refused") || !strings.Contains(errOut, "split it in two") || !strings.Contains(errOut, "runs as "+leader.id) {
			t.Fatalf("recover of a healthy cluster's node: exit %d, %q", code, errOut)
		}
		c.start(f)
		c.waitReady(t, f)
	})

	step(t, "some history", func(t *testing.T) {
		// Weights, a pool's version label, a drain.
		for _, w := range []string{
			`PUT /v1/services/codingbrain/weights {"weights":{"blue":90,"canary":10}}`,
			`PUT /v1/services/codingbrain/pools/canary {"backends":["` + c.backends["canary"] + `"],"version":"v2"}`,
			`POST /v1/services/codingbrain/pools/blue/backends/` + c.backends["blue"] + `/drain `,
			`DELETE /v1/services/codingbrain/pools/blue/backends/` + c.backends["blue"] + `/drain `,
			`PUT /v1/services/codingbrain/weights {"weights":{"blue":70,"canary":30}}`,
		} {
			method, rest, _ := strings.Cut(w, " ")
			path, body, _ := strings.Cut(rest, " ")
			if code, b := api(t, method, followers[0].admin()+path+"?wait=all", body); code != 200 {
				t.Fatalf("%s %s: %d %v", method, path, code, b)
			}
		}
		services, events = recoveryState(t, survivor)
		t.Logf("before: %s, %d events", services, strings.Count(events, `"index"`))
	})

	step(t, "two nodes lost for good, the survivor recovered", func(t *testing.T) {
		// Killed, data dirs wiped.
		for _, n := range c.nodes[:2] {
			n.proc.stop(syscall.SIGKILL)
			if err := os.RemoveAll(filepath.Join(n.dir, "data")); err != nil {
				t.Fatal(err)
			}
		}
		survivor.proc.stop(syscall.SIGTERM)
		out, errOut, code := cli(t, survivor.admin(), "cluster", "recover", "--config", survivor.caddyfile)
		t.Logf("cluster recover:\n%s%s", out, errOut)
		if code != 0 || !strings.Contains(out, "done: node3 is a one-node cluster") {
			t.Fatalf("recover: exit %d", code)
		}
	})

	step(t, "the survivor leads alone with every weight and event", func(t *testing.T) {
		// It starts with its Caddyfile unchanged.
		c.start(survivor)
		c.waitReady(t, survivor)
		if s, e := recoveryState(t, survivor); s != services || !keptEvents(e, events) {
			t.Fatalf("after recovery:\n%s\n%s\nwant\n%s\n%s", s, e, services, events)
		}
		if code, b := api(t, "PUT", survivor.admin()+"/v1/services/codingbrain/weights", `{"weights":{"blue":60,"canary":40}}`); code != 200 {
			t.Fatalf("write after recovery: %d %v", code, b)
		}
	})

	step(t, "it grows back with fresh nodes that get the whole state", func(t *testing.T) {
		fresh := []*clusterNode{c.newNode("node4"), c.newNode("node5")}
		for _, n := range fresh {
			c.writeCaddyfile(n, fmt.Sprintf("join             127.0.0.1:%d", survivor.adminPort))
			c.start(n)
		}
		c.waitReady(t, fresh...)
		alive := append([]*clusterNode{survivor}, fresh...)
		waitFor(t, "three voters", 30*time.Second, func() bool {
			code, body := apiQuietJSON(survivor.admin() + "/v1/cluster")
			return code == 200 && len(body["nodes"].([]any)) == 3 && body["failure_tolerance"].(float64) == 1
		})
		code, b := api(t, "PUT", fresh[1].admin()+"/v1/services/codingbrain/weights?wait=all", `{"weights":{"blue":50,"canary":50}}`)
		if code != 200 || len(b["applied_on"].([]any)) != 3 {
			t.Fatalf("write on the grown cluster: %d %v", code, b)
		}
		wantServices, wantEvents := recoveryState(t, survivor)
		if !strings.HasPrefix(wantEvents, strings.TrimSuffix(events, "]")+",") {
			t.Fatalf("events from before the recovery are missing:\n%s\nbefore\n%s", wantEvents, events)
		}
		for _, n := range alive[1:] {
			if s, e := recoveryState(t, n); s != wantServices || e != wantEvents {
				t.Fatalf("%s has\n%s\n%s\nwant\n%s\n%s", n.id, s, e, wantServices, wantEvents)
			}
		}
		for _, n := range alive {
			counts := countBackends(t, n.proxy()+"/", 400, 4)
			if counts["blue"] != 200 || counts["canary"] != 200 {
				t.Fatalf("%s splits %v, want 50/50", n.id, counts)
			}
		}
	})
}

// recoveryState is what a recovery must keep, read from one node after it
// applied everything committed: the service's version, weights, last known
// good and pools' labels, and the whole event trail.
// keptEvents reports whether the trail after holds every event of before,
// in order, with nothing after them but nodes registering themselves: a
// node records its addresses in the node list (node_join) on its own time,
// which may come after the history was read.
func keptEvents(after, before string) bool {
	if after == before {
		return true
	}
	if !strings.HasPrefix(after, strings.TrimSuffix(before, "]")+",") {
		return false
	}
	var all, old []map[string]any
	if json.Unmarshal([]byte(after), &all) != nil || json.Unmarshal([]byte(before), &old) != nil {
		return false
	}
	for _, e := range all[len(old):] {
		if e["action"] != "node_join" || e["actor"] != "cluster" {
			return false
		}
	}
	return true
}

func recoveryState(t *testing.T, n *clusterNode) (service, events string) {
	t.Helper()
	code, s := api(t, "GET", n.admin()+"/v1/services/codingbrain?consistent", "")
	if code != 200 {
		t.Fatalf("%s: GET service %d %v", n.id, code, s)
	}
	labels := map[string]any{}
	for name, p := range s["pools"].(map[string]any) {
		labels[name] = p.(map[string]any)["version"]
	}
	kept, _ := json.Marshal(map[string]any{"version": s["version"], "weights": s["weights"], "lkg": s["lkg"], "labels": labels})
	code, ev := api(t, "GET", n.admin()+"/v1/events?limit=1000", "")
	if code != 200 {
		t.Fatalf("%s: GET events %d", n.id, code)
	}
	all, _ := json.Marshal(ev["events"])
	return string(kept), string(all)
}
