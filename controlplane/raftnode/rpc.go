package raftnode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/cluster"
	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/hashicorp/raft"
)

// The node-to-node RPC methods, served on the cluster port.
const (
	rpcPropose     = "propose"      // a follower forwards a write to the leader
	rpcStatus      = "status"       // one node's view of itself (cluster status, readiness)
	rpcWaitApplied = "wait_applied" // ?wait=all: block until an index is applied
	rpcReadIndex   = "read_index"   // ?consistent: the leader's confirmed commit index
	rpcJoin        = "join"
	rpcRemove      = "remove"
	// Package rollouts serves its own methods on the same port
	// ("slo_windows_v2", "verdict").
)

// RPC error codes a caller may retry on another attempt or leader.
const (
	// CodeNotLeader answers a leader-only call on a follower; Forward
	// turns it into raft.ErrNotLeader.
	CodeNotLeader = "not_leader"
	codeNotFound  = "not_found"
	// codeUpgrade carries an UpgradeError; the follower answers it as the
	// leader would.
	codeUpgrade = "upgrade_in_progress"
)

// NodeStatus is one node's view of itself, as the status RPC answers it.
type NodeStatus struct {
	ID            string `json:"id"`
	State         string `json:"state"`
	AppliedIndex  uint64 `json:"applied_index"`
	CommitIndex   uint64 `json:"commit_index"`
	LastContactMs int64  `json:"last_contact_ms"`
	AdminAddr     string `json:"admin_addr"`
	// Capabilities is what this node's build applies; the leader writes
	// nothing a member lacks. Absent from builds before versioned commands.
	Capabilities *state.Capabilities `json:"capabilities,omitempty"`
	// Halted says why this node stopped applying the log ("" while it
	// applies).
	Halted string `json:"halted,omitempty"`
}

type waitRequest struct {
	Index     uint64 `json:"index"`
	TimeoutMs int64  `json:"timeout_ms"`
}

type waitResponse struct {
	Applied bool   `json:"applied"`
	Index   uint64 `json:"index"`
}

type removeRequest struct {
	ID    string `json:"id"`
	Actor string `json:"actor"`
}

func (n *Node) registerRPC() {
	n.cluster.Handle(rpcPropose, func(ctx context.Context, _ string, req json.RawMessage) (any, error) {
		// The command's JSON after its kind byte is its log entry.
		var head struct {
			Kind state.Kind `json:"kind"`
		}
		if err := json.Unmarshal(req, &head); err != nil {
			return nil, err
		}
		entry := append([]byte{byte(head.Kind)}, req...)
		// A follower of a newer build may send what this leader cannot
		// apply; decoding it would drop the fields it does not know, or
		// fail on its kind.
		if err := n.SelfLacks(entry); err != nil {
			return nil, rpcError(err)
		}
		cmd, err := state.Decode(entry)
		if err != nil {
			return nil, err
		}
		a, err := n.applyAsLeader(ctx, cmd)
		if err != nil {
			return nil, rpcError(err)
		}
		return a, nil
	})
	n.cluster.Handle(rpcStatus, func(context.Context, string, json.RawMessage) (any, error) {
		return n.localStatus(), nil
	})
	n.cluster.Handle(rpcWaitApplied, func(ctx context.Context, _ string, req json.RawMessage) (any, error) {
		var w waitRequest
		if err := json.Unmarshal(req, &w); err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(ctx, time.Duration(w.TimeoutMs)*time.Millisecond)
		defer cancel()
		ok := n.fsm.waitIndex(ctx, w.Index)
		return waitResponse{Applied: ok, Index: n.View().Index}, nil
	})
	n.cluster.Handle(rpcReadIndex, func(context.Context, string, json.RawMessage) (any, error) {
		idx, err := n.readIndexAsLeader()
		if err != nil {
			return nil, rpcError(err)
		}
		return idx, nil
	})
	n.cluster.Handle(rpcJoin, func(ctx context.Context, _ string, req json.RawMessage) (any, error) {
		var jr joinRequest
		if err := json.Unmarshal(req, &jr); err != nil {
			return nil, err
		}
		if n.raft.State() != raft.Leader {
			return nil, cluster.CodedError(CodeNotLeader, "not the leader")
		}
		err := n.join(ctx, jr.NodeInfo, jr.Actor)
		var ce *ConflictError
		if errors.As(err, &ce) {
			return nil, cluster.CodedError(ce.Code, ce.Msg)
		}
		return nil, err
	})
	n.cluster.Handle(rpcRemove, func(ctx context.Context, _ string, req json.RawMessage) (any, error) {
		var r removeRequest
		if err := json.Unmarshal(req, &r); err != nil {
			return nil, err
		}
		if n.raft.State() != raft.Leader {
			return nil, cluster.CodedError(CodeNotLeader, "not the leader")
		}
		err := n.remove(ctx, r.ID, r.Actor)
		if errors.Is(err, ErrNodeNotFound) {
			return nil, cluster.CodedError(codeNotFound, err.Error())
		}
		return nil, err
	})
}

// rpcError turns the leader-side errors a follower may retry, or answers as
// they are, into coded ones.
func rpcError(err error) error {
	var ue *UpgradeError
	if errors.As(err, &ue) {
		return cluster.CodedError(codeUpgrade, err.Error())
	}
	if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) ||
		errors.Is(err, raft.ErrLeadershipTransferInProgress) || errors.Is(err, raft.ErrEnqueueTimeout) {
		return cluster.CodedError(CodeNotLeader, err.Error())
	}
	return err
}

