package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// steadyLoad sends GETs at a fixed total rate, round robin over the nodes'
// proxies, until stopped; bounded by maxDuration.
type steadyLoad struct {
	sent, failed atomic.Int64
	stop         chan struct{}
	wg           sync.WaitGroup
}

func startSteadyLoad(urls []string, perSecond int, maxDuration time.Duration) *steadyLoad {
	l := &steadyLoad{stop: make(chan struct{})}
	tr := &http.Transport{MaxIdleConnsPerHost: 32}
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	tick := time.NewTicker(time.Second / time.Duration(perSecond))
	sem := make(chan struct{}, 64)
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer tick.Stop()
		end := time.After(maxDuration)
		for i := 0; ; i++ {
			select {
			case <-l.stop:
				return
			case <-end:
				return
			case <-tick.C:
			}
			sem <- struct{}{}
			l.wg.Add(1)
			go func(url string) {
				defer l.wg.Done()
				defer func() { <-sem }()
				l.sent.Add(1)
				if !getOK(c, url) {
					l.failed.Add(1)
				}
			}(urls[i%len(urls)])
		}
	}()
	return l
}

func (l *steadyLoad) finish() (sent, failed int64) {
	close(l.stop)
	l.wg.Wait()
	return l.sent.Load(), l.failed.Load()
}

func setBackend(t *testing.T, addr, settings string) {
	t.Helper()
	req, _ := http.NewRequest("PUT", "http://"+addr+"/_backend", strings.NewReader(settings))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("PUT /_backend on %s: %d", addr, resp.StatusCode)
	}
}

// rolledBackEverywhere waits until every node's own state shows canary at 0.
func (c *testCluster) rolledBackEverywhere(t *testing.T, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	waitFor(t, "the rollback on every node", within, func() bool {
		for _, n := range c.nodes {
			if c.weights(t, n)["canary"] != 0 {
				return false
			}
		}
		return true
	})
	return time.Since(start)
}

// rollbackTrial runs one incident: a canary at 5 % that starts failing every
// request under ~400 req/s spread over the three nodes (~20 req/s to the
// canary), with the SLO defaults. It returns the time from the onset until
// every node applied the rollback, and the failed client requests.
func rollbackTrial(t *testing.T, c *testCluster) (time.Duration, int64) {
	setBackend(t, c.backends["canary"], `{"error_rate":0}`)
	code, body := api(t, "POST", c.nodes[1].admin()+"/v1/services/codingbrain/rollout", `{"to":"canary","steps":[{"weight":5,"hold":"1h"},{"weight":100}]}`)
	if code != 200 {
		t.Fatalf("rollout start: %d %v", code, body)
	}
	id := body["id"].(string)
	l := startSteadyLoad(c.proxyURLs(), 400, 2*time.Minute)
	time.Sleep(3 * time.Second) // healthy traffic first
	if _, ro := api(t, "GET", c.nodes[0].admin()+"/v1/services/codingbrain/rollout?consistent", ""); ro["state"] != "running" {
		t.Fatalf("before the onset the rollout is %v: %v", ro["state"], ro["verdict"])
	}
	onset := time.Now()
	setBackend(t, c.backends["canary"], `{"error_rate":1}`)
	t.Logf("onset at %.3f", float64(onset.UnixNano())/1e9)
	c.rolledBackEverywhere(t, 60*time.Second)
	took := time.Since(onset)
	sent, failed := l.finish()
	t.Logf("rollout %s: rolled back on all nodes %s after the onset; %d requests, %d failed", id, took, sent, failed)
	_, ro := api(t, "GET", c.nodes[2].admin()+"/v1/services/codingbrain/rollout?consistent", "")
	if ro["state"] != "rolled_back" || ro["id"] != id {
		t.Fatalf("rollout after the incident: %v", ro)
	}
	return took, failed
}

func TestRolloutRollback(t *testing.T) {
	c := newTestCluster(t)
	step(t, "a failing canary is rolled back on every node", func(t *testing.T) {
		if took, _ := rollbackTrial(t, c); took > 30*time.Second {
			t.Fatalf("rollback took %s", took)
		}
	})
	step(t, "one rollback event, by the watcher, with its figures", func(t *testing.T) {
		_, ev := api(t, "GET", c.nodes[0].admin()+"/v1/events?service=codingbrain&consistent", "")
		rollbacks := 0
		for _, x := range ev["events"].([]any) {
			e := x.(map[string]any)
			if e["action"] == "rollback" {
				rollbacks++
				if e["actor"] != "watcher" || e["figures"] == nil {
					t.Fatalf("rollback event %v", e)
				}
			}
		}
		if rollbacks != 1 {
			t.Fatalf("%d rollback events", rollbacks)
		}
	})
	step(t, "it stays rolled back and the metric counts it", func(t *testing.T) {
		time.Sleep(2 * time.Second)
		if w := c.weights(t, c.nodes[0]); w["canary"] != 0 {
			t.Fatalf("canary back after a rollback: %v", w)
		}
		resp, err := http.Get(c.nodes[2].admin() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(raw), `cbproxy_rollbacks_total{service="codingbrain",trigger="auto"} 1`) {
			t.Fatalf("metrics lack the rollback:\n%s", raw)
		}
	})
}

