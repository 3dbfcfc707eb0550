package main

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/cbproxy/cbproxy/bench/internal/benchrun"
)

// goal is the bound on the p99 of a change: applied on every node of a
// three-node cluster (?wait=all) within 10 ms, on a single node within 5 ms.
func goal(nodes int) time.Duration {
	if nodes == 1 {
		return 5 * time.Millisecond
	}
	return 10 * time.Millisecond
}

// report holds the figures of one run.
type report struct {
	s           settings
	machine     benchrun.Machine
	follower    string
	changes     int
	calls       []time.Duration // ?wait=all call times of the confirmed changes, sorted
	unconfirmed int
	problems    []string // the first few, for the reader
	load        *loadSummary
	idle        *idleCPU // nil without -idle
}

type loadSummary struct {
	requests, failed, unsent int
	duration                 time.Duration
	failures                 map[string]int // failed requests by status or error
	staleAnswers             int            // see summarizeLoad
	staleSamples             []string       // the first few
}

func analyze(s settings, m benchrun.Machine, follower string, changes []change, lr loadResult) *report {
	rep := &report{s: s, machine: m, follower: follower, changes: len(changes)}
	for i, ch := range changes {
		if p := ch.problem(); p != "" {
			rep.unconfirmed++
			if len(rep.problems) < 5 {
				rep.problems = append(rep.problems, fmt.Sprintf("change %d (to %s): %s", i+1, ch.target, p))
			}
			continue
		}
		rep.calls = append(rep.calls, ch.end.Sub(ch.start))
	}
	slices.Sort(rep.calls)
	if s.rate > 0 {
		rep.load = summarizeLoad(changes, lr)
	}
	return rep
}

// summarizeLoad counts the load's failures, and its answers from the old
// pool to requests sent after the change's call had returned (and answered
// before the next change started): once ?wait=all has answered, every node
// must proxy with the new weights.
func summarizeLoad(changes []change, lr loadResult) *loadSummary {
	ls := &loadSummary{requests: len(lr.records), unsent: lr.unsent, duration: lr.duration, failures: map[string]int{}}
	for _, r := range lr.records {
		if r.fail != "" {
			ls.failed++
			ls.failures[r.fail]++
		}
	}
	for i, ch := range changes {
		if ch.problem() != "" {
			continue
		}
		var next time.Time // the next change's start; none after the last
		if i+1 < len(changes) {
			next = changes[i+1].start
		}
		for _, r := range lr.records {
			if r.fail == "" && r.pool != ch.target && !r.sent.Before(ch.end) && (next.IsZero() || r.recv.Before(next)) {
				ls.staleAnswers++
				if len(ls.staleSamples) < 5 {
					ls.staleSamples = append(ls.staleSamples, fmt.Sprintf("change %d (to %s): node%d answered from %s a request sent %s ms after the call returned",
						i+1, ch.target, r.node+1, r.pool, ms(r.sent.Sub(ch.end))))
				}
			}
		}
	}
	return ls
}

// percentile is the nearest-rank p-quantile (0 < p ≤ 1) of sorted values.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(i, 0)]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond)) }

func (rep *report) goalMet() bool {
	return rep.unconfirmed == 0 && percentile(rep.calls, 0.99) <= goal(rep.s.nodes)
}

// what names the measured call and where it was applied.
func (rep *report) what() string {
	if rep.s.nodes == 1 {
		return "PUT to the single node, applied on its data plane"
	}
	return "?wait=all call to follower " + rep.follower + ", applied on all 3 nodes"
}

// invalid says why the run does not show what ?wait=all promises, or "".
func (rep *report) invalid() string {
	var why []string
	if rep.unconfirmed > 0 {
		why = append(why, fmt.Sprintf("%d of %d changes were not confirmed on all %d nodes", rep.unconfirmed, rep.changes, rep.s.nodes))
	}
	if rep.load != nil && rep.load.staleAnswers > 0 {
		why = append(why, fmt.Sprintf("%d proxied answers came from the old pool after ?wait=all had returned: a node answered before its data plane applied the change", rep.load.staleAnswers))
	}
	return strings.Join(why, "; ")
}

func (rep *report) perSwitch() float64 {
	return float64(rep.load.failed) / float64(rep.changes)
}

