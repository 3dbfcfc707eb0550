package state

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestNotifiers: notifiers are created, redefined, version-checked,
// deleted and not re-created by a seed; the cursor only moves forward and
// records no event; the secret is in no event; a state with notifiers
// snapshots as format 2 and restores the same.
func TestNotifiers(t *testing.T) {
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
	spec := NotifierSpec{URL: "https://hooks.example/x?token=abc", Secret: "s3cret", Events: []string{"rollout_started", "guard_breach"}}
	if r := apply(1, cmd("", PutNotifier{Notifier: "ops", Spec: &spec})); !r.OK() || !r.Changed {
		t.Fatalf("put: %+v", r)
	}
	n := m.View().Notifiers["ops"]
	if n == nil || n.Version != 1 || n.Delivery.Through != 1 || n.Format != FormatJSON || n.Timeout != DefaultNotifyTimeout {
		t.Fatalf("notifier = %+v", n)
	}
	// The same definition again changes nothing; a seed of a known name neither.
	if r := apply(2, cmd("", PutNotifier{Notifier: "ops", Spec: &spec})); !r.OK() || r.Changed {
		t.Fatalf("same put: %+v", r)
	}
	other := NotifierSpec{URL: "http://127.0.0.1:9/"}
	if r := apply(3, cmd("", PutNotifier{Notifier: "ops", Spec: &other, Seed: true})); !r.OK() || r.Changed {
		t.Fatalf("seed of a known name: %+v", r)
	}
	// Versions: a stale If-Match is refused.
	stale := cmd("", PutNotifier{Notifier: "ops", Spec: &other})
	v0 := uint64(7)
	stale.IfVersion = &v0
	if r := apply(4, stale); r.Code != CodeVersionMismatch {
		t.Fatalf("stale put: %+v", r)
	}
	// The cursor moves forward only, without an event.
	events := len(m.Events("", 0, 0))
	if r := apply(5, cmd("", NotifyCursor{Notifier: "ops", Delivery: NotifierDelivery{Through: 4, Sent: 1}})); !r.OK() || !r.Changed {
		t.Fatalf("cursor: %+v", r)
	}
	if r := apply(6, cmd("", NotifyCursor{Notifier: "ops", Delivery: NotifierDelivery{Through: 2}})); !r.OK() || r.Changed {
		t.Fatalf("cursor back: %+v", r)
	}
	if got := m.View().Notifiers["ops"].Delivery; got.Through != 4 || got.Sent != 1 {
		t.Fatalf("delivery = %+v", got)
	}
	if got := len(m.Events("", 0, 0)); got != events {
		t.Fatalf("cursor commits added %d events", got-events)
	}
	// Recorded events.
	if r := apply(7, cmd("", RecordEvent{Action: ActionNodeLost, Figures: map[string]any{"node": "n2"}})); !r.OK() {
		t.Fatalf("record: %+v", r)
	}
	if r := apply(8, cmd("nosuch", RecordEvent{Action: ActionGateRefused})); r.Code != CodeNotFound {
		t.Fatalf("record for an unknown service: %+v", r)
	}
	if err := cmd("", RecordEvent{Action: ActionRollback}).Validate(); err == nil {
		t.Fatal("a recorded rollback was accepted")
	}
	for _, ev := range m.Events("", 0, 0) {
		if strings.Contains(ev.Reason, "s3cret") || strings.Contains(ev.Reason, "token=abc") {
			t.Fatalf("event shows the secret or the URL's query: %+v", ev)
		}
	}
	var snap bytes.Buffer
	if err := m.WriteSnapshot(&snap); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(snap.String(), `{"format":2,`) {
		t.Fatalf("snapshot with notifiers: %.40s", snap.String())
	}
	m2 := NewMachine(Options{})
	if err := m2.Restore(bytes.NewReader(snap.Bytes())); err != nil {
		t.Fatal(err)
	}
	var again bytes.Buffer
	_ = m2.WriteSnapshot(&again)
	if !bytes.Equal(snap.Bytes(), again.Bytes()) {
		t.Fatal("restored snapshot differs")
	}
	// Delete; a seed never brings it back, an operator's put does.
	if r := apply(9, cmd("", DeleteNotifier{Notifier: "ops"})); !r.OK() || !r.Changed {
		t.Fatalf("delete: %+v", r)
	}
	if r := apply(10, cmd("", DeleteNotifier{Notifier: "ops"})); r.Code != CodeNotFound {
		t.Fatalf("delete again: %+v", r)
	}
	if r := apply(11, cmd("", PutNotifier{Notifier: "ops", Spec: &other, Seed: true})); !r.OK() || r.Changed {
		t.Fatalf("seed after delete: %+v", r)
	}
	if r := apply(12, cmd("", PutNotifier{Notifier: "ops", Spec: &other})); !r.OK() || !r.Changed || m.View().Notifiers["ops"].Delivery.Through != 12 {
		t.Fatalf("put after delete: %+v", r)
	}
}

func TestCheckNotifierSpec(t *testing.T) {
	for _, bad := range []NotifierSpec{
		{},
		{URL: "ftp://x/"},
		{URL: "http://"},
		{URL: "https://user:pw@x/"},
		{URL: "x/y"},
		{URL: "http://x/", Events: []string{"nope"}},
		{URL: "http://x/", Format: "xml"},
		{URL: "http://x/", Timeout: Duration(time.Millisecond)},
		{URL: "http://x/", Service: "Bad Name"},
	} {
		if err := CheckNotifierSpec(bad); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	if err := CheckNotifierSpec(NotifierSpec{URL: "http://127.0.0.1:8080/hook", Format: FormatSlack, Events: []string{"node_lost"}, Timeout: Duration(time.Second)}); err != nil {
		t.Error(err)
	}
	if err := CheckNotifierSpec(NotifierSpec{URL: "https://user:pw@x/"}); strings.Contains(err.Error(), "pw") {
		t.Errorf("the error shows the password: %v", err)
	}
}
