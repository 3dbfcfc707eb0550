package slo

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// bucketOf is the bucket a request of duration d falls in: the first whose
// upper bound is not below d, the +Inf one after the last bound.
func bucketOf(d time.Duration) int {
	b := 0
	for b < len(Bounds) && d > Bounds[b] {
		b++
	}
	return b
}

// win is a window of n requests, errors of them failed, all taking latency.
func win(n, errors uint64, latency time.Duration) Window {
	w := Window{Requests: n, Errors: errors, Buckets: make([]uint64, len(Bounds)+1)}
	w.Buckets[bucketOf(latency)] = n
	return w
}

func TestBounds(t *testing.T) {
	for i := 1; i < len(Bounds); i++ {
		if Bounds[i] <= Bounds[i-1] {
			t.Errorf("bound %d (%v) is not above bound %d (%v)", i, Bounds[i], i-1, Bounds[i-1])
		}
	}
	// The runbook's thresholds must be bounds, so a P95 is judged on them
	// exactly rather than somewhere inside a bucket.
	for _, d := range []time.Duration{500 * time.Millisecond, 2 * time.Second} {
		if !slices.Contains(Bounds[:], d) {
			t.Errorf("%v is not a bucket bound", d)
		}
	}
}

func TestWindowAdd(t *testing.T) {
	const huge = math.MaxUint64 - 1
	tests := []struct {
		name      string
		into, add Window
		want      Window
	}{
		{"into empty", Window{}, Window{Requests: 3, Errors: 1, Buckets: []uint64{1, 2, 0}},
			Window{Requests: 3, Errors: 1, Buckets: []uint64{1, 2, 0}}},
		{"sums", Window{Requests: 10, Errors: 2, Buckets: []uint64{4, 6}}, Window{Requests: 5, Errors: 5, Buckets: []uint64{0, 5}},
			Window{Requests: 15, Errors: 7, Buckets: []uint64{4, 11}}},
		{"shorter other", Window{Requests: 1, Buckets: []uint64{0, 0, 1}}, Window{Requests: 1, Buckets: []uint64{1}},
			Window{Requests: 2, Buckets: []uint64{1, 0, 1}}},
		{"longer other", Window{Requests: 1, Buckets: []uint64{1}}, Window{Requests: 1, Buckets: []uint64{0, 0, 1}},
			Window{Requests: 2, Buckets: []uint64{1, 0, 1}}},
		{"saturates", Window{Requests: huge, Errors: huge, Buckets: []uint64{huge}}, Window{Requests: 5, Errors: 5, Buckets: []uint64{5}},
			Window{Requests: math.MaxUint64, Errors: math.MaxUint64, Buckets: []uint64{math.MaxUint64}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addBuckets := slices.Clone(tt.add.Buckets)
			got := tt.into
			got.Add(tt.add)
			if got.Requests != tt.want.Requests || got.Errors != tt.want.Errors || !slices.Equal(got.Buckets, tt.want.Buckets) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
			if !slices.Equal(tt.add.Buckets, addBuckets) {
				t.Errorf("Add changed the added window's buckets: %v, was %v", tt.add.Buckets, addBuckets)
			}
			// The merged buckets must not share memory with the added ones.
			if len(got.Buckets) > 0 && len(tt.add.Buckets) > 0 && &got.Buckets[0] == &tt.add.Buckets[0] {
				t.Error("the merged window shares its buckets with the added one")
			}
		})
	}
}

// TestWindowAddMergesNodes merges per-node windows as the leader does and
// checks that the merged P95 is the P95 of all requests together.
func TestWindowAddMergesNodes(t *testing.T) {
	var merged Window
	for _, w := range []Window{win(90, 1, 3*time.Millisecond), win(5, 0, 3*time.Millisecond), win(5, 2, 7*time.Millisecond)} {
		merged.Add(w)
	}
	if merged.Requests != 100 || merged.Errors != 3 {
		t.Fatalf("merged %d requests, %d errors; want 100, 3", merged.Requests, merged.Errors)
	}
	// 95 requests up to 5 ms: the 95th is the last of the first bucket.
	if ms, ok := merged.P95(); !ok || ms != 5 {
		t.Errorf("P95 = %v, %v; want 5 ms", ms, ok)
	}
}