func (rep *report) print(w io.Writer) {
	c := rep.calls
	fmt.Fprintf(w, "\n%s, %d changes (ms): p50 %s  p90 %s  p99 %s  max %s\n",
		rep.what(), rep.changes, ms(percentile(c, 0.5)), ms(percentile(c, 0.9)), ms(percentile(c, 0.99)), ms(percentile(c, 1)))
	fmt.Fprintf(w, "confirmed on all %d nodes (applied_on complete with ?wait=all, each proxy answered the new pool right after): %d of %d\n",
		rep.s.nodes, len(c), rep.changes)
	for _, p := range rep.problems {
		fmt.Fprintln(w, "  ", p)
	}
	verdict := "met"
	if !rep.goalMet() {
		verdict = "NOT met"
	}
	fmt.Fprintf(w, "goal p99 ≤ %s: %s\n", ms(goal(rep.s.nodes))+" ms", verdict)
	if rep.idle != nil {
		fmt.Fprintf(w, "idle, before the changes: the %d nodes used %s ms of CPU per second (%.1f %% of one core)\n", rep.s.nodes, ms(rep.idle.perSecond()), rep.idle.percent())
	}
	if ls := rep.load; ls != nil {
		fmt.Fprintf(w, "load: %d requests in %.1f s (%.0f req/s over %d nodes), %d failed = %.2f per switch; old-pool answers after a call returned: %d; not sent (every worker busy): %d\n",
			ls.requests, ls.duration.Seconds(), float64(ls.requests)/ls.duration.Seconds(), rep.s.nodes, ls.failed, rep.perSwitch(), ls.staleAnswers, ls.unsent)
		for _, f := range append(topFailures(ls.failures, 5), ls.staleSamples...) {
			fmt.Fprintln(w, "  ", f)
		}
	}
	fmt.Fprintln(w)
}

// topFailures lists the n most frequent failures, "count × what".
func topFailures(failures map[string]int, n int) []string {
	kinds := make([]string, 0, len(failures))
	for k := range failures {
		kinds = append(kinds, k)
	}
	slices.SortFunc(kinds, func(a, b string) int {
		return cmp.Or(cmp.Compare(failures[b], failures[a]), cmp.Compare(a, b))
	})
	var out []string
	for _, k := range kinds[:min(n, len(kinds))] {
		out = append(out, fmt.Sprintf("%d × %s", failures[k], k))
	}
	return out
}

