// Package rollouts is the SLO watcher: on the leader, every second, it
// pulls every node's SLO windows, judges them (package slo) and commits the
// next step of a rollout, a manual gate, a promotion or a rollback. See
// DESIGN.md in this folder.
package rollouts

import (
	"context"
	"encoding/json"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/cluster"
	"github.com/cbproxy/cbproxy/controlplane/internal/seams"
	"github.com/cbproxy/cbproxy/controlplane/raftnode"
	"github.com/cbproxy/cbproxy/controlplane/slo"
	"github.com/cbproxy/cbproxy/controlplane/state"
	"go.uber.org/zap"
)

// Watcher is the SLO judge (docs/api.md "How a rollout moves" and "How the
// SLO is judged"): on the leader only, every second, it pulls every node's windows of the pools at stake (one call per
// node for all services, all nodes at once), merges them, judges them, and
// commits what follows — the next step of a rollout, a
// manual gate reached, a promotion after a blue-green bake, or a rollback —
// as commands that name the rollout, step or guard they are about, with the
// decision as their idempotency key. A retry, or the same decision by a new
// leader, is then a no-op, so an incident gets exactly one rollback.
type Watcher struct {
	n         Node
	transport *cluster.Transport
	dataPlane func() DataPlane
	log       func() *zap.Logger

	mu       sync.Mutex
	verdicts map[string]*slo.Verdict // by service, the latest
	breaches map[string]int          // by decision key, breaches in a row

	// beforeCommit, when set, runs between a decision and its commit. Only
	// tests set it: it is the moment an operator's pause or resume can land
	// in, and decisions must survive that race.
	beforeCommit atomic.Pointer[func(state.Command)]
}

// evalInterval is how often the leader judges: every second.
const evalInterval = time.Second

// Node is what the watcher asks of the Raft node (*raftnode.Node).
type Node interface {
	ID() string
	// View is the last applied state, without I/O.
	View() *state.View
	IsLeader() bool
	// Members lists the Raft configuration's servers, without I/O.
	Members() []raftnode.Member
	// Propose commits a command through the leader (Raft I/O).
	Propose(ctx context.Context, cmd state.Command) (raftnode.Applied, error)
	// Forward calls the leader over the cluster port (I/O).
	Forward(ctx context.Context, method string, req, resp any) error
}

// DataPlane is what the watcher asks of this node's data plane: which
// services it serves and their pools' traffic over the last d.
type DataPlane interface {
	Declared() []string
	Window(service, pool string, d time.Duration) slo.Window
}

// Config is what a watcher needs.
type Config struct {
	Node Node
	// Transport is the cluster port: the watcher serves and calls its RPC
	// methods (slo_windows_v2, verdict) on it.
	Transport *cluster.Transport
	// DataPlane returns this node's data plane, nil without one (a node
	// without one serves nothing).
	DataPlane func() DataPlane
	Logger    func() *zap.Logger
}

// New makes a watcher and serves its RPC methods on the cluster port; Run
// starts judging.
func New(cfg Config) *Watcher {
	w := &Watcher{n: cfg.Node, transport: cfg.Transport, dataPlane: cfg.DataPlane, log: cfg.Logger,
		verdicts: map[string]*slo.Verdict{}, breaches: map[string]int{}}
	w.registerRPC()
	return w
}

// Run judges every second while this node leads, until done is closed.
// Counters start afresh with each leadership: a new leader needs its own
// consecutive breaches.
func (w *Watcher) Run(done <-chan struct{}) {
	t := time.NewTicker(evalInterval)
	defer t.Stop()
	leading := false
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		if !w.n.IsLeader() {
			if leading {
				w.reset()
			}
			leading = false
			continue
		}
		leading = true
		ctx, cancel := context.WithTimeout(context.Background(), evalInterval)
		w.tick(ctx)
		cancel()
	}
}