// Forward sends an RPC to the current leader. Without a leader, or when the
// leader says it no longer is one (CodeNotLeader), it returns
// raft.ErrNotLeader, which callers retry.
func (n *Node) Forward(ctx context.Context, method string, req, resp any) error {
	addr, id := n.raft.LeaderWithID()
	if id == "" || id == raft.ServerID(n.cfg.NodeID) {
		return raft.ErrNotLeader
	}
	ctx, cancel := context.WithTimeout(ctx, noLeaderHold+5*time.Second)
	defer cancel()
	err := n.cluster.Call(ctx, string(addr), method, req, resp)
	var re *cluster.RemoteError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &re):
		switch re.Code {
		case CodeNotLeader:
			return raft.ErrNotLeader
		case codeNotFound:
			return ErrNodeNotFound
		case state.CodeNodeRemoved, codeAddressTaken:
			return &ConflictError{Code: re.Code, Msg: re.Message}
		case codeUpgrade:
			return &UpgradeError{msg: re.Message}
		}
		return fmt.Errorf("leader %s: %s", id, re.Message)
	case ctx.Err() != nil:
		return err
	default:
		// The connection failed: the leader may be gone. Whether a forwarded
		// write was applied is unknown; its idempotency key makes the retry
		// safe.
		return raft.ErrNotLeader
	}
}

// localStatus is this node's own view of itself.
func (n *Node) localStatus() NodeStatus {
	caps := n.fsm.machine.Capabilities()
	st := NodeStatus{
		ID: n.cfg.NodeID, State: stateName(n.raft.State()), AppliedIndex: n.View().Index,
		CommitIndex: n.raft.CommitIndex(), AdminAddr: n.advertisedAdminAddr(), Capabilities: &caps,
	}
	if h := n.fsm.halt(); h != nil {
		st.State, st.Halted = "halted", h.String()
	}
	if n.raft.State() != raft.Leader {
		if lc := n.raft.LastContact(); !lc.IsZero() {
			st.LastContactMs = time.Since(lc).Milliseconds()
		} else {
			st.LastContactMs = -1
		}
	}
	return st
}

// readIndexAsLeader confirms leadership with a quorum and returns the index
// a linearizable read must see (Raft dissertation §6.4): the last command at
// or before the commit index. Not the commit index itself: the entries after
// that command are no-ops or configuration changes (a new leader's first
// entry is one), which the state machine never sees, so no reader could
// wait for the machine to reach them.
func (n *Node) readIndexAsLeader() (uint64, error) {
	if n.raft.State() != raft.Leader {
		return 0, raft.ErrNotLeader
	}
	idx := n.raft.CommitIndex()
	if err := n.raft.VerifyLeader().Error(); err != nil {
		return 0, err
	}
	return n.lastCommandAtOrBefore(idx)
}

// lastCommandAtOrBefore returns the index of the last command entry at or
// before idx. When the log holds none there (the commands are all in the
// snapshot the log was compacted to), the snapshot is this node's, taken
// from its state machine, which has therefore applied them: its index is the
// answer.
func (n *Node) lastCommandAtOrBefore(idx uint64) (uint64, error) {
	first, err := n.wal.FirstIndex()
	if err != nil {
		return 0, err
	}
	for i := idx; i >= first && i > 0; i-- {
		var l raft.Log
		if err := n.wal.GetLog(i, &l); err != nil {
			return 0, fmt.Errorf("reading log entry %d: %w", i, err)
		}
		if l.Type == raft.LogCommand {
			return i, nil
		}
	}
	return min(n.View().Index, idx), nil
}

// ConsistentRead waits until this node has applied everything the leader
// had committed when the read began, so the read that follows is
// linearizable. It asks a remote leader for its read index (an RPC).
func (n *Node) ConsistentRead(ctx context.Context) error {
	if err := n.haltedError(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*noLeaderHold)
	defer cancel()
	deadline := time.Now().Add(noLeaderHold)
	for {
		var idx uint64
		var err error
		if n.raft.State() == raft.Leader {
			idx, err = n.readIndexAsLeader()
		} else {
			err = n.Forward(ctx, rpcReadIndex, nil, &idx)
		}
		if err == nil {
			// The state machine, not Raft's applied index: Raft counts an
			// entry applied once it has handed it to the state machine,
			// which applies it a moment later on its own goroutine.
			if !n.fsm.waitIndex(ctx, idx) {
				return ctx.Err()
			}
			return nil
		}
		if !errors.Is(err, raft.ErrNotLeader) && !errors.Is(err, raft.ErrLeadershipLost) || time.Now().After(deadline) {
			return ErrNoLeader
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitAll waits (up to 5 s) until every node of the configuration has
// applied index and says which did (?wait=all, docs/api.md "Writes:
// versions, commit, idempotency"). It calls every other node.
func (n *Node) WaitAll(ctx context.Context, index uint64) (appliedOn, notApplied []string) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return nil, nil
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	appliedOn, notApplied = []string{}, []string{}
	for _, s := range f.Configuration().Servers {
		wg.Add(1)
		go func(s raft.Server) {
			defer wg.Done()
			ok := false
			if s.ID == raft.ServerID(n.cfg.NodeID) {
				ok = n.fsm.waitIndex(ctx, index)
			} else {
				var resp waitResponse
				dl, _ := ctx.Deadline()
				err := n.cluster.Call(ctx, string(s.Address), rpcWaitApplied, waitRequest{Index: index, TimeoutMs: time.Until(dl).Milliseconds()}, &resp)
				ok = err == nil && resp.Applied
			}
			mu.Lock()
			if ok {
				appliedOn = append(appliedOn, string(s.ID))
			} else {
				notApplied = append(notApplied, string(s.ID))
			}
			mu.Unlock()
		}(s)
	}
	wg.Wait()
	sort.Strings(appliedOn)
	sort.Strings(notApplied)
	return appliedOn, notApplied
}
