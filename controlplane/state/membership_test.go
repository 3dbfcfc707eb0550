package state

import (
	"bytes"
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
	if r := apply(1, Command{Kind: KindNodeJoin, Node: &n2}); !r.OK() || !r.Changed {
		t.Fatalf("join: %+v", r)
	}
	if got := m.View().Nodes["node2"]; got != n2 {
		t.Fatalf("nodes = %v", m.View().Nodes)
	}
	// Joining again with the same addresses changes nothing.
	if r := apply(2, Command{Kind: KindNodeJoin, Node: &n2}); !r.OK() || r.Changed {
		t.Fatalf("rejoin: %+v", r)
	}
	for _, bad := range []Command{
		{Kind: KindNodeJoin},
		{Kind: KindNodeJoin, Node: &NodeInfo{ID: "bad id", ClusterAddr: "a:1", AdminAddr: "a:2"}},
		{Kind: KindNodeJoin, Node: &NodeInfo{ID: "n3", ClusterAddr: "nohost", AdminAddr: "a:2"}},
		{Kind: KindNodeJoin, Service: "svc", Node: &n2},
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
	if r := apply(3, Command{Kind: KindNodeRemove, Node: &NodeInfo{ID: "node2"}}); !r.OK() || !r.Changed {
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
