package e2e

import (
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestRolloutHoldsForMissingNode stops a follower process (SIGSTOP: the
// kernel still accepts connections to its ports, but it never answers)
// during a canary rollout with short holds. While it is stopped the rollout
// must not pass its step on the two other nodes' figures: the verdict holds
// and names the stopped node. Once the node runs again, the rollout moves
// on and is promoted.
func TestRolloutHoldsForMissingNode(t *testing.T) {
	c := newTestCluster(t)
	useTestSLO(t, c)
	leader, followers := c.roles(t, c.nodes...)
	stopped := followers[len(followers)-1]
	var live []*clusterNode
	var urls []string
	for _, n := range c.nodes {
		if n != stopped {
			live = append(live, n)
			urls = append(urls, n.proxy()+"/")
		}
	}
	pid := stopped.proc.cmd.Process.Pid
	resume := func() { _ = syscall.Kill(-pid, syscall.SIGCONT) }
	t.Cleanup(resume) // never leave a stopped process behind
	if err := syscall.Kill(-pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	l := startSteadyLoad(urls, 200, 3*time.Minute)
	stopLoad := sync.OnceValues(l.finish)
	defer stopLoad()
	time.Sleep(time.Second)
	if code, b := api(t, "POST", leader.admin()+"/v1/services/codingbrain/rollout", `{"to":"canary","steps":[{"weight":20,"hold":"2s"},{"weight":100}]}`); code != 200 {
		t.Fatalf("rollout start: %d %v", code, b)
	}

	// Ten seconds, five holds: the rollout stays at step 1 and the verdict
	// names the stopped node.
	named := false
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
		code, ro := apiQuietJSON(live[0].admin() + "/v1/services/codingbrain/rollout")
		if code != 200 {
			continue
		}
		if ro["state"] != "running" || ro["step"] != 1.0 {
			t.Fatalf("the rollout moved on while %s was stopped: %v at step %v, verdict %v", stopped.id, ro["state"], ro["step"], ro["verdict"])
		}
		v, _ := ro["verdict"].(map[string]any)
		if v == nil {
			continue
		}
		canary, _ := v["pools"].(map[string]any)["canary"].(map[string]any)
		missing, _ := canary["nodes_missing"].([]any)
		if v["result"] == "hold" && strings.Contains(v["reason"].(string), stopped.id) &&
			slices.Equal(missing, []any{stopped.id}) && canary["nodes_expected"] == 3.0 && canary["nodes_reporting"] == 2.0 {
			named = true
		}
	}
	if !named {
		_, ro := api(t, "GET", live[0].admin()+"/v1/services/codingbrain/rollout", "")
		t.Fatalf("no verdict named the stopped %s with 2 of 3 nodes reporting: %v", stopped.id, ro["verdict"])
	}

	// The node runs again: every node reports, the rollout passes its steps.
	resume()
	ro := waitRollout(t, live[0], 2*time.Minute)
	if ro["state"] != "promoted" {
		t.Fatalf("after %s came back the rollout ended %v: %v", stopped.id, ro["state"], ro["verdict"])
	}
	sent, failed := stopLoad()
	t.Logf("%d requests, %d failed", sent, failed)
}
