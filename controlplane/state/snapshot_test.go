package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// script is a mixed command sequence: every kind, refusals, keyed writes with
// replays and conflicts, seeds and deletes, over enough time for keys to
// expire.
func script() []Command {
	var cs []Command
	add := func(c Command) {
		c.Time = t0.Add(time.Duration(len(cs)) * 7 * time.Minute)
		c.Actor = "ops"
		cs = append(cs, c)
	}
	for i := 0; i < 80; i++ {
		svc := fmt.Sprint("svc", i%3)
		w := Weight(i * 250 % 10001)
		switch i % 8 {
		case 0:
			add(put(svc, testSpec()))
		case 1:
			c := setWeights(svc, Weights{"blue": Total - w, "canary": w})
			c.IdemKey, c.IdemHash = fmt.Sprint("key", i%5), "h"
			add(c)
		case 2:
			add(drain(svc, "blue", DrainBackends, "10.0.0.11:8765"))
		case 3:
			add(setPool(svc, fmt.Sprint("p", i), "v", "10.1.0.1:80"))
		case 4:
			add(Command{Envelope: Envelope{Service: svc, IfVersion: ptr(uint64(i))}, Payload: SetWeights{Action: SwitchWeights, Weights: Weights{"green": Total}}})
		case 5:
			add(cmd(svc, PutService{Seed: true, Spec: ptr(testSpec())}))
		case 6:
			add(Command{Envelope: Envelope{Service: svc, IdemKey: fmt.Sprint("delete", i%5), IdemHash: "h"}, Payload: DeleteService{}})
		case 7:
			add(setWeights(svc, Weights{"nope": Total}))
		}
	}
	add(put("last", testSpec()))
	return cs
}

func applyAll(t *testing.T, m *Machine, from uint64, cs []Command) {
	t.Helper()
	for i, c := range cs {
		data, err := Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		m.Apply(from+uint64(i), data)
	}
}

