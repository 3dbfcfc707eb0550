package state

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// harness applies commands at consecutive indexes and keeps what OnApply saw.
type harness struct {
	t     *testing.T
	m     *Machine
	index uint64
	added [][]Event
}

func newHarness(t *testing.T, opts Options) *harness {
	h := &harness{t: t}
	opts.OnApply = func(v *View, added []Event) {
		if v != h.m.View() {
			t.Errorf("OnApply got a view that is not the published one")
		}
		h.added = append(h.added, added)
	}
	h.m = NewMachine(opts)
	return h
}

// apply encodes c and applies it at the next index; a zero Time becomes t0
// plus the index in seconds.
func (h *harness) apply(c Command) Result {
	h.t.Helper()
	h.index++
	if c.Time.IsZero() {
		c.Time = t0.Add(time.Duration(h.index) * time.Second)
	}
	if c.Actor == "" {
		c.Actor = "ops"
	}
	data, err := Encode(c)
	if err != nil {
		h.t.Fatal(err)
	}
	return h.m.Apply(h.index, data)
}

// lastAdded is what OnApply got for the last command.
func (h *harness) lastAdded() []Event { return h.added[len(h.added)-1] }

// cmd is a command about svc; the harness stamps its time and actor.
func cmd(svc string, p Payload) Command { return Command{Envelope: Envelope{Service: svc}, Payload: p} }

func put(svc string, spec ServiceSpec) Command {
	return cmd(svc, PutService{Spec: &spec})
}

func setWeights(svc string, w Weights) Command {
	return cmd(svc, SetWeights{Weights: w})
}

func setPool(svc, pool, version string, backends ...string) Command {
	return cmd(svc, SetPool{Pool: pool, PoolVersion: version, Backends: backends})
}

func drain(svc, pool string, action DrainAction, addrs ...string) Command {
	return cmd(svc, SetDrain{Pool: pool, Action: action, Backends: addrs})
}

func withSpec(edit func(*ServiceSpec)) ServiceSpec {
	s := testSpec()
	edit(&s)
	return s
}

// checkViewValid fails the test when a published view breaks an invariant.
func checkViewValid(t *testing.T, v *View) {
	t.Helper()
	for name, s := range v.Services {
		if s.Name != name {
			t.Errorf("service %q stored under %q", s.Name, name)
		}
		if err := s.validate(); err != nil {
			t.Errorf("invalid service: %v", err)
		}
		if s.Weights.Sum() != Total || len(s.Weights) != len(s.Pools) {
			t.Errorf("service %q weights %v do not list every pool or do not sum to 100", name, s.Weights)
		}
		if _, ok := v.Deleted[name]; ok {
			t.Errorf("service %q is live and deleted", name)
		}
	}
}

