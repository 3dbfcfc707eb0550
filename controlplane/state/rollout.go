package state

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Rollout is a replicated plan that moves traffic from one pool to another in
// steps (canary) or at once (blue-green). Every change to it is a command, and
// its times are the leader's stamps in those commands, so a new leader
// continues a step from where it was.
type Rollout struct {
	ID          string    `json:"id"`
	Strategy    Strategy  `json:"strategy"`
	State       string    `json:"state"`
	From        string    `json:"from"`
	To          string    `json:"to"`
	Gate        Gate      `json:"gate"`
	Step        int       `json:"step"` // from 1
	Steps       []Step    `json:"steps"`
	Started     time.Time `json:"started"`
	StepStarted time.Time `json:"step_started"`
	// Ended is when the rollout reached a final state (zero while it runs).
	Ended  time.Time `json:"ended,omitzero"`
	Reason string    `json:"reason,omitempty"`
}

// Step is one stage of a rollout: the new pool's share, held for Hold before
// the next stage (the last step has no hold).
type Step struct {
	Weight Weight   `json:"weight"`
	Hold   Duration `json:"hold,omitempty"`
}

// Strategy is how a rollout moves traffic.
type Strategy string

// Gate says who moves a rollout on after a step passed: the watcher (auto)
// or an operator's promote (manual).
type Gate string

// Rollout strategies, gates and states (docs/api.md "Rollouts").
const (
	StrategyCanary    Strategy = "canary"     // in steps, each held
	StrategyBlueGreen Strategy = "blue-green" // at once, then a bake

	GateAuto   Gate = "auto"
	GateManual Gate = "manual"

	RolloutRunning    = "running"
	RolloutWaiting    = "waiting" // manual gate: waits for promote
	RolloutPaused     = "paused"
	RolloutPromoted   = "promoted"
	RolloutRolledBack = "rolled_back"
	RolloutAborted    = "aborted"
)

// Trigger is what asked for a rollback (the cbproxy_rollbacks_total label).
type Trigger string

// Rollback triggers.
const (
	TriggerAuto   Trigger = "auto"   // the watcher, on an SLO breach
	TriggerManual Trigger = "manual" // an operator's rollback
	TriggerAbort  Trigger = "abort"  // an operator's abort of a rollout
)

// Rollout event actions.
const (
	ActionRolloutStart    EventAction = "rollout_start"
	ActionRolloutStep     EventAction = "rollout_step"
	ActionRolloutPause    EventAction = "rollout_pause"
	ActionRolloutResume   EventAction = "rollout_resume"
	ActionRolloutPromote  EventAction = "rollout_promote"
	ActionRolloutComplete EventAction = "rollout_complete"
	ActionRolloutAbort    EventAction = "rollout_abort"
)

// DefaultSteps are the runbook's stages: 1/5/25/50/100 % with 5/10/15/15 min.
var DefaultSteps = []Step{
	{Weight: 100, Hold: Duration(5 * time.Minute)},
	{Weight: 500, Hold: Duration(10 * time.Minute)},
	{Weight: 2500, Hold: Duration(15 * time.Minute)},
	{Weight: 5000, Hold: Duration(15 * time.Minute)},
	{Weight: Total},
}

// DefaultBake is a blue-green rollout's bake time when none is given.
var DefaultBake = Duration(5 * time.Minute)

// Active reports whether the rollout still moves or holds traffic: while it
// is, weights and switch are refused (409 rollout_running).
func (r *Rollout) Active() bool {
	return r != nil && (r.State == RolloutRunning || r.State == RolloutWaiting || r.State == RolloutPaused)
}

// Guarded is the guard after a weights change, a switch or a promotion: the
// pools that gained share stay under the rollback SLO until Until (docs/api.md
// "Guard"); a breach rolls back to the LKG.
type Guarded struct {
	ID    string    `json:"id"`
	Pools []string  `json:"pools"`
	Until time.Time `json:"until"`
}

// RolloutSpec is what a rollout start asks for; empty fields take defaults.
type RolloutSpec struct {
	Strategy Strategy `json:"strategy,omitempty"`
	From     string   `json:"from,omitempty"`
	To       string   `json:"to"`
	Steps    []Step   `json:"steps,omitempty"`
	Gate     Gate     `json:"gate,omitempty"`
	Bake     Duration `json:"bake,omitempty"`
}

// CodeRolloutRunning refuses what a running rollout forbids (409).
const CodeRolloutRunning = "rollout_running"

