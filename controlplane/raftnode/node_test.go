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