func TestApplyCommands(t *testing.T) {
	type step struct {
		name    string
		cmd     Command
		code    string
		changed bool
		weights Weights     // the service's weights after the step, when set
		lkg     Weights     // its LKG after the step, when set
		event   EventAction // the action of the event the step adds, "" for none
		reason  string      // a part of that event's reason
		check   func(t *testing.T, v *View, r Result)
	}
	blue100 := Weights{"blue": 10000, "canary": 0, "green": 0}
	blue99 := Weights{"blue": 9900, "canary": 100, "green": 0}
	green100 := Weights{"blue": 0, "canary": 0, "green": 10000}
	steps := []step{
		{name: "create", cmd: put("svc", testSpec()), changed: true, weights: blue100, lkg: blue100, event: ActionServicePut, reason: "created with pools blue, canary, green"},
		{name: "same put changes nothing", cmd: put("svc", testSpec()), weights: blue100},
		{name: "weights", cmd: setWeights("svc", Weights{"blue": 9900, "canary": 100}), changed: true, weights: blue99, lkg: blue100, event: ActionWeights, reason: ""},
		{name: "same weights change nothing", cmd: setWeights("svc", Weights{"blue": 9900, "canary": 100, "green": 0}), weights: blue99, lkg: blue100},
		{name: "weights unknown pool", cmd: setWeights("svc", Weights{"purple": 10000}), code: CodeInvalid, weights: blue99,
			check: func(t *testing.T, _ *View, r Result) {
				if !strings.Contains(r.Err, `weights name pool "purple", which the service does not have; its pools are blue, canary, green`) || r.Service == nil {
					t.Errorf("result %+v", r)
				}
			}},
		{name: "weights bad sum", cmd: setWeights("svc", Weights{"blue": 9000}), code: CodeInvalid, weights: blue99},
		{name: "weights unknown service", cmd: setWeights("nope", Weights{"blue": 10000}), code: CodeNotFound,
			check: func(t *testing.T, _ *View, r Result) {
				if r.Err != `service "nope" does not exist` || r.Service != nil || r.Version != 0 {
					t.Errorf("result %+v", r)
				}
			}},
		{name: "switch", cmd: cmd("svc", SetWeights{Action: SwitchWeights, Weights: Weights{"green": 10000}}), changed: true, weights: green100, lkg: blue99, event: ActionSwitch},
		{name: "rollback keeps the LKG", cmd: cmd("svc", Rollback{Trigger: TriggerManual}), changed: true, weights: blue99, lkg: blue99, event: ActionRollback, reason: "last known good"},
		{name: "new pool gets 0", cmd: setPool("svc", "purple", "v3", "10.0.0.41:8765"), changed: true,
			weights: Weights{"blue": 9900, "canary": 100, "green": 0, "purple": 0}, lkg: Weights{"blue": 9900, "canary": 100, "green": 0, "purple": 0},
			event: ActionPool, reason: "pool purple created: backends 10.0.0.41:8765, version v3"},
		{name: "pool replaced", cmd: setPool("svc", "canary", "v2", "10.0.0.31:8765", "10.0.0.32:8765"), changed: true, event: ActionPool, reason: "pool canary updated",
			check: func(t *testing.T, v *View, _ Result) {
				p := v.Services["svc"].Pools["canary"]
				if p.Version != "v2" || len(p.Backends) != 2 || p.Backends[1].Address != "10.0.0.32:8765" {
					t.Errorf("canary pool %+v", p)
				}
			}},
		{name: "same pool changes nothing", cmd: setPool("svc", "canary", "v2", "10.0.0.31:8765", "10.0.0.32:8765")},
		{name: "pool of unknown service", cmd: setPool("nope", "blue", "", "h:1"), code: CodeNotFound},
		{name: "pool with bad backend", cmd: setPool("svc", "blue", "", "h:1", "h:1"), code: CodeInvalid},
		{name: "drain", cmd: drain("svc", "blue", DrainBackends, "10.0.0.11:8765"), changed: true, event: ActionDrain, reason: "drain of pool blue: 10.0.0.11:8765",
			check: func(t *testing.T, v *View, _ Result) {
				b := v.Services["svc"].Pools["blue"].Backends
				if !b[0].Draining || b[1].Draining {
					t.Errorf("backends %+v", b)
				}
			}},
		{name: "drain again changes nothing", cmd: drain("svc", "blue", DrainBackends, "10.0.0.11:8765")},
		{name: "drain unknown backend", cmd: drain("svc", "blue", DrainBackends, "10.9.9.9:1"), code: CodeNotFound},
		{name: "drain unknown pool", cmd: drain("svc", "nope", DrainBackends, "10.0.0.11:8765"), code: CodeNotFound},
		{name: "pool set keeps drains", cmd: setPool("svc", "blue", "v1.1", "10.0.0.13:8765", "10.0.0.11:8765"), changed: true, event: ActionPool,
			check: func(t *testing.T, v *View, _ Result) {
				b := v.Services["svc"].Pools["blue"].Backends
				if b[0].Draining || !b[1].Draining || b[1].Address != "10.0.0.11:8765" {
					t.Errorf("backends %+v", b)
				}
			}},
		{name: "undrain", cmd: drain("svc", "blue", UndrainBackends, "10.0.0.11:8765"), changed: true, event: ActionUndrain},
		{name: "put without weights keeps them and the LKG", cmd: put("svc", withSpec(func(s *ServiceSpec) { s.Health = &HealthCheck{Path: "/up"} })), changed: true,
			weights: blue99, lkg: blue99, event: ActionServicePut, reason: "replaced"},
		{name: "put with new weights moves the LKG", cmd: put("svc", withSpec(func(s *ServiceSpec) { s.Weights = Weights{"green": 10000} })), changed: true,
			weights: green100, lkg: blue99, event: ActionServicePut},
		{name: "put that drops the LKG's pool", cmd: put("svc", withSpec(func(s *ServiceSpec) { delete(s.Pools, "canary") })), changed: true,
			weights: Weights{"blue": 0, "green": 10000}, lkg: Weights{"blue": 0, "green": 10000}, event: ActionServicePut},
		{name: "put that drops the weighted pool", cmd: put("svc", withSpec(func(s *ServiceSpec) { delete(s.Pools, "green") })), changed: true,
			weights: Weights{"blue": 10000, "canary": 0}, lkg: Weights{"blue": 10000, "canary": 0}, event: ActionServicePut},
		{name: "version mismatch", cmd: Command{Envelope: Envelope{Service: "svc", IfVersion: ptr(uint64(3))}, Payload: SetWeights{Weights: Weights{"blue": 10000}}}, code: CodeVersionMismatch,
			check: func(t *testing.T, v *View, r Result) {
				cur := v.Services["svc"].Version
				if r.Version != cur || r.Err != fmt.Sprintf("service %q is at version %d, not 3; read it again and retry", "svc", cur) {
					t.Errorf("result %+v", r)
				}
			}},
		{name: "version 0 for a live service", cmd: Command{Envelope: Envelope{Service: "svc", IfVersion: ptr(uint64(0))}, Payload: PutService{Spec: ptr(testSpec())}}, code: CodeVersionMismatch},
		{name: "delete", cmd: cmd("svc", DeleteService{}), changed: true, event: ActionServiceDelete,
			check: func(t *testing.T, v *View, r Result) {
				if _, ok := v.Services["svc"]; ok || v.Deleted["svc"] == 0 || r.Service != nil || r.Version != 0 {
					t.Errorf("view %+v, result %+v", v, r)
				}
			}},
		{name: "delete again", cmd: cmd("svc", DeleteService{}), code: CodeNotFound},
		{name: "seed of a deleted name", cmd: cmd("svc", PutService{Seed: true, Spec: ptr(testSpec())}),
			check: func(t *testing.T, v *View, r Result) {
				if _, ok := v.Services["svc"]; ok || r.Service != nil {
					t.Errorf("seed re-created a deleted service")
				}
			}},
		{name: "version of a missing service", cmd: Command{Envelope: Envelope{Service: "svc", IfVersion: ptr(uint64(7))}, Payload: SetWeights{Weights: Weights{"blue": 10000}}}, code: CodeVersionMismatch,
			check: func(t *testing.T, _ *View, r Result) {
				if r.Err != `service "svc" does not exist, but version 7 was expected` {
					t.Errorf("result %+v", r)
				}
			}},
		{name: "put re-creates a deleted name", cmd: Command{Envelope: Envelope{Service: "svc", IfVersion: ptr(uint64(0))}, Payload: PutService{Spec: ptr(testSpec())}}, changed: true,
			weights: blue100, lkg: blue100, event: ActionServicePut, reason: "created",
			check: func(t *testing.T, v *View, _ Result) {
				if _, ok := v.Deleted["svc"]; ok {
					t.Errorf("deleted entry kept after re-creation")
				}
			}},
		{name: "seed of a live name", cmd: cmd("svc", PutService{Seed: true, Spec: ptr(withSpec(func(s *ServiceSpec) { s.Weights = Weights{"green": 10000} }))}), weights: blue100},
		{name: "seed of a new name", cmd: cmd("other", PutService{Seed: true, Spec: ptr(testSpec())}), changed: true, event: ActionServicePut},
		{name: "invalid spec", cmd: put("third", ServiceSpec{}), code: CodeInvalid},
		{name: "bad service name", cmd: cmd("Bad Name", DeleteService{}), code: CodeInvalid},
	}

	h := newHarness(t, Options{})
	type published struct {
		v    *View
		json []byte
	}
	var views []published
	for _, st := range steps {
		prev := h.m.View()
		prevVersion := prev.Services[st.cmd.Service].version()
		r := h.apply(st.cmd)
		v := h.m.View()
		if r.Code != st.code || r.Changed != st.changed || r.Replayed {
			t.Fatalf("%s: result %+v; want code %q, changed %v", st.name, r, st.code, st.changed)
		}
		if (r.Err != "") != (st.code != "") {
			t.Errorf("%s: error text %q with code %q", st.name, r.Err, r.Code)
		}
		if v.Index != h.index {
			t.Errorf("%s: view index %d, want %d", st.name, v.Index, h.index)
		}
		svc := v.Services[st.cmd.Service]
		wantVersion := prevVersion
		if st.changed {
			wantVersion = h.index
			if svc == nil {
				wantVersion = 0
			}
		}
		if svc.version() != wantVersion || r.Version != wantVersion {
			t.Errorf("%s: version %d, result version %d; want %d", st.name, svc.version(), r.Version, wantVersion)
		}
		if r.Service != svc && st.code != CodeNotFound && st.code != CodeInvalid {
			t.Errorf("%s: result service is not the stored one", st.name)
		}
		if st.weights != nil && !reflect.DeepEqual(svc.Weights, st.weights) {
			t.Errorf("%s: weights %v, want %v", st.name, svc.Weights, st.weights)
		}
		if st.lkg != nil && !reflect.DeepEqual(svc.LKG, st.lkg) {
			t.Errorf("%s: lkg %v, want %v", st.name, svc.LKG, st.lkg)
		}
		added := h.lastAdded()
		switch {
		case st.event == "" && len(added) != 0:
			t.Errorf("%s: unexpected event %+v", st.name, added)
		case st.event != "" && len(added) != 1:
			t.Errorf("%s: events %+v, want one %q", st.name, added, st.event)
		case st.event != "":
			e := added[0]
			if e.Action != st.event || e.Index != h.index || e.Service != st.cmd.Service || e.Actor != "ops" || !strings.Contains(e.Reason, st.reason) || !e.Time.Equal(t0.Add(time.Duration(h.index)*time.Second)) {
				t.Errorf("%s: event %+v", st.name, e)
			}
			if prevSvc := prev.Services[st.cmd.Service]; prevSvc != nil && (e.Action == ActionWeights || e.Action == ActionSwitch || e.Action == ActionRollback || e.Action == ActionServicePut) {
				if !reflect.DeepEqual(e.Before, prevSvc.Weights) || !reflect.DeepEqual(e.After, svc.Weights) {
					t.Errorf("%s: event before %v after %v", st.name, e.Before, e.After)
				}
			}
		}
		if st.check != nil {
			st.check(t, v, r)
		}
		checkViewValid(t, v)
		b, err := json.Marshal(v.Services)
		if err != nil {
			t.Fatal(err)
		}
		views = append(views, published{v, b})
	}
	// Copy-on-write: no command changed a view published before it.
	for i, p := range views {
		if b, _ := json.Marshal(p.v.Services); !bytes.Equal(b, p.json) {
			t.Errorf("view after step %q changed later:\n%s\n%s", steps[i].name, p.json, b)
		}
	}
	if got := len(h.m.Events("", 0, 1000)); got != countEvents(h.added) {
		t.Errorf("trail holds %d events, OnApply saw %d", got, countEvents(h.added))
	}
}

