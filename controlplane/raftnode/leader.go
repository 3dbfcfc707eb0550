package raftnode

import (
	"maps"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// leaderWatch wakes writes waiting for a leader as soon as Raft reports a
// new one, instead of at their next retry (Propose backs off up to 200 ms:
// at a start, the Caddyfile's seeds are proposed before the node has
// elected itself, and fixed back-offs cost the first 140 ms of seeding).
type leaderWatch struct {
	mu      sync.Mutex
	changed chan struct{} // closed and replaced at each leader change
}

func newLeaderWatch() *leaderWatch {
	return &leaderWatch{changed: make(chan struct{})}
}

// next returns a channel closed at the next leader change.
func (w *leaderWatch) next() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.changed
}

func (w *leaderWatch) wake() {
	w.mu.Lock()
	close(w.changed)
	w.changed = make(chan struct{})
	w.mu.Unlock()
}

// peerContact is what the leader's heartbeats say of each peer: since when
// they have failed without a success in between. Raft reports a failed
// heartbeat and its resumption only on the leader, so the map is cleared at
// every leader change.
type peerContact struct {
	mu      sync.Mutex
	failing map[string]time.Time // by peer ID: the first failure of the run
}

// UnreachablePeers lists, on the leader, the peers whose heartbeats fail,
// each with the time of the first failure since the last success (empty on
// a follower).
func (n *Node) UnreachablePeers() map[string]time.Time {
	if !n.IsLeader() {
		return nil
	}
	n.peers.mu.Lock()
	defer n.peers.mu.Unlock()
	return maps.Clone(n.peers.failing)
}

// watchRaft follows Raft's observations until the node stops: a leader
// change wakes the writes waiting for a leader (n.leaders), and the
// leader's heartbeats keep n.peers. Observations are dropped, never waited
// for, when the buffer is full; the buffer holds a burst of a few peers'
// heartbeats, and a pending leader change wakes the waiters anyway.
func (n *Node) watchRaft() {
	defer n.wg.Done()
	ch := make(chan raft.Observation, 16)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.FailedHeartbeatObservation, raft.ResumedHeartbeatObservation, raft.LeaderObservation:
			return true
		}
		return false
	})
	n.raft.RegisterObserver(obs)
	defer n.raft.DeregisterObserver(obs)
	for {
		select {
		case <-n.done:
			return
		case o := <-ch:
			n.peers.mu.Lock()
			switch d := o.Data.(type) {
			case raft.FailedHeartbeatObservation:
				if _, known := n.peers.failing[string(d.PeerID)]; !known {
					n.peers.failing[string(d.PeerID)] = time.Now()
				}
			case raft.ResumedHeartbeatObservation:
				delete(n.peers.failing, string(d.PeerID))
			case raft.LeaderObservation:
				clear(n.peers.failing)
			}
			n.peers.mu.Unlock()
			if _, ok := o.Data.(raft.LeaderObservation); ok {
				n.leaders.wake()
			}
		}
	}
}