func checkRolloutStart(_ *Envelope, p RolloutStart) error {
	sp := p.Spec
	if sp == nil {
		return errors.New(`a rollout start needs "to", the pool to move traffic to`)
	}
	if err := ValidatePoolName(sp.To); err != nil {
		return fmt.Errorf("to: %w", err)
	}
	if sp.From != "" {
		if err := ValidatePoolName(sp.From); err != nil {
			return fmt.Errorf("from: %w", err)
		}
		if sp.From == sp.To {
			return fmt.Errorf("from and to are both %q; a rollout moves traffic between two pools", sp.To)
		}
	}
	switch sp.Gate {
	case "", GateAuto, GateManual:
	default:
		return fmt.Errorf("gate %q is not auto or manual", sp.Gate)
	}
	switch sp.Strategy {
	case "", StrategyCanary:
		if sp.Bake != 0 {
			return errors.New("bake is for blue-green rollouts; a canary holds each step instead")
		}
		prev := Weight(0)
		for i, st := range sp.Steps {
			if st.Weight <= prev || st.Weight > Total {
				return fmt.Errorf("step %d: weight %s must be above the previous step's and at most 100", i+1, st.Weight)
			}
			if st.Hold < 0 {
				return fmt.Errorf("step %d: hold must not be negative", i+1)
			}
			prev = st.Weight
		}
	case StrategyBlueGreen:
		if len(sp.Steps) > 0 {
			return errors.New("steps are for canary rollouts; a blue-green rollout switches at once and bakes")
		}
		if sp.Bake < 0 {
			return errors.New("bake must not be negative")
		}
	default:
		return fmt.Errorf("strategy %q is not canary or blue-green", sp.Strategy)
	}
	return nil
}

// stepWeights are the weights of a canary step: the new pool's share is taken
// from the old pool, other pools keep theirs (docs/api.md "Start a rollout",
// steps). base is the weights in force when the rollout started (the LKG).
func stepWeights(base Weights, from, to string, share Weight) (Weights, error) {
	avail := base[from] + base[to]
	if share > avail {
		return nil, fmt.Errorf("step weight %s is more than pools %s and %s hold together (%s); move traffic to them first", share, from, to, avail)
	}
	w := maps.Clone(base)
	w[to] = share
	w[from] = avail - share
	return w, nil
}

// rolloutWeights are the weights a rollout's current step puts in force.
func rolloutWeights(base Weights, r *Rollout) (Weights, error) {
	if r.Strategy == StrategyBlueGreen {
		w := make(Weights, len(base))
		for p := range base {
			w[p] = 0
		}
		w[r.To] = Total
		return w, nil
	}
	return stepWeights(base, r.From, r.To, r.Steps[r.Step-1].Weight)
}

func applyRolloutStart(_ *View, cur *Service, index uint64, e *Envelope, p RolloutStart) (Result, *effect) {
	if cur == nil {
		return notFound(e.Service), nil
	}
	if cur.Rollout.Active() {
		return refuse(CodeRolloutRunning, cur, "rollout %s of service %q is %s; promote, abort or roll it back first", cur.Rollout.ID, cur.Name, cur.Rollout.State), nil
	}
	sp := *p.Spec
	if cur.Pools[sp.To] == nil {
		return refuse(CodeInvalid, cur, "service %q has no pool %q; it has: %s", cur.Name, sp.To, strings.Join(cur.PoolNames(), ", ")), nil
	}
	from := sp.From
	if from == "" {
		// The pool with the largest weight (ties: name order).
		for _, p := range cur.PoolNames() {
			if p != sp.To && (from == "" || cur.Weights[p] > cur.Weights[from]) {
				from = p
			}
		}
		if from == "" {
			return refuse(CodeInvalid, cur, "service %q has no pool to move traffic from", cur.Name), nil
		}
	} else if cur.Pools[from] == nil {
		return refuse(CodeInvalid, cur, "service %q has no pool %q; it has: %s", cur.Name, from, strings.Join(cur.PoolNames(), ", ")), nil
	}
	r := &Rollout{
		ID: fmt.Sprintf("%s-%d", cur.Name, index), Strategy: sp.Strategy, State: RolloutRunning,
		From: from, To: sp.To, Gate: sp.Gate, Step: 1, Started: e.Time, StepStarted: e.Time,
	}
	if r.Gate == "" {
		r.Gate = GateAuto
	}
	switch r.Strategy {
	case StrategyBlueGreen:
		bake := sp.Bake
		if bake == 0 {
			bake = DefaultBake
		}
		r.Steps = []Step{{Weight: Total, Hold: bake}}
	default:
		r.Strategy = StrategyCanary
		r.Steps = slices.Clone(sp.Steps)
		if len(r.Steps) == 0 {
			r.Steps = slices.Clone(DefaultSteps)
		}
		for i, st := range r.Steps {
			if _, err := stepWeights(cur.Weights, from, sp.To, st.Weight); err != nil {
				return refuse(CodeInvalid, cur, "step %d: %v", i+1, err), nil
			}
		}
	}
	w, err := rolloutWeights(cur.Weights, r)
	if err != nil {
		return refuse(CodeInvalid, cur, "%v", err), nil
	}
	s := *cur
	s.Version, s.LKG, s.Weights, s.Rollout, s.Guarded = index, cur.Weights, w, r, nil
	ev := Event{Action: ActionRolloutStart, Before: cur.Weights, After: w,
		Reason: fmt.Sprintf("%s rollout %s from %s to %s, step 1 of %d", r.Strategy, r.ID, from, sp.To, len(r.Steps))}
	return Result{Version: index, Service: &s, Changed: true}, &effect{service: &s, event: ev}
}