func snapshotBytes(t *testing.T, m *Machine) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := m.WriteSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestDeterminism(t *testing.T) {
	cs := script()
	opts := Options{MaxEvents: 25, IdemTTL: time.Hour}
	a, b := NewMachine(opts), NewMachine(opts)
	applyAll(t, a, 1, cs)
	applyAll(t, b, 1, cs)
	sa, sb := snapshotBytes(t, a), snapshotBytes(t, b)
	if !bytes.Equal(sa, sb) {
		t.Fatalf("two machines diverged:\n%s\n%s", sa, sb)
	}
	if len(a.Events("", 0, 1000)) != 25 || len(a.View().Services) == 0 || len(a.View().Deleted) == 0 || len(a.idemQueue) == 0 {
		t.Fatalf("the script exercised too little: %s", sa)
	}

	// A machine restored from the snapshot continues exactly like the others.
	c := NewMachine(opts)
	if err := c.Restore(bytes.NewReader(sa)); err != nil {
		t.Fatal(err)
	}
	if sc := snapshotBytes(t, c); !bytes.Equal(sa, sc) {
		t.Fatalf("restore changed the state:\n%s\n%s", sa, sc)
	}
	next := uint64(len(cs) + 1)
	for _, m := range []*Machine{a, b, c} {
		applyAll(t, m, next, cs)
	}
	sa = snapshotBytes(t, a)
	for _, m := range []*Machine{b, c} {
		if s := snapshotBytes(t, m); !bytes.Equal(sa, s) {
			t.Fatalf("machines diverged after more commands:\n%s\n%s", sa, s)
		}
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	h := newHarness(t, Options{})
	h.apply(put("svc", testSpec()))
	h.apply(drain("svc", "blue", DrainBackends, "10.0.0.11:8765"))
	keyed := setWeights("svc", Weights{"blue": 9950, "canary": 50})
	keyed.IdemKey, keyed.IdemHash = "k", "h"
	first := h.apply(keyed)
	h.apply(put("gone", testSpec()))
	h.apply(cmd("gone", DeleteService{}))
	snap := snapshotBytes(t, h.m)

	var restoredView *View
	calls := 0
	m := NewMachine(Options{OnApply: func(v *View, added []Event) {
		calls++
		restoredView = v
		if calls == 2 && added != nil {
			t.Errorf("Restore passed events to OnApply: %v", added)
		}
	}})
	// State from before the restore must disappear.
	data, _ := Encode(put("stale", testSpec()))
	m.Apply(1, data)
	if err := m.Restore(bytes.NewReader(snap)); err != nil {
		t.Fatal(err)
	}
	v := m.View()
	if calls != 2 || restoredView != v {
		t.Errorf("OnApply calls %d, view %p, want the restored %p", calls, restoredView, v)
	}
	orig := h.m.View()
	if v.Index != orig.Index || !reflect.DeepEqual(v.Services, orig.Services) || !reflect.DeepEqual(v.Deleted, orig.Deleted) {
		t.Errorf("restored view %+v, want %+v", v, orig)
	}
	if _, ok := v.Services["stale"]; ok {
		t.Errorf("state from before the restore survived")
	}
	if got, want := m.Events("", 0, 100), h.m.Events("", 0, 100); len(got) != 5 || !reflect.DeepEqual(got, want) {
		t.Errorf("restored events\n%+v\nwant\n%+v", got, want)
	}

	// The idempotency table came along: the keyed write replays.
	data, _ = Encode(keyed)
	r := m.Apply(v.Index+1, data)
	if !r.Replayed || r.Version != first.Version || !reflect.DeepEqual(r.Service, first.Service) {
		t.Errorf("replay after restore = %+v", r)
	}
}

func TestRestoreRefusesBadSnapshots(t *testing.T) {
	h := newHarness(t, Options{})
	h.apply(put("svc", testSpec()))
	h.apply(put("two", testSpec()))
	c := Command{Envelope: Envelope{Service: "nothing", IdemKey: "k"}, Payload: DeleteService{}}
	h.apply(c)
	h.apply(Command{Envelope: Envelope{Service: "nothing2", IdemKey: "k2"}, Payload: DeleteService{}})
	good := snapshotBytes(t, h.m)

	edit := func(f func(doc map[string]any)) string {
		var doc map[string]any
		if err := json.Unmarshal(good, &doc); err != nil {
			t.Fatal(err)
		}
		f(doc)
		b, err := json.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	svc := func(doc map[string]any) map[string]any {
		return doc["services"].(map[string]any)["svc"].(map[string]any)
	}
	for _, tc := range []struct {
		name    string
		doc     string
		wantErr string
	}{
		{"not json", "{", "reading snapshot"},
		{"format", edit(func(d map[string]any) { d["format"] = 3 }), "snapshot format 3 is not supported; this build reads formats 1 and 2"},
		{"no format", `{}`, "snapshot format 0 is not supported"},
		{"sum", edit(func(d map[string]any) { svc(d)["weights"].(map[string]any)["blue"] = 99 }), `service "svc" weights: weights sum to 99, not 100`},
		{"weights miss a pool", edit(func(d map[string]any) { delete(svc(d)["weights"].(map[string]any), "green") }), "do not list every pool"},
		{"lkg", edit(func(d map[string]any) { svc(d)["lkg"] = map[string]any{"blue": 50} }), `service "svc" lkg`},
		{"name", edit(func(d map[string]any) { svc(d)["name"] = "other" }), `service "svc" is stored under another name`},
		{"null service", edit(func(d map[string]any) { d["services"].(map[string]any)["svc"] = nil }), "stored under another name"},
		{"bad backend", edit(func(d map[string]any) {
			svc(d)["pools"].(map[string]any)["green"] = map[string]any{"backends": []any{map[string]any{"address": "nope"}}}
		}), `pool "green": backend "nope" is not host:port`},
		{"null pool", edit(func(d map[string]any) { svc(d)["pools"].(map[string]any)["green"] = nil }), `pool "green" is empty`},
		{"live and deleted", edit(func(d map[string]any) { d["deleted"] = map[string]any{"svc": 3} }), "both live and deleted"},
		{"event order", edit(func(d map[string]any) {
			es := d["events"].([]any)
			es[0], es[1] = es[1], es[0]
		}), "events are not in index order"},
		{"duplicate key", edit(func(d map[string]any) {
			ks := d["idempotency"].([]any)
			ks[1].(map[string]any)["key"] = "k"
		}), `idempotency key "k" is empty or stored twice`},
		{"bad weight text", strings.Replace(string(good), `"blue":100`, `"blue":"100"`, 1), "weight must be a number"},
	} {
		m := NewMachine(Options{})
		err := m.Restore(strings.NewReader(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: Restore = %v, want error containing %q", tc.name, err, tc.wantErr)
		}
		if m.View().Index != 0 || len(m.View().Services) != 0 {
			t.Errorf("%s: a refused snapshot changed the state", tc.name)
		}
	}
	if err := NewMachine(Options{}).Restore(bytes.NewReader(good)); err != nil {
		t.Errorf("the unedited snapshot: %v", err)
	}
}

func TestRestoreTrimsToOptions(t *testing.T) {
	h := newHarness(t, Options{})
	for i := 0; i < 10; i++ {
		h.apply(put(fmt.Sprint("s", i), testSpec()))
	}
	m := NewMachine(Options{MaxEvents: 3})
	if err := m.Restore(bytes.NewReader(snapshotBytes(t, h.m))); err != nil {
		t.Fatal(err)
	}
	es := m.Events("", 0, 100)
	if len(es) != 3 || es[0].Index != 8 {
		t.Errorf("events after restore: %+v", es)
	}
	if _, gap := m.QueryEvents(EventQuery{Since: 3}); gap == nil || *gap != (EventGap{From: 4, To: 7}) {
		t.Errorf("gap after restore: %v; want 4-7", gap)
	}
}

// TestSnapshotKeepsEventGap: what the trail dropped survives a snapshot, and
// a snapshot written before that was recorded infers it from a full trail.
func TestSnapshotKeepsEventGap(t *testing.T) {
	h := newHarness(t, Options{MaxEvents: 5})
	for i := 0; i < 12; i++ {
		h.apply(put(fmt.Sprint("s", i), testSpec()))
	}
	snap := snapshotBytes(t, h.m)
	if !bytes.Contains(snap, []byte(`"events_dropped_through":7,`)) {
		t.Fatalf("snapshot without the dropped index: %s", snap)
	}
	m := NewMachine(Options{MaxEvents: 5})
	if err := m.Restore(bytes.NewReader(snap)); err != nil {
		t.Fatal(err)
	}
	if _, gap := m.QueryEvents(EventQuery{Since: 2}); gap == nil || *gap != (EventGap{From: 3, To: 7}) {
		t.Errorf("gap after restore: %v; want 3-7", gap)
	}

	legacy := bytes.Replace(snap, []byte(`"events_dropped_through":7,`), nil, 1)
	m = NewMachine(Options{MaxEvents: 5})
	if err := m.Restore(bytes.NewReader(legacy)); err != nil {
		t.Fatal(err)
	}
	if _, gap := m.QueryEvents(EventQuery{Since: 2}); gap == nil || *gap != (EventGap{From: 3, To: 7}) {
		t.Errorf("gap after restoring a full trail without the dropped index: %v; want 3-7", gap)
	}

	for _, bad := range []string{`"events_dropped_through":8,`, `"events_dropped_through":13,`} {
		doc := bytes.Replace(snap, []byte(`"events_dropped_through":7,`), []byte(bad), 1)
		if err := NewMachine(Options{}).Restore(bytes.NewReader(doc)); err == nil {
			t.Errorf("restored a snapshot with %s", bad)
		}
	}
}

func TestSnapshotEmpty(t *testing.T) {
	got := string(snapshotBytes(t, NewMachine(Options{})))
	want := `{"format":1,"index":0,"services":{},"deleted":{},"events":[],"events_dropped_through":0,"idempotency":[]}` + "\n"
	if got != want {
		t.Errorf("empty snapshot %s, want %s", got, want)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestWriteSnapshotError(t *testing.T) {
	err := NewMachine(Options{}).WriteSnapshot(failingWriter{})
	if err == nil || !strings.Contains(err.Error(), "writing snapshot: disk full") {
		t.Errorf("WriteSnapshot = %v", err)
	}
}

func TestEncodeDecode(t *testing.T) {
	c := Command{Envelope: Envelope{Time: t0, Actor: "ops", Service: "svc", IfVersion: ptr(uint64(4)), IdemKey: "k", IdemHash: "h"}, Payload: SetWeights{Weights: Weights{"blue": 9950, "canary": 50}}}
	data, err := Encode(c)
	if err != nil {
		t.Fatal(err)
	}
	if data[0] != byte(KindSetWeights) || !bytes.Contains(data, []byte(`"weights":{"blue":99.5,"canary":0.5}`)) {
		t.Errorf("entry %s", data)
	}
	back, err := Decode(data)
	if err != nil || !reflect.DeepEqual(back, c) {
		t.Errorf("Decode = %+v, %v; want %+v", back, err, c)
	}
	// The kind byte wins over the JSON's "kind".
	data[0] = byte(KindDeleteService)
	if back, err := Decode(data); err != nil || back.Kind() != KindDeleteService || back.Payload != (DeleteService{}) {
		t.Errorf("Decode with another kind byte = %+v, %v", back, err)
	}
	if _, err := Encode(Command{Envelope: Envelope{Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}, Payload: DeleteService{}}); err == nil {
		t.Error("Encode accepted a time JSON cannot hold")
	}
	// A follower forwards the command as JSON; its "kind" selects the
	// payload.
	forwarded, err := json.Marshal(c)
	if err != nil || !bytes.Equal(forwarded, data[1:]) {
		t.Errorf("forwarded %s, %v; want the entry's JSON", forwarded, err)
	}
	var got Command
	if err := json.Unmarshal(forwarded, &got); err != nil || !reflect.DeepEqual(got, c) {
		t.Errorf("forwarded command read as %+v, %v", got, err)
	}
	// What does not decode as a kind is refused, as before typed commands.
	for _, bad := range [][]byte{nil, {}, {1}, []byte("\x01[]"), []byte(`\x02{"kind":"x"}`), []byte(`\x02{"kind":300}`), []byte(`\x02{"time":1}`)} {
		if _, err := Decode(bad); err == nil {
			t.Errorf("Decode(%q) succeeded", bad)
		}
	}
}
