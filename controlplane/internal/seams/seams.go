// Package seams holds the powers tests need and no user has: elections in
// milliseconds, a snapshot every few entries, a tiny event trail, an older
// build's state machine, shorter admin limits, a hook in the SLO watcher.
// Only packages under controlplane can import it, so none of these is part
// of the control plane's API; production code leaves them zero.
package seams

import (
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/hashicorp/raft"
)

// Raft overrides hashicorp/raft's timings and cbproxy's snapshot and event
// trail defaults; a zero field keeps the default.
type Raft struct {
	HeartbeatTimeout time.Duration
	ElectionTimeout  time.Duration
	LeaderLease      time.Duration
	// CommitTimeout is how long an idle leader waits before it sends
	// followers an AppendEntries that carries its commit index (default
	// 10 ms); a long one shows what else tells them.
	CommitTimeout     time.Duration
	SnapshotThreshold uint64 // default 1024 entries
	TrailingLogs      uint64 // default 4096 entries
	// MaxEvents is how many events the trail keeps; zero takes 10,000.
	MaxEvents int
	// WithoutKinds and WithoutFields make the node apply like an older
	// build that lacks them (state.Options), so tests run mixed-version
	// clusters in one process.
	WithoutKinds  []state.Kind
	WithoutFields []string
}

// RaftOf returns the hashicorp/raft instance of a *raftnode.Node, for tests
// that must act on Raft directly: write an entry no leader would accept,
// move leadership to a chosen node, take a snapshot now. Package raftnode
// sets it when it is initialised (it imports this package, so the type
// cannot be named here).
var RaftOf func(node any) *raft.Raft

// SetBeforeCommit makes a *rollouts.Watcher call hook between a decision
// and its commit: the moment an operator's pause or resume can land in.
// Package rollouts sets it when it is initialised.
var SetBeforeCommit func(watcher any, hook func(state.Command))
