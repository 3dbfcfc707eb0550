package controlplane

import (
	"net/http"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
)

// clusterBody is the answer of GET /v1/cluster (CONTRACT §4).
type clusterBody struct {
	Leader           string        `json:"leader"`
	Term             uint64        `json:"term"`
	CommitIndex      uint64        `json:"commit_index"`
	FailureTolerance int           `json:"failure_tolerance"`
	Nodes            []clusterNode `json:"nodes"`
}

type clusterNode struct {
	ID            string `json:"id"`
	ClusterAddr   string `json:"cluster_addr"`
	AdminAddr     string `json:"admin_addr"`
	State         string `json:"state"`
	Voter         bool   `json:"voter"`
	LastContactMs int64  `json:"last_contact_ms"`
	AppliedIndex  uint64 `json:"applied_index"`
}

func (a *adminServer) getCluster(w http.ResponseWriter, r *http.Request, _ string) {
	writeJSON(w, http.StatusOK, a.n.clusterStatus())
}

func (n *Node) clusterStatus() clusterBody {
	_, leader := n.raft.LeaderWithID()
	term, _ := strconv.ParseUint(n.raft.Stats()["term"], 10, 64)
	b := clusterBody{Leader: string(leader), Term: term, CommitIndex: n.raft.CommitIndex(), Nodes: []clusterNode{}}
	fut := n.raft.GetConfiguration()
	if fut.Error() != nil {
		return b
	}
	voters := 0
	for _, s := range fut.Configuration().Servers {
		node := clusterNode{ID: string(s.ID), ClusterAddr: string(s.Address), Voter: s.Suffrage == raft.Voter, State: "unknown"}
		if node.Voter {
			voters++
		}
		if s.ID == raft.ServerID(n.cfg.NodeID) {
			node.AdminAddr = n.AdminAddr()
			node.State = stateName(n.raft.State())
			node.AppliedIndex = n.raft.AppliedIndex()
			if n.raft.State() != raft.Leader {
				if lc := n.raft.LastContact(); !lc.IsZero() {
					node.LastContactMs = time.Since(lc).Milliseconds()
				}
			}
		} else if s.ID == leader {
			node.State = "leader"
		}
		b.Nodes = append(b.Nodes, node)
	}
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
