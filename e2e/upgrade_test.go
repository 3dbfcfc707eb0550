package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// oldBuild is cbproxy built with -tags cbproxy_hide_drain: a build that does
// not know the set_drain command, as one from before it existed. Built once,
// on first use, next to the other binaries.
var oldBuild struct {
	once sync.Once
	path string
	err  error
}

func oldCbproxy(t *testing.T) string {
	t.Helper()
	oldBuild.once.Do(func() {
		oldBuild.path = filepath.Join(filepath.Dir(bins.cbproxy), "cbproxy-old")
		cmd := exec.Command("go", "build", "-tags", "cbproxy_hide_drain", "-o", oldBuild.path, "./cmd/cbproxy")
		cmd.Dir = repoRoot()
		out, err := cmd.CombinedOutput()
		if err != nil {
			oldBuild.err = fmt.Errorf("building the old cbproxy: %v\n%s", err, out)
		}
	})
	if oldBuild.err != nil {
		t.Fatal(oldBuild.err)
	}
	return oldBuild.path
}

// stopGracefully sends SIGTERM and fails the test unless the process ends
// by itself within 15 s.
func stopGracefully(t *testing.T, n *clusterNode) {
	t.Helper()
	began := time.Now()
	n.proc.stop(syscall.SIGTERM)
	ws, _ := n.proc.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if took := time.Since(began); took > 15*time.Second || ws.Signaled() && ws.Signal() == syscall.SIGKILL {
		t.Fatalf("%s did not stop on SIGTERM (%s, %v)", n.id, took, n.proc.cmd.ProcessState)
	}
}