// write puts the report in dir/propagation-<UTC time>.md.
func (rep *report) write(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	now := time.Now().UTC()
	name, title := "propagation-", "Weight propagation: a change sent to a follower, applied on all three nodes"
	if rep.s.nodes == 1 {
		name, title = "apply-", "Weight change on a single node: a PUT, applied on its data plane"
	}
	path := filepath.Join(dir, name+now.Format("2006-01-02T150405Z")+".md")
	var b bytes.Buffer
	m, s, c := rep.machine, rep.s, rep.calls
	fmt.Fprintf(&b, "# %s\n\n", title)
	fmt.Fprintf(&b, "- date: %s\n", now.Format(time.RFC3339))
	fmt.Fprintf(&b, "- command: `%s`\n", s.command)
	fmt.Fprintf(&b, "- machine: %d CPUs (%s), %s, benchmark built with %s\n", m.CPUs, m.Model, m.Kernel, runtime.Version())
	fmt.Fprintf(&b, "- binary: `%s`, git HEAD %s\n", m.Version, m.GitHead)
	fmt.Fprintf(&b, "- other work: the CPUs were %d %% busy in the second before the cluster started\n", m.Busy)
	if m.Busy > busyWarning {
		fmt.Fprintf(&b, "  **(other work above %d %% makes the tail figures, p99 and max, longer and noisier)**\n", busyWarning)
	}
	if s.nodes == 1 {
		fmt.Fprintf(&b, "- node: one `cbproxy run` process on loopback (`bootstrap`, ports from %d), one `cbproxy-backend` serving the pools blue and canary of the service `%s`\n", s.portBase, service)
		fmt.Fprintf(&b, "- changes: %d sequential `PUT /v1/services/%s/weights` (answered once the node's data plane switched), alternating canary=100 and blue=100, %s apart, after %d unmeasured ones; after each, one GET to the proxy must come from the new pool\n",
			rep.changes, service, s.gap, s.warmup)
	} else {
		fmt.Fprintf(&b, "- cluster: three `cbproxy run` processes on loopback (`bootstrap_expect 3`, ports from %d), one `cbproxy-backend` serving the pools blue and canary of the service `%s`\n", s.portBase, service)
		fmt.Fprintf(&b, "- changes: %d sequential `PUT /v1/services/%s/weights?wait=all` to follower %s, alternating canary=100 and blue=100, %s apart, after %d unmeasured ones; after each, one GET to each node's proxy must come from the new pool\n",
			rep.changes, service, rep.follower, s.gap, s.warmup)
	}
	if s.rate > 0 {
		fmt.Fprintf(&b, "- load: %d req/s of keep-alive GETs, round robin over the proxies, open loop with up to %d in flight, from %s before the first change to %s after the last\n",
			s.rate, loadWorkers, loadMargin, loadMargin)
	} else {
		fmt.Fprintf(&b, "- load: none (-rate 0)\n")
	}

	fmt.Fprintf(&b, "\n## Results\n\n| figure (ms) | p50 | p90 | p99 | max | changes |\n|---|---:|---:|---:|---:|---:|\n")
	fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %d |\n",
		rep.what(), ms(percentile(c, 0.5)), ms(percentile(c, 0.9)), ms(percentile(c, 0.99)), ms(percentile(c, 1)), len(c))
	verdict := "**met**"
	if !rep.goalMet() {
		verdict = "**not met**"
	}
	fmt.Fprintf(&b, "\n- goal, p99 ≤ %s ms: %s\n", ms(goal(s.nodes)), verdict)
	if s.nodes == 1 {
		fmt.Fprintf(&b, "- confirmed: %d of %d changes answered 200 with the new weights and the proxy answering from the new pool right after\n", len(c), rep.changes)
	} else {
		fmt.Fprintf(&b, "- confirmed: %d of %d changes had all three nodes in `applied_on`, none in `not_applied`, and each node's proxy answering from the new pool right after\n", len(c), rep.changes)
	}
	if rep.idle != nil {
		fmt.Fprintf(&b, "- idle, before the changes: the %d nodes used **%s ms of CPU per second** (%.1f %% of one core) over %.1f s with no load and no change\n",
			s.nodes, ms(rep.idle.perSecond()), rep.idle.percent(), rep.idle.wall.Seconds())
	}
	for _, p := range rep.problems {
		fmt.Fprintf(&b, "  - %s\n", p)
	}
	perSwitch := "–"
	if ls := rep.load; ls != nil {
		perSwitch = fmt.Sprintf("%.2f", rep.perSwitch())
		fmt.Fprintf(&b, "- load: %d requests in %.1f s (%.0f req/s), %d failed (non-200 or transport error) = **%s per switch**; old-pool answers to requests sent after a call had returned: %d; requests not sent (every worker busy): %d\n",
			ls.requests, ls.duration.Seconds(), float64(ls.requests)/ls.duration.Seconds(), ls.failed, perSwitch, ls.staleAnswers, ls.unsent)
		for _, f := range append(topFailures(ls.failures, 5), ls.staleSamples...) {
			fmt.Fprintf(&b, "  - %s\n", f)
		}
	}

	if why := rep.invalid(); why != "" {
		fmt.Fprintf(&b, "\n**These figures are not valid: %s.**\n", why)
	}

	fmt.Fprintf(&b, "\n## Compared with the peers\n\n")
	fmt.Fprintf(&b, "| system | how weights change | new weights apply after | failed requests per switch | source |\n|---|---|---|---:|---|\n")
	if s.nodes == 1 {
		fmt.Fprintf(&b, "| cbproxy, one node | `PUT …/weights`: Raft commit on one node, applied | p50 %s ms, p99 %s ms (max %s) | %s | this run, %d req/s |\n",
			ms(percentile(c, 0.5)), ms(percentile(c, 0.99)), ms(percentile(c, 1)), perSwitch, s.rate)
	} else {
		fmt.Fprintf(&b, "| cbproxy, 3 nodes | `PUT …/weights?wait=all` to a follower: Raft commit, then applied on every node | p50 %s ms, p99 %s ms (max %s) on all three | %s | this run, %d req/s |\n",
			ms(percentile(c, 0.5)), ms(percentile(c, 0.99)), ms(percentile(c, 1)), perSwitch, s.rate)
	}
	fmt.Fprintf(&b, "| HAProxy 2.6, one node | runtime API `set weight` | 5 ms (max 8) | 0 | measured earlier |\n")
	fmt.Fprintf(&b, "| Caddy 2.11.9, one node | `POST /load` with the whole config | 14 ms (max 24) | 2.4 | measured earlier |\n")
	fmt.Fprintf(&b, "| nginx 1.22, one node | rewrite the upstream file, `nginx -s reload` | 109 ms | 0.8 | measured earlier |\n")
	fmt.Fprintf(&b, "\nThe peers' figures were measured before cbproxy was written, on a similar 2-CPU machine, each peer alone on one node under 2,000 req/s over 64 keep-alive connections, 72 switches each: **not in this run**. The peers change one node and replicate nothing; cbproxy's figure is a Raft commit plus every node of the cluster applying it. Machines are noisy: compare figures taken side by side, not absolute numbers across runs.\n")

	if err := os.WriteFile(path+".tmp", b.Bytes(), 0o644); err != nil {
		return "", err
	}
	return path, os.Rename(path+".tmp", path)
}

// busyWarning is the share of CPU time used by other work above which the
// figures are marked as disturbed.
const busyWarning = 25
