package controlplane

import (
	"context"
	"encoding/json"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/slo"
	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/hashicorp/raft"
	"go.uber.org/zap"
)

// watcher is the SLO judge of CONTRACT §3/§4: on the leader only, every
// second, it pulls every node's windows of the pools at stake, merges them,
// judges them, and commits what follows — the next step of a rollout, a
// manual gate reached, a promotion after a blue-green bake, or a rollback —
// as commands that name the rollout, step or guard they are about, with the
// decision as their idempotency key. A retry, or the same decision by a new
// leader, is then a no-op, so an incident gets exactly one rollback.
type watcher struct {
	n *Node

	mu       sync.Mutex
	verdicts map[string]*slo.Verdict // by service, the latest
	breaches map[string]int          // by decision key, breaches in a row

	// beforeCommit, when set, runs between a decision and its commit. Only
	// tests set it: it is the moment an operator's pause or resume can land
	// in, and decisions must survive that race.
	beforeCommit atomic.Pointer[func(state.Command)]
}

// evalInterval is how often the leader judges (CONTRACT §3: every second).
const evalInterval = time.Second

func newWatcher(n *Node) *watcher {
	return &watcher{n: n, verdicts: map[string]*slo.Verdict{}, breaches: map[string]int{}}
}

// run judges every second while this node leads. Counters start afresh with
// each leadership: a new leader needs its own consecutive breaches.
func (w *watcher) run() {
	defer w.n.wg.Done()
	t := time.NewTicker(evalInterval)
	defer t.Stop()
	leading := false
	for {
		select {
		case <-w.n.done:
			return
		case <-t.C:
		}
		if !w.n.isLeader() {
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

func (w *watcher) reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.verdicts, w.breaches = map[string]*slo.Verdict{}, map[string]int{}
}

// latest is the leader's latest verdict on what the service is judged for
// now: a verdict about an earlier rollout or guard is not shown.
func (w *watcher) latest(service string) *slo.Verdict {
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

func (w *watcher) tick(ctx context.Context) {
	now := time.Now()
	v := w.n.View()
	names := make([]string, 0, len(v.Services))
	for name := range v.Services {
		names = append(names, name)
	}
	sort.Strings(names)
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
		window := min(time.Duration(s.SLO.Window), now.Sub(sub.since))
		if sub.guard != nil {
			pools = sub.guard.Pools // every pool that gained share is guarded
		}
		windows, nodes := w.n.pullWindows(ctx, name, pools, max(window, time.Millisecond))
		verdict := slo.Judge(s.SLO, sub.target, windows[sub.target], nodes, sub.baseline, windows[sub.baseline], nodes)
		for _, p := range pools[1:] {
			if sub.guard == nil || verdict.Result == slo.Breach {
				break
			}
			verdict = slo.Judge(s.SLO, p, windows[p], nodes, "", slo.Window{}, 0)
		}
		verdict.Subject = sub.key
		w.mu.Lock()
		w.verdicts[name] = &verdict
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
func (w *watcher) decide(ctx context.Context, s *state.Service, sub *subject, v slo.Verdict, breaches int, now time.Time) {
	consecutive := max(s.SLO.Consecutive, 1)
	switch {
	case v.Result == slo.Breach && breaches >= consecutive:
		cmd := state.Command{
			Kind: state.KindRollback, Service: s.Name, Trigger: state.TriggerAuto, Actor: "watcher",
			Reason: v.Reason, Figures: figures(v), IdemKey: "decision:" + sub.key + "/rollback", IdemHash: "rollback",
		}
		if sub.rollout != nil {
			cmd.RolloutID = sub.rollout.ID
		} else {
			cmd.GuardID = sub.guard.ID
		}
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
		// (it is judged under the rollback SLO, CONTRACT §4).
		if v.Result != slo.Pass && !(r.Strategy == state.StrategyBlueGreen && v.Result == slo.Hold) {
			return
		}
		action := state.ActionRolloutStep
		if r.Gate == state.GateManual {
			action = state.ActionRolloutWait // every step, the last one too, waits for promote
		}
		cmd := state.StepDecision(s.Name, r, action)
		cmd.Actor, cmd.Reason, cmd.Figures = "watcher", v.Reason, figures(v)
		w.commit(ctx, cmd)
	}
}

func (w *watcher) commit(ctx context.Context, cmd state.Command) {
	if hook := w.beforeCommit.Load(); hook != nil {
		(*hook)(cmd)
	}
	a, err := w.n.Propose(ctx, cmd)
	switch {
	case err != nil:
		w.n.log().Warn("watcher decision not committed; it is decided again next second", zap.String("service", cmd.Service), zap.Error(err))
	case a.Result.Changed && !a.Result.Replayed:
		w.n.log().Info("watcher decision", zap.String("service", cmd.Service), zap.String("kind", kindName(cmd)), zap.String("reason", cmd.Reason))
	}
}

func kindName(c state.Command) string {
	if c.Kind == state.KindRollback {
		return "rollback"
	}
	return c.Action
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

// pullWindows asks every node of the configuration for its windows of the
// given pools (one second at most) and merges them; nodes counts the nodes
// that answered.
func (n *Node) pullWindows(ctx context.Context, service string, pools []string, window time.Duration) (map[string]slo.Window, int) {
	merged := map[string]slo.Window{}
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return merged, 0
	}
	type answer struct{ windows map[string]slo.Window }
	ch := make(chan answer, len(f.Configuration().Servers))
	req := windowsRequest{Service: service, Pools: pools, WindowMs: window.Milliseconds()}
	servers := f.Configuration().Servers
	for _, s := range servers {
		go func(s raft.Server) {
			if s.ID == raft.ServerID(n.cfg.NodeID) {
				ch <- answer{n.localWindows(req)}
				return
			}
			var resp map[string]slo.Window
			if err := n.cluster.Call(ctx, string(s.Address), rpcWindows, req, &resp); err != nil {
				ch <- answer{}
				return
			}
			ch <- answer{resp}
		}(s)
	}
	nodes := 0
	for range servers {
		a := <-ch
		if a.windows == nil {
			continue
		}
		nodes++
		for p, win := range a.windows {
			m := merged[p]
			m.Add(win)
			merged[p] = m
		}
	}
	return merged, nodes
}

// windowsRequest asks a node for its windows (RPC "windows").
type windowsRequest struct {
	Service  string   `json:"service"`
	Pools    []string `json:"pools"`
	WindowMs int64    `json:"window_ms"`
}

func (n *Node) localWindows(req windowsRequest) map[string]slo.Window {
	out := map[string]slo.Window{}
	dp := n.dataPlane()
	for _, p := range req.Pools {
		if dp != nil {
			out[p] = dp.Window(req.Service, p, time.Duration(req.WindowMs)*time.Millisecond)
		} else {
			out[p] = slo.Window{}
		}
	}
	return out
}

func (n *Node) isLeader() bool { return n.raft.State() == raft.Leader }
