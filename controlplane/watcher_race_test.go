package controlplane

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/internal/seams"
	"github.com/cbproxy/cbproxy/controlplane/state"
)

// TestWatcherDecisionRacesPauseResume lands an operator's pause (and
// resume) between the real watcher's step decision and its commit, on a real
// node: after the resume the rollout still moves on, and only once the
// restarted hold has passed.
//
//   - "paused": a pause lands between decision and commit; the decision
//     finds the rollout paused. After a resume the rollout must reach step 2.
//   - "bounced": a pause and a resume land between decision and commit; the
//     decision is about the hold the resume ended and must not skip the new
//     one: step 2 comes a whole hold after the resume.
//   - "gated": the same as "paused" at a manual gate: after the resume the
//     rollout must reach "waiting".
func TestWatcherDecisionRacesPauseResume(t *testing.T) {
	const hold = 2 * time.Second
	c := newCluster(t, 1, nil)
	n := c.nodes[0]
	tp := &trafficPlane{declared: []string{"bounced", "gated", "paused"}}
	n.SetDataPlane(tp)
	tp.set("blue", 1000, 0, 10*time.Millisecond)
	tp.set("canary", 500, 0, 10*time.Millisecond) // passes
	cl := c.client(0)
	cases := map[string]struct {
		gate string
		race []state.RolloutAction // the operator's actions between decision and commit
	}{
		"paused":  {"auto", []state.RolloutAction{state.PauseRollout}},
		"bounced": {"auto", []state.RolloutAction{state.PauseRollout, state.ResumeRollout}},
		"gated":   {"manual", []state.RolloutAction{state.PauseRollout}},
	}
	var mu sync.Mutex
	raced, fired := map[string]chan struct{}{}, map[string]bool{}
	for name := range cases {
		raced[name] = make(chan struct{})
		if code, _, b := cl.do("PUT", "/v1/services/"+name, `{"pools":{"blue":{"backends":["127.0.0.1:9001"]},"canary":{"backends":["127.0.0.1:9003"]}},"weights":{"blue":100},"slo":{"min_requests":50,"consecutive":2}}`); code != 200 {
			t.Fatalf("put %s: %d %v", name, code, b)
		}
	}
	hook := func(cmd state.Command) {
		if cmd.Kind() != state.KindRolloutChange {
			return
		}
		mu.Lock()
		first := !fired[cmd.Service] // the first decision of each service only
		fired[cmd.Service] = true
		mu.Unlock()
		if !first {
			return
		}
		defer close(raced[cmd.Service])
		for _, action := range cases[cmd.Service].race {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			a, err := n.raft.Propose(ctx, state.NewCommand(cmd.Service, "ops", state.RolloutChange{Action: action}))
			cancel()
			if err != nil || !a.Result.OK() {
				t.Errorf("%s: %s between decision and commit: %v %+v", cmd.Service, action, err, a.Result)
			}
		}
	}
	seams.SetBeforeCommit(n.watcher, hook)
	for name, tc := range cases {
		body := fmt.Sprintf(`{"to":"canary","gate":%q,"steps":[{"weight":10,"hold":%q},{"weight":100}],"force":true}`, tc.gate, hold)
		if code, _, b := cl.do("POST", "/v1/services/"+name+"/rollout", body); code != 200 {
			t.Fatalf("start %s: %d %v", name, code, b)
		}
	}
	rollout := func(name string) map[string]any {
		_, _, ro := cl.do("GET", "/v1/services/"+name+"/rollout", "")
		return ro
	}
	for name := range cases {
		select {
		case <-raced[name]:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: the watcher never decided: %v", name, rollout(name))
		}
	}
	// The decisions that found their rollout paused changed nothing, and
	// nothing moves while it stays paused.
	time.Sleep(hold + time.Second)
	for _, name := range []string{"paused", "gated"} {
		if ro := rollout(name); ro["state"] != "paused" || ro["step"] != 1.0 {
			t.Fatalf("%s: a decision moved a paused rollout: %v", name, ro)
		}
		if code, _, b := cl.do("POST", "/v1/services/"+name+"/rollout/resume", ""); code != 200 {
			t.Fatalf("resume %s: %d %v", name, code, b)
		}
	}
	want := map[string]func(map[string]any) bool{
		"paused":  func(ro map[string]any) bool { return ro["step"] == 2.0 || ro["state"] == "promoted" },
		"bounced": func(ro map[string]any) bool { return ro["step"] == 2.0 || ro["state"] == "promoted" },
		"gated":   func(ro map[string]any) bool { return ro["state"] == "waiting" },
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, name := range []string{"bounced", "gated", "paused"} {
		ok := want[name]
		for ro := rollout(name); !ok(ro); ro = rollout(name) {
			if time.Now().After(deadline) {
				t.Errorf("%s: after the resume the rollout never moved on: %v at step %v (verdict %v)", name, ro["state"], ro["step"], ro["verdict"])
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if !ok(rollout(name)) {
			continue
		}
		// It moved a whole hold after the resume that restarted the hold.
		_, _, ev := cl.do("GET", "/v1/events?service="+name, "")
		var resumed, moved time.Time
		for _, e := range ev["events"].([]any) {
			e := e.(map[string]any)
			at, err := time.Parse(time.RFC3339Nano, e["time"].(string))
			if err != nil {
				t.Fatal(err)
			}
			switch e["action"] {
			case string(state.ActionRolloutResume):
				resumed = at
			case string(state.ActionRolloutStep):
				if moved.IsZero() {
					moved = at
				}
			}
		}
		if resumed.IsZero() || moved.Before(resumed.Add(hold)) {
			t.Errorf("%s: resumed at %s, moved on at %s: the hold of %s that the resume restarted was skipped",
				name, resumed.Format(time.StampMilli), moved.Format(time.StampMilli), hold)
		}
	}
}
