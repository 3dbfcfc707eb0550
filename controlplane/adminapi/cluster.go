package adminapi

import (
	"errors"
	"fmt"
	"net/http"

	"go.uber.org/zap"

	"github.com/cbproxy/cbproxy/controlplane/cluster"
	"github.com/cbproxy/cbproxy/controlplane/raftnode"
	"github.com/cbproxy/cbproxy/controlplane/state"
)

func (a *Server) getCluster(w http.ResponseWriter, r *http.Request, _ string) {
	writeJSON(w, http.StatusOK, a.Node.ClusterStatus(r.Context()))
}

// clusterCall authorizes a membership call: a peer signs it with the cluster
// secret, an operator sends an admin token. Either way the caller is
// authenticated before its body is read: a signed call's header carries the
// body's digest, checked once the body is in. It writes the error itself.
func (a *Server) clusterCall(w http.ResponseWriter, r *http.Request, dst any, peersOnly bool) (actor string, ok bool) {
	var raw []byte
	switch {
	case cluster.IsSignedCall(r):
		// A bad signature never falls back to the loopback rule.
		digest, err := a.Node.VerifyClusterCall(r)
		if err != nil {
			dropUnreadBody(w, r)
			writeError(w, http.StatusUnauthorized, "unauthorized", "signed cluster call refused: "+err.Error())
			return "", false
		}
		if raw, ok = readRaw(w, r); !ok {
			return "", false
		}
		if !cluster.CheckSignedBody(raw, digest) {
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

func (a *Server) postJoin(w http.ResponseWriter, r *http.Request) {
	var body raftnode.JoinBody
	actor, ok := a.clusterCall(w, r, &body, false)
	if !ok {
		return
	}
	ni := state.NodeInfo{ID: body.NodeID, ClusterAddr: body.ClusterAddr, AdminAddr: body.AdminAddr}
	if err := state.NewCommand("", "", state.NodeJoin{Node: &ni}).Validate(); err != nil {
		writeError(w, http.StatusBadRequest, "invalid", err.Error())
		return
	}
	if err := a.Node.Join(r.Context(), ni, actor); err != nil {
		a.membershipError(w, err)
		return
	}
	a.writeMembership(w, r)
}

func (a *Server) postNotify(w http.ResponseWriter, r *http.Request) {
	var body raftnode.JoinBody
	if _, ok := a.clusterCall(w, r, &body, true); !ok {
		return
	}
	ni := state.NodeInfo{ID: body.NodeID, ClusterAddr: body.ClusterAddr, AdminAddr: body.AdminAddr}
	if err := state.NewCommand("", "", state.NodeJoin{Node: &ni}).Validate(); err != nil {
		writeError(w, http.StatusBadRequest, "invalid", err.Error())
		return
	}
	a.Node.Notify(ni)
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (a *Server) deleteNode(w http.ResponseWriter, r *http.Request, actor string) {
	id := r.PathValue("id")
	err := a.Node.Remove(r.Context(), id, actor)
	if errors.Is(err, raftnode.ErrNodeNotFound) {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("node %q is not a member; GET /v1/cluster lists them", id))
		return
	}
	if err != nil {
		a.membershipError(w, err)
		return
	}
	a.writeMembership(w, r)
}

func (a *Server) membershipError(w http.ResponseWriter, err error) {
	var ce *raftnode.ConflictError
	if errors.As(err, &ce) {
		writeError(w, http.StatusConflict, ce.Code, ce.Msg)
		return
	}
	var upgrade *raftnode.UpgradeError
	if errors.Is(err, raftnode.ErrNoLeader) || errors.As(err, &upgrade) || errors.Is(err, raftnode.ErrHalted) {
		writeProposeError(w, err)
		return
	}
	writeError(w, http.StatusBadRequest, "invalid", err.Error())
}

// writeMembership answers a join or a removal with the cluster body once
// this node has applied everything the leader committed: a follower that
// forwarded the change would otherwise list the nodes from before it.
func (a *Server) writeMembership(w http.ResponseWriter, r *http.Request) {
	if err := a.Node.ConsistentRead(r.Context()); err != nil {
		a.log().Debug("membership answer may lag the leader", zap.Error(err))
	}
	writeJSON(w, http.StatusOK, a.Node.ClusterStatus(r.Context()))
}
