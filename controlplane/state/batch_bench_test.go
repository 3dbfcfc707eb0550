package state

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkApplySeeds applies the Caddyfile seeds of 1,000 services (3
// pools x 2 backends), as a start does: one command each, in batches of 64
// (Raft's MaxAppendEntries). ns/op is for all 1,000.
func BenchmarkApplySeeds(b *testing.B) {
	const services = 1000
	var entries []Entry
	for i := range services {
		spec := ServiceSpec{Pools: map[string]PoolSpec{}, Weights: Weights{"blue": 5000, "canary": 2500, "green": 2500}}
		for j, pool := range []string{"blue", "canary", "green"} {
			spec.Pools[pool] = PoolSpec{Backends: []string{fmt.Sprintf("127.0.0.1:%d", 7711+(i*6+j*2)%6), fmt.Sprintf("127.0.0.1:%d", 7711+(i*6+j*2+1)%6)}}
		}
		name := fmt.Sprintf("s%04d", i)
		c := NewCommand(name, "seed", PutService{Spec: &spec, Seed: true})
		c.Reason = "seeded from the Caddyfile"
		c.Time = t0.Add(time.Duration(i) * time.Millisecond)
		c.IdemKey, c.IdemHash = "seed:"+name, "seed:"+name
		data, err := Encode(c)
		if err != nil {
			b.Fatal(err)
		}
		entries = append(entries, Entry{Index: uint64(i + 1), Data: data})
	}
	b.ReportAllocs()
	for b.Loop() {
		m := NewMachine(Options{})
		for k := 0; k < len(entries); k += 64 {
			m.ApplyBatch(entries[k:min(k+64, len(entries))])
		}
	}
}
