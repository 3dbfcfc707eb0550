package slo

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// PoolFigures is a pool's line in a verdict: the measurements behind it
// (docs/api.md "How the SLO is judged"). Error rates are fractions
// (0.01 = 1 %); the low and high ends are the 95 % Wilson interval; P95ms is 0
// without requests. The figures are those of NodesReporting nodes out of
// NodesExpected; the others are named in NodesMissing.
type PoolFigures struct {
	Requests       uint64   `json:"requests"`
	Errors         uint64   `json:"errors"`
	ErrorRate      float64  `json:"error_rate"`
	ErrorRateLow   float64  `json:"error_rate_low"`
	ErrorRateHigh  float64  `json:"error_rate_high"`
	P95ms          float64  `json:"p95_ms"`
	NodesReporting int      `json:"nodes_reporting"`
	NodesExpected  int      `json:"nodes_expected"`
	NodesMissing   []string `json:"nodes_missing"`
}

// Nodes says whose figures a merged window holds.
type Nodes struct {
	// Reporting is how many nodes' figures are in the window.
	Reporting int
	// Missing names the nodes whose figures should be in the window but are
	// not: nodes that serve the service, or may (a node that does not answer
	// cannot say), and did not report.
	Missing []string
}

// Figures measures a merged window that nodes reported. Errors above the
// request count (a window no real node sends) count as the request count, so
// every figure stays a finite number in range.
func Figures(w Window, nodes Nodes) PoolFigures {
	f := PoolFigures{
		Requests: w.Requests, Errors: min(w.Errors, w.Requests),
		NodesReporting: nodes.Reporting, NodesExpected: max(nodes.Reporting, 0) + len(nodes.Missing),
		NodesMissing: append([]string{}, nodes.Missing...),
	}
	if f.Requests > 0 {
		f.ErrorRate = float64(f.Errors) / float64(f.Requests)
	}
	f.ErrorRateLow, f.ErrorRateHigh = Wilson(f.Errors, f.Requests)
	f.P95ms, _ = w.P95()
	return f
}

// Result is a verdict's outcome.
type Result string

// The outcomes of Judge.
const (
	// Pass: the target meets the advance thresholds; its step may move on.
	Pass Result = "pass"
	// Hold: not enough evidence either way (too little traffic, figures
	// between the thresholds, no data); the step waits.
	Hold Result = "hold"
	// Breach: the target breaks the rollback thresholds.
	Breach Result = "breach"
	// Inconclusive: the target breaks them, but so does the baseline, so the
	// fault is probably not the target's; the step waits.
	Inconclusive Result = "inconclusive"
)

// Verdict is one evaluation of the SLO, as the rollout body shows it.
type Verdict struct {
	Result Result `json:"result"`
	// Reason says why, in numbers, for humans.
	Reason string                 `json:"reason"`
	Pools  map[string]PoolFigures `json:"pools"`
	// Subject is what the verdict was about (the watcher's rollout or guard
	// key); not shown.
	Subject string `json:"-"`
}

// Judge applies the SLO (docs/caddyfile.md "SLO"; the rules in docs/api.md "How
// the SLO is judged") once to the pool gaining traffic (target) and the pool
// losing it (baseline; "" when there is none, e.g. the guard after a plain
// weights change). tNodes and bNodes say which nodes reported each window and
// which did not. Counting breaches in a row ("consecutive") is the caller's
// business.
//
//   - breach: the lower end of the target's 95 % error rate interval is above
//     the rollback error rate (a hard failure shows within a few dozen
//     requests, whatever min_requests says), or its P95 is above the rollback
//     P95 with at least min_requests requests; but if the baseline breaks the
//     same tests, inconclusive. The figures of the nodes that reported are
//     enough: the harm they show is real, whatever the others saw;
//   - pass: every node expected reported the target, with at least
//     min_requests requests, an observed error rate below the advance error
//     rate and a P95 below the advance P95;
//   - hold: anything else. No data (no node reported, or no requests) always
//     holds, and so do partial figures: missing figures are never read as
//     good ones, and the reason names the nodes that are missing.
//
// MinBreachErrors is the fewest failed requests an error-rate breach needs.
// With few requests the Wilson bound alone convicts on one failure (1 of 1 has
// a lower bound of 20.7 %), and that failure stays in the window for every
// "consecutive" evaluation after it; a hard failure at 20 requests a second
// reaches three errors in a fraction of a second.
const MinBreachErrors = 3

