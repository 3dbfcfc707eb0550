package raftnode

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/hashicorp/raft"
)

// ErrNoLeader means no leader could take the write in time; nothing was
// applied. The admin API answers 503 with Retry-After.
var ErrNoLeader = errors.New("no leader: the cluster has no quorum right now, nothing was applied; retry later")

// noLeaderHold is how long a write waits for a leader before ErrNoLeader
// (docs/api.md "Errors": up to 5 s).
const noLeaderHold = 5 * time.Second

// Applied is a committed command's outcome.
type Applied struct {
	Result state.Result
	Index  uint64 // Raft index of the entry
}

// Propose commits one command through Raft and returns the state machine's
// result. On a follower it forwards the command to the leader over the
// cluster port; the leader stamps its time into it. Every command gets an
// idempotency key (the caller's or a fresh one), so retrying after a lost
// leadership or a broken connection, whose outcome is unknown, can never apply
// it twice. Without a leader it retries for up to 5 s, then ErrNoLeader.
func (n *Node) Propose(ctx context.Context, cmd state.Command) (Applied, error) {
	if err := n.haltedError(); err != nil {
		return Applied{}, err
	}
	if cmd.IdemKey == "" {
		cmd.IdemKey = "auto:" + randomID()
		cmd.IdemHash = cmd.IdemKey
	}
	deadline := time.Now().Add(noLeaderHold)
	backoff := 20 * time.Millisecond
	for {
		// Taken before the attempt, so that a leader elected during it
		// wakes the wait below at once.
		leaderChanged := n.leaders.next()
		a, err := n.proposeOnce(ctx, cmd)
		if err == nil {
			// Answer only once this node applied the change too, so a client
			// that reads from the node it wrote to sees its write.
			wctx, cancel := context.WithTimeout(ctx, noLeaderHold)
			n.fsm.waitIndex(wctx, a.Index)
			cancel()
			return a, nil
		}
		retry := errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) ||
			errors.Is(err, raft.ErrLeadershipTransferInProgress) || errors.Is(err, raft.ErrEnqueueTimeout)
		if !retry {
			return Applied{}, err
		}
		if time.Now().Add(backoff).After(deadline) {
			return Applied{}, ErrNoLeader
		}
		select {
		case <-ctx.Done():
			return Applied{}, ctx.Err()
		case <-n.done:
			return Applied{}, errors.New("node is shutting down")
		case <-leaderChanged:
		case <-time.After(backoff):
		}
		if backoff < 200*time.Millisecond {
			backoff *= 2
		}
	}
}

func (n *Node) proposeOnce(ctx context.Context, cmd state.Command) (Applied, error) {
	if n.raft.State() == raft.Leader {
		return n.applyAsLeader(ctx, cmd)
	}
	var a Applied
	err := n.Forward(ctx, rpcPropose, cmd, &a)
	return a, err
}

// applyAsLeader applies a command on this node, which must be the leader,
// once every member can apply it (UpgradeError otherwise).
func (n *Node) applyAsLeader(ctx context.Context, cmd state.Command) (Applied, error) {
	if n.raft.State() != raft.Leader {
		return Applied{}, raft.ErrNotLeader
	}
	cmd.Time = time.Now().UTC()
	data, err := state.Encode(cmd)
	if err != nil {
		return Applied{}, fmt.Errorf("encoding command: %w", err)
	}
	if err := n.checkMembersApply(ctx, data); err != nil {
		return Applied{}, err
	}
	start := time.Now()
	f := n.raft.Apply(data, noLeaderHold)
	if err := f.Error(); err != nil {
		return Applied{}, err
	}
	n.metrics.applySeconds.Observe(time.Since(start).Seconds())
	n.announceCommit()
	res, ok := f.Response().(state.Result)
	if !ok {
		return Applied{}, fmt.Errorf("unexpected apply response %T", f.Response())
	}
	return Applied{Result: res, Index: f.Index()}, nil
}

// announceCommit wakes announceCommits: a write just committed here. It
// never blocks.
func (n *Node) announceCommit() {
	select {
	case n.committed <- struct{}{}:
	default: // a wake-up is pending; it announces this commit too
	}
}

// announceCommits tells followers at once that a write committed, so they
// apply it now rather than at the leader's next CommitTimeout tick (10 to
// 20 ms later): that wait was most of a ?wait=all write's time. Raft puts
// its commit index in every AppendEntries that replicates entries, but
// sends one only when the log grows or the tick fires (heartbeats carry
// no commit index). So after each write it appends a barrier, a no-op
// entry the state machine never sees, and Raft's replication of it
// carries the new commit index to every follower at once. The barrier is
// not waited for: the write has committed already, and a lost leadership
// only loses the announcement. Followers learn the barrier's own commit
// at the next tick, which no reader waits for (ConsistentRead waits for
// the last command, never a barrier). A cluster of one has no one to tell.
func (n *Node) announceCommits() {
	defer n.wg.Done()
	for {
		select {
		case <-n.done:
			return
		case <-n.committed:
		}
		if f := n.raft.GetConfiguration(); f.Error() != nil || len(f.Configuration().Servers) < 2 {
			continue
		}
		n.raft.Barrier(noLeaderHold)
	}
}

func randomID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