func TestP95(t *testing.T) {
	buckets := func(counts map[int]uint64) []uint64 {
		b := make([]uint64, len(Bounds)+1)
		for i, n := range counts {
			b[i] = n
		}
		return b
	}
	last := len(Bounds)
	tests := []struct {
		name    string
		buckets []uint64
		want    float64
		ok      bool
	}{
		{"no buckets", nil, 0, false},
		{"empty buckets", buckets(nil), 0, false},
		// Interpolation from 0 to 1 ms: the 95th of 100 is at 95 %.
		{"first bucket", buckets(map[int]uint64{0: 100}), 0.95, true},
		// 90 up to 1 ms, 10 in (1, 2.5]: the 95th is the 5th of those 10.
		{"second bucket", buckets(map[int]uint64{0: 90, 1: 10}), 1.75, true},
		// 90 up to 5 ms, 10 in (5, 10]: the 95th is the 5th of those 10.
		{"5 to 10 ms", buckets(map[int]uint64{2: 90, 3: 10}), 7.5, true},
		// 95 up to 2 s exactly: the 95th sits on the bound.
		{"on a bound", buckets(map[int]uint64{10: 95, 11: 5}), 2000, true},
		// All in (2 s, 5 s]: 2000 + 3000·0.95.
		{"slow", buckets(map[int]uint64{11: 150}), 4850, true},
		{"+Inf reports its lower bound", buckets(map[int]uint64{0: 1, last: 99}), float64(Bounds[last-1].Milliseconds()), true},
		{"buckets past +Inf count as +Inf", append(buckets(map[int]uint64{0: 10}), 90), float64(Bounds[last-1].Milliseconds()), true},
		{"fewer buckets than bounds", []uint64{0, 20}, 1 + 1.5*0.95, true},
		{"huge counts", buckets(map[int]uint64{0: math.MaxUint64, 1: math.MaxUint64}), 1 + 1.5*0.9, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := Window{Buckets: tt.buckets}.P95()
			if ok != tt.ok || math.Abs(got-tt.want) > 1e-9 {
				t.Errorf("P95 = %v, %v; want %v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

// TestP95Brackets checks P95 against the exact 95th percentile of random
// latencies: both must lie in the same bucket.
func TestP95Brackets(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		n := 1 + rng.IntN(2000)
		scale := time.Duration(1 + rng.IntN(int(3*time.Second)))
		lat := make([]time.Duration, n)
		w := Window{Requests: uint64(n), Buckets: make([]uint64, len(Bounds)+1)}
		for i := range lat {
			lat[i] = time.Duration(rng.ExpFloat64() * float64(scale))
			w.Buckets[bucketOf(lat[i])]++
		}
		slices.Sort(lat)
		// The smallest latency with at least 95 % of requests at or below it.
		exact := lat[int(math.Ceil(0.95*float64(n)))-1]
		got, ok := w.P95()
		if !ok {
			t.Fatalf("no P95 for %d requests", n)
		}
		b := bucketOf(exact)
		lower := 0.0
		if b > 0 {
			lower = millis(Bounds[b-1])
		}
		upper := lower // the +Inf bucket reports its lower bound
		if b < len(Bounds) {
			upper = millis(Bounds[b])
		}
		if got < lower || got > upper {
			t.Fatalf("%d requests: P95 %v ms outside (%v, %v], the bucket of the exact P95 %v", n, got, lower, upper, exact)
		}
	}
}

func TestWilson(t *testing.T) {
	tests := []struct {
		errors, n uint64
		low, high float64
	}{
		// Newcombe (1998), Statistics in Medicine 17, table II, method 3.
		{81, 263, 0.2553, 0.3662},
		{15, 148, 0.0624, 0.1605},
		{0, 20, 0, 0.1611},
		{1, 29, 0.0061, 0.1718},
		// The ends are exact.
		{30, 30, 0.8865, 1},
		{0, 0, 0, 1},
		{7, 5, 0.5655, 1}, // errors above n count as n
	}
	for _, tt := range tests {
		low, high := Wilson(tt.errors, tt.n)
		if math.Abs(low-tt.low) > 5e-5 || math.Abs(high-tt.high) > 5e-5 {
			t.Errorf("Wilson(%d, %d) = %.4f, %.4f; want %.4f, %.4f", tt.errors, tt.n, low, high, tt.low, tt.high)
		}
	}
}

// TestWilsonScore checks the definition: an interior bound p satisfies
// (p̂ − p)² = z²·p(1−p)/n, and the interval holds p̂ and mirrors itself.
func TestWilsonScore(t *testing.T) {
	for _, n := range []uint64{1, 2, 7, 30, 100, 1000, 1e6, 1e12} {
		for _, e := range []uint64{0, 1, n / 100, n / 3, n / 2, n - 1, n} {
			e = min(e, n)
			low, high := Wilson(e, n)
			p := float64(e) / float64(n)
			if !(0 <= low && low <= p && p <= high && high <= 1) {
				t.Fatalf("Wilson(%d, %d) = %v, %v does not hold %v inside [0, 1]", e, n, low, high, p)
			}
			for _, b := range []float64{low, high} {
				if b == 0 || b == 1 {
					continue
				}
				lhs, rhs := (p-b)*(p-b), z*z*b*(1-b)/float64(n)
				if math.Abs(lhs-rhs) > 1e-9*math.Max(rhs, 1e-12) {
					t.Errorf("Wilson(%d, %d): bound %v: (p̂−p)² = %v, z²p(1−p)/n = %v", e, n, b, lhs, rhs)
				}
			}
			mlow, mhigh := Wilson(n-e, n)
			if math.Abs(low-(1-mhigh)) > 1e-12 || math.Abs(high-(1-mlow)) > 1e-12 {
				t.Errorf("Wilson(%d, %d) = %v, %v is not the mirror of Wilson(%d, %d) = %v, %v", e, n, low, high, n-e, n, mlow, mhigh)
			}
		}
	}
}
