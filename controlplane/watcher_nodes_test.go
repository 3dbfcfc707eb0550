package controlplane

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/slo"
)

// nodePlane is one node's data plane in TestWatcherNodeMissing: the canary
// figures a node reports depend on the service and on whether the node
// leads, and a stalled node accepts the leader's call but never answers it.
type nodePlane struct {
	idlePlane
	n *Node
	// stall, when set, blocks every Window call until it is closed.
	stall <-chan struct{}
}

// Declared names the services of the test (in name order): the node serves
// them, so the judge expects its figures.
func (p *nodePlane) Declared() []string { return []string{"alpha", "beta", "delta", "gamma"} }

// followerCanary is what each follower saw of each service's canary (the
// leader saw 1000 clean requests of every one): alpha is clean everywhere,
// beta fails 1 % on followers (merged with the leader: between the
// thresholds, a hold; the leader's alone: a pass), gamma fails half its
// requests on followers (merged: a breach; the leader's alone: a pass),
// delta is a clean blue-green bake.
var followerCanary = map[string]uint64{"alpha": 0, "beta": 10, "gamma": 500, "delta": 0}

func (p *nodePlane) Window(service, pool string, _ time.Duration) slo.Window {
	if p.stall != nil {
		<-p.stall
	}
	var errors uint64
	if pool == "canary" && !p.n.raft.IsLeader() {
		errors = followerCanary[service]
	}
	w := slo.Window{Requests: 1000, Errors: errors, Buckets: make([]uint64, len(slo.Bounds)+1)}
	w.Buckets[3] = 1000 // 5-10 ms
	return w
}

// TestWatcherNodeMissing: one node accepts the leader's calls for windows
// but never answers. No service may pass on the other nodes' figures alone:
// the verdict holds and names the missing node. The slow node must not
// starve the judging of the services after the first: a breach seen by the
// nodes that answer still rolls back. A blue-green bake, which a hold does
// not stop, is not promoted either. Once the node answers again, the
// rollouts move on.
func TestWatcherNodeMissing(t *testing.T) {
	c := newCluster(t, 3, nil)
	release := make(chan struct{})
	answerAgain := sync.OnceFunc(func() { close(release) })
	t.Cleanup(answerAgain) // before the nodes shut down
	slow := c.follower()
	slowID := c.nodes[slow].ID()
	for i, n := range c.nodes {
		p := &nodePlane{n: n}
		if i == slow {
			p.stall = release
		}
		n.SetDataPlane(p)
	}
	cl := c.client(c.leader(10 * time.Second))
	for _, name := range []string{"alpha", "beta", "gamma", "delta"} {
		if code, _, b := cl.do("PUT", "/v1/services/"+name, `{"pools":{"blue":{"backends":["127.0.0.1:9001"]},"canary":{"backends":["127.0.0.1:9003"]}},"weights":{"blue":100},"slo":{"min_requests":50,"consecutive":2}}`); code != 200 {
			t.Fatalf("put %s: %d %v", name, code, b)
		}
		start := `{"to":"canary","steps":[{"weight":10,"hold":"1s"},{"weight":100}],"force":true}`
		if name == "delta" {
			start = `{"to":"canary","strategy":"blue-green","bake":"1s","force":true}`
		}
		if code, _, b := cl.do("POST", "/v1/services/"+name+"/rollout", start); code != 200 {
			t.Fatalf("start %s: %d %v", name, code, b)
		}
	}
	rollout := func(name string) map[string]any {
		_, _, ro := cl.do("GET", "/v1/services/"+name+"/rollout?consistent", "")
		return ro
	}
	// Several holds long: alpha, beta and delta stay at step 1, holding for
	// the missing node; gamma is rolled back on the figures of the two nodes
	// that answer.
	var problems []string
	for end := time.Now().Add(8 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		for _, name := range []string{"alpha", "beta", "delta"} {
			if ro := rollout(name); ro["state"] != "running" || ro["step"] != 1.0 {
				problems = append(problems, fmt.Sprintf("%s left step 1 while %s did not answer: %v at step %v, verdict %v", name, slowID, ro["state"], ro["step"], ro["verdict"]))
			}
		}
		if len(problems) > 0 {
			break
		}
	}
	// gamma's breach needs two evaluations in a row: on a busy machine they
	// may take longer than the holds above.
	for deadline := time.Now().Add(30 * time.Second); rollout("gamma")["state"] != "rolled_back" && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
	}
	if ro := rollout("gamma"); ro["state"] != "rolled_back" {
		problems = append(problems, fmt.Sprintf("gamma, failing on the nodes that answer, is %v at step %v, verdict %v", ro["state"], ro["step"], ro["verdict"]))
	}
	for _, name := range []string{"alpha", "beta", "delta"} {
		v, _ := rollout(name)["verdict"].(map[string]any)
		if v == nil || v["result"] != "hold" || !strings.Contains(v["reason"].(string), slowID) {
			problems = append(problems, fmt.Sprintf("%s verdict %v, want a hold naming %s", name, v, slowID))
			continue
		}
		canary := v["pools"].(map[string]any)["canary"].(map[string]any)
		missing, _ := canary["nodes_missing"].([]any)
		if canary["nodes_reporting"] != 2.0 || canary["nodes_expected"] != 3.0 || !slices.Equal(missing, []any{slowID}) {
			problems = append(problems, fmt.Sprintf("%s canary figures %v, want 2 of 3 nodes reporting, %s missing", name, canary, slowID))
		}
	}
	if len(problems) > 0 {
		t.Fatal(strings.Join(problems, "\n"))
	}

	// The node answers again: alpha passes on every node's figures, delta's
	// bake ends.
	answerAgain()
	deadline := time.Now().Add(30 * time.Second)
	for _, name := range []string{"alpha", "delta"} {
		for ro := rollout(name); ro["step"] == 1.0 && ro["state"] == "running"; ro = rollout(name) {
			if time.Now().After(deadline) {
				t.Fatalf("%s did not move on once %s answered again: %v", name, slowID, ro["verdict"])
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}
