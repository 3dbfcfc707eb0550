package raftnode

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/hashicorp/raft"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// newTestFSM is the node's fsm on a real data dir, fed by the test instead
// of Raft.
func newTestFSM(t *testing.T, dir string) *fsm {
	t.Helper()
	snaps, err := raft.NewFileSnapshotStore(dir, 1, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	log := zaptest.NewLogger(t)
	f, err := newFSM(dir, state.Options{}, snaps, func() *zap.Logger { return log })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.close)
	return f
}

func applyCommand(t *testing.T, f *fsm, index uint64, c state.Command) state.Result {
	t.Helper()
	if c.Time.IsZero() {
		c.Time = time.Date(2026, 12, 3, 0, 0, 0, int(index), time.UTC)
	}
	c.Actor = "ops"
	data, err := state.Encode(c)
	if err != nil {
		t.Fatal(err)
	}
	res, _ := f.Apply(&raft.Log{Type: raft.LogCommand, Index: index, Data: data}).(state.Result)
	return res
}

// persistedIndex is the index of the state in dir's applied.json.
func persistedIndex(t *testing.T, path string) uint64 {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	m := state.NewMachine(state.Options{})
	if err := m.Restore(bytes.NewReader(raw)); err != nil {
		t.Fatalf("applied.json does not load: %v", err)
	}
	return m.View().Index
}

// TestAppliedStateWritesCoalesce: a steady stream of applies (one every
// millisecond or so, faster than applied.json can usefully be rewritten)
// costs at most one write of the whole state per persistEvery, plus the
// first; the latest state still reaches the disk without a new apply, and a
// clean close writes the last applied state.
func TestAppliedStateWritesCoalesce(t *testing.T) {
	dir := t.TempDir()
	f := newTestFSM(t, dir)
	spec := state.ServiceSpec{Pools: map[string]state.PoolSpec{"blue": {Backends: []string{"10.0.0.1:80"}}, "green": {Backends: []string{"10.0.0.2:80"}}}}
	if r := applyCommand(t, f, 1, state.NewCommand("svc", "", state.PutService{Spec: &spec})); !r.OK() {
		t.Fatal(r.Err)
	}
	const burst = 300
	start := time.Now()
	index := uint64(1)
	for i := 0; i < burst; i++ {
		index++
		w := state.Weight(1 + i%9999)
		applyCommand(t, f, index, state.Command{Envelope: state.Envelope{Service: "svc", IdemKey: fmt.Sprint("k", i), IdemHash: "h"}, Payload: state.SetWeights{Weights: state.Weights{"blue": state.Total - w, "green": w}}})
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	// The latest state wins: it is written without another apply.
	path := filepath.Join(dir, "applied.json")
	deadline := time.Now().Add(10 * time.Second)
	for persistedIndex(t, path) != index {
		if time.Now().After(deadline) {
			t.Fatalf("applied.json holds index %d, not the last applied %d", persistedIndex(t, path), index)
		}
		time.Sleep(10 * time.Millisecond)
	}
	writes := f.applied.writes.Load()
	// The first write, one per pause, the last one after the burst, and
	// one more for timer slack.
	limit := uint64(elapsed/persistEvery) + 3
	t.Logf("%d applies in %s: %d writes of applied.json (at most %d)", burst, elapsed, writes, limit)
	if writes > limit {
		t.Errorf("%d applies in %s wrote applied.json %d times; want at most one write per %s (%d)", burst, elapsed, writes, persistEvery, limit)
	}

	// A clean close never loses the last applied state, however recent.
	index++
	applyCommand(t, f, index, state.NewCommand("svc", "", state.SetWeights{Weights: state.Weights{"blue": state.Total}}))
	f.close()
	if got := persistedIndex(t, path); got != index {
		t.Fatalf("after close applied.json holds index %d, want %d", got, index)
	}
}

// TestAppliedStateOfOlderBuildLoads: an applied.json written by a build that
// kept whole results in its idempotency records is restored at start, and
// the next write replaces it with small records.
func TestAppliedStateOfOlderBuildLoads(t *testing.T) {
	dir := t.TempDir()
	old, err := os.ReadFile("../state/testdata/snapshot-full-results.json")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "applied.json")
	if err := os.WriteFile(path, old, 0o600); err != nil {
		t.Fatal(err)
	}
	f := newTestFSM(t, dir)
	if v := f.machine.View(); v.Index != 7 || v.Services["svc"] == nil {
		t.Fatalf("restored %+v from the older applied.json", v)
	}
	// The key "weights" of the older build replays (within its 24 hours).
	c := state.Command{Envelope: state.Envelope{Time: time.Date(2026, 3, 1, 13, 0, 0, 0, time.UTC), Service: "svc", IdemKey: "weights", IdemHash: "hash-weights"}, Payload: state.SetWeights{Weights: state.Weights{"blue": 9000, "canary": 1000}}}
	if r := applyCommand(t, f, 8, c); !r.Replayed || r.Version != 2 || !r.OK() {
		t.Fatalf("replay of a key of the older build: %+v", r)
	}
	f.close()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if persistedIndex(t, path) != 8 || bytes.Contains(raw, []byte(`"result"`)) {
		t.Fatalf("applied.json after a write: %s", raw)
	}
}

// TestEventFanoutSlowReader: a reader whose buffer is full loses its
// stream when several events are applied at once (one command can add a
// few), and the other readers still get every event. The fan-out used to
// send the next event of the same batch to the channel it had just closed,
// which panics on Raft's FSM goroutine.
func TestEventFanoutSlowReader(t *testing.T) {
	e := newEventFanout()
	slow, cancelSlow := e.subscribe()
	defer cancelSlow()
	for i := range cap(slow) {
		e.publish([]state.Event{{Index: uint64(i + 1)}})
	}
	fast, cancelFast := e.subscribe()
	defer cancelFast()
	e.publish([]state.Event{{Index: 1001}, {Index: 1002}, {Index: 1003}})
	n := 0
	for range slow {
		n++
	}
	if n != cap(slow) {
		t.Fatalf("the slow reader got %d events before its stream closed, want the %d it had room for", n, cap(slow))
	}
	for _, want := range []uint64{1001, 1002, 1003} {
		if got := <-fast; got.Index != want {
			t.Fatalf("the other reader got event %d, want %d", got.Index, want)
		}
	}
}
