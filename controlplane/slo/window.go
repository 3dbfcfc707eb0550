// Package slo measures a pool's traffic in windows and judges it against a
// service's SLO (docs/caddyfile.md "SLO"). It is pure: no I/O, no clock, no
// Caddy. The data plane fills windows on every node; the leader merges them and
// judges.
package slo

import (
	"math"
	"math/bits"
	"time"
)

// Bounds are the latency histogram's upper bounds (the +Inf bucket is extra);
// proxymod's counters use the same ones. They include the default SLO's thresholds
// (500 ms, 2 s) so that a P95 is judged against them exactly, and 1 ms and
// 2.5 ms so that a backend answering in 1–5 ms is told from one at 5 ms. An
// array, not a slice, so that counters can be fixed-size arrays of
// len(Bounds)+1. Nodes exchange windows as bucket counts, so a change here
// renames the windows RPC (rpcWindows in controlplane/rollouts).
var Bounds = [...]time.Duration{
	time.Millisecond, 2500 * time.Microsecond,
	5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second,
}

// Window is one pool's traffic over a time window, on one node or merged.
type Window struct {
	Requests uint64 `json:"requests"`
	// Errors are 5xx answers and proxy errors (no backend answered).
	Errors uint64 `json:"errors"`
	// Buckets has len(Bounds)+1 per-bucket (not cumulative) counts of the
	// time to the response header; the last is +Inf.
	Buckets []uint64 `json:"buckets"`
}

// Add merges o into w. Counts saturate instead of wrapping, so a window from a
// confused or hostile node cannot turn many errors into few. Buckets grow to
// the longer of the two (into a new slice, never into o's).
func (w *Window) Add(o Window) {
	w.Requests = addSat(w.Requests, o.Requests)
	w.Errors = addSat(w.Errors, o.Errors)
	if len(w.Buckets) < len(o.Buckets) {
		grown := make([]uint64, len(o.Buckets))
		copy(grown, w.Buckets)
		w.Buckets = grown
	}
	for i, n := range o.Buckets {
		w.Buckets[i] = addSat(w.Buckets[i], n)
	}
}

func addSat(a, b uint64) uint64 {
	sum, carry := bits.Add64(a, b, 0)
	if carry != 0 {
		return math.MaxUint64
	}
	return sum
}

// P95 is the 95th percentile of the window's latency in milliseconds, by
// linear interpolation inside the bucket that holds it (as Prometheus's
// histogram_quantile does; the first bucket starts at 0). When it falls in the
// +Inf bucket it is reported as that bucket's lower bound, the largest bound:
// the true value is at least that. ok is false when the buckets hold no
// requests. Buckets past the +Inf one count as +Inf.
func (w Window) P95() (ms float64, ok bool) {
	// Sums in float64: exact enough, and no overflow whatever the counts.
	var total float64
	for _, n := range w.Buckets {
		total += float64(n)
	}
	if total == 0 {
		return 0, false
	}
	rank := 0.95 * total
	var below float64
	for i, n := range w.Buckets {
		if i >= len(Bounds) {
			break
		}
		count := float64(n)
		if below+count >= rank {
			lower := 0.0
			if i > 0 {
				lower = millis(Bounds[i-1])
			}
			return lower + (millis(Bounds[i])-lower)*(rank-below)/count, true
		}
		below += count
	}
	return millis(Bounds[len(Bounds)-1]), true
}

func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// z is the standard normal quantile of a two-sided 95 % interval.
const z = 1.96

// Wilson is the 95 % Wilson score interval of an error rate with errors out of
// n requests. It stays inside [0, 1] and, unlike the normal approximation, is
// honest with few requests or no errors: 0 of 50 still allows up to 7 %.
// n = 0 knows nothing: 0, 1. Errors above n count as n.
func Wilson(errors, n uint64) (low, high float64) {
	if n == 0 {
		return 0, 1
	}
	errors = min(errors, n)
	fn := float64(n)
	p := float64(errors) / fn
	z2n := z * z / fn
	center := (p + z2n/2) / (1 + z2n)
	half := z * math.Sqrt(p*(1-p)/fn+z2n/(4*fn)) / (1 + z2n)
	low, high = max(0, center-half), min(1, center+half)
	// The bounds are exact at the ends; rounding must not make 0 of n look
	// like a few errors, or n of n like fewer than all.
	if errors == 0 {
		low = 0
	}
	if errors == n {
		high = 1
	}
	return low, high
}