func countEvents(added [][]Event) int {
	n := 0
	for _, a := range added {
		n += len(a)
	}
	return n
}

func TestIdempotency(t *testing.T) {
	h := newHarness(t, Options{IdemTTL: time.Hour})
	h.apply(put("svc", testSpec()))

	keyed := setWeights("svc", Weights{"blue": 9900, "canary": 100})
	keyed.IdemKey, keyed.IdemHash = "k1", "h1"
	first := h.apply(keyed)
	if !first.OK() || !first.Changed || first.Replayed {
		t.Fatalf("first = %+v", first)
	}
	// Another write in between: the replay must still return the first
	// result (code, version, index) and change nothing; the service it
	// carries is the service as it is now.
	h.apply(setWeights("svc", Weights{"blue": 9800, "canary": 200}))
	before := h.m.View().Services["svc"]
	replay := h.apply(keyed)
	if !replay.Replayed || replay.Version != first.Version || replay.Index != first.Index || first.Index != 2 || replay.Service != before || !replay.Changed {
		t.Errorf("replay = %+v, first = %+v", replay, first)
	}
	if h.m.View().Services["svc"] != before || len(h.lastAdded()) != 0 {
		t.Errorf("replay changed the state")
	}

	reused := keyed
	reused.IdemHash = "h2"
	r := h.apply(reused)
	if r.Code != CodeIdempotencyReuse || r.Err != "this idempotency key was already used for a different request; use a new key" || r.Service != before {
		t.Errorf("reuse = %+v", r)
	}

	// A refusal is remembered too: creating the service afterwards does not
	// change the answer to the retried request.
	missing := setWeights("later", Weights{"blue": 10000})
	missing.IdemKey, missing.IdemHash = "k2", "h"
	if r := h.apply(missing); r.Code != CodeNotFound {
		t.Fatalf("missing = %+v", r)
	}
	h.apply(put("later", testSpec()))
	if r := h.apply(missing); r.Code != CodeNotFound || !r.Replayed {
		t.Errorf("replayed refusal = %+v", r)
	}

	// Within the TTL the key holds; after it, the same key is a new request.
	stored := t0.Add(2 * time.Second) // the time h.apply stamped on k1
	keyed.Time = stored.Add(time.Hour)
	if r := h.apply(keyed); !r.Replayed {
		t.Errorf("replay at the TTL's end = %+v", r)
	}
	keyed.Time = stored.Add(time.Hour + time.Second)
	if r := h.apply(keyed); r.Replayed || !r.OK() || !r.Changed {
		t.Errorf("after the TTL = %+v", r)
	}
	if _, ok := h.m.idem["k2"]; !ok {
		t.Errorf("k2 stored later than k1 was evicted too early")
	}
	keyed.Time = keyed.Time.Add(2 * time.Hour)
	h.apply(Command{Envelope: Envelope{Service: "none", Time: keyed.Time}, Payload: DeleteService{}})
	if len(h.m.idem) != 0 || len(h.m.idemQueue) != 0 {
		t.Errorf("keys left after every TTL passed: %v", h.m.idem)
	}
}