// TestRollbackTrials repeats the incident to report the distribution of the
// time to rollback (make soak; CBPROXY_SOAK=1). The anchor it beats is a
// poll-once-a-minute analysis loop (Flagger/Argo default): 0 to 60 s of
// waiting for the next loop plus the scrape interval.
func TestRollbackTrials(t *testing.T) {
	if os.Getenv("CBPROXY_SOAK") == "" {
		t.Skip("set CBPROXY_SOAK=1 (make soak) to run the rollback trials")
	}
	c := newTestCluster(t)
	var times []time.Duration
	var failed []int64
	for trial := 1; trial <= 10; trial++ {
		took, f := rollbackTrial(t, c)
		times, failed = append(times, took), append(failed, f)
		// The next trial needs traffic back on blue only.
		if code, _ := api(t, "PUT", c.nodes[0].admin()+"/v1/services/codingbrain/weights", `{"weights":{"blue":100}}`); code != 200 {
			t.Fatalf("reset weights: %d", code)
		}
		// Nodes keep windows in one-second slots: let the last incident's
		// errors fall out of the slot the next rollout starts in.
		time.Sleep(2 * time.Second)
	}
	slices.Sort(times)
	slices.Sort(failed)
	t.Logf("time to rollback over %d trials: min %s, p50 %s, p90 %s, max (p99 of 10) %s; failed requests per incident: p50 %d, max %d",
		len(times), times[0], times[len(times)/2], times[len(times)*9/10-1], times[len(times)-1], failed[len(failed)/2], failed[len(failed)-1])
	fmt.Fprintf(os.Stderr, "ROLLBACK_TIMES %v\n", times)
}

// useTestSLO replaces the seeded service with one whose SLO needs 20
// requests for a pass, so that short holds can pass at test traffic.
func useTestSLO(t *testing.T, c *testCluster) {
	t.Helper()
	body := fmt.Sprintf(`{"pools":{"blue":{"backends":[%q]},"canary":{"backends":[%q]}},"weights":{"blue":100},"slo":{"min_requests":20}}`, c.backends["blue"], c.backends["canary"])
	if code, b := api(t, "PUT", c.nodes[0].admin()+"/v1/services/codingbrain?wait=all", body); code != 200 {
		t.Fatalf("put service: %d %v", code, b)
	}
}

// waitRollout waits until the rollout reaches a final state and returns it.
func waitRollout(t *testing.T, n *clusterNode, within time.Duration) map[string]any {
	t.Helper()
	var ro map[string]any
	waitFor(t, "the rollout to end", within, func() bool {
		_, ro = api(t, "GET", n.admin()+"/v1/services/codingbrain/rollout?consistent", "")
		s := ro["state"]
		return s == "promoted" || s == "rolled_back" || s == "aborted"
	})
	return ro
}

// healthyRun walks a healthy canary (0.05 % errors, like stable) through every
// step with short holds and returns its final state.
func healthyRun(t *testing.T, c *testCluster, urls []string) (string, time.Duration) {
	t.Helper()
	setBackend(t, c.backends["blue"], `{"error_rate":0.0005}`)
	setBackend(t, c.backends["canary"], `{"error_rate":0.0005}`)
	if code, b := api(t, "PUT", c.nodes[0].admin()+"/v1/services/codingbrain/weights", `{"weights":{"blue":100}}`); code != 200 {
		t.Fatalf("reset weights: %d %v", code, b)
	}
	time.Sleep(2 * time.Second)
	l := startSteadyLoad(urls, 500, 3*time.Minute)
	defer l.finish()
	start := time.Now()
	_, errOut, code := cli(t, c.nodes[1].admin(), "rollout", "start", "codingbrain", "--to", "canary", "--steps", "1:2s,5:2s,25:2s,50:2s,100")
	if code != 0 {
		t.Fatalf("rollout start: exit %d %s", code, errOut)
	}
	ro := waitRollout(t, c.nodes[0], 2*time.Minute)
	return ro["state"].(string), time.Since(start)
}

