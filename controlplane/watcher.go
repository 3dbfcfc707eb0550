package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
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
// second, it pulls every node's windows of the pools at stake (one call per
// node for all services, all nodes at once), merges them, judges them, and
// commits what follows — the next step of a rollout, a
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

// judged is one service judged in an evaluation: its subject, the pools at
// stake and the window they are judged over.
type judged struct {
	s      *state.Service
	sub    *subject
	pools  []string
	window time.Duration
}

func (w *watcher) tick(ctx context.Context) {
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
		round = w.n.pullWindows(ctx, req)
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
func (w *watcher) decide(ctx context.Context, s *state.Service, sub *subject, v slo.Verdict, breaches int, now time.Time) {
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
		// (it is judged under the rollback SLO, CONTRACT §4), seen by every
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

func (w *watcher) commit(ctx context.Context, cmd state.Command) {
	if hook := w.beforeCommit.Load(); hook != nil {
		(*hook)(cmd)
	}
	a, err := w.n.Propose(ctx, cmd)
	switch {
	case err != nil:
		w.n.log().Warn("watcher decision not committed; it is decided again next second", zap.String("service", cmd.Service), zap.Error(err))
	case a.Result.Changed && !a.Result.Replayed:
		w.n.log().Info("watcher decision", zap.String("service", cmd.Service), zap.String("kind", decisionName(cmd)), zap.String("reason", cmd.Reason))
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

// windowsTimeout bounds each node's answer to the leader's call for
// windows. All nodes are asked at once, for every service judged in one
// call, so a node that accepts the call and never answers costs one timeout
// per evaluation, not one per service, and leaves most of the second to the
// decisions.
const windowsTimeout = 400 * time.Millisecond

// windowRound is every node's answer to one call for windows.
type windowRound struct {
	nodes   []string                  // every node of the configuration, by ID, sorted
	answers map[string]*windowsAnswer // by node ID; absent: the node did not answer
}

// pullWindows asks every node of the configuration, in parallel, for its
// windows of every service in req. A node that does not answer within
// windowsTimeout, or answers with an error (as a node of an earlier version
// does: it lacks the RPC), has no answer in the round.
func (n *Node) pullWindows(ctx context.Context, req windowsRequest) windowRound {
	round := windowRound{answers: map[string]*windowsAnswer{}}
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return round
	}
	servers := f.Configuration().Servers
	ctx, cancel := context.WithTimeout(ctx, windowsTimeout)
	defer cancel()
	type answer struct {
		id string
		a  *windowsAnswer
	}
	ch := make(chan answer, len(servers))
	for _, s := range servers {
		round.nodes = append(round.nodes, string(s.ID))
		go func(s raft.Server) {
			if s.ID == raft.ServerID(n.cfg.NodeID) {
				a := n.localWindows(req)
				ch <- answer{string(s.ID), &a}
				return
			}
			var a windowsAnswer
			err := n.cluster.Call(ctx, string(s.Address), rpcWindows, req, &a)
			if err == nil && a.Services == nil {
				err = errors.New("answer without services")
			}
			if err != nil {
				n.log().Debug("no windows from node; its figures are missing", zap.String("node", string(s.ID)), zap.Error(err))
				ch <- answer{id: string(s.ID)}
				return
			}
			ch <- answer{string(s.ID), &a}
		}(s)
	}
	sort.Strings(round.nodes)
	for range servers {
		select {
		case a := <-ch:
			if a.a != nil {
				round.answers[a.id] = a.a
			}
		case <-ctx.Done():
			// Remote calls end with ctx too; this only stops waiting for
			// the local data plane, which takes no context.
			return round
		}
	}
	return round
}

// merge adds up the windows that the nodes serving a service reported, and
// says which nodes reported and which are missing. A node that answered
// without the service does not serve it (it has no handler for it) and is
// not expected; a node that did not answer may serve it, so it is missing.
func (r windowRound) merge(service string) (map[string]slo.Window, slo.Nodes) {
	merged := map[string]slo.Window{}
	var nodes slo.Nodes
	for _, id := range r.nodes {
		a := r.answers[id]
		if a == nil {
			nodes.Missing = append(nodes.Missing, id)
			continue
		}
		windows, serves := a.Services[service]
		if !serves {
			continue
		}
		nodes.Reporting++
		for p, win := range windows {
			m := merged[p]
			m.Add(win)
			merged[p] = m
		}
	}
	return merged, nodes
}

// windowsRequest asks a node for its windows of every service the leader
// judges (RPC "slo_windows_v2"), each over its own window.
type windowsRequest struct {
	Services []serviceWindows `json:"services"`
}

// serviceWindows asks for the windows of some pools of one service.
type serviceWindows struct {
	Service  string   `json:"service"`
	Pools    []string `json:"pools"`
	WindowMs int64    `json:"window_ms"`
}

// windowsAnswer is a node's answer to a windowsRequest: by service, the
// windows of the pools asked for, for every service the node serves. A
// service the node does not serve is left out.
type windowsAnswer struct {
	Services map[string]map[string]slo.Window `json:"services"`
}

func (n *Node) localWindows(req windowsRequest) windowsAnswer {
	out := windowsAnswer{Services: map[string]map[string]slo.Window{}}
	dp := n.dataPlane()
	if dp == nil {
		return out // no data plane: this node serves nothing
	}
	declared := dp.Declared()
	for _, sw := range req.Services {
		if _, serves := slices.BinarySearch(declared, sw.Service); !serves {
			continue
		}
		windows := make(map[string]slo.Window, len(sw.Pools))
		for _, p := range sw.Pools {
			windows[p] = dp.Window(sw.Service, p, time.Duration(sw.WindowMs)*time.Millisecond)
		}
		out.Services[sw.Service] = windows
	}
	return out
}

func (n *Node) isLeader() bool { return n.raft.State() == raft.Leader }
