package proxymod

import (
	"testing"
	"time"
)

func TestShardsFor(t *testing.T) {
	for procs, want := range map[int]int{1: 1, 2: 2, 3: 4, 4: 4, 5: 8, 8: 8, 64: 8} {
		if got := shardsFor(procs); got != want {
			t.Errorf("shardsFor(%d) = %d, want %d", procs, got, want)
		}
	}
}

// The counters are summed over every shard, whichever the records landed
// in, and recording allocates nothing.
func TestPoolStatsRecord(t *testing.T) {
	s := newPoolStats()
	const n = 1000
	allocs := testing.AllocsPerRun(n, func() {
		s.record(1, 3*time.Millisecond)
		s.displace()
	})
	if allocs != 0 {
		t.Errorf("record allocates %.1f times per request, want 0", allocs)
	}
	snap := s.snapshot()
	// AllocsPerRun runs the function once more to warm up.
	if snap.requests[1] != n+1 || snap.displaced != n+1 || snap.sum != (n+1)*3*time.Millisecond {
		t.Errorf("snapshot: %d requests, %d displaced, sum %v; want %d, %d, %v", snap.requests[1], snap.displaced, snap.sum, n+1, n+1, (n+1)*3*time.Millisecond)
	}
}