func Judge(s state.SLO, target string, tw Window, tNodes Nodes, baseline string, bw Window, bNodes Nodes) Verdict {
	t := measure(target, tw, tNodes)
	v := Verdict{Pools: map[string]PoolFigures{target: t.PoolFigures}}
	var b pool
	if baseline != "" {
		b = measure(baseline, bw, bNodes)
		v.Pools[baseline] = b.PoolFigures
	}
	switch {
	case tNodes.Reporting <= 0:
		v.Result, v.Reason = Hold, "hold: no data: no node reported"+t.missing("; ")
		return v
	case t.Requests == 0:
		v.Result, v.Reason = Hold, fmt.Sprintf("hold: no data: no request reached %s in the window", target)+t.missing("; ")
		return v
	}
	if why := t.breaches(s); why != "" {
		if baseline != "" && bNodes.Reporting > 0 {
			if bwhy := b.breaches(s); bwhy != "" {
				v.Result, v.Reason = Inconclusive, fmt.Sprintf("inconclusive: baseline failing: %s (%s breaches as well)", bwhy, target)
				return v
			}
		}
		v.Result, v.Reason = Breach, "breach: "+why
		return v
	}
	if len(t.NodesMissing) == 0 && t.enough(s) && t.ErrorRate < s.Advance.ErrorRate && t.latencyKnown && t.P95ms < s.Advance.P95ms {
		v.Result = Pass
		v.Reason = fmt.Sprintf("pass: error rate %s %% is below %s %% and p95 %s ms below %s ms, over %d requests",
			pct(t.ErrorRate), pct(s.Advance.ErrorRate), num(t.P95ms), num(s.Advance.P95ms), t.Requests)
		return v
	}
	v.Result, v.Reason = Hold, "hold: "+t.holds(s)
	return v
}

// pool is a pool's figures while it is judged.
type pool struct {
	name string
	PoolFigures
	// latencyKnown is false when the window's buckets are empty: a P95 of
	// 0 then means "unknown", not "fast".
	latencyKnown bool
}

func measure(name string, w Window, nodes Nodes) pool {
	_, known := w.P95()
	return pool{name: name, PoolFigures: Figures(w, nodes), latencyKnown: known}
}

// enough reports whether the window holds min_requests requests.
func (p pool) enough(s state.SLO) bool {
	return s.MinRequests <= 0 || p.Requests >= uint64(s.MinRequests)
}

// breaches says how p breaks the rollback thresholds, or "" if it does not.
func (p pool) breaches(s state.SLO) string {
	var why []string
	if p.Errors >= MinBreachErrors && p.ErrorRateLow > s.Rollback.ErrorRate {
		why = append(why, fmt.Sprintf("%s error rate %s %% (%d of %d requests failed) is above %s %% with 95 %% confidence (at least %s %%)",
			p.name, pct(p.ErrorRate), p.Errors, p.Requests, pct(s.Rollback.ErrorRate), pct(p.ErrorRateLow)))
	}
	if p.latencyKnown && p.P95ms > s.Rollback.P95ms && p.enough(s) {
		why = append(why, fmt.Sprintf("%s p95 %s ms is above %s ms (%d requests)",
			p.name, num(p.P95ms), num(s.Rollback.P95ms), p.Requests))
	}
	return strings.Join(why, " and ")
}

// holds says why p, which does not breach, does not pass either. The tests
// are negated ("not below") so that every way of missing a pass is named.
func (p pool) holds(s state.SLO) string {
	var why []string
	if m := p.missing(""); m != "" {
		why = append(why, m)
	}
	if !p.enough(s) {
		why = append(why, fmt.Sprintf("%d of the %d requests needed", p.Requests, s.MinRequests))
	}
	if !(p.ErrorRate < s.Advance.ErrorRate) {
		if p.ErrorRate > s.Rollback.ErrorRate {
			why = append(why, fmt.Sprintf("error rate %s %% is above %s %%, but not with 95 %% confidence (at least %s %%)",
				pct(p.ErrorRate), pct(s.Rollback.ErrorRate), pct(p.ErrorRateLow)))
		} else {
			why = append(why, fmt.Sprintf("error rate %s %% is between %s %% and %s %%",
				pct(p.ErrorRate), pct(s.Advance.ErrorRate), pct(s.Rollback.ErrorRate)))
		}
	}
	switch {
	case !p.latencyKnown:
		why = append(why, "no latency figures")
	case p.P95ms > s.Rollback.P95ms:
		// Not a breach, so from too few requests, which is said above.
		why = append(why, fmt.Sprintf("p95 %s ms is above %s ms", num(p.P95ms), num(s.Rollback.P95ms)))
	case !(p.P95ms < s.Advance.P95ms):
		why = append(why, fmt.Sprintf("p95 %s ms is between %s ms and %s ms",
			num(p.P95ms), num(s.Advance.P95ms), num(s.Rollback.P95ms)))
	}
	return strings.Join(why, "; ")
}

// missing names the nodes whose figures p lacks, after sep; "" when none
// is missing.
func (p pool) missing(sep string) string {
	if len(p.NodesMissing) == 0 {
		return ""
	}
	return fmt.Sprintf("%sno figures from %s (%d of %d nodes reported)",
		sep, strings.Join(p.NodesMissing, ", "), max(p.NodesReporting, 0), p.NodesExpected)
}

// pct writes a fraction as a percentage for a reason.
func pct(f float64) string { return num(100 * f) }

// num writes a figure for a reason with three significant digits and no
// exponent: 0.05, 88.6, 4850.
func num(f float64) string {
	r, _ := strconv.ParseFloat(strconv.FormatFloat(f, 'g', 3, 64), 64)
	return strconv.FormatFloat(r, 'f', -1, 64)
}
