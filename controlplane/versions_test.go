package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/internal/seams"
	"github.com/cbproxy/cbproxy/controlplane/raftnode"
	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/hashicorp/raft"
	"go.uber.org/zap/zaptest"
)

// appliedFileIndex is the index of the state in data_dir/applied.json.
func appliedFileIndex(t *testing.T, dir string) uint64 {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "applied.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Index uint64 `json:"index"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	return doc.Index
}

// metricsText is the node's /metrics page.
func metricsText(t *testing.T, c *client) string {
	t.Helper()
	resp, err := http.Get(c.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return string(raw)
}

// shutdownWithin fails the test if Shutdown does not return in time.
func shutdownWithin(t *testing.T, n *Node, d time.Duration) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- n.Shutdown() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	case <-time.After(d):
		t.Fatalf("Shutdown of %s did not return within %s", n.ID(), d)
	}
}

// checkHalted checks what a node that stopped at entry index shows: ready
// 503 saying why, raft unhealthy, the metric, writes refused, and its state
// machine (and applied.json) still before the entry.
func checkHalted(t *testing.T, n *Node, dir string, index uint64) {
	t.Helper()
	c := newClient(t, n)
	waitUntil(t, n.ID()+" halted", func() bool {
		code, why := readyAnswer(c)
		return code == 503 && len(why) > 0 && strings.Contains(why[0], "cannot apply") && strings.Contains(why[0], strconv.FormatUint(index, 10))
	})
	if got := n.View().Index; got >= index {
		t.Fatalf("%s applied up to %d, past the entry %d it cannot apply", n.ID(), got, index)
	}
	_, _, deps := c.do("GET", "/health/deps", "")
	if raft := deps["dependencies"].(map[string]any)["raft"].(map[string]any); raft["status"] != "unhealthy" || !strings.Contains(raft["error"].(string), "cannot apply") || deps["status"] != "unhealthy" {
		t.Fatalf("%s deps: %v", n.ID(), deps)
	}
	if m := metricsText(t, c); !strings.Contains(m, "cbproxy_raft_halted 1") {
		t.Fatalf("%s metrics lack cbproxy_raft_halted 1", n.ID())
	}
	code, _, body := c.do("PUT", "/v1/services/svc/weights", `{"weights":{"blue":100}}`)
	if code != 503 || body["code"] != "node_halted" {
		t.Fatalf("%s write while halted: %d %v", n.ID(), code, body)
	}
	// Give the background persistence time to write what it would.
	time.Sleep(300 * time.Millisecond)
	if got := appliedFileIndex(t, dir); got >= index {
		t.Fatalf("%s applied.json at %d, past the entry %d", n.ID(), got, index)
	}
}

