package state

import (
	"testing"
	"time"
)

// rolloutHarness applies commands to one machine at growing indexes, one
// second apart in leader time.
type rolloutHarness struct {
	t     *testing.T
	m     *Machine
	index uint64
	t0    time.Time
}

func newRolloutHarness(t *testing.T) *rolloutHarness {
	h := &rolloutHarness{t: t, m: NewMachine(Options{}), t0: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	guard := Duration(10 * time.Minute)
	r := h.apply(cmd("svc", PutService{Spec: &ServiceSpec{
		Pools: map[string]PoolSpec{
			"blue": {Backends: []string{"b:1"}}, "canary": {Backends: []string{"c:1"}}, "green": {Backends: []string{"g:1"}},
		},
		Weights: Weights{"blue": Total}, Guard: &guard,
	}}))
	if !r.OK() {
		t.Fatalf("put: %+v", r)
	}
	return h
}

func (h *rolloutHarness) apply(c Command) Result {
	h.t.Helper()
	h.index++
	c.Time = h.t0.Add(time.Duration(h.index) * time.Second)
	if c.Actor == "" {
		c.Actor = "ops"
	}
	data, err := Encode(c)
	if err != nil {
		h.t.Fatal(err)
	}
	return h.m.Apply(h.index, data)
}

func (h *rolloutHarness) svc() *Service { return h.m.View().Services["svc"] }

func TestCanaryRollout(t *testing.T) {
	h := newRolloutHarness(t)
	steps := []Step{{Weight: 100, Hold: Duration(time.Minute)}, {Weight: 2500, Hold: Duration(time.Minute)}, {Weight: Total}}
	r := h.apply(cmd("svc", RolloutStart{Spec: &RolloutSpec{To: "canary", Steps: steps}}))
	if !r.OK() {
		t.Fatalf("start: %+v", r)
	}
	s := h.svc()
	ro := s.Rollout
	if ro.From != "blue" || ro.State != RolloutRunning || ro.Step != 1 || s.Weights["canary"] != 100 || s.Weights["blue"] != 9900 || s.LKG["blue"] != Total {
		t.Fatalf("after start: %+v weights %v lkg %v", ro, s.Weights, s.LKG)
	}
	// While it runs, weights, switch and a second start are refused.
	if r := h.apply(cmd("svc", SetWeights{Weights: Weights{"blue": Total}})); r.Code != CodeRolloutRunning {
		t.Fatalf("weights during rollout: %+v", r)
	}
	if r := h.apply(cmd("svc", RolloutStart{Spec: &RolloutSpec{To: "green"}})); r.Code != CodeRolloutRunning {
		t.Fatalf("second start: %+v", r)
	}
	// The watcher's step decision for step 1; a repeat of it changes nothing.
	step := cmd("svc", RolloutChange{Action: StepRollout, RolloutID: ro.ID, FromStep: 1})
	if r := h.apply(step); !r.Changed || h.svc().Rollout.Step != 2 || h.svc().Weights["canary"] != 2500 {
		t.Fatalf("step: %+v %v", r, h.svc().Weights)
	}
	if r := h.apply(step); r.Changed || h.svc().Rollout.Step != 2 {
		t.Fatalf("repeated step decision: %+v", r)
	}
	h.apply(cmd("svc", RolloutChange{Action: PauseRollout}))
	if h.svc().Rollout.State != RolloutPaused {
		t.Fatal("not paused")
	}
	if r := h.apply(cmd("svc", RolloutChange{Action: StepRollout, RolloutID: ro.ID, FromStep: 2})); r.Changed {
		t.Fatal("the watcher advanced a paused rollout")
	}
	h.apply(cmd("svc", RolloutChange{Action: ResumeRollout}))
	h.apply(cmd("svc", RolloutChange{Action: PromoteRollout}))
	if s := h.svc(); s.Rollout.Step != 3 || s.Weights["canary"] != Total || s.Weights["blue"] != 0 {
		t.Fatalf("promote to the last step: %+v %v", s.Rollout, s.Weights)
	}
	h.apply(cmd("svc", RolloutChange{Action: PromoteRollout}))
	s = h.svc()
	if s.Rollout.State != RolloutPromoted || s.Rollout.Ended.IsZero() || s.Guarded == nil || s.Guarded.Pools[0] != "canary" {
		t.Fatalf("after the last promote: %+v guarded %+v", s.Rollout, s.Guarded)
	}
	// The guard's automatic rollback restores the LKG, once.
	rb := Command{Envelope: Envelope{Service: "svc", Actor: "watcher"}, Payload: Rollback{Trigger: TriggerAuto, GuardID: s.Guarded.ID}}
	if r := h.apply(rb); !r.Changed || h.svc().Weights["blue"] != Total || h.svc().Rollbacks[TriggerAuto] != 1 {
		t.Fatalf("guard rollback: %+v %v", r, h.svc().Weights)
	}
	if r := h.apply(rb); r.Changed || h.svc().Rollbacks[TriggerAuto] != 1 {
		t.Fatalf("second guard rollback: %+v", r)
	}
	var actions []string
	for _, e := range h.m.Events("svc", 0, 100) {
		actions = append(actions, string(e.Action))
	}
	want := "service_put rollout_start rollout_step rollout_pause rollout_resume rollout_promote rollout_complete rollback"
	if got := join(actions); got != want {
		t.Fatalf("events %s, want %s", got, want)
	}
}

func TestRolloutRollbackIsTerminal(t *testing.T) {
	h := newRolloutHarness(t)
	h.apply(cmd("svc", RolloutStart{Spec: &RolloutSpec{To: "canary"}}))
	id := h.svc().Rollout.ID
	rb := Command{Envelope: Envelope{Service: "svc", Actor: "watcher"}, Payload: Rollback{Trigger: TriggerAuto, RolloutID: id, Figures: map[string]any{"canary": map[string]any{"requests": 40}}}}
	if r := h.apply(rb); !r.Changed || h.svc().Rollout.State != RolloutRolledBack || h.svc().Weights["blue"] != Total {
		t.Fatalf("rollback: %+v %+v", r, h.svc().Rollout)
	}
	// A new leader's re-decision, or a late step decision, changes nothing.
	if r := h.apply(rb); r.Changed {
		t.Fatal("rolled back twice")
	}
	if r := h.apply(cmd("svc", RolloutChange{Action: StepRollout, RolloutID: id, FromStep: 1})); r.Changed || r.OK() {
		t.Fatalf("step after rollback: %+v", r)
	}
	if h.svc().Rollbacks[TriggerAuto] != 1 {
		t.Fatalf("rollbacks %v", h.svc().Rollbacks)
	}
	ev := h.m.Events("svc", 0, 100)
	if last := ev[len(ev)-1]; last.Action != ActionRollback || last.Actor != "watcher" || last.Figures == nil {
		t.Fatalf("rollback event %+v", last)
	}
	// Weights work again, and a new rollout may start.
	if r := h.apply(cmd("svc", RolloutStart{Spec: &RolloutSpec{To: "green", Strategy: StrategyBlueGreen}})); !r.OK() || h.svc().Weights["green"] != Total {
		t.Fatalf("blue-green start: %+v", r)
	}
	h.apply(cmd("svc", Rollback{Trigger: TriggerAbort}))
	if s := h.svc(); s.Rollout.State != RolloutAborted || s.Weights["blue"] != Total || s.Rollbacks[TriggerAbort] != 1 {
		t.Fatalf("abort: %+v %v", s.Rollout, s.Weights)
	}
}

func TestRolloutStartRefusals(t *testing.T) {
	h := newRolloutHarness(t)
	for _, tc := range []struct {
		spec RolloutSpec
		code string
	}{
		{RolloutSpec{To: "nope"}, CodeInvalid},
		{RolloutSpec{To: "canary", From: "canary"}, CodeInvalid},
		{RolloutSpec{To: "canary", Steps: []Step{{Weight: 500}, {Weight: 100}}}, CodeInvalid},
		{RolloutSpec{To: "canary", Strategy: "big-bang"}, CodeInvalid},
		{RolloutSpec{To: "canary", Strategy: StrategyBlueGreen, Steps: []Step{{Weight: 100}}}, CodeInvalid},
		// green holds nothing: a step cannot take more than blue and canary hold.
		{RolloutSpec{To: "canary", From: "green", Steps: []Step{{Weight: 100}}}, CodeInvalid},
	} {
		if r := h.apply(cmd("svc", RolloutStart{Spec: &tc.spec})); r.Code != tc.code {
			t.Errorf("start %+v: %+v, want %s", tc.spec, r, tc.code)
		}
	}
}

func join(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += " "
		}
		out += x
	}
	return out
}