// appliedIndexOnDisk is the index of data_dir/applied.json.
func appliedIndexOnDisk(t *testing.T, n *clusterNode) float64 {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(n.dir, "data", "applied.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Index float64 `json:"index"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	return doc.Index
}

// draining reports whether node n's service shows the blue backend draining.
func (c *testCluster) draining(t *testing.T, n *clusterNode) bool {
	t.Helper()
	for _, b := range c.service(t, n)["pools"].(map[string]any)["blue"].(map[string]any)["backends"].([]any) {
		if be := b.(map[string]any); be["address"] == c.backends["blue"] {
			return be["draining"] == true
		}
	}
	t.Fatalf("%s: blue has no backend %s", n.id, c.backends["blue"])
	return false
}

func ids(list any) string {
	var out []string
	for _, x := range list.([]any) {
		out = append(out, x.(string))
	}
	return strings.Join(out, ",")
}

// TestClusterRollingUpgrade runs a three-node cluster in which node3 runs an
// older build that cannot apply set_drain (a backend drain):
//
//   - a drain through any node is refused with 503 upgrade_in_progress
//     naming node3; every other write applies on all three;
//   - written anyway (the leader could not ask node3: it was down, and the
//     leader new), the entry stops node3 loudly when it comes back: it is
//     not ready, its state and applied.json stay before the entry, it never
//     counts as applied, and its proxy keeps serving;
//   - restarted with the new build (the rolling upgrade), node3 applies the
//     entry from its log, and drains go through any node and apply
//     everywhere.
func TestClusterRollingUpgrade(t *testing.T) {
	old := oldCbproxy(t)
	c := prepareTestCluster(t)
	n1, n2, n3 := c.nodes[0], c.nodes[1], c.nodes[2]
	c.startBinary(n3, old)
	c.start(n2)
	c.start(n1)
	c.waitReady(t, c.nodes...)
	drainPath := "/v1/services/codingbrain/pools/blue/backends/" + c.backends["blue"] + "/drain"

	step(t, "mixed versions: the leader refuses what node3 cannot apply", func(t *testing.T) {
		for _, n := range c.nodes {
			code, body := api(t, "POST", n.admin()+drainPath, "")
			msg, _ := body["error"].(string)
			if code != 503 || body["code"] != "upgrade_in_progress" || !strings.Contains(msg, "node3") || !strings.Contains(msg, "set_drain") {
				t.Fatalf("drain through %s: %d %v", n.id, code, body)
			}
		}
		out, errOut, code := cli(t, n1.admin(), "backend", "drain", "codingbrain", "blue", c.backends["blue"])
		if code != 1 || !strings.Contains(errOut, "node3") || !strings.Contains(errOut, "upgrade") {
			t.Fatalf("cbproxy backend drain: exit %d\n%s%s", code, out, errOut)
		}
		for _, n := range c.nodes {
			if c.draining(t, n) {
				t.Fatalf("%s drains after a refused drain", n.id)
			}
		}
		code, body := api(t, "PUT", n3.admin()+"/v1/services/codingbrain/weights?wait=all", `{"weights":{"blue":90,"canary":10}}`)
		if code != 200 || ids(body["applied_on"]) != "node1,node2,node3" {
			t.Fatalf("weights through node3: %d %v", code, body)
		}
	})

	var drainIndex float64
	step(t, "a drain written while node3 is down", func(t *testing.T) {
		// node1 and node2 restart, so the leader has never heard from node3
		// and takes it to apply what every versioned build does, set_drain
		// included.
		stopGracefully(t, n3)
		for _, n := range []*clusterNode{n1, n2} {
			stopGracefully(t, n)
			c.start(n)
			c.waitReady(t, n)
		}
		code, body := api(t, "POST", n1.admin()+drainPath+"?wait=all", "")
		if code != 200 || ids(body["applied_on"]) != "node1,node2" || ids(body["not_applied"]) != "node3" {
			t.Fatalf("drain with node3 down: %d %v", code, body)
		}
		drainIndex = body["version"].(float64)
	})

	step(t, "the old node3 halts at the drain and keeps proxying", func(t *testing.T) {
		c.startBinary(n3, old)
		var why string
		waitFor(t, "node3 halted", 60*time.Second, func() bool {
			code, body := apiQuietJSON(n3.admin() + "/health/ready")
			if code != 503 || body["status"] != "halted" {
				return false
			}
			why = fmt.Sprint(body["waiting_for"])
			return true
		})
		if !strings.Contains(why, "set_drain") || !strings.Contains(why, fmt.Sprint(drainIndex)) {
			t.Fatalf("node3 says why: %s", why)
		}
		_, deps := api(t, "GET", n3.admin()+"/health/deps", "")
		if deps["status"] != "unhealthy" || deps["dependencies"].(map[string]any)["raft"].(map[string]any)["status"] != "unhealthy" {
			t.Fatalf("node3 deps: %v", deps)
		}
		if m := lintedMetrics(t, n3.admin()+"/metrics"); !strings.Contains(m, "cbproxy_raft_halted 1") {
			t.Fatal("node3 metrics lack cbproxy_raft_halted 1")
		}
		if c.draining(t, n3) {
			t.Fatal("node3 drains")
		}
		if got := appliedIndexOnDisk(t, n3); got >= drainIndex {
			t.Fatalf("node3 applied.json at %v, past the drain at %v", got, drainIndex)
		}
		if code, body := api(t, "PUT", n3.admin()+"/v1/services/codingbrain/weights", `{"weights":{"blue":100}}`); code != 503 || body["code"] != "node_halted" {
			t.Fatalf("write through halted node3: %d %v", code, body)
		}
		code, body := api(t, "PUT", n1.admin()+"/v1/services/codingbrain/weights?wait=all", `{"weights":{"blue":80,"canary":20}}`)
		if code != 200 || ids(body["not_applied"]) != "node3" {
			t.Fatalf("weights while node3 is halted: %d %v", code, body)
		}
		_, cl := api(t, "GET", n1.admin()+"/v1/cluster", "")
		for _, x := range cl["nodes"].([]any) {
			if nd := x.(map[string]any); nd["id"] == "node3" && nd["state"] != "halted" {
				t.Fatalf("node3 in /v1/cluster: %v", nd)
			}
		}
		// Its proxy keeps serving the state it has.
		if counts := countBackends(t, n3.proxy()+"/", 200, 2); counts["blue"]+counts["canary"] != 200 {
			t.Fatalf("node3 proxy while halted: %v", counts)
		}
	})

	step(t, "upgraded, node3 applies the drain from its log", func(t *testing.T) {
		stopGracefully(t, n3)
		c.start(n3)
		c.waitReady(t, n3)
		if !c.draining(t, n3) {
			t.Fatal("upgraded node3 did not apply the drain")
		}
		if got := appliedIndexOnDisk(t, n3); got < drainIndex {
			t.Fatalf("upgraded node3 applied.json at %v, before the drain at %v", got, drainIndex)
		}
		for _, n := range []*clusterNode{n3, n2} {
			method := "DELETE"
			if n == n2 {
				method = "POST"
			}
			code, body := api(t, method, n.admin()+drainPath+"?wait=all", "")
			if code != 200 || ids(body["applied_on"]) != "node1,node2,node3" {
				t.Fatalf("%s through %s after the upgrade: %d %v", method, n.id, code, body)
			}
		}
		for _, n := range c.nodes {
			if !c.draining(t, n) {
				t.Fatalf("%s does not drain", n.id)
			}
		}
	})
}