func checkRolloutChange(_ *Envelope, p RolloutChange) error {
	switch p.Action {
	case StepRollout, PromoteRollout, PauseRollout, ResumeRollout, WaitRollout:
	default:
		return fmt.Errorf("rollout action %q is not one of step, promote, pause, resume, wait", p.Action)
	}
	return nil
}

// applyRolloutChange moves an active rollout: the next step (the watcher's
// "step" after a passed hold, an operator's "promote" at any time), pause,
// resume, or "wait" at a manual gate. RolloutID, FromStep and
// FromStepStarted, when set, must match: a retried or superseded decision,
// or one decided before a pause and resume restarted the hold, then changes
// nothing.
func applyRolloutChange(_ *View, cur *Service, index uint64, e *Envelope, p RolloutChange) (Result, *effect) {
	if cur == nil {
		return notFound(e.Service), nil
	}
	r := cur.Rollout
	if !r.Active() {
		return refuse(CodeNotFound, cur, "service %q has no running rollout", cur.Name), nil
	}
	if (p.RolloutID != "" && p.RolloutID != r.ID) || (p.FromStep != 0 && p.FromStep != r.Step) ||
		(!p.FromStepStarted.IsZero() && !p.FromStepStarted.Equal(r.StepStarted)) {
		return Result{Version: cur.Version, Service: cur}, nil // a decision about another step or hold
	}
	nr := *r
	s := *cur
	s.Version, s.Rollout = index, &nr
	ev := Event{Action: EventAction(p.Action)}
	switch p.Action {
	case PauseRollout:
		if r.State == RolloutPaused {
			return Result{Version: cur.Version, Service: cur}, nil
		}
		nr.State, ev.Reason = RolloutPaused, fmt.Sprintf("rollout %s paused at step %d", r.ID, r.Step)
	case ResumeRollout:
		if r.State != RolloutPaused {
			return refuse(CodeInvalid, cur, "rollout %s is %s, not paused", r.ID, r.State), nil
		}
		// The hold starts again: a step is judged over a whole hold.
		nr.State, nr.StepStarted = RolloutRunning, e.Time
		ev.Reason = fmt.Sprintf("rollout %s resumed at step %d", r.ID, r.Step)
	case WaitRollout:
		if r.State != RolloutRunning {
			return Result{Version: cur.Version, Service: cur}, nil
		}
		nr.State = RolloutWaiting
		ev.Action, ev.Reason = ActionRolloutStep, fmt.Sprintf("rollout %s step %d passed its hold; waiting for promote", r.ID, r.Step)
	default: // step, promote
		if r.State == RolloutPaused && p.Action == StepRollout {
			return Result{Version: cur.Version, Service: cur}, nil
		}
		if r.Step == len(r.Steps) {
			nr.State, nr.Ended = RolloutPromoted, e.Time
			ev.Action, ev.Reason = ActionRolloutComplete, fmt.Sprintf("rollout %s promoted: %s has its full share", r.ID, r.To)
			// The promoted pool stays guarded against the weights before the
			// rollout.
			s.Guarded = guard(&s, cur.LKG, index, e.Time)
			break
		}
		nr.Step, nr.StepStarted, nr.State = r.Step+1, e.Time, RolloutRunning
		w, err := rolloutWeights(cur.LKG, &nr)
		if err != nil {
			return refuse(CodeInvalid, cur, "%v", err), nil
		}
		s.Weights = w
		ev.Before, ev.After = cur.Weights, w
		ev.Reason = fmt.Sprintf("rollout %s step %d of %d: %s at %s %%", r.ID, nr.Step, len(r.Steps), r.To, nr.Steps[nr.Step-1].Weight)
	}
	return Result{Version: index, Service: &s, Changed: true}, &effect{service: &s, event: ev}
}