func TestIdempotencyCap(t *testing.T) {
	if testing.Short() {
		t.Skip("applies 100,000 commands")
	}
	m := NewMachine(Options{})
	var index uint64
	for i := 0; i <= maxIdemKeys; i++ {
		index++
		data, err := Encode(Command{Envelope: Envelope{Service: "none", Time: t0, IdemKey: fmt.Sprint("k", i)}, Payload: DeleteService{}})
		if err != nil {
			t.Fatal(err)
		}
		m.Apply(index, data)
	}
	if len(m.idem) != maxIdemKeys || len(m.idemQueue) != maxIdemKeys {
		t.Fatalf("%d keys, queue %d; want %d", len(m.idem), len(m.idemQueue), maxIdemKeys)
	}
	if _, ok := m.idem["k0"]; ok {
		t.Errorf("the oldest key was kept")
	}
	if _, ok := m.idem["k1"]; !ok {
		t.Errorf("the second-oldest key was dropped")
	}
}

func TestEvents(t *testing.T) {
	h := newHarness(t, Options{MaxEvents: 4})
	h.apply(put("a", testSpec()))                                                         // 1
	h.apply(put("b", testSpec()))                                                         // 2
	h.apply(setWeights("a", Weights{"green": 10000}))                                     // 3
	h.apply(setWeights("nope", Weights{"green": 10000}))                                  // 4: refused, no event
	h.apply(setWeights("b", Weights{"green": 10000}))                                     // 5
	h.apply(cmd("a", SetWeights{Action: SwitchWeights, Weights: Weights{"blue": 10000}})) // 6
	h.apply(cmd("b", DeleteService{}))                                                    // 7

	indexes := func(es []Event) []uint64 {
		out := []uint64{}
		for _, e := range es {
			out = append(out, e.Index)
		}
		return out
	}
	for _, tc := range []struct {
		service string
		since   uint64
		limit   int
		want    []uint64
	}{
		{"", 0, 0, []uint64{3, 5, 6, 7}}, // the ring keeps the newest 4
		{"", 0, 2, []uint64{6, 7}},
		{"", 5, 10, []uint64{6, 7}},
		{"", 7, 10, []uint64{}},
		{"a", 0, 10, []uint64{3, 6}},
		{"b", 0, 1, []uint64{7}},
		{"b", 0, 10, []uint64{5, 7}},
		{"zzz", 0, 10, []uint64{}},
	} {
		if got := indexes(h.m.Events(tc.service, tc.since, tc.limit)); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Events(%q, %d, %d) = %v, want %v", tc.service, tc.since, tc.limit, got, tc.want)
		}
	}
	es := h.m.Events("", 6, 0)
	if len(es) != 1 || es[0].Action != ActionServiceDelete || es[0].Before == nil || es[0].After != nil {
		t.Errorf("delete event %+v", es)
	}

	h = newHarness(t, Options{})
	for i := 0; i < 150; i++ {
		h.apply(put(fmt.Sprint("s", i), testSpec()))
	}
	if got := h.m.Events("", 0, 0); len(got) != 100 || got[0].Index != 51 {
		t.Errorf("default limit: %d events from index %d", len(got), got[0].Index)
	}
}

