package slo

import (
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

func TestJudge(t *testing.T) {
	const fast, slow = 30 * time.Millisecond, 3 * time.Second
	runbook := state.DefaultSLO // advance 0.1 % / 500 ms, rollback 1 % / 2 s, 100 requests
	type side struct {
		name  string
		w     Window
		nodes int
	}
	tests := []struct {
		name     string
		slo      state.SLO
		target   side
		baseline side
		// missing are the nodes expected that did not report (both pools).
		missing []string
		want    Result
		// reason is the whole reason when exact, else words it must hold.
		reason   string
		exact    bool
		contains []string
	}{
		// The contract's examples.
		{name: "hard failure from a few dozen requests", target: side{"canary", win(30, 30, fast), 3},
			want: Breach, contains: []string{"canary error rate 100 % (30 of 30 requests failed) is above 1 %", "at least 88.6 %"}},
		{name: "no errors but too few requests", target: side{"canary", win(50, 0, fast), 3},
			want: Hold, reason: "hold: 50 of the 100 requests needed", exact: true},
		{name: "5 % of 400", target: side{"canary", win(400, 20, fast), 3},
			want: Breach, contains: []string{"error rate 5 % (20 of 400 requests failed)", "at least 3.26 %"}},
		{name: "0.05 % of 10,000", target: side{"canary", win(10000, 5, fast), 3},
			want: Pass, contains: []string{"error rate 0.05 % is below 0.1 %", "p95 48.8 ms below 500 ms", "10000 requests"}},
		{name: "baseline failing too", target: side{"canary", win(400, 20, fast), 3}, baseline: side{"blue", win(40000, 2000, fast), 3},
			want: Inconclusive, contains: []string{"inconclusive: baseline failing: blue error rate 5 %", "(canary breaches as well)"}},
		{name: "slow with 150 requests", target: side{"canary", win(150, 0, slow), 3},
			want: Breach, reason: "breach: canary p95 4850 ms is above 2000 ms (150 requests)", exact: true},
		{name: "slow with 20 requests", target: side{"canary", win(20, 0, slow), 3},
			want: Hold, reason: "hold: 20 of the 100 requests needed; p95 4850 ms is above 2000 ms", exact: true},

		// No data is never a pass.
		{name: "no node reported", target: side{"canary", win(1000, 0, fast), 0},
			want: Hold, reason: "hold: no data: no node reported", exact: true},
		{name: "no requests", target: side{"canary", Window{}, 3},
			want: Hold, reason: "hold: no data: no request reached canary in the window", exact: true},
		{name: "no node and no requests", target: side{"canary", Window{}, 0},
			want: Hold, reason: "hold: no data: no node reported", exact: true},
		{name: "requests without latency figures", target: side{"canary", Window{Requests: 500}, 2},
			want: Hold, reason: "hold: no latency figures", exact: true},

		// Partial figures never pass; the harm they show still counts.
		{name: "clean figures with a node missing", target: side{"canary", win(10000, 0, fast), 2},
			baseline: side{"blue", win(40000, 0, fast), 2}, missing: []string{"node3"},
			want: Hold, reason: "hold: no figures from node3 (2 of 3 nodes reported)", exact: true},
		{name: "two nodes missing, too few requests", target: side{"canary", win(50, 0, fast), 1}, missing: []string{"node2", "node3"},
			want: Hold, reason: "hold: no figures from node2, node3 (1 of 3 nodes reported); 50 of the 100 requests needed", exact: true},
		{name: "breach with a node missing", target: side{"canary", win(400, 20, fast), 2},
			baseline: side{"blue", win(40000, 10, fast), 2}, missing: []string{"node3"},
			want: Breach, contains: []string{"breach: canary error rate 5 %"}},
		{name: "inconclusive with a node missing", target: side{"canary", win(400, 20, fast), 2},
			baseline: side{"blue", win(40000, 2000, fast), 2}, missing: []string{"node3"},
			want: Inconclusive},
		{name: "no node reported, all missing", target: side{"canary", Window{}, 0}, missing: []string{"node1", "node2"},
			want: Hold, reason: "hold: no data: no node reported; no figures from node1, node2 (0 of 2 nodes reported)", exact: true},
		{name: "no requests, a node missing", target: side{"canary", Window{}, 2}, missing: []string{"node3"},
			want: Hold, reason: "hold: no data: no request reached canary in the window; no figures from node3 (2 of 3 nodes reported)", exact: true},

		// Pass at the edges.
		{name: "exactly min_requests", target: side{"canary", win(100, 0, fast), 1}, want: Pass},
		{name: "one request short", target: side{"canary", win(99, 0, fast), 1},
			want: Hold, reason: "hold: 99 of the 100 requests needed", exact: true},
		{name: "error rate at the advance rate", target: side{"canary", win(1000, 1, fast), 1},
			want: Hold, reason: "hold: error rate 0.1 % is between 0.1 % and 1 %", exact: true},
		{name: "error rate between", target: side{"canary", win(1000, 3, fast), 1},
			want: Hold, reason: "hold: error rate 0.3 % is between 0.1 % and 1 %", exact: true},
		{name: "error rate above rollback without confidence", target: side{"canary", win(100, 2, fast), 1},
			want: Hold, reason: "hold: error rate 2 % is above 1 %, but not with 95 % confidence (at least 0.55 %)", exact: true},
		{name: "p95 between", target: side{"canary", win(1000, 0, 700*time.Millisecond), 1},
			want: Hold, reason: "hold: p95 975 ms is between 500 ms and 2000 ms", exact: true},
		{name: "p95 on the rollback bound is not above it",
			target: side{"canary", Window{Requests: 100, Buckets: bucketsAt(map[time.Duration]uint64{1500 * time.Millisecond: 95, slow: 5})}, 1},
			want:   Hold, reason: "hold: p95 2000 ms is between 500 ms and 2000 ms", exact: true},
		{name: "p95 on the advance bound is not below it",
			target: side{"canary", Window{Requests: 100, Buckets: bucketsAt(map[time.Duration]uint64{300 * time.Millisecond: 95, 700 * time.Millisecond: 5})}, 1},
			want:   Hold, reason: "hold: p95 500 ms is between 500 ms and 2000 ms", exact: true},
		{name: "several reasons to hold", target: side{"canary", win(60, 1, 700*time.Millisecond), 1},
			want: Hold, reason: "hold: 60 of the 100 requests needed; error rate 1.67 % is above 1 %, but not with 95 % confidence (at least 0.295 %); p95 975 ms is between 500 ms and 2000 ms", exact: true},

		// Breaches and the baseline.
		{name: "errors and latency", target: side{"canary", win(200, 100, slow), 1},
			want: Breach, contains: []string{"canary error rate 50 %", " and canary p95 4850 ms is above 2000 ms (200 requests)"}},
		{name: "healthy baseline", target: side{"canary", win(400, 20, fast), 3}, baseline: side{"blue", win(40000, 10, fast), 3},
			want: Breach, contains: []string{"breach: canary error rate 5 %"}},
		{name: "baseline slow, target failing", target: side{"canary", win(400, 20, fast), 3}, baseline: side{"blue", win(40000, 0, slow), 3},
			want: Inconclusive, contains: []string{"baseline failing: blue p95 4850 ms is above 2000 ms (40000 requests)"}},
		{name: "baseline failing, target fine", target: side{"canary", win(1000, 0, fast), 3}, baseline: side{"blue", win(40000, 2000, fast), 3},
			want: Pass},
		{name: "baseline without nodes does not excuse", target: side{"canary", win(400, 20, fast), 3}, baseline: side{"blue", win(40000, 2000, fast), 0},
			want: Breach},
		{name: "baseline errors without confidence do not excuse", target: side{"canary", win(400, 20, fast), 3}, baseline: side{"blue", win(100, 2, fast), 3},
			want: Breach},
		{name: "baseline slow from too few requests does not excuse", target: side{"canary", win(400, 20, fast), 3}, baseline: side{"blue", win(20, 0, slow), 3},
			want: Breach},
		{name: "errors above requests count as requests", target: side{"canary", Window{Requests: 40, Errors: 90, Buckets: win(40, 0, fast).Buckets}, 1},
			want: Breach, contains: []string{"(40 of 40 requests failed)"}},

		// Another SLO.
		{name: "own thresholds pass", slo: state.SLO{Advance: state.Thresholds{ErrorRate: 0.05, P95ms: 5000}, Rollback: state.Thresholds{ErrorRate: 0.2, P95ms: 8000}, MinRequests: 10},
			target: side{"green", win(20, 0, slow), 2}, want: Pass},
		{name: "own thresholds hold", slo: state.SLO{Advance: state.Thresholds{ErrorRate: 0.05, P95ms: 5000}, Rollback: state.Thresholds{ErrorRate: 0.2, P95ms: 8000}, MinRequests: 10},
			target: side{"green", win(20, 2, fast), 2}, want: Hold, reason: "hold: error rate 10 % is between 5 % and 20 %", exact: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.slo
			if s.MinRequests == 0 {
				s = runbook
			}
			tNodes := Nodes{Reporting: tt.target.nodes, Missing: tt.missing}
			bNodes := Nodes{Reporting: tt.baseline.nodes, Missing: tt.missing}
			v := Judge(s, tt.target.name, tt.target.w, tNodes, tt.baseline.name, tt.baseline.w, bNodes)
			if v.Result != tt.want {
				t.Errorf("result %q (%s), want %q", v.Result, v.Reason, tt.want)
			}
			if !strings.HasPrefix(v.Reason, string(v.Result)+": ") {
				t.Errorf("reason %q does not start with %q", v.Reason, v.Result+": ")
			}
			if tt.exact && v.Reason != tt.reason {
				t.Errorf("reason\n %q, want\n %q", v.Reason, tt.reason)
			}
			for _, c := range tt.contains {
				if !strings.Contains(v.Reason, c) {
					t.Errorf("reason %q does not say %q", v.Reason, c)
				}
			}
			want := map[string]PoolFigures{tt.target.name: Figures(tt.target.w, tNodes)}
			if tt.baseline.name != "" {
				want[tt.baseline.name] = Figures(tt.baseline.w, bNodes)
			}
			if !reflect.DeepEqual(v.Pools, want) {
				t.Errorf("pools %+v, want %+v", v.Pools, want)
			}
		})
	}
}