func (w *Watcher) reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.verdicts, w.breaches = map[string]*slo.Verdict{}, map[string]int{}
}

// Verdict is the leader's latest verdict on a service's rollout or guard;
// nil when there is none or the leader cannot be asked within a second (a
// follower asks the leader over the cluster port).
func (w *Watcher) Verdict(ctx context.Context, service string) *slo.Verdict {
	if w.n.IsLeader() {
		return w.latest(service)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var v *slo.Verdict
	if err := w.n.Forward(ctx, rpcVerdict, service, &v); err != nil {
		return nil
	}
	return v
}

// latest is the leader's latest verdict on what the service is judged for
// now: a verdict about an earlier rollout or guard is not shown.
func (w *Watcher) latest(service string) *slo.Verdict {
	s := w.n.View().Services[service]
	if s == nil {
		return nil
	}
	sub := subjectOf(s, time.Now())
	w.mu.Lock()
	defer w.mu.Unlock()
	if v := w.verdicts[service]; v != nil && sub != nil && v.Subject == sub.key {
		return v
	}
	return nil
}

// subject is what one evaluation of a service judges.
type subject struct {
	key              string // decision key: the rollout or guard it is about
	target, baseline string
	rollout          *state.Rollout
	guard            *state.Guarded
	// since is when the rollout or guard began: traffic from before it is
	// not its traffic (a new rollout must not inherit the errors of the one
	// that was just rolled back).
	since time.Time
}

func subjectOf(s *state.Service, now time.Time) *subject {
	if r := s.Rollout; r.Active() {
		return &subject{key: s.Name + "/" + r.ID, target: r.To, baseline: r.From, rollout: r, since: r.Started}
	}
	if g := s.Guarded; g != nil && now.Before(g.Until) && len(g.Pools) > 0 {
		return &subject{key: s.Name + "/guard/" + g.ID, target: g.Pools[0], guard: g, since: g.Until.Add(-time.Duration(s.Guard))}
	}
	return nil
}

// judged is one service judged in an evaluation: its subject, the pools at
// stake and the window they are judged over.
type judged struct {
	s      *state.Service
	sub    *subject
	pools  []string
	window time.Duration
}

func (w *Watcher) tick(ctx context.Context) {
	now := time.Now()
	v := w.n.View()
	names := make([]string, 0, len(v.Services))
	for name := range v.Services {
		names = append(names, name)
	}
	sort.Strings(names)
	var todo []judged
	var req windowsRequest
	live := map[string]bool{}
	for _, name := range names {
		s := v.Services[name]
		sub := subjectOf(s, now)
		if sub == nil {
			continue
		}
		live[sub.key] = true
		pools := []string{sub.target}
		if sub.baseline != "" {
			pools = append(pools, sub.baseline)
		}
		if sub.guard != nil {
			pools = sub.guard.Pools // every pool that gained share is guarded
		}
		window := max(min(time.Duration(s.SLO.Window), now.Sub(sub.since)), time.Millisecond)
		todo = append(todo, judged{s: s, sub: sub, pools: pools, window: window})
		req.Services = append(req.Services, serviceWindows{Service: name, Pools: pools, WindowMs: window.Milliseconds()})
	}
	var round windowRound
	if len(todo) > 0 {
		round = w.pullWindows(ctx, req)
	}
	for _, j := range todo {
		s, sub := j.s, j.sub
		windows, nodes := round.merge(s.Name)
		verdict := slo.Judge(s.SLO, sub.target, windows[sub.target], nodes, sub.baseline, windows[sub.baseline], nodes)
		for _, p := range j.pools[1:] {
			if sub.guard == nil || verdict.Result == slo.Breach {
				break
			}
			verdict = slo.Judge(s.SLO, p, windows[p], nodes, "", slo.Window{}, slo.Nodes{})
		}
		verdict.Subject = sub.key
		w.mu.Lock()
		w.verdicts[s.Name] = &verdict
		if verdict.Result == slo.Breach {
			w.breaches[sub.key]++
		} else {
			w.breaches[sub.key] = 0
		}
		breaches := w.breaches[sub.key]
		w.mu.Unlock()
		w.decide(ctx, s, sub, verdict, breaches, now)
	}
	w.mu.Lock()
	for k := range w.breaches {
		if !live[k] {
			delete(w.breaches, k)
		}
	}
	for name := range w.verdicts {
		if v.Services[name] == nil || subjectOf(v.Services[name], now) == nil {
			delete(w.verdicts, name)
		}
	}
	w.mu.Unlock()
}

// decide commits what a verdict calls for.
func (w *Watcher) decide(ctx context.Context, s *state.Service, sub *subject, v slo.Verdict, breaches int, now time.Time) {
	consecutive := max(s.SLO.Consecutive, 1)
	switch {
	case v.Result == slo.Breach && breaches >= consecutive:
		rb := state.Rollback{Trigger: state.TriggerAuto, Figures: figures(v)}
		if sub.rollout != nil {
			rb.RolloutID = sub.rollout.ID
		} else {
			rb.GuardID = sub.guard.ID
		}
		cmd := state.NewCommand(s.Name, "watcher", rb)
		cmd.Reason, cmd.IdemKey, cmd.IdemHash = v.Reason, "decision:"+sub.key+"/rollback", "rollback"
		w.commit(ctx, cmd)
	case sub.rollout == nil || sub.rollout.State != state.RolloutRunning:
		// A guard only rolls back; a paused or waiting rollout waits.
	default:
		r := sub.rollout
		step := r.Steps[r.Step-1]
		if now.Sub(r.StepStarted) < time.Duration(step.Hold) {
			return
		}
		// A canary step needs a pass; a blue-green bake only needs no breach
		// (it is judged under the rollback SLO, docs/api.md "How a rollout
		// moves"), seen by every
		// node: a hold for missing figures does not end a bake.
		bakeDone := r.Strategy == state.StrategyBlueGreen && v.Result == slo.Hold && len(v.Pools[r.To].NodesMissing) == 0
		if v.Result != slo.Pass && !bakeDone {
			return
		}
		action := state.StepRollout
		if r.Gate == state.GateManual {
			action = state.WaitRollout // every step, the last one too, waits for promote
		}
		cmd := state.StepDecision(s.Name, r, action, figures(v))
		cmd.Reason = v.Reason
		w.commit(ctx, cmd)
	}
}

func (w *Watcher) commit(ctx context.Context, cmd state.Command) {
	if hook := w.beforeCommit.Load(); hook != nil {
		(*hook)(cmd)
	}
	a, err := w.n.Propose(ctx, cmd)
	switch {
	case err != nil:
		w.log().Warn("watcher decision not committed; it is decided again next second", zap.String("service", cmd.Service), zap.Error(err))
	case a.Result.Changed && !a.Result.Replayed:
		w.log().Info("watcher decision", zap.String("service", cmd.Service), zap.String("kind", decisionName(cmd)), zap.String("reason", cmd.Reason))
	}
}

// decisionName names a decision in the log: rollback, or the rollout action.
func decisionName(c state.Command) string {
	if p, ok := c.Payload.(state.RolloutChange); ok {
		return string(p.Action)
	}
	return c.Kind().String()
}

// figures turns a verdict's pools into the event's figures.
func figures(v slo.Verdict) map[string]any {
	var out map[string]any
	b, _ := json.Marshal(struct {
		Result slo.Result                 `json:"result"`
		Pools  map[string]slo.PoolFigures `json:"pools"`
	}{v.Result, v.Pools})
	_ = json.Unmarshal(b, &out)
	return out
}

func init() {
	seams.SetBeforeCommit = func(watcher any, hook func(state.Command)) {
		watcher.(*Watcher).beforeCommit.Store(&hook)
	}
}