// TestConcurrentReaders runs readers of every kind while commands apply; run
// with -race it shows that nothing published is written again.
func TestConcurrentReaders(t *testing.T) {
	h := newHarness(t, Options{MaxEvents: 50})
	h.apply(put("svc", testSpec()))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	read := func(f func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
					f()
				}
			}
		}()
	}
	read(func() {
		for _, s := range h.m.View().Services {
			_ = s.Weights.Sum()
			for _, p := range s.Pools {
				for _, b := range p.Backends {
					_ = b.Draining
				}
			}
		}
	})
	read(func() {
		for _, e := range h.m.Events("", 0, 20) {
			_ = e.After.Sum()
		}
	})
	read(func() {
		var buf bytes.Buffer
		if err := h.m.WriteSnapshot(&buf); err != nil {
			t.Error(err)
		}
	})
	for i := 0; i < 300; i++ {
		switch i % 4 {
		case 0:
			h.apply(setWeights("svc", Weights{"blue": Weight(i), "canary": Total - Weight(i)}))
		case 1:
			h.apply(drain("svc", "blue", []DrainAction{DrainBackends, UndrainBackends}[i/4%2], "10.0.0.11:8765"))
		case 2:
			h.apply(setPool("svc", "green", fmt.Sprint("v", i), "10.0.0.21:8765"))
		case 3:
			c := put("svc", testSpec())
			c.IdemKey = fmt.Sprint("k", i)
			h.apply(c)
		}
	}
	close(stop)
	wg.Wait()
	checkViewValid(t, h.m.View())
}