// bucketsAt places counts at latencies.
func bucketsAt(counts map[time.Duration]uint64) []uint64 {
	b := make([]uint64, len(Bounds)+1)
	for d, n := range counts {
		b[bucketOf(d)] += n
	}
	return b
}

func TestFigures(t *testing.T) {
	tests := []struct {
		name  string
		w     Window
		nodes Nodes
		want  PoolFigures
	}{
		{"none", Window{}, Nodes{}, PoolFigures{ErrorRateHigh: 1, NodesMissing: []string{}}},
		{"no errors", win(812, 0, 30*time.Millisecond), Nodes{Reporting: 3},
			PoolFigures{Requests: 812, ErrorRateHigh: 0.0047088, P95ms: 48.75, NodesReporting: 3, NodesExpected: 3, NodesMissing: []string{}}},
		{"some errors", win(400, 20, 30*time.Millisecond), Nodes{Reporting: 2},
			PoolFigures{Requests: 400, Errors: 20, ErrorRate: 0.05, ErrorRateLow: 0.0325972, ErrorRateHigh: 0.0759642, P95ms: 48.75, NodesReporting: 2, NodesExpected: 2, NodesMissing: []string{}}},
		{"errors above requests", Window{Requests: 5, Errors: 9}, Nodes{Reporting: 1},
			PoolFigures{Requests: 5, Errors: 5, ErrorRate: 1, ErrorRateLow: 0.5655, ErrorRateHigh: 1, NodesReporting: 1, NodesExpected: 1, NodesMissing: []string{}}},
		{"a node missing", win(400, 0, 30*time.Millisecond), Nodes{Reporting: 2, Missing: []string{"node3"}},
			PoolFigures{Requests: 400, ErrorRateHigh: 0.0095, P95ms: 48.75, NodesReporting: 2, NodesExpected: 3, NodesMissing: []string{"node3"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Figures(tt.w, tt.nodes)
			near := func(a, b float64) bool { return math.Abs(a-b) < 5e-5 }
			if got.Requests != tt.want.Requests || got.Errors != tt.want.Errors || got.NodesReporting != tt.want.NodesReporting ||
				got.NodesExpected != tt.want.NodesExpected || !reflect.DeepEqual(got.NodesMissing, tt.want.NodesMissing) ||
				!near(got.ErrorRate, tt.want.ErrorRate) || !near(got.ErrorRateLow, tt.want.ErrorRateLow) ||
				!near(got.ErrorRateHigh, tt.want.ErrorRateHigh) || !near(got.P95ms, tt.want.P95ms) {
				t.Errorf("Figures = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestVerdictJSON checks the verdict's shape in the rollout body (docs/api.md
// "Rollout body").
func TestVerdictJSON(t *testing.T) {
	v := Judge(state.DefaultSLO, "canary", win(812, 0, 30*time.Millisecond), Nodes{Reporting: 3}, "blue", win(8000, 1, 20*time.Millisecond), Nodes{Reporting: 3})
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got["result"] != "pass" || got["reason"] == "" {
		t.Errorf("result %v, reason %v", got["result"], got["reason"])
	}
	pools, _ := got["pools"].(map[string]any)
	canary, _ := pools["canary"].(map[string]any)
	if len(pools) != 2 || canary == nil || pools["blue"] == nil {
		t.Fatalf("pools %v, want canary and blue", got["pools"])
	}
	want := map[string]any{"requests": 812.0, "errors": 0.0, "error_rate": 0.0, "error_rate_low": 0.0, "nodes_reporting": 3.0, "nodes_expected": 3.0}
	for k, w := range want {
		if canary[k] != w {
			t.Errorf("canary %s = %v, want %v", k, canary[k], w)
		}
	}
	if m, ok := canary["nodes_missing"].([]any); !ok || len(m) != 0 {
		t.Errorf("canary nodes_missing = %v, want []", canary["nodes_missing"])
	}
	for _, k := range []string{"error_rate_high", "p95_ms"} {
		if f, ok := canary[k].(float64); !ok || f <= 0 {
			t.Errorf("canary %s = %v, want a positive number", k, canary[k])
		}
	}
	if len(canary) != 9 {
		t.Errorf("canary has %d keys, want 9: %v", len(canary), canary)
	}
}

func TestNum(t *testing.T) {
	for f, want := range map[float64]string{
		0: "0", 0.05: "0.05", 100: "100", 88.648: "88.6", 4850: "4850", 4856.2: "4860", 1.0 / 3: "0.333", 1e-5: "0.00001", 12345678: "12300000",
	} {
		if got := num(f); got != want {
			t.Errorf("num(%v) = %q, want %q", f, got, want)
		}
	}
}
