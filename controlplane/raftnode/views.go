package raftnode

import (
	"context"
	"sync"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// views hands every new view to its subscribers (the data plane's routing
// tables, the health checker) and keeps the index all of them have seen:
// "applied" means the data plane switched, so waitIndex (?wait=all,
// read-your-writes, consistent reads) wakes only once every subscriber has
// returned.
type views struct {
	mu   sync.Mutex
	subs map[int]func(*state.View)
	next int
	// published is the index of the last view every subscriber has seen;
	// applied is closed and replaced each time it moves: waitIndex's wake-up.
	published uint64
	applied   chan struct{}
}

func newViews() *views {
	return &views{subs: map[int]func(*state.View){}, applied: make(chan struct{})}
}

// publish runs on Raft's FSM goroutine with each new view.
func (vs *views) publish(v *state.View) {
	vs.mu.Lock()
	subs := make([]func(*state.View), 0, len(vs.subs))
	for _, fn := range vs.subs {
		subs = append(subs, fn)
	}
	vs.mu.Unlock()
	for _, fn := range subs {
		fn(v)
	}
	// Only now, with the data plane's tables rebuilt, is the index applied
	// for waitIndex (?wait=all promises the proxy already uses it).
	vs.mu.Lock()
	vs.published = v.Index
	vs.mu.Unlock()
	vs.wake()
}

// wake wakes every waitIndex to look again.
func (vs *views) wake() {
	vs.mu.Lock()
	close(vs.applied)
	vs.applied = make(chan struct{})
	vs.mu.Unlock()
}

// nextWake returns a channel closed at the next wake.
func (vs *views) nextWake() <-chan struct{} {
	vs.mu.Lock()
	defer vs.mu.Unlock()
	return vs.applied
}

// waitIndex waits until index is published; false if ctx ended first or
// stopped says the machine will never get there.
func (vs *views) waitIndex(ctx context.Context, index uint64, stopped func() bool) bool {
	for {
		vs.mu.Lock()
		ch, published := vs.applied, vs.published
		vs.mu.Unlock()
		if published >= index {
			return true
		}
		if stopped() {
			return false
		}
		select {
		case <-ch:
		case <-ctx.Done():
			vs.mu.Lock()
			defer vs.mu.Unlock()
			return vs.published >= index
		}
	}
}

// subscribe calls fn with every view published from now on, and at once
// with the current one.
func (vs *views) subscribe(fn func(*state.View), current func() *state.View) func() {
	vs.mu.Lock()
	id := vs.next
	vs.next++
	vs.subs[id] = fn
	vs.mu.Unlock()
	fn(current())
	return func() {
		vs.mu.Lock()
		delete(vs.subs, id)
		vs.mu.Unlock()
	}
}
