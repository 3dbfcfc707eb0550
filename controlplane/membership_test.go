package controlplane

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/cluster"
	"github.com/cbproxy/cbproxy/controlplane/internal/seams"
	"go.uber.org/zap/zaptest"
)

// voters is the leader's Raft configuration: address by node ID.
func (c *testCluster) voters() map[string]string {
	c.t.Helper()
	l := c.nodes[c.leader(30*time.Second)]
	f := seams.RaftOf(l.raft).GetConfiguration()
	if err := f.Error(); err != nil {
		c.t.Fatal(err)
	}
	out := map[string]string{}
	for _, s := range f.Configuration().Servers {
		out[string(s.ID)] = string(s.Address)
	}
	return out
}

// TestClusterJoinValidatesFirst: a join that names a live member wrongly is
// refused before anything changes; the member stays a voter.
func TestClusterJoinValidatesFirst(t *testing.T) {
	c := newCluster(t, 3, nil)
	before := c.voters()

	// A typo in cluster_addr for an existing ID: nobody answers there.
	typo := freeAddr(t)
	body := fmt.Sprintf(`{"node_id":"node2","cluster_addr":%q,"admin_addr":%q}`, typo, c.nodes[1].AdminAddr())
	code, _, b := c.client(0).do("POST", "/v1/cluster/join", body)
	if code != 400 || !strings.Contains(fmt.Sprint(b["error"]), typo) {
		t.Fatalf("join with a typo in the address: %d %v", code, b)
	}
	if after := c.voters(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("a refused join changed the voters: %v, before %v", after, before)
	}

	// A new ID on the address of a live member (sent to a follower, which
	// forwards it): 409 naming the member.
	body = fmt.Sprintf(`{"node_id":"node9","cluster_addr":%q,"admin_addr":"127.0.0.1:1"}`, c.nodes[2].raft.ClusterAddr())
	code, _, b = c.client(c.follower()).do("POST", "/v1/cluster/join", body)
	if code != 409 || b["code"] != "address_taken" || !strings.Contains(fmt.Sprint(b["error"]), "node3") {
		t.Fatalf("join of a new ID on node3's address: %d %v", code, b)
	}
	if after := c.voters(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("a refused join changed the voters: %v, before %v", after, before)
	}
	// The cluster still has its three voters working: a write reaches all.
	if code, _, b := c.client(0).do("PUT", "/v1/services/svc?wait=all", demoService); code != 200 || len(b["applied_on"].([]any)) != 3 {
		t.Fatalf("write after the refused joins: %d %v", code, b)
	}
}

// TestClusterRemovedNodeStaysRemoved: a node removed while it runs, or
// restarted with its old data dir, does not join again through its join
// list; an operator's join takes it back. Removing twice answers the same.
func TestClusterRemovedNodeStaysRemoved(t *testing.T) {
	c := newCluster(t, 3, nil)
	cfg4 := Config{NodeID: "node4", DataDir: t.TempDir(), ClusterListen: freeAddr(t), AdminListen: freeAddr(t),
		Join: []string{c.nodes[0].AdminAddr(), c.nodes[1].AdminAddr()}, ClusterSecret: "test-secret", Logger: zaptest.NewLogger(t).Named("node4"),
		raft: clusterRaft}
	n4, err := Start(cfg4)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = n4.shutdown(false) }()
	deadline := time.Now().Add(30 * time.Second)
	for !n4.Ready() || c.voters()["node4"] == "" {
		if time.Now().After(deadline) {
			t.Fatal("node4 did not join")
		}
		time.Sleep(20 * time.Millisecond)
	}

	staysOut := func(what string) {
		t.Helper()
		// node4 asks to join every 0.5-1 s; give it several tries.
		for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
			if addr := c.voters()["node4"]; addr != "" {
				t.Fatalf("%s: node4 joined again by itself (at %s)", what, addr)
			}
		}
		if ni, ok := c.nodes[0].View().Nodes["node4"]; ok {
			t.Fatalf("%s: node4 is back in the node list: %v", what, ni)
		}
	}
	if code, _, b := c.client(2).do("DELETE", "/v1/cluster/nodes/node4", ""); code != 200 || len(b["nodes"].([]any)) != 3 {
		t.Fatalf("remove: %d %v", code, b)
	}
	staysOut("removed while running")
	// Removing again answers as the first time (retries are safe).
	if code, _, b := c.client(1).do("DELETE", "/v1/cluster/nodes/node4", ""); code != 200 || len(b["nodes"].([]any)) != 3 {
		t.Fatalf("second remove: %d %v", code, b)
	}
	// A signed self-join of the removed node is refused with the way back.
	code, _, b := c.client(0).do("POST", "/v1/cluster/join", fmt.Sprintf(`{"node_id":"node4","cluster_addr":%q,"admin_addr":%q}`, n4.raft.ClusterAddr(), n4.AdminAddr()),
		"Authorization", signedJoin(t, "test-secret", n4))
	if code != 409 || b["code"] != "node_removed" || !strings.Contains(fmt.Sprint(b["error"]), "cbproxy cluster join") {
		t.Fatalf("signed self-join of a removed node: %d %v", code, b)
	}

	// Restarted with its old data dir: still out.
	_ = n4.Shutdown()
	if n4, err = Start(cfg4); err != nil {
		t.Fatal(err)
	}
	staysOut("restarted with its data dir")
	// A node that knows it was removed says why it is not ready.
	if !inCluster(n4) {
		deadline = time.Now().Add(10 * time.Second)
		for !strings.Contains(strings.Join(n4.WaitingFor(), "\n"), "cbproxy cluster join node4") {
			if time.Now().After(deadline) {
				t.Fatalf("readiness of the removed node: %q", n4.WaitingFor())
			}
			time.Sleep(50 * time.Millisecond)
		}
	} else {
		t.Log("node4 missed its removal (Raft replicates it on a best effort): it waits as a member")
	}

	// An operator takes it back.
	body := fmt.Sprintf(`{"node_id":"node4","cluster_addr":%q,"admin_addr":%q}`, n4.raft.ClusterAddr(), n4.AdminAddr())
	if code, _, b := c.client(1).do("POST", "/v1/cluster/join", body); code != 200 || len(b["nodes"].([]any)) != 4 {
		t.Fatalf("join by hand: %d %v", code, b)
	}
	deadline = time.Now().Add(30 * time.Second)
	for !n4.Ready() || c.nodes[0].View().Nodes["node4"].AdminAddr == "" {
		if time.Now().After(deadline) {
			t.Fatalf("node4 not back after the join by hand: ready %v, nodes %v", n4.Ready(), c.nodes[0].View().Nodes)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, still := c.nodes[0].View().Removed["node4"]; still {
		t.Fatal("the join by hand left node4 marked removed")
	}
}

// signedJoin is the Authorization header a node puts on its own join call.
func signedJoin(t *testing.T, secret string, n *Node) string {
	t.Helper()
	body := fmt.Sprintf(`{"node_id":"node4","cluster_addr":%q,"admin_addr":%q}`, n.raft.ClusterAddr(), n.AdminAddr())
	req, err := http.NewRequest("POST", "/v1/cluster/join", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	cluster.SignCall(req, secret, []byte(body))
	return req.Header.Get("Authorization")
}
