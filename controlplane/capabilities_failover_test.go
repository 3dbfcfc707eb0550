package controlplane

import (
	"context"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// TestNewLeaderKnowsTheDeadLeadersBuild: a follower elected after the leader
// died can still commit a kind newer than the baseline while the dead leader
// is down: every node learned the others' capabilities in the background,
// not only the leader (which had never asked the member that led before
// it, and took it to apply only the baseline: 503 upgrade_in_progress for
// every newer write until that node came back).
func TestNewLeaderKnowsTheDeadLeadersBuild(t *testing.T) {
	c := newCluster(t, 3, nil)
	if code, _, b := c.client(0).do("PUT", "/v1/services/svc?wait=all", demoService); code != 200 {
		t.Fatalf("put: %d %v", code, b)
	}
	// A few seconds of an idle cluster: time for every node to ask the others.
	time.Sleep(4 * time.Second)
	c.kill(c.leader(10 * time.Second))
	l := c.leader(30 * time.Second)
	spec := state.NotifierSpec{URL: "http://127.0.0.1:9/hook"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := c.nodes[l].raft.Propose(ctx, state.NewCommand("", "ops", state.PutNotifier{Notifier: "ops", Spec: &spec}))
	if err != nil || !a.Result.OK() {
		t.Fatalf("a put_notifier on the new leader %s while the old one is down: %v %+v", c.nodes[l].ID(), err, a.Result)
	}
}