func TestRolloutScenarios(t *testing.T) {
	c := newTestCluster(t)
	useTestSLO(t, c)
	urls := c.proxyURLs()
	step(t, "a healthy canary walks every step and is promoted", func(t *testing.T) {
		state, took := healthyRun(t, c, urls)
		t.Logf("healthy canary: %s after %s", state, took)
		if state != "promoted" {
			t.Fatalf("healthy canary ended %s", state)
		}
		if w := c.weights(t, c.nodes[2]); w["canary"] != 100 {
			t.Fatalf("weights after promotion: %v", w)
		}
	})

	for _, tc := range []struct {
		name, fault string
		within      time.Duration
	}{
		{"5 % errors", `{"error_rate":0.05}`, 30 * time.Second},
		{"p95 over 2 s", `{"latency_ms":2500}`, 60 * time.Second},
	} {
		step(t, "a canary with "+tc.name+" is rolled back", func(t *testing.T) {
			setBackend(t, c.backends["canary"], `{"error_rate":0,"latency_ms":0}`)
			if code, b := api(t, "PUT", c.nodes[0].admin()+"/v1/services/codingbrain/weights", `{"weights":{"blue":100}}`); code != 200 {
				t.Fatalf("reset weights: %d %v", code, b)
			}
			time.Sleep(2 * time.Second)
			l := startSteadyLoad(urls, 400, 2*time.Minute)
			if code, b := api(t, "POST", c.nodes[2].admin()+"/v1/services/codingbrain/rollout", `{"to":"canary","steps":[{"weight":5,"hold":"1h"},{"weight":100}]}`); code != 200 {
				t.Fatalf("%s: start: %d %v", tc.name, code, b)
			}
			time.Sleep(2 * time.Second)
			onset := time.Now()
			setBackend(t, c.backends["canary"], tc.fault)
			ro := waitRollout(t, c.nodes[0], tc.within)
			took := time.Since(onset)
			sent, failed := l.finish()
			t.Logf("%s: %s %s after the onset (%d requests, %d failed or slow-failed)", tc.name, ro["state"], took, sent, failed)
			if ro["state"] != "rolled_back" || took > tc.within {
				t.Fatalf("%s: %v after %s", tc.name, ro["state"], took)
			}
		})
	}
	setBackend(t, c.backends["canary"], `{"error_rate":0,"latency_ms":0}`)
}

// TestHealthyRolloutRuns repeats the healthy canary (make soak): zero
// rollbacks over 20 runs is the goal.
func TestHealthyRolloutRuns(t *testing.T) {
	if os.Getenv("CBPROXY_SOAK") == "" {
		t.Skip("set CBPROXY_SOAK=1 (make soak) to run 20 healthy rollouts")
	}
	c := newTestCluster(t)
	useTestSLO(t, c)
	urls := c.proxyURLs()
	promoted, rolledBack := 0, 0
	for run := 1; run <= 20; run++ {
		state, took := healthyRun(t, c, urls)
		t.Logf("run %d: %s after %s", run, state, took)
		switch state {
		case "promoted":
			promoted++
		case "rolled_back":
			rolledBack++
		}
	}
	t.Logf("healthy rollouts: %d promoted, %d rolled back of 20", promoted, rolledBack)
	if rolledBack != 0 {
		t.Fatalf("%d healthy rollouts were rolled back", rolledBack)
	}
}

// TestRolloutLeaderKilled kills the leader process in the middle of a step and
// again in the middle of an incident: the rollout goes on under the new
// leader, and the incident gets exactly one rollback.
func TestRolloutLeaderKilled(t *testing.T) {
	c := newTestCluster(t)
	useTestSLO(t, c)
	l := startSteadyLoad(c.proxyURLs(), 400, 3*time.Minute)
	defer l.finish()

	step(t, "killed mid-step, the new leader keeps the step", func(t *testing.T) {
		// A canary held at 5 % for a long step.
		code, body := api(t, "POST", c.nodes[0].admin()+"/v1/services/codingbrain/rollout", `{"to":"canary","steps":[{"weight":5,"hold":"1h"},{"weight":100}]}`)
		if code != 200 {
			t.Fatalf("start: %d %v", code, body)
		}
		id := body["id"].(string)
		time.Sleep(2 * time.Second)
		leader, followers := c.roles(t, c.nodes...)
		leader.proc.stop(syscall.SIGKILL)
		newLeader, _ := c.roles(t, followers...)
		_, ro := api(t, "GET", newLeader.admin()+"/v1/services/codingbrain/rollout?consistent", "")
		if ro["id"] != id || ro["state"] != "running" || ro["step"] != 1.0 {
			t.Fatalf("after killing the leader mid-step: %v", ro)
		}
		c.start(leader)
		c.waitReady(t, leader)
	})

	step(t, "killed mid-incident, exactly one rollback", func(t *testing.T) {
		// The canary starts failing, the leader dies a second later, before
		// three consecutive breaches.
		leader, followers := c.roles(t, c.nodes...)
		setBackend(t, c.backends["canary"], `{"error_rate":1}`)
		time.Sleep(time.Second)
		leader.proc.stop(syscall.SIGKILL)
		newLeader, _ := c.roles(t, followers...)
		ro := waitRollout(t, newLeader, 60*time.Second)
		if ro["state"] != "rolled_back" {
			t.Fatalf("after killing the leader mid-incident: %v", ro)
		}
		c.start(leader)
		c.waitReady(t, leader)
		time.Sleep(3 * time.Second) // a second decision would have landed by now
		c.rolledBackEverywhere(t, 30*time.Second)
		_, ev := api(t, "GET", newLeader.admin()+"/v1/events?service=codingbrain&consistent", "")
		rollbacks := 0
		for _, x := range ev["events"].([]any) {
			if x.(map[string]any)["action"] == "rollback" {
				rollbacks++
			}
		}
		if rollbacks != 1 {
			t.Fatalf("%d rollback events, want exactly 1", rollbacks)
		}
	})
	setBackend(t, c.backends["canary"], `{"error_rate":0}`)
}