// TestUnknownEntryStopsTheNode: a log entry of a kind this build does not
// know stops the node at that entry, loudly, instead of being skipped.
// Before, it was logged and skipped: the applied index and applied.json moved
// past it, the node stayed ready, and after an upgrade it was never applied.
func TestUnknownEntryStopsTheNode(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, dir)
	c := newClient(t, n)
	if code, _, b := c.do("PUT", "/v1/services/svc", demoService); code != 200 {
		t.Fatalf("put: %d %v", code, b)
	}
	before := n.View().Index
	// A newer leader's command, appended as it would have: straight into
	// the log.
	f := seams.RaftOf(n.raft).Apply(append([]byte{0x7e}, `{"service":"svc","actor":"newer"}`...), 5*time.Second)
	if err := f.Error(); err != nil {
		t.Fatalf("append: %v", err)
	}
	index := f.Index()
	// The future returns once the state machine had the entry.
	if got := n.View().Index; got != before {
		t.Fatalf("the state machine moved to index %d past the entry it cannot apply (%d); want it to stay at %d", got, index, before)
	}
	checkHalted(t, n, dir, index)
	shutdownWithin(t, n, 20*time.Second)

	// Restarted with the same build, it meets the entry again in its log
	// and stops there again.
	n2, err := Start(Config{NodeID: "node1", DataDir: dir, ClusterListen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer n2.Shutdown()
	checkHalted(t, n2, dir, index)
	if n2.Ready() {
		t.Fatal("a halted node is ready")
	}
	shutdownWithin(t, n2, 20*time.Second)
}

// appendUnchecked writes a command into the log on the leader the way a
// leader that did not check its members would (a member downgraded since
// the leader asked, or one that was down and unknown).
func appendUnchecked(t *testing.T, leader *Node, cmd state.Command) uint64 {
	t.Helper()
	cmd.Time, cmd.Actor = time.Now().UTC(), "test"
	data, err := state.Encode(cmd)
	if err != nil {
		t.Fatal(err)
	}
	f := seams.RaftOf(leader.raft).Apply(data, 5*time.Second)
	if err := f.Error(); err != nil {
		t.Fatalf("append: %v", err)
	}
	return f.Index()
}

// leaderOtherThan makes sure the leader is not node i (by handing
// leadership over) and returns the leader's index.
func (c *testCluster) leaderOtherThan(i int) int {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		l := c.leader(30 * time.Second)
		if l != i {
			return l
		}
		_ = seams.RaftOf(c.nodes[l].raft).LeadershipTransfer().Error()
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatalf("node%d keeps the leadership", i+1)
	return -1
}

func drained(n *Node, pool, addr string) bool {
	s := n.View().Services["svc"]
	if s == nil || s.Pools[pool] == nil {
		return false
	}
	for _, b := range s.Pools[pool].Backends {
		if b.Address == addr {
			return b.Draining
		}
	}
	return false
}

// TestMixedVersionCluster: node3 runs a build without the set_drain kind and
// the from_step_started field. The leader refuses to write either, through
// any node, naming node3; every other write applies everywhere. An entry
// written anyway stops node3 before it (never acknowledged, never skipped),
// and node3 applies it from its log once restarted with the full build.
func TestMixedVersionCluster(t *testing.T) {
	c := newCluster(t, 3, func(cfg *Config) {
		if cfg.NodeID == "node3" {
			cfg.raft.WithoutKinds = []state.Kind{state.KindSetDrain}
			cfg.raft.WithoutFields = []string{"from_step_started"}
		}
	})
	if code, _, b := c.client(0).do("PUT", "/v1/services/svc?wait=all", demoService); code != 200 || len(b["applied_on"].([]any)) != 3 {
		t.Fatalf("put: %d %v", code, b)
	}
	const drainPath = "/v1/services/svc/pools/blue/backends/127.0.0.1:9001/drain"
	version := c.nodes[0].View().Services["svc"].Version
	for i := range c.nodes {
		code, _, b := c.client(i).do("POST", drainPath, "")
		msg, _ := b["error"].(string)
		if code != 503 || b["code"] != "upgrade_in_progress" || !strings.Contains(msg, "node3") || !strings.Contains(msg, "set_drain") ||
			strings.Contains(msg, "node1 ") || strings.Contains(msg, "node2 ") {
			t.Fatalf("drain through node%d: %d %v", i+1, code, b)
		}
	}
	// A field node3 lacks, in a kind it knows: refused too.
	_, err := c.nodes[0].raft.Propose(context.Background(), state.NewCommand("svc", "watcher", state.RolloutChange{Action: state.StepRollout, RolloutID: "r1", FromStep: 1, FromStepStarted: time.Now()}))
	var upgrade *raftnode.UpgradeError
	if !errors.As(err, &upgrade) || !strings.Contains(err.Error(), "node3") || !strings.Contains(err.Error(), "cannot apply field from_step_started") {
		t.Fatalf("step with its epoch: %v", err)
	}
	c.converged(30 * time.Second)
	for _, n := range c.nodes {
		if v := n.View().Services["svc"].Version; v != version || drained(n, "blue", "127.0.0.1:9001") {
			t.Fatalf("%s: service at version %d, was %d: a refused write was written", n.ID(), v, version)
		}
	}
	// Everything else works, through node3 too.
	if code, _, b := c.client(2).do("PUT", "/v1/services/svc/weights?wait=all", `{"weights":{"blue":90,"canary":10}}`); code != 200 || len(b["applied_on"].([]any)) != 3 {
		t.Fatalf("weights through node3: %d %v", code, b)
	}

	// An entry node3 cannot apply, written anyway.
	c.leaderOtherThan(2)
	l := c.leader(30 * time.Second)
	at := appendUnchecked(t, c.nodes[l], state.NewCommand("svc", "", state.SetDrain{Pool: "blue", Action: state.DrainBackends, Backends: []string{"127.0.0.1:9001"}}))
	dir3 := c.cfgs[2].DataDir
	checkHalted(t, c.nodes[2], dir3, at)
	if drained(c.nodes[2], "blue", "127.0.0.1:9001") {
		t.Fatal("node3 drained")
	}
	// The others applied it and go on; ?wait=all does not count node3.
	code, _, b := c.client(l).do("PUT", "/v1/services/svc/weights?wait=all", `{"weights":{"blue":80,"canary":20}}`)
	if code != 200 || fmt.Sprint(b["not_applied"]) != "[node3]" || len(b["applied_on"].([]any)) != 2 {
		t.Fatalf("weights while node3 is halted: %d %v", code, b)
	}
	for i := range 2 {
		if !drained(c.nodes[i], "blue", "127.0.0.1:9001") {
			t.Fatalf("node%d did not drain", i+1)
		}
	}
	_, _, cl := c.client(l).do("GET", "/v1/cluster", "")
	for _, x := range cl["nodes"].([]any) {
		nd := x.(map[string]any)
		if nd["id"] == "node3" && (nd["state"] != "halted" || !strings.Contains(fmt.Sprint(nd["halted"]), "set_drain")) {
			t.Fatalf("node3 in /v1/cluster: %v", nd)
		}
	}
	shutdownWithin(t, c.nodes[2], 20*time.Second)

	// Upgraded: node3 replays the entry from its log and catches up.
	c.cfgs[2].raft.WithoutKinds, c.cfgs[2].raft.WithoutFields = nil, nil
	c.start(2)
	c.waitReady(60 * time.Second)
	waitUntil(t, "node3 applies the drain", func() bool { return drained(c.nodes[2], "blue", "127.0.0.1:9001") })
	if c.nodes[2].raft.Halted() != nil {
		t.Fatal("node3 still halted")
	}
	c.converged(30 * time.Second)
	// And the drain commands now go through node3 and everywhere.
	if code, _, b := c.client(2).do("DELETE", drainPath+"?wait=all", ""); code != 200 || len(b["applied_on"].([]any)) != 3 {
		t.Fatalf("undrain through node3: %d %v", code, b)
	}
}

// TestHaltedLeaderLeaves: a leader that meets an entry it cannot apply stops
// Raft, so the others elect a new leader and keep taking writes, instead of
// a leader that holds on without applying anything.
func TestHaltedLeaderLeaves(t *testing.T) {
	c := newCluster(t, 3, func(cfg *Config) {
		if cfg.NodeID == "node1" {
			cfg.raft.WithoutKinds = []state.Kind{state.KindSetDrain}
		}
	})
	c.client(1).do("PUT", "/v1/services/svc?wait=all", demoService)
	deadline := time.Now().Add(30 * time.Second)
	for c.leader(30*time.Second) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("node1 never leads")
		}
		l := c.leader(30 * time.Second)
		_ = seams.RaftOf(c.nodes[l].raft).LeadershipTransferToServer("node1", raft.ServerAddress(c.nodes[0].raft.ClusterAddr())).Error()
	}
	at := appendUnchecked(t, c.nodes[0], state.NewCommand("svc", "", state.SetDrain{Pool: "blue", Action: state.DrainBackends, Backends: []string{"127.0.0.1:9001"}}))
	checkHalted(t, c.nodes[0], c.cfgs[0].DataDir, at)
	// The others lead on: a write through node2 is applied by node2 and
	// node3, with the drain before it.
	waitUntil(t, "a write without node1", func() bool {
		code, _, _ := c.client(1).do("PUT", "/v1/services/svc/weights", `{"weights":{"blue":70,"canary":30}}`)
		return code == 200
	})
	for i := 1; i < 3; i++ {
		waitUntil(t, c.nodes[i].ID()+" drained", func() bool { return drained(c.nodes[i], "blue", "127.0.0.1:9001") })
	}
	shutdownWithin(t, c.nodes[0], 20*time.Second)
	c.nodes[0] = nil
}
