package state

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// TestSetWeightsRollbackRefused: set_weights with action "rollback" was a
// second way to roll back, which nothing wrote (rollbacks are their own
// kind). An entry with it is refused as invalid by every node, the same
// way, and changes nothing.
func TestSetWeightsRollbackRefused(t *testing.T) {
	h := newHarness(t, Options{})
	h.apply(put("svc", testSpec()))
	h.apply(setWeights("svc", Weights{"blue": 9900, "canary": 100}))
	before := h.m.View().Services["svc"]
	entry := []byte("\x03" + `{"kind":3,"time":"2026-03-01T12:00:03Z","actor":"ops","service":"svc","weights":{"blue":100},"action":"rollback"}`)
	r := h.m.Apply(3, entry)
	if r.Code != CodeInvalid || !strings.Contains(r.Err, `weights action "rollback" is not one of weights, switch`) || r.Changed {
		t.Fatalf("set_weights with action rollback: %+v", r)
	}
	if s := h.m.View().Services["svc"]; s != before || h.m.View().Index != 3 {
		t.Fatalf("the refused entry changed the service or not the index: %+v", h.m.View())
	}
}

// unregistered is a payload of a kind no build registers.
type unregistered struct {
	Zone string `json:"zone,omitempty"`
}

func (unregistered) Kind() Kind { return 0x7f }

// clashing is a payload with a field of the envelope's.
type clashing struct {
	Service string `json:"service"`
}

func (clashing) Kind() Kind { return 0x7d }

// nothing is a payload of kind 0.
type nothing struct{}

func (nothing) Kind() Kind { return 0 }

// TestRegisterRefusesAmbiguity: registering a kind or a name twice, kind 0,
// or a payload field that the envelope has, panics (at init, for the
// package's own registry): each would make some entries mean two things.
func TestRegisterRefusesAmbiguity(t *testing.T) {
	mustPanic := func(name, want string, f func(r registry)) {
		t.Helper()
		r := registry{}
		register(r, "put_service", checkPutService, applyPutService)
		defer func() {
			t.Helper()
			got := fmt.Sprint(recover())
			if !strings.Contains(got, want) {
				t.Errorf("%s: panic %q, want %q", name, got, want)
			}
		}()
		f(r)
	}
	mustPanic("kind twice", "command kind 0x01 registered twice: put_service (state.PutService) and put_service_again (state.PutService)", func(r registry) {
		register(r, "put_service_again", checkPutService, applyPutService)
	})
	mustPanic("name twice", "command name put_service registered twice: kinds 0x01 and 0x02", func(r registry) {
		register(r, "put_service", func(*Envelope, DeleteService) error { return nil }, applyDeleteService)
	})
	mustPanic("kind 0", "payload state.nothing has kind 0", func(r registry) {
		register(r, "nothing", func(*Envelope, nothing) error { return nil }, func(*View, *Service, uint64, *Envelope, nothing) (Result, *effect) { return Result{}, nil })
	})
	mustPanic("envelope field", `payload state.clashing has a field "service", which the envelope has`, func(r registry) {
		register(r, "clashing", func(*Envelope, clashing) error { return nil }, func(*View, *Service, uint64, *Envelope, clashing) (Result, *effect) { return Result{}, nil })
	})
}

// TestRegistry: every kind is registered once, with its name and payload
// type, and the kinds of the registry are the build's capabilities.
func TestRegistry(t *testing.T) {
	want := map[Kind]struct {
		name    string
		payload Payload
	}{
		KindPutService: {"put_service", PutService{}}, KindDeleteService: {"delete_service", DeleteService{}},
		KindSetWeights: {"set_weights", SetWeights{}}, KindSetPool: {"set_pool", SetPool{}}, KindSetDrain: {"set_drain", SetDrain{}},
		KindNodeJoin: {"node_join", NodeJoin{}}, KindNodeRemove: {"node_remove", NodeRemove{}},
		KindRolloutStart: {"rollout_start", RolloutStart{}}, KindRolloutChange: {"rollout_change", RolloutChange{}}, KindRollback: {"rollback", Rollback{}},
		KindPutNotifier: {"put_notifier", PutNotifier{}}, KindDeleteNotifier: {"delete_notifier", DeleteNotifier{}},
		KindNotifyCursor: {"notify_cursor", NotifyCursor{}}, KindRecordEvent: {"record_event", RecordEvent{}},
	}
	if len(commands) != len(want) {
		t.Errorf("%d kinds registered, want %d", len(commands), len(want))
	}
	for k, w := range want {
		reg := commands[k]
		if reg == nil || reg.kind != k || reg.name != w.name || k.String() != w.name || reg.payload != reflect.TypeOf(w.payload) || w.payload.Kind() != k {
			t.Errorf("kind %#02x: registered %+v, want %s %T", byte(k), reg, w.name, w.payload)
		}
	}
	if got := NewMachine(Options{}).Capabilities().Kinds; len(got) != len(want) && len(builtWithout) == 0 {
		t.Errorf("capabilities list kinds %v", got)
	}
}

// TestUnknownKindRefused: a kind this build does not register is refused
// loudly everywhere: Encode and Validate refuse it, Decode refuses its
// entry, and Apply answers unsupported (the node halts there) without
// changing anything.
func TestUnknownKindRefused(t *testing.T) {
	c := NewCommand("svc", "ops", unregistered{Zone: "b"})
	if _, err := Encode(c); err == nil || !strings.Contains(err.Error(), "unknown command kind 0x7f") {
		t.Errorf("Encode = %v", err)
	}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "unknown command kind 0x7f") {
		t.Errorf("Validate = %v", err)
	}
	entry := []byte("\x7f" + `{"kind":127,"time":"2026-03-01T12:00:00Z","actor":"ops","service":"svc","zone":"b"}`)
	if _, err := Decode(entry); err == nil || !strings.Contains(err.Error(), "unknown command kind 0x7f; is this node older than the one that proposed it?") {
		t.Errorf("Decode = %v", err)
	}
	var forwarded Command
	if err := json.Unmarshal(entry[1:], &forwarded); err == nil {
		t.Errorf("a forwarded command of an unknown kind was read: %+v", forwarded)
	}
	m := NewMachine(Options{})
	r := m.Apply(1, entry)
	if r.Code != CodeUnsupported || !strings.Contains(r.Err, "it lacks kind 0x7f, field zone") || m.View().Index != 0 {
		t.Errorf("Apply = %+v, index %d", r, m.View().Index)
	}
}
