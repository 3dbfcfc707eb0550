package slo

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// fuzzBuckets reads buckets as 8-byte little-endian counts, any number of
// them: windows come from other nodes and may be of any shape.
func fuzzBuckets(b []byte) []uint64 {
	var out []uint64
	for ; len(b) >= 8; b = b[8:] {
		out = append(out, binary.LittleEndian.Uint64(b))
	}
	return out
}

func bucketBytes(w Window) []byte {
	var b []byte
	for _, n := range w.Buckets {
		b = binary.LittleEndian.AppendUint64(b, n)
	}
	return b
}

// FuzzJudge judges random windows under random thresholds: no panic, every
// figure a finite number in range (the verdict must marshal to JSON), and
// no pass or breach without the evidence the rules ask for.
func FuzzJudge(f *testing.F) {
	seed := func(t Window, tNodes int, baseline string, b Window, bNodes int, s state.SLO, missing uint8) {
		f.Add(t.Requests, t.Errors, bucketBytes(t), tNodes, baseline, b.Requests, b.Errors, bucketBytes(b), bNodes,
			s.Advance.ErrorRate, s.Advance.P95ms, s.Rollback.ErrorRate, s.Rollback.P95ms, s.MinRequests, missing)
	}
	d := state.DefaultSLO
	seed(win(30, 30, 30*time.Millisecond), 3, "", Window{}, 0, d, 0)
	seed(win(50, 0, 30*time.Millisecond), 3, "blue", win(5000, 0, 30*time.Millisecond), 3, d, 0)
	seed(win(400, 20, 30*time.Millisecond), 3, "blue", win(4000, 200, time.Second), 3, d, 0)
	seed(win(10000, 5, 30*time.Millisecond), 3, "blue", win(100000, 2, time.Second), 3, d, 0)
	seed(win(150, 0, 3*time.Second), 1, "", Window{}, 0, d, 0)
	seed(win(20, 0, 20*time.Second), 1, "blue", Window{}, 2, d, 0)
	seed(win(10000, 0, 30*time.Millisecond), 2, "blue", win(10000, 0, 30*time.Millisecond), 2, d, 1)
	seed(win(400, 20, 30*time.Millisecond), 1, "blue", win(4000, 0, time.Second), 1, d, 2)
	// Every way to hold: no node reported, no request, an error rate
	// between the thresholds, above the rollback one on too few errors to
	// be sure, no latency figures, a P95 between the thresholds.
	seed(win(200, 0, 30*time.Millisecond), 0, "", Window{}, 0, d, 0)
	seed(Window{}, 3, "blue", win(200, 0, 30*time.Millisecond), 3, d, 0)
	seed(win(1000, 5, 30*time.Millisecond), 3, "", Window{}, 0, d, 0)
	seed(win(50, 1, 30*time.Millisecond), 3, "", Window{}, 0, d, 0)
	seed(Window{Requests: 200}, 3, "", Window{}, 0, d, 0)
	seed(win(200, 0, time.Second), 3, "", Window{}, 0, d, 0)
	seed(Window{Requests: math.MaxUint64, Errors: math.MaxUint64, Buckets: []uint64{math.MaxUint64, 1}}, 1, "blue", Window{Requests: 3}, -1,
		state.SLO{Advance: state.Thresholds{ErrorRate: math.NaN(), P95ms: math.Inf(1)}, MinRequests: -5}, 3)

	f.Fuzz(func(t *testing.T, tReq, tErr uint64, tBuckets []byte, tNodes int, baseline string, bReq, bErr uint64, bBuckets []byte, bNodes int,
		advRate, advP95, rbRate, rbP95 float64, minReq int, missing uint8) {
		s := state.SLO{
			Advance:     state.Thresholds{ErrorRate: advRate, P95ms: advP95},
			Rollback:    state.Thresholds{ErrorRate: rbRate, P95ms: rbP95},
			MinRequests: minReq,
		}
		tw := Window{Requests: tReq, Errors: tErr, Buckets: fuzzBuckets(tBuckets)}
		bw := Window{Requests: bReq, Errors: bErr, Buckets: fuzzBuckets(bBuckets)}
		const target = "canary"
		if baseline == target {
			baseline = ""
		}
		// The nodes expected that did not report: the same for both pools,
		// as the watcher judges them from one round of answers.
		var absent []string
		for i := range missing % 8 {
			absent = append(absent, fmt.Sprintf("node%d", i+1))
		}
		v := Judge(s, target, tw, Nodes{Reporting: tNodes, Missing: absent}, baseline, bw, Nodes{Reporting: bNodes, Missing: absent})

		if _, err := json.Marshal(v); err != nil {
			t.Fatalf("verdict does not marshal: %v", err)
		}
		for name, p := range v.Pools {
			for _, x := range []float64{p.ErrorRate, p.ErrorRateLow, p.ErrorRateHigh} {
				if !(0 <= x && x <= 1) {
					t.Fatalf("%s: a rate is %v: %+v", name, x, p)
				}
			}
			if !(p.ErrorRateLow <= p.ErrorRate && p.ErrorRate <= p.ErrorRateHigh) {
				t.Fatalf("%s: rate outside its interval: %+v", name, p)
			}
			if !(p.P95ms >= 0) || math.IsInf(p.P95ms, 0) || p.Errors > p.Requests {
				t.Fatalf("%s: bad figures %+v", name, p)
			}
		}
		tf := v.Pools[target]
		if baseline != "" && len(v.Pools) != 2 || baseline == "" && len(v.Pools) != 1 {
			t.Fatalf("pools %v for baseline %q", v.Pools, baseline)
		}
		if !strings.HasPrefix(v.Reason, string(v.Result)+": ") || len(v.Reason) <= len(v.Result)+2 {
			t.Fatalf("reason %q for result %q", v.Reason, v.Result)
		}
		enough := minReq <= 0 || tReq >= uint64(minReq)
		switch v.Result {
		case Pass:
			if tNodes <= 0 || tReq == 0 || !enough || len(absent) > 0 {
				t.Fatalf("pass from %d requests on %d nodes (%d missing), min_requests %d", tReq, tNodes, len(absent), minReq)
			}
			if !(tf.ErrorRate < advRate && tf.P95ms < advP95) {
				t.Fatalf("pass with %+v against advance %v, %v", tf, advRate, advP95)
			}
		case Breach, Inconclusive:
			if tNodes <= 0 || tReq == 0 {
				t.Fatalf("%s without data: %+v", v.Result, tf)
			}
			if !(tf.ErrorRateLow > rbRate || tf.P95ms > rbP95 && enough) {
				t.Fatalf("%s with %+v against rollback %v, %v, min_requests %d", v.Result, tf, rbRate, rbP95, minReq)
			}
			if v.Result == Inconclusive && (baseline == "" || bNodes <= 0) {
				t.Fatalf("inconclusive without a baseline that reported")
			}
		case Hold:
			for _, node := range absent {
				if !strings.Contains(v.Reason, node) {
					t.Fatalf("hold %q does not name the missing %s", v.Reason, node)
				}
			}
		default:
			t.Fatalf("result %q", v.Result)
		}
	})
}
