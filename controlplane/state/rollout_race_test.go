package state

import (
	"strings"
	"testing"
	"time"
)

// The watcher decides from one view and commits a moment later; an
// operator's pause, resume or promote can land in between, before or after.
// These tests apply the commands in every order and check the outcome: a
// decision is never lost (the rollout moves on once the hold has passed
// again), never skips a hold that restarted, and never moves a rollout twice.

// orders lists every order of ops in which each pair [a, b] of before has a
// before b.
func orders(ops []string, before [][2]string) [][]string {
	var out [][]string
	var walk func(done []string, left []string)
	walk = func(done, left []string) {
		if len(left) == 0 {
			out = append(out, append([]string(nil), done...))
			return
		}
		for i, op := range left {
			ok := true
			for _, b := range before {
				if b[1] == op && !contains(done, b[0]) {
					ok = false
				}
			}
			if !ok {
				continue
			}
			rest := append(append([]string(nil), left[:i]...), left[i+1:]...)
			walk(append(done, op), rest)
		}
	}
	walk(nil, ops)
	return out
}

func contains(s []string, x string) bool {
	for _, y := range s {
		if y == x {
			return true
		}
	}
	return false
}

// moves applies c and reports whether it changed the service (a replayed
// result still says Changed, as the first application did).
func (h *rolloutHarness) moves(c Command) bool {
	h.t.Helper()
	before := h.svc()
	h.apply(c)
	return h.svc() != before
}

func index(s []string, x string) int {
	for i, y := range s {
		if y == x {
			return i
		}
	}
	return -1
}

// TestStepDecisionRacesPauseResume: the watcher decides ("decide") that the
// step passed its hold; its command lands ("land") before, during or after an
// operator's pause and resume. The decision acts only when it lands on the
// step epoch it was decided in while the rollout runs; otherwise it is a
// no-op and the next decision, taken after the new hold, acts. Canary steps,
// the manual gate's wait and the blue-green bake behave alike.
func TestStepDecisionRacesPauseResume(t *testing.T) {
	variants := []struct {
		name   string
		spec   RolloutSpec
		action RolloutAction
		// done reports whether the decision took effect.
		done func(r *Rollout) bool
	}{
		{"canary step", RolloutSpec{To: "canary", Steps: []Step{{Weight: 100, Hold: Duration(time.Minute)}, {Weight: 2500, Hold: Duration(time.Minute)}, {Weight: Total}}},
			StepRollout, func(r *Rollout) bool { return r.Step == 2 }},
		{"manual gate wait", RolloutSpec{To: "canary", Gate: GateManual, Steps: []Step{{Weight: 100, Hold: Duration(time.Minute)}, {Weight: Total}}},
			WaitRollout, func(r *Rollout) bool { return r.State == RolloutWaiting }},
		{"blue-green bake", RolloutSpec{To: "green", Strategy: StrategyBlueGreen, Bake: Duration(time.Minute)},
			StepRollout, func(r *Rollout) bool { return r.State == RolloutPromoted }},
	}
	for _, v := range variants {
		for _, order := range orders([]string{"decide", "land", "pause", "resume"}, [][2]string{{"decide", "land"}, {"pause", "resume"}}) {
			t.Run(v.name+"/"+strings.Join(order, ","), func(t *testing.T) {
				h := newRolloutHarness(t)
				spec := v.spec
				if r := h.apply(cmd("svc", RolloutStart{Spec: &spec})); !r.OK() {
					t.Fatalf("start: %+v", r)
				}
				var decision Command
				var landed Result
				for _, op := range order {
					switch op {
					case "decide":
						decision = StepDecision("svc", h.svc().Rollout, v.action, nil)
					case "land":
						landed = h.apply(decision)
					case "pause", "resume":
						// Refused on a promoted rollout; that is fine here.
						h.apply(cmd("svc", RolloutChange{Action: RolloutAction("rollout_" + op)}))
					}
				}
				// The decision acts if it lands before the pause (same epoch,
				// running), or was decided after the resume (a new epoch).
				// Landing while paused, or after a resume that restarted the
				// hold it was not decided in, it changes nothing.
				wantActed := index(order, "land") < index(order, "pause") || index(order, "decide") > index(order, "resume")
				if landed.Changed != wantActed {
					t.Fatalf("the decision changed the rollout: %v, want %v (rollout now %+v)", landed.Changed, wantActed, h.svc().Rollout)
				}
				r := h.svc().Rollout
				if !v.done(r) {
					// The hold passed again: the watcher decides anew, from
					// the view it sees now; that decision must act.
					next := StepDecision("svc", r, v.action, nil)
					if res := h.apply(next); !res.Changed || !v.done(h.svc().Rollout) {
						t.Fatalf("the decision after the resume did not act: %+v; rollout %+v", res, h.svc().Rollout)
					}
					if h.moves(next) {
						t.Fatalf("a retried decision acted again: %+v", h.svc().Rollout)
					}
				}
				// Retrying the first decision never moves it again.
				if h.moves(decision) {
					t.Fatalf("the first decision, retried, acted again: %+v", h.svc().Rollout)
				}
				if r := h.svc().Rollout; !v.done(r) || r.Step != 1 && !(v.action == StepRollout && r.Step == 2) {
					t.Fatalf("rollout ends %+v", r)
				}
			})
		}
	}
}

