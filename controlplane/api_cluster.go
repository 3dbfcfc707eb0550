package controlplane

import (
	"context"
	"errors"
	"fmt"
	"go.uber.org/zap"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
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
	// Halted says why the node stopped applying the log (state "halted").
	Halted string `json:"halted,omitempty"`
}

func (a *adminServer) getCluster(w http.ResponseWriter, r *http.Request, _ string) {
	writeJSON(w, http.StatusOK, a.n.clusterStatus(r.Context()))
}

// clusterStatus asks every node of the configuration for its own view (1 s
// each, in parallel); a node that does not answer shows as "unreachable".
func (n *Node) clusterStatus(ctx context.Context) clusterBody {
	_, leader := n.raft.LeaderWithID()
	term, _ := strconv.ParseUint(n.raft.Stats()["term"], 10, 64)
	b := clusterBody{Leader: string(leader), Term: term, CommitIndex: n.raft.CommitIndex(), Nodes: []clusterNode{}}
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return b
	}
	servers := f.Configuration().Servers
	b.Nodes = make([]clusterNode, len(servers))
	voters := 0
	var wg sync.WaitGroup
	for i, s := range servers {
		if s.Suffrage == raft.Voter {
			voters++
		}
		b.Nodes[i] = clusterNode{ID: string(s.ID), ClusterAddr: string(s.Address), AdminAddr: n.View().Nodes[string(s.ID)].AdminAddr, Voter: s.Suffrage == raft.Voter}
		wg.Add(1)
		go func(node *clusterNode) {
			defer wg.Done()
			var st nodeStatus
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

// joinBody is the body of POST /v1/cluster/join and /v1/cluster/notify.
type joinBody struct {
	NodeID      string `json:"node_id"`
	ClusterAddr string `json:"cluster_addr"`
	AdminAddr   string `json:"admin_addr"`
}

// clusterCall authorizes a membership call: a peer signs it with the cluster
// secret, an operator sends an admin token. Either way the caller is
// authenticated before its body is read: a signed call's header carries the
// body's digest, checked once the body is in. It writes the error itself.
func (a *adminServer) clusterCall(w http.ResponseWriter, r *http.Request, dst any, peersOnly bool) (actor string, ok bool) {
	var raw []byte
	switch {
	case isSignedCall(r):
		// A bad signature never falls back to the loopback rule.
		digest, err := a.n.verifyClusterCall(r)
		if err != nil {
			dropUnreadBody(w, r)
			writeError(w, http.StatusUnauthorized, "unauthorized", "signed cluster call refused: "+err.Error())
			return "", false
		}
		if raw, ok = readRaw(w, r); !ok {
			return "", false
		}
		if !checkSignedBody(raw, digest) {
			writeError(w, http.StatusUnauthorized, "unauthorized", "signed cluster call refused: the body is not the one signed")
			return "", false
		}
		actor = state.ActorCluster
	case peersOnly:
		dropUnreadBody(w, r)
		writeError(w, http.StatusUnauthorized, "unauthorized", "this call is for cluster peers: sign it with the cluster secret")
		return "", false
	default:
		if actor, ok = a.authorize(w, r, RoleAdmin); !ok {
			return "", false
		}
		if raw, ok = readRaw(w, r); !ok {
			return "", false
		}
	}
	if dst != nil && !decodeBody(w, raw, dst, false) {
		return "", false
	}
	return actor, true
}

func (a *adminServer) postJoin(w http.ResponseWriter, r *http.Request) {
	var body joinBody
	actor, ok := a.clusterCall(w, r, &body, false)
	if !ok {
		return
	}
	ni := state.NodeInfo{ID: body.NodeID, ClusterAddr: body.ClusterAddr, AdminAddr: body.AdminAddr}
	if err := state.NewCommand("", "", state.NodeJoin{Node: &ni}).Validate(); err != nil {
		writeError(w, http.StatusBadRequest, "invalid", err.Error())
		return
	}
	join := func(ctx context.Context) error { return a.n.join(ctx, ni, actor) }
	var err error
	if actor == state.ActorCluster {
		// A peer that is still forming the cluster asks every node in turn:
		// answer at once when there is no leader yet, it asks again.
		if err = join(r.Context()); errors.Is(err, raft.ErrNotLeader) {
			err = ErrNoLeader
		}
	} else {
		err = a.n.retryOnLeader(r.Context(), join)
	}
	if err != nil {
		a.membershipError(w, err)
		return
	}
	a.writeMembership(w, r)
}

func (a *adminServer) postNotify(w http.ResponseWriter, r *http.Request) {
	var body joinBody
	if _, ok := a.clusterCall(w, r, &body, true); !ok {
		return
	}
	ni := state.NodeInfo{ID: body.NodeID, ClusterAddr: body.ClusterAddr, AdminAddr: body.AdminAddr}
	if err := state.NewCommand("", "", state.NodeJoin{Node: &ni}).Validate(); err != nil {
		writeError(w, http.StatusBadRequest, "invalid", err.Error())
		return
	}
	a.n.noteNotify(ni)
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (a *adminServer) deleteNode(w http.ResponseWriter, r *http.Request, actor string) {
	id := r.PathValue("id")
	err := a.n.retryOnLeader(r.Context(), func(ctx context.Context) error { return a.n.remove(ctx, id, actor) })
	if errors.Is(err, errNodeNotFound) {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("node %q is not a member; GET /v1/cluster lists them", id))
		return
	}
	if err != nil {
		a.membershipError(w, err)
		return
	}
	a.writeMembership(w, r)
}

func (a *adminServer) membershipError(w http.ResponseWriter, err error) {
	var mc *membershipConflict
	if errors.As(err, &mc) {
		writeError(w, http.StatusConflict, mc.code, mc.msg)
		return
	}
	var upgrade *UpgradeError
	if errors.Is(err, ErrNoLeader) || errors.As(err, &upgrade) || errors.Is(err, ErrHalted) {
		writeProposeError(w, err)
		return
	}
	writeError(w, http.StatusBadRequest, "invalid", err.Error())
}

// writeMembership answers a join or a removal with the cluster body once
// this node has applied everything the leader committed: a follower that
// forwarded the change would otherwise list the nodes from before it.
func (a *adminServer) writeMembership(w http.ResponseWriter, r *http.Request) {
	if err := a.n.consistentRead(r.Context()); err != nil {
		a.n.log().Debug("membership answer may lag the leader", zap.Error(err))
	}
	writeJSON(w, http.StatusOK, a.n.clusterStatus(r.Context()))
}

// retryOnLeader runs a leader-only operation, retrying while there is no
// leader (up to 5 s, then ErrNoLeader).
func (n *Node) retryOnLeader(ctx context.Context, op func(context.Context) error) error {
	deadline := time.Now().Add(noLeaderHold)
	for {
		err := op(ctx)
		if !errors.Is(err, raft.ErrNotLeader) && !errors.Is(err, raft.ErrLeadershipLost) {
			return err
		}
		if time.Now().After(deadline) {
			return ErrNoLeader
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
