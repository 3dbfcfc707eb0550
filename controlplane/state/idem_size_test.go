package state

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"testing"
	"time"
)

// bigSpec is a service with 200 backends: blue and green with 100 each.
func bigSpec() ServiceSpec {
	spec := ServiceSpec{Pools: map[string]PoolSpec{"blue": {Version: "v1"}, "green": {Version: "v2"}}}
	for pool, octet := range map[string]int{"blue": 1, "green": 2} {
		p := spec.Pools[pool]
		for i := 0; i < 100; i++ {
			p.Backends = append(p.Backends, fmt.Sprintf("10.%d.%d.%d:8080", octet, i/250, i%250+1))
		}
		spec.Pools[pool] = p
	}
	return spec
}

// TestSnapshotSizeAfterKeyedWrites applies 10,000 keyed writes (every write
// through the admin API carries a key) to a 200-backend service and bounds
// the snapshot by twice "the state itself": the same snapshot document
// without its idempotency records, that is the services, deleted names, nodes
// and the event trail (bounded by MaxEvents on its own, 10,000 events here).
// So the remembered keys may at most double the document, and each record
// must cost a small constant, whatever the size of the service it was about.
func TestSnapshotSizeAfterKeyedWrites(t *testing.T) {
	const writes = 10000
	m := NewMachine(Options{})
	index := uint64(1)
	apply := func(c Command) Result {
		t.Helper()
		c.Time = t0.Add(time.Duration(index) * time.Second) // 10,000 s: no key expires
		c.Actor = "ops"
		data, err := Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		r := m.Apply(index, data)
		index++
		return r
	}
	if r := apply(put("svc", bigSpec())); !r.OK() {
		t.Fatal(r.Err)
	}
	for i := 0; i < writes; i++ {
		w := Weight(1 + i%9999)
		c := setWeights("svc", Weights{"blue": Total - w, "green": w})
		// Keys and hashes as the admin API makes them: "client:" and a
		// UUID, a 32-digit hex digest of the request.
		c.IdemKey = fmt.Sprintf("client:%08x-1c2d-4e5f-8a9b-%012x", i, i)
		c.IdemHash = fmt.Sprintf("%032x", i)
		if r := apply(c); !r.OK() || !r.Changed {
			t.Fatalf("write %d: %+v", i, r)
		}
	}
	if len(m.idemQueue) != writes {
		t.Fatalf("%d keys remembered, want %d", len(m.idemQueue), writes)
	}

	full := snapshotBytes(t, m)
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(full, &doc); err != nil {
		t.Fatal(err)
	}
	records := len(doc["idempotency"])
	delete(doc, "idempotency")
	itself, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("snapshot %d bytes; the state itself %d bytes (service %d); idempotency records %d bytes (%d per key)",
		len(full), len(itself), len(doc["services"]), records, records/writes)
	if len(full) > 2*len(itself) {
		t.Errorf("snapshot is %d bytes, over twice the state itself (%d bytes): the idempotency records take %d bytes, %d per key",
			len(full), len(itself), records, records/writes)
	}
	if per := records / writes; per > 256 {
		t.Errorf("an idempotency record takes %d bytes; it must not grow with the service (at most 256)", per)
	}
}

// idemScenario is the keyed commands of testdata/snapshot-full-results.json,
// applied at indexes 1 to 7 by a build that kept whole results: a create, a
// change, a no-op, a refusal for a missing service, an unkeyed create, a
// delete and a version mismatch. The key is the map key.
func idemScenario() (order []string, cmds map[string]Command) {
	keyed := func(c Command, key string) Command { c.IdemKey, c.IdemHash = key, "hash-"+key; return c }
	stale := setWeights("svc", Weights{"blue": 10000})
	stale.IfVersion = ptr(uint64(1))
	cmds = map[string]Command{
		"create":  keyed(put("svc", testSpec()), "create"),
		"weights": keyed(setWeights("svc", Weights{"blue": 9000, "canary": 1000}), "weights"),
		"same":    keyed(setWeights("svc", Weights{"blue": 9000, "canary": 1000}), "same"),
		"missing": keyed(setWeights("missing", Weights{"blue": 10000}), "missing"),
		"":        put("gone", testSpec()),
		"delete":  keyed(cmd("gone", DeleteService{}), "delete"),
		"stale":   keyed(stale, "stale"),
	}
	return []string{"create", "weights", "same", "missing", "", "delete", "stale"}, cmds
}

