package raftnode

import (
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/internal/seams"
	"go.uber.org/zap/zaptest"
)

// startNode starts a real single-node Raft node: raft-wal on disk in dir,
// the cluster port on loopback, elections in milliseconds. It returns once
// the node leads.
func startNode(t *testing.T, dir string) *Node {
	t.Helper()
	n, err := Start(Config{
		NodeID: "node1", DataDir: dir, ClusterListen: "127.0.0.1:0", AdminAddr: "127.0.0.1:1",
		Logger: zaptest.NewLogger(t),
		Seams:  &seams.Raft{HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, LeaderLease: 50 * time.Millisecond},
	})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() { _ = n.Shutdown(true) })
	deadline := time.Now().Add(30 * time.Second)
	for !n.IsLeader() {
		if time.Now().After(deadline) {
			t.Fatal("no leader within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return n
}

// TestSingleNodeLeadsAtOnce: a node that is the only voter of its cluster
// elects itself at once, at the first start and at a restart, instead of
// waiting a heartbeat timeout for a leader that cannot exist (1 to 2 s at
// Raft's defaults: most of the time a single node with 1,000 services took
// to serve them). The heartbeat timeout is set to a minute here: waiting
// for it would take a minute or two, far past the 20 s the test allows.
func TestSingleNodeLeadsAtOnce(t *testing.T) {
	dir := t.TempDir()
	for _, start := range []string{"first start", "restart"} {
		n, err := Start(Config{
			NodeID: "node1", DataDir: dir, ClusterListen: "127.0.0.1:0", AdminAddr: "127.0.0.1:1",
			Logger: zaptest.NewLogger(t),
			Seams:  &seams.Raft{HeartbeatTimeout: time.Minute, ElectionTimeout: time.Minute, LeaderLease: 500 * time.Millisecond},
		})
		if err != nil {
			t.Fatalf("%s: %v", start, err)
		}
		deadline := time.Now().Add(20 * time.Second)
		for !n.IsLeader() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		leads := n.IsLeader()
		if err := n.Shutdown(true); err != nil {
			t.Fatalf("%s: shutdown: %v", start, err)
		}
		if !leads {
			t.Fatalf("%s: the only voter did not lead within 20 s (heartbeat timeout 1 m)", start)
		}
	}
}