// StepDecision is the watcher's command that the rollout's current step has
// passed its hold and the SLO: StepRollout moves to the next step (or ends
// the rollout promoted on the last one), WaitRollout marks a manual gate
// reached. figures are the measurements behind it.
//
// It is about one step epoch: the rollout, the step, and the moment that
// step's hold (re)started (StepStarted, which a resume moves). The epoch is in
// the command, which Apply checks, and in its idempotency key. A retried or
// re-decided decision of the same epoch replays its first result; one that
// lands after a pause and resume is about an epoch that has ended, so it
// changes nothing and the next decision, under a new key, is free to act.
// Within one epoch the state never returns to running (only a resume or a
// step leaves paused or waiting, and both start a new epoch), so a decision
// that found the rollout paused or waiting could never act later anyway:
// remembering its no-op under its key loses nothing.
func StepDecision(service string, r *Rollout, action RolloutAction, figures map[string]any) Command {
	c := NewCommand(service, "watcher", RolloutChange{
		Action: action, RolloutID: r.ID, FromStep: r.Step, FromStepStarted: r.StepStarted, Figures: figures,
	})
	c.IdemKey = "decision:" + service + "/" + r.ID + "/" + string(action) + "/" + strconv.Itoa(r.Step) + "@" + strconv.FormatInt(r.StepStarted.UnixNano(), 10)
	c.IdemHash = string(action)
	return c
}

func checkRollback(_ *Envelope, p Rollback) error {
	switch p.Trigger {
	case TriggerAuto, TriggerManual, TriggerAbort:
	default:
		return fmt.Errorf("rollback trigger %q is not auto, manual or abort", p.Trigger)
	}
	if p.Trigger == TriggerAuto && p.RolloutID == "" && p.GuardID == "" {
		return errors.New("an automatic rollback names the rollout or guard it ends")
	}
	return nil
}

// applyRollback restores the LKG weights in one step. An automatic one names
// the rollout (or guard) whose breach it answers: if that rollout is no longer
// active, or the guard was superseded or expired, it changes nothing, so a
// repeated or late decision, also from a new leader, never rolls back twice.
// A rolled-back rollout stays rolled back: only a new start moves traffic again.
func applyRollback(_ *View, cur *Service, index uint64, e *Envelope, p Rollback) (Result, *effect) {
	if cur == nil {
		return notFound(e.Service), nil
	}
	r := cur.Rollout
	unchanged := Result{Version: cur.Version, Service: cur}
	switch {
	case p.Trigger == TriggerAbort && !r.Active():
		return refuse(CodeNotFound, cur, "service %q has no running rollout to abort", cur.Name), nil
	case p.RolloutID != "" && (!r.Active() || r.ID != p.RolloutID):
		return unchanged, nil
	case p.GuardID != "" && (cur.Guarded == nil || cur.Guarded.ID != p.GuardID || !e.Time.Before(cur.Guarded.Until)):
		return unchanged, nil
	}
	s := *cur
	s.Version, s.Weights, s.Guarded = index, cur.LKG, nil
	s.Rollbacks = maps.Clone(cur.Rollbacks)
	if s.Rollbacks == nil {
		s.Rollbacks = map[Trigger]uint64{}
	}
	s.Rollbacks[p.Trigger]++
	ev := Event{Action: ActionRollback, Before: cur.Weights, After: cur.LKG, Figures: p.Figures, Reason: "back to the last known good weights"}
	if r.Active() {
		nr := *r
		nr.Ended, nr.Reason = e.Time, e.Reason
		nr.State = RolloutRolledBack
		if p.Trigger == TriggerAbort {
			nr.State, ev.Action = RolloutAborted, ActionRolloutAbort
		}
		s.Rollout = &nr
	}
	return Result{Version: index, Service: &s, Changed: true}, &effect{service: &s, event: ev}
}

// guard opens a guard period for the pools that gained share from before to
// the service's weights, if the service has a guard and any pool gained.
func guard(s *Service, before Weights, index uint64, now time.Time) *Guarded {
	if s.Guard <= 0 {
		return nil
	}
	var gained []string
	for _, p := range s.PoolNames() {
		if s.Weights[p] > before[p] {
			gained = append(gained, p)
		}
	}
	if len(gained) == 0 {
		return nil
	}
	return &Guarded{ID: fmt.Sprint(index), Pools: gained, Until: now.Add(time.Duration(s.Guard))}
}
