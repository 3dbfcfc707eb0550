package state

import (
	"bytes"
	"reflect"
	"testing"
	"time"
)

// batchEntries encodes a mixed sequence of commands (creates, changes, a
// refusal, a delete, a node join) at indexes 1.. with times t0+index.
func batchEntries(t *testing.T) []Entry {
	t.Helper()
	n2 := NodeInfo{ID: "node2", ClusterAddr: "127.0.0.1:7002", AdminAddr: "127.0.0.1:7102"}
	cmds := []Command{
		put("a", testSpec()),
		put("b", testSpec()),
		setWeights("a", Weights{"green": Total}),
		setWeights("nope", Weights{"blue": Total}), // refused: not found
		cmd("", NodeJoin{Node: &n2}),
		cmd("b", DeleteService{}),
		put("c", testSpec()),
		put("b", testSpec()), // created again after its delete
	}
	var entries []Entry
	for i, c := range cmds {
		index := uint64(i + 1)
		c.Time = t0.Add(time.Duration(index) * time.Second)
		c.Actor = "ops"
		data, err := Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, Entry{Index: index, Data: data})
	}
	return entries
}

// A batch applies like its commands one by one (same results, events and
// state), publishes one view, and leaves the view published before it as it
// was (views are immutable once published, also to a batch that writes the
// maps it copied in place).
func TestApplyBatchLikeOneByOne(t *testing.T) {
	entries := batchEntries(t)

	single := NewMachine(Options{})
	var singleResults []Result
	for _, e := range entries {
		singleResults = append(singleResults, single.Apply(e.Index, e.Data))
	}

	var published []*View
	var added []Event
	batch := NewMachine(Options{OnApply: func(v *View, ev []Event) {
		published = append(published, v)
		added = append(added, ev...)
	}})
	first := batch.ApplyBatch(entries[:1])
	before := batch.View()
	beforeServices := len(before.Services)
	results := append(first, batch.ApplyBatch(entries[1:])...)

	if len(published) != 2 {
		t.Fatalf("OnApply ran %d times for two batches, want 2", len(published))
	}
	if len(before.Services) != beforeServices || before.Services["b"] != nil || before.Index != 1 || len(before.Nodes) != 0 {
		t.Fatalf("the view published before the batch changed: index %d, services %v, nodes %v", before.Index, before.Services, before.Nodes)
	}
	// What the batch changed: each service once, in the order of their
	// first change; the node join and the refusal change no service.
	if ch := batch.View().Changes; ch == nil || ch.Since != 1 || !reflect.DeepEqual(ch.Services, []string{"b", "a", "c"}) {
		t.Errorf("changes of the batch's view = %+v, want since 1, services [b a c]", ch)
	}
	if ch := before.Changes; ch == nil || ch.Since != 0 || !reflect.DeepEqual(ch.Services, []string{"a"}) {
		t.Errorf("changes of the first view = %+v, want since 0, services [a]", ch)
	}
	if got := batch.View().Index; got != uint64(len(entries)) {
		t.Fatalf("index after the batch = %d, want %d", got, len(entries))
	}
	for i := range results {
		// Service pointers differ between the two machines; compare versions.
		a, b := results[i], singleResults[i]
		if a.Code != b.Code || a.Err != b.Err || a.Version != b.Version || a.Index != b.Index || a.Changed != b.Changed || a.Service.version() != b.Service.version() {
			t.Errorf("result %d: batch %+v, one by one %+v", i, a, b)
		}
	}
	if want := single.Events("", 0, 100); !reflect.DeepEqual(added, want) {
		t.Errorf("events handed to OnApply:\n%+v\nwant those of one by one:\n%+v", added, want)
	}
	var a, b bytes.Buffer
	if err := batch.WriteSnapshot(&a); err != nil {
		t.Fatal(err)
	}
	if err := single.WriteSnapshot(&b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Errorf("state after the batch differs from one by one:\n%s\n%s", a.Bytes(), b.Bytes())
	}
}

// An entry this build cannot apply stops the batch there: the entries
// before it are applied and published, it and those after are not.
func TestApplyBatchStopsAtUnsupported(t *testing.T) {
	entries := batchEntries(t)
	unknown := Entry{Index: 3, Data: append([]byte{0x7e}, `{"service":"a"}`...)}
	batch := append([]Entry{entries[0], entries[1], unknown}, entries[2:]...)
	calls := 0
	m := NewMachine(Options{OnApply: func(*View, []Event) { calls++ }})
	results := m.ApplyBatch(batch)
	if len(results) != 3 || results[2].Code != CodeUnsupported || !results[0].OK() || !results[1].OK() {
		t.Fatalf("results = %+v, want two applied then CodeUnsupported", results)
	}
	if v := m.View(); v.Index != 2 || len(v.Services) != 2 || calls != 1 {
		t.Fatalf("after the batch: index %d, %d services, %d OnApply calls; want 2, 2, 1", v.Index, len(v.Services), calls)
	}
	if r := m.ApplyBatch([]Entry{unknown}); len(r) != 1 || r[0].Code != CodeUnsupported || m.View().Index != 2 || calls != 1 {
		t.Fatalf("an unsupported entry alone: %+v, index %d, %d OnApply calls; want nothing published", r, m.View().Index, calls)
	}
}
