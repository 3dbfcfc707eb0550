package state

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestMembership(t *testing.T) {
	m := NewMachine(Options{})
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	apply := func(index uint64, c Command) Result {
		t.Helper()
		c.Time = t0.Add(time.Duration(index) * time.Second)
		c.Actor = "ops"
		data, err := Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		return m.Apply(index, data)
	}
	n2 := NodeInfo{ID: "node2", ClusterAddr: "127.0.0.1:7002", AdminAddr: "127.0.0.1:7102"}
	if r := apply(1, cmd("", NodeJoin{Node: &n2})); !r.OK() || !r.Changed {
		t.Fatalf("join: %+v", r)
	}
	if got := m.View().Nodes["node2"]; got != n2 {
		t.Fatalf("nodes = %v", m.View().Nodes)
	}
	// Joining again with the same addresses changes nothing.
	if r := apply(2, cmd("", NodeJoin{Node: &n2})); !r.OK() || r.Changed {
		t.Fatalf("rejoin: %+v", r)
	}
	for _, bad := range []Command{
		cmd("", NodeJoin{}),
		cmd("", NodeJoin{Node: &NodeInfo{ID: "bad id", ClusterAddr: "a:1", AdminAddr: "a:2"}}),
		cmd("", NodeJoin{Node: &NodeInfo{ID: "n3", ClusterAddr: "nohost", AdminAddr: "a:2"}}),
		cmd("svc", NodeJoin{Node: &n2}),
		cmd("", NodeRemove{}),
		cmd("", NodeRemove{Node: &NodeInfo{ID: "bad id"}}),
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("Validate(%+v) accepted", bad)
		}
	}
	var snap bytes.Buffer
	if err := m.WriteSnapshot(&snap); err != nil {
		t.Fatal(err)
	}
	m2 := NewMachine(Options{})
	if err := m2.Restore(bytes.NewReader(snap.Bytes())); err != nil {
		t.Fatal(err)
	}
	if m2.View().Nodes["node2"] != n2 {
		t.Fatalf("restored nodes = %v", m2.View().Nodes)
	}
	if r := apply(3, cmd("", NodeRemove{Node: &NodeInfo{ID: "node2"}})); !r.OK() || !r.Changed {
		t.Fatalf("remove: %+v", r)
	}
	if _, ok := m.View().Nodes["node2"]; ok {
		t.Fatal("node2 still there")
	}
	ev := m.Events("", 0, 10)
	if len(ev) != 2 || ev[0].Action != ActionNodeJoin || ev[1].Action != ActionNodeRemove || ev[1].Service != "" {
		t.Fatalf("events = %+v", ev)
	}
}

// TestMembershipRemovedStaysRemoved: a removal leaves a tombstone, so a node
// that asks to join by itself (actor "cluster") is refused; an operator's
// join clears it. The tombstone survives a snapshot.
func TestMembershipRemovedStaysRemoved(t *testing.T) {
	m := NewMachine(Options{})
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	apply := func(index uint64, actor string, c Command) Result {
		t.Helper()
		c.Time = t0.Add(time.Duration(index) * time.Second)
		c.Actor = actor
		data, err := Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		return m.Apply(index, data)
	}
	n2 := NodeInfo{ID: "node2", ClusterAddr: "127.0.0.1:7002", AdminAddr: "127.0.0.1:7102"}
	if r := apply(1, ActorCluster, cmd("", NodeJoin{Node: &n2})); !r.OK() || !r.Changed {
		t.Fatalf("join: %+v", r)
	}
	if r := apply(2, "ops", cmd("", NodeRemove{Node: &NodeInfo{ID: "node2"}})); !r.OK() || !r.Changed {
		t.Fatalf("remove: %+v", r)
	}
	if got := m.View().Removed["node2"]; got != 2 {
		t.Fatalf("removed = %v, want node2 at index 2", m.View().Removed)
	}
	// Removing again changes nothing.
	if r := apply(3, "ops", cmd("", NodeRemove{Node: &NodeInfo{ID: "node2"}})); !r.OK() || r.Changed {
		t.Fatalf("second remove: %+v", r)
	}
	// The node asks to join by itself: refused, nothing changes.
	r := apply(4, ActorCluster, cmd("", NodeJoin{Node: &n2}))
	if r.Code != CodeNodeRemoved || !strings.Contains(r.Err, "cbproxy cluster join") {
		t.Fatalf("self-join of a removed node: %+v", r)
	}
	if _, ok := m.View().Nodes["node2"]; ok {
		t.Fatal("a removed node joined by itself")
	}
	// A voter that never registered its addresses is remembered as removed too.
	if r := apply(5, "ops", cmd("", NodeRemove{Node: &NodeInfo{ID: "node3"}})); !r.OK() || !r.Changed {
		t.Fatalf("remove of an unregistered voter: %+v", r)
	}
	var snap bytes.Buffer
	if err := m.WriteSnapshot(&snap); err != nil {
		t.Fatal(err)
	}
	m2 := NewMachine(Options{})
	if err := m2.Restore(bytes.NewReader(snap.Bytes())); err != nil {
		t.Fatal(err)
	}
	if got := m2.View().Removed; got["node2"] != 2 || got["node3"] != 5 {
		t.Fatalf("restored removed = %v", got)
	}
	// An operator's join takes the node back and clears the tombstone.
	if r := apply(6, "ops", cmd("", NodeJoin{Node: &n2})); !r.OK() || !r.Changed {
		t.Fatalf("operator join: %+v", r)
	}
	if _, ok := m.View().Removed["node2"]; ok || m.View().Nodes["node2"] != n2 {
		t.Fatalf("after the operator's join: nodes %v, removed %v", m.View().Nodes, m.View().Removed)
	}
	ev := m.Events("", 0, 10)
	var actions []string
	for _, e := range ev {
		actions = append(actions, string(e.Action))
	}
	if got := strings.Join(actions, ","); got != "node_join,node_remove,node_remove,node_join" {
		t.Fatalf("events %s", got)
	}
	// A snapshot that claims a node is both a member and removed is refused.
	bad := strings.Replace(snap.String(), `"removed":{`, `"nodes":{"node9":{"id":"node9","cluster_addr":"a:1","admin_addr":"a:2"}},"removed":{"node9":1,`, 1)
	if err := NewMachine(Options{}).Restore(strings.NewReader(bad)); err == nil {
		t.Fatalf("restored a node both a member and removed: %s", bad)
	}
}