// TestStepDecisionRacesPromote: an operator's promote and the watcher's step
// decision for the same step move the rollout once between them; the
// decision never moves a rollout on from a step it was not decided at.
func TestStepDecisionRacesPromote(t *testing.T) {
	for _, order := range orders([]string{"decide", "land", "promote"}, [][2]string{{"decide", "land"}}) {
		t.Run(strings.Join(order, ","), func(t *testing.T) {
			h := newRolloutHarness(t)
			steps := []Step{{Weight: 100, Hold: Duration(time.Minute)}, {Weight: 2500, Hold: Duration(time.Minute)}, {Weight: 5000, Hold: Duration(time.Minute)}, {Weight: Total}}
			h.apply(cmd("svc", RolloutStart{Spec: &RolloutSpec{To: "canary", Steps: steps}}))
			var decision Command
			var decidedAt int
			for _, op := range order {
				switch op {
				case "decide":
					decision = StepDecision("svc", h.svc().Rollout, StepRollout, nil)
					decidedAt = h.svc().Rollout.Step
				case "land":
					before := h.svc().Rollout.Step
					res := h.apply(decision)
					if res.Changed && (before != decidedAt || h.svc().Rollout.Step != decidedAt+1) {
						t.Fatalf("a decision taken at step %d moved the rollout from step %d to %d", decidedAt, before, h.svc().Rollout.Step)
					}
					if wantActed := before == decidedAt; res.Changed != wantActed {
						t.Fatalf("decision at step %d landing at step %d: changed %v", decidedAt, before, res.Changed)
					}
				case "promote":
					h.apply(cmd("svc", RolloutChange{Action: PromoteRollout}))
				}
			}
			// Promote moved it once; the decision once more only when it
			// was about the step it landed on.
			want := 2
			if index(order, "promote") < index(order, "decide") || index(order, "land") < index(order, "promote") {
				want = 3
			}
			if got := h.svc().Rollout.Step; got != want {
				t.Fatalf("step %d, want %d", got, want)
			}
			if h.moves(decision) {
				t.Fatalf("the decision, retried, moved the rollout again: %+v", h.svc().Rollout)
			}
		})
	}
}

// TestRollbackDecisionRacesPause: a breach is a breach: the watcher's
// rollback lands whether the rollout is running, paused or resumed, once.
func TestRollbackDecisionRacesPause(t *testing.T) {
	for _, order := range orders([]string{"decide", "land", "pause", "resume"}, [][2]string{{"decide", "land"}, {"pause", "resume"}}) {
		t.Run(strings.Join(order, ","), func(t *testing.T) {
			h := newRolloutHarness(t)
			h.apply(cmd("svc", RolloutStart{Spec: &RolloutSpec{To: "canary", Steps: []Step{{Weight: 500, Hold: Duration(time.Minute)}, {Weight: Total}}}}))
			var decision Command
			landedAt := ""
			for _, op := range order {
				switch op {
				case "decide":
					id := h.svc().Rollout.ID
					decision = Command{Envelope: Envelope{Service: "svc", Actor: "watcher", IdemKey: "decision:svc/" + id + "/rollback", IdemHash: "rollback"}, Payload: Rollback{Trigger: TriggerAuto, RolloutID: id}}
				case "land":
					landedAt = h.svc().Rollout.State
					if res := h.apply(decision); !res.Changed {
						t.Fatalf("the rollback landing on a %s rollout changed nothing", landedAt)
					}
				default:
					h.apply(cmd("svc", RolloutChange{Action: RolloutAction("rollout_" + op)}))
				}
			}
			s := h.svc()
			if s.Rollout.State != RolloutRolledBack || s.Weights["canary"] != 0 || s.Rollbacks[TriggerAuto] != 1 {
				t.Fatalf("after the rollback (landed on %s): %+v %v %v", landedAt, s.Rollout, s.Weights, s.Rollbacks)
			}
			if h.moves(decision) || h.svc().Rollbacks[TriggerAuto] != 1 {
				t.Fatal("rolled back twice")
			}
		})
	}
}