// TestQueryEventsPagesForward reads a trail forward page by page from far
// behind: the oldest events after since come first, nothing is skipped, and a
// since older than what the trail dropped reports the gap.
func TestQueryEventsPagesForward(t *testing.T) {
	h := newHarness(t, Options{MaxEvents: 100})
	h.apply(put("x", testSpec())) // 1
	for i := 0; h.index < 250; i++ {
		if i%3 == 0 {
			// Events of x at every third index, so a filtered page must
			// skip the others.
			h.apply(setWeights("x", Weights{[]string{"green", "blue"}[i/3%2]: Total}))
		} else {
			h.apply(put(fmt.Sprint("s", i), testSpec()))
		}
	}
	trail := h.m.Events("", 0, 1000)
	if len(trail) != 100 || trail[0].Index != 151 || trail[99].Index != 250 {
		t.Fatalf("the trail holds %d events from %d", len(trail), trail[0].Index)
	}

	// page reads every event after since of service in pages of limit.
	page := func(service string, since uint64, limit int) ([]uint64, []*EventGap) {
		var got []uint64
		var gaps []*EventGap
		for {
			es, gap := h.m.QueryEvents(EventQuery{Service: service, Since: since, Limit: limit, Oldest: true})
			if gap != nil {
				gaps = append(gaps, gap)
				since = gap.To
			}
			if len(es) > limit {
				t.Fatalf("a page of %d events, limit %d", len(es), limit)
			}
			for _, e := range es {
				if e.Index <= since || (service != "" && e.Service != service) {
					t.Fatalf("page after %d of %q holds event %d of %q", since, service, e.Index, e.Service)
				}
				got = append(got, e.Index)
				since = e.Index
			}
			if len(es) < limit {
				return got, gaps
			}
		}
	}
	span := func(from, to, step uint64) []uint64 {
		var out []uint64
		for i := from; i <= to; i += step {
			out = append(out, i)
		}
		return out
	}
	got, gaps := page("", 200, 7)
	if want := span(201, 250, 1); !reflect.DeepEqual(got, want) || gaps != nil {
		t.Errorf("after 200: %v, gaps %v; want %v", got, gaps, want)
	}
	got, gaps = page("", 10, 30)
	if want := span(151, 250, 1); !reflect.DeepEqual(got, want) || len(gaps) != 1 || *gaps[0] != (EventGap{From: 11, To: 150}) {
		t.Errorf("after 10: %v, gaps %v; want the gap 11-150, then %v", got, gaps, want)
	}
	got, gaps = page("", 150, 1000)
	if want := span(151, 250, 1); !reflect.DeepEqual(got, want) || gaps != nil {
		t.Errorf("after 150 (the last dropped): %v, gaps %v; want %v", got, gaps, want)
	}
	got, _ = page("x", 160, 5)
	var wantX []uint64
	for _, e := range trail {
		if e.Service == "x" && e.Index > 160 {
			wantX = append(wantX, e.Index)
		}
	}
	if !reflect.DeepEqual(got, wantX) || len(wantX) < 25 {
		t.Errorf("x after 160: %v; want %v", got, wantX)
	}

	// The newest events stay the default, and report the gap too.
	es, gap := h.m.QueryEvents(EventQuery{Since: 10, Limit: 3})
	if len(es) != 3 || es[0].Index != 248 || gap == nil || *gap != (EventGap{From: 11, To: 150}) {
		t.Errorf("newest 3 after 10: %v, gap %v", es, gap)
	}
	if _, gap := h.m.QueryEvents(EventQuery{Since: 150}); gap != nil {
		t.Errorf("gap %v after the last dropped event", gap)
	}
}