// TestRolloutPauseResumeStorm: an operator pausing and resuming a canary
// while the leader's watcher decides its steps, on real processes, over and
// over at moments spread across the second. Whatever lands between a
// decision and its commit, the rollout must never stall at a step (it
// reaches promoted once the storm ends) and never skip one (every step is
// an event), and a step never moves on sooner than its hold after the
// resume that restarted it.
func TestRolloutPauseResumeStorm(t *testing.T) {
	c := newTestCluster(t)
	useTestSLO(t, c)
	l := startSteadyLoad(c.proxyURLs(), 300, 3*time.Minute)
	defer l.finish()
	code, ro := api(t, "POST", c.nodes[1].admin()+"/v1/services/codingbrain/rollout",
		`{"to":"canary","steps":[{"weight":1,"hold":"1s"},{"weight":5,"hold":"1s"},{"weight":25,"hold":"1s"},{"weight":50,"hold":"1s"},{"weight":100}]}`)
	if code != 200 {
		t.Fatalf("start: %d %v", code, ro)
	}
	id := ro["id"]
	// The storm: pause, wait a little, resume, wait about a hold; the
	// waits walk across the second so that some pauses land next to a
	// decision. Bounded: 25 rounds or the rollout's end.
	for round := 0; round < 25; round++ {
		n := c.nodes[round%3]
		if code, b := api(t, "POST", n.admin()+"/v1/services/codingbrain/rollout/pause", ""); code != 200 {
			if b["code"] == "not_found" {
				break // promoted: nothing runs any more
			}
			t.Fatalf("pause: %d %v", code, b)
		}
		time.Sleep(time.Duration(round%5) * 40 * time.Millisecond)
		if code, b := api(t, "POST", n.admin()+"/v1/services/codingbrain/rollout/resume", ""); code != 200 {
			t.Fatalf("resume: %d %v", code, b)
		}
		time.Sleep(900*time.Millisecond + time.Duration(round%7)*37*time.Millisecond)
	}
	end := waitRollout(t, c.nodes[0], 60*time.Second)
	if end["state"] != "promoted" || end["id"] != id {
		t.Fatalf("after the storm the rollout is %v: %v", end["state"], end)
	}
	// Every step came, in order, each one a whole hold after the step (or
	// resume) that started its hold.
	_, ev := api(t, "GET", c.nodes[2].admin()+"/v1/events?service=codingbrain&consistent&limit=1000", "")
	var holdStart time.Time
	steps := 1
	for _, x := range ev["events"].([]any) {
		e := x.(map[string]any)
		at, _ := time.Parse(time.RFC3339Nano, e["time"].(string))
		switch e["action"] {
		case "rollout_start", "rollout_resume":
			holdStart = at
			if e["action"] == "rollout_start" {
				steps = 1
			}
		case "rollout_step", "rollout_complete":
			// A skipped hold shows as a step a few milliseconds after the
			// resume; stamps are the leader's, to the millisecond or so.
			if e["actor"] == "watcher" && at.Sub(holdStart) < 900*time.Millisecond {
				t.Errorf("%s %v came %s after its hold began, before the 1 s hold: %v", e["action"], e["index"], at.Sub(holdStart), e["reason"])
			}
			holdStart = at
			steps++
		}
	}
	if steps != 6 {
		t.Errorf("%d step events (start included), want 1 start, 4 steps and the completion", steps)
	}
	t.Logf("promoted through the pause/resume storm, %d steps", steps-1)
}
