package raftnode

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// ClusterStatus is the cluster as this node sees it: the answer of GET
// /v1/cluster (docs/api.md "Cluster").
type ClusterStatus struct {
	Leader           string          `json:"leader"`
	Term             uint64          `json:"term"`
	CommitIndex      uint64          `json:"commit_index"`
	FailureTolerance int             `json:"failure_tolerance"`
	Nodes            []ClusterMember `json:"nodes"`
}

type ClusterMember struct {
	ID            string `json:"id"`
	ClusterAddr   string `json:"cluster_addr"`
	AdminAddr     string `json:"admin_addr"`
	State         string `json:"state"`
	Voter         bool   `json:"voter"`
	LastContactMs int64  `json:"last_contact_ms"`
	AppliedIndex  uint64 `json:"applied_index"`
	// Halted says why the node stopped applying the log (state "halted").
	Halted string `json:"halted,omitempty"`
}

// ClusterStatus asks every node of the configuration for its own view (1 s
// each, in parallel); a node that does not answer shows as "unreachable".
func (n *Node) ClusterStatus(ctx context.Context) ClusterStatus {
	_, leader := n.raft.LeaderWithID()
	term, _ := strconv.ParseUint(n.raft.Stats()["term"], 10, 64)
	b := ClusterStatus{Leader: string(leader), Term: term, CommitIndex: n.raft.CommitIndex(), Nodes: []ClusterMember{}}
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return b
	}
	servers := f.Configuration().Servers
	b.Nodes = make([]ClusterMember, len(servers))
	voters := 0
	var wg sync.WaitGroup
	for i, s := range servers {
		if s.Suffrage == raft.Voter {
			voters++
		}
		b.Nodes[i] = ClusterMember{ID: string(s.ID), ClusterAddr: string(s.Address), AdminAddr: n.View().Nodes[string(s.ID)].AdminAddr, Voter: s.Suffrage == raft.Voter}
		wg.Add(1)
		go func(node *ClusterMember) {
			defer wg.Done()
			var st NodeStatus
			if node.ID == n.cfg.NodeID {
				st = n.localStatus()
			} else {
				cctx, cancel := context.WithTimeout(ctx, time.Second)
				defer cancel()
				if err := n.cluster.Call(cctx, node.ClusterAddr, rpcStatus, nil, &st); err != nil {
					node.State, node.LastContactMs = "unreachable", -1
					return
				}
			}
			node.State, node.AppliedIndex, node.LastContactMs, node.Halted = st.State, st.AppliedIndex, st.LastContactMs, st.Halted
			if st.AdminAddr != "" {
				node.AdminAddr = st.AdminAddr
			}
		}(&b.Nodes[i])
	}
	wg.Wait()
	if voters > 0 {
		b.FailureTolerance = (voters - 1) / 2
	}
	return b
}

func stateName(s raft.RaftState) string {
	switch s {
	case raft.Leader:
		return "leader"
	case raft.Follower:
		return "follower"
	case raft.Candidate:
		return "candidate"
	case raft.Shutdown:
		return "shutdown"
	}
	return "unknown"
}

// Status is this node's Raft as /health reports it.
type Status struct {
	State  string // leader, follower, candidate, shutdown
	Leader string // the leader's ID, "" when none is known
	// Applied is the state machine's index, never Raft's, which counts an
	// entry once handed to the FSM goroutine.
	Applied uint64
	// Halted is where and why the state machine stopped applying; nil while
	// it applies.
	Halted *Halt
}

// Status reads this node's Raft state without I/O.
func (n *Node) Status() Status {
	_, leader := n.raft.LeaderWithID()
	return Status{State: stateName(n.raft.State()), Leader: string(leader), Applied: n.View().Index, Halted: n.fsm.halt()}
}