// TestIdempotencyRecords: every kind of first result replays with its code,
// error, version, index and Changed, and the service as it is now.
func TestIdempotencyRecords(t *testing.T) {
	h := newHarness(t, Options{})
	order, cmds := idemScenario()
	first := map[string]Result{}
	for _, key := range order {
		first[key] = h.apply(cmds[key])
	}
	h.apply(setWeights("svc", Weights{"blue": 5000, "canary": 5000})) // the service moves on
	now := h.m.View().Services["svc"]
	for _, key := range order {
		if key == "" {
			continue
		}
		got := h.apply(cmds[key])
		want := first[key]
		want.Replayed = true
		want.Service = h.m.View().Services[cmds[key].Service]
		if cmds[key].Service == "svc" && want.Service != now {
			t.Fatalf("the replay of %s changed the state", key)
		}
		if got != want {
			t.Errorf("replay of %s = %+v\nwant %+v", key, got, want)
		}
	}
	if first["same"].Changed || !first["delete"].Changed || first["delete"].Index != 6 || first["stale"].Code != CodeVersionMismatch {
		t.Fatalf("the scenario went otherwise than planned: %+v", first)
	}
}

// TestRestoreFullResultRecords: a snapshot (or applied.json) written by a
// build that kept the whole first result in each record still loads; its
// keys replay with the first code, error, version and Changed, and the next
// snapshot holds small records only.
func TestRestoreFullResultRecords(t *testing.T) {
	old, err := os.ReadFile("testdata/snapshot-full-results.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(old, []byte(`"result":{`)) || !bytes.Contains(old, []byte(`"backends":[`)) {
		t.Fatal("the fixture is not in the old format")
	}
	// What the build that wrote the fixture answered.
	ref := newHarness(t, Options{})
	order, cmds := idemScenario()
	first := map[string]Result{}
	for _, key := range order {
		first[key] = ref.apply(cmds[key])
	}

	m := NewMachine(Options{})
	if err := m.Restore(bytes.NewReader(old)); err != nil {
		t.Fatal(err)
	}
	if v := m.View(); v.Index != 7 || !reflect.DeepEqual(v.Services, ref.m.View().Services) {
		t.Fatalf("restored view %+v", v)
	}
	index := uint64(8)
	for _, key := range order {
		if key == "" {
			continue
		}
		c := cmds[key]
		c.Time, c.Actor = t0.Add(time.Minute), "ops"
		data, err := Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		got := m.Apply(index, data)
		index++
		want := first[key]
		// The old records did not keep the index.
		want.Index, want.Replayed, want.Service = 0, true, m.View().Services[c.Service]
		if got != want {
			t.Errorf("replay of %s from the old snapshot = %+v\nwant %+v", key, got, want)
		}
	}
	if m.View().Index != index-1 || len(m.Events("", 0, 100)) != len(ref.m.Events("", 0, 100)) {
		t.Errorf("a replay changed the state: %+v", m.View())
	}
	again := snapshotBytes(t, m)
	if bytes.Contains(again, []byte(`"result"`)) || bytes.Count(again, []byte(`"backends"`)) != 3 {
		t.Errorf("the next snapshot still holds whole results: %s", again)
	}
	// And it loads again to the same state.
	m2 := NewMachine(Options{})
	if err := m2.Restore(bytes.NewReader(again)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(snapshotBytes(t, m2), again) {
		t.Error("the rewritten snapshot does not round-trip")
	}
}
