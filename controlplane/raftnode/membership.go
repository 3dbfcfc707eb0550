package raftnode

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/cluster"
	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/hashicorp/raft"
	"go.uber.org/zap"
)

// openClusterPort listens on cluster_listen for Raft and the node-to-node RPC,
// authenticated with the cluster secret and, when configured, mutual TLS.
func (n *Node) openClusterPort() (*cluster.Transport, error) {
	auth, err := peerAuth(n.clusterSecret, n.cfg)
	if err != nil {
		return nil, err
	}
	t, err := cluster.Listen(cluster.Config{Listen: n.cfg.ClusterListen, Auth: auth, Logger: n.log().Named("cluster")})
	if err != nil {
		return nil, fmt.Errorf("cluster_listen %s: %w", n.cfg.ClusterListen, err)
	}
	return t, nil
}

// peerAuth is how a node with cfg and the cluster secret proves to its
// peers that it belongs.
func peerAuth(secret string, cfg Config) (cluster.Auth, error) {
	auth := cluster.Auth{Secret: secret}
	if cfg.ClusterTLSCert != "" {
		tc, err := clusterTLS(cfg)
		if err != nil {
			return cluster.Auth{}, err
		}
		auth.TLS = tc
	}
	return auth, nil
}

func clusterTLS(cfg Config) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(cfg.ClusterTLSCert, cfg.ClusterTLSKey)
	if err != nil {
		return nil, fmt.Errorf("loading cluster_tls certificate: %w", err)
	}
	caPEM, err := os.ReadFile(cfg.ClusterTLSCA)
	if err != nil {
		return nil, fmt.Errorf("reading cluster_tls CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("cluster_tls CA %s holds no PEM certificate", cfg.ClusterTLSCA)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// self is this node as its peers see it.
func (n *Node) self() state.NodeInfo {
	return state.NodeInfo{ID: n.cfg.NodeID, ClusterAddr: n.cluster.Addr(), AdminAddr: n.advertisedAdminAddr()}
}

// advertisedAdminAddr is the admin address peers and clients are given: the
// bound one, or for a wildcard admin_listen (0.0.0.0, [::]) the host of the
// cluster address with the admin port. Peers reach the cluster address, and
// a wildcard listener takes connections on that host too.
func (n *Node) advertisedAdminAddr() string {
	bound := n.cfg.AdminAddr
	host, port, err := net.SplitHostPort(bound)
	if err != nil {
		return bound
	}
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
		return bound
	}
	clusterHost, _, err := net.SplitHostPort(n.cluster.Addr())
	if err != nil {
		return bound
	}
	return net.JoinHostPort(clusterHost, port)
}

// maintainMembership forms or joins the cluster (bootstrap_expect / join) and
// keeps this node's addresses in the replicated node list. It is the rqlite
// bootstrapper's loop: join first (an existing cluster takes us), then announce
// ourselves; with bootstrap_expect, the node that has heard from enough peers
// bootstraps with exactly that set, which every peer computes alike.
func (n *Node) maintainMembership() {
	defer n.wg.Done()
	for {
		delay := 500*time.Millisecond + rand.N(500*time.Millisecond)
		if n.inCluster() {
			n.removedNotice.Store(nil)
			n.registerSelf()
			n.learnCapabilities()
			delay = 2 * time.Second
		} else if n.cfg.MultiNode() && !n.tryToJoin() {
			// Removed: only an operator takes it back; ask now and then,
			// so the refusal stays in the log and in readiness.
			delay = 5 * time.Second
		}
		select {
		case <-n.done:
			return
		case <-time.After(delay):
		}
	}
}

// inCluster reports whether Raft's configuration already holds this node.
func (n *Node) inCluster() bool {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, s := range f.Configuration().Servers {
		if s.ID == raft.ServerID(n.cfg.NodeID) {
			return true
		}
	}
	return false
}

// registerSelf records this node's addresses in the replicated state once a
// leader can take it (after a bootstrap, a join, or an address change).
func (n *Node) registerSelf() {
	me := n.self()
	if n.View().Nodes[me.ID] == me {
		return
	}
	if _, leader := n.raft.LeaderWithID(); leader == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := n.Propose(ctx, state.NewCommand("", state.ActorCluster, state.NodeJoin{Node: &me}))
	if err != nil {
		n.log().Debug("registering node", zap.Error(err))
	}
}

// tryToJoin asks each peer in join to add us; failing that, with
// bootstrap_expect, it announces us and bootstraps once enough nodes did.
// It returns false when the cluster refused us as a removed node.
func (n *Node) tryToJoin() bool {
	me := n.self()
	body, _ := json.Marshal(JoinBody{NodeID: me.ID, ClusterAddr: me.ClusterAddr, AdminAddr: me.AdminAddr})
	for _, peer := range n.cfg.Join {
		err := n.clusterPost(peer, "/v1/cluster/join", body)
		if err == nil {
			n.log().Info("joined the cluster", zap.String("via", peer))
			return true
		}
		var refused *peerRefusal
		if errors.As(err, &refused) && refused.code == state.CodeNodeRemoved {
			if old := n.removedNotice.Swap(&refused.msg); old == nil || *old != refused.msg {
				n.log().Warn("the cluster refuses this node: it was removed", zap.String("via", peer), zap.String("error", refused.msg))
			}
			// A removed node must not form a cluster of its own either.
			return false
		}
	}
	if n.cfg.BootstrapExpect <= 1 {
		return true
	}
	n.Notify(me)
	for _, peer := range n.cfg.Join {
		if err := n.clusterPost(peer, "/v1/cluster/notify", body); err != nil {
			n.log().Debug("announcing to peer", zap.String("peer", peer), zap.Error(err))
		}
	}
	n.notifyMu.Lock()
	servers := make([]raft.Server, 0, len(n.notified))
	for _, ni := range n.notified {
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(ni.ID), Address: raft.ServerAddress(ni.ClusterAddr)})
	}
	n.notifyMu.Unlock()
	if len(servers) < n.cfg.BootstrapExpect || n.hadState {
		return true
	}
	slices.SortFunc(servers, func(a, b raft.Server) int { return strings.Compare(string(a.ID), string(b.ID)) })
	err := n.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error()
	switch {
	case err == nil:
		n.log().Info("bootstrapped the cluster", zap.Int("nodes", len(servers)))
	case errors.Is(err, raft.ErrCantBootstrap):
		n.hadState = true
	default:
		n.log().Warn("bootstrapping the cluster", zap.Error(err))
	}
	return true
}

// Notify records a node that announced itself (POST /v1/cluster/notify)
// while a bootstrap_expect cluster forms.
func (n *Node) Notify(ni state.NodeInfo) {
	n.notifyMu.Lock()
	defer n.notifyMu.Unlock()
	if n.notified == nil {
		n.notified = map[string]state.NodeInfo{}
	}
	n.notified[ni.ID] = ni
}

// JoinBody is the body of POST /v1/cluster/join and /v1/cluster/notify:
// what a node sends its peers' admin APIs about itself.
type JoinBody struct {
	NodeID      string `json:"node_id"`
	ClusterAddr string `json:"cluster_addr"`
	AdminAddr   string `json:"admin_addr"`
}

// Join adds a node to the cluster on behalf of actor (an operator, or
// state.ActorCluster for a node joining by itself), through the leader. An
// operator's join waits up to 5 s for a leader (ErrNoLeader); a node's own
// join is answered at once without one (it asks again). A refusal by the
// cluster's state is a *ConflictError.
func (n *Node) Join(ctx context.Context, ni state.NodeInfo, actor string) error {
	if actor == state.ActorCluster {
		// A peer that is still forming the cluster asks every node in turn:
		// answer at once when there is no leader yet, it asks again.
		err := n.join(ctx, ni, actor)
		if errors.Is(err, raft.ErrNotLeader) {
			err = ErrNoLeader
		}
		return err
	}
	if err := n.retryOnLeader(ctx, func(ctx context.Context) error { return n.join(ctx, ni, actor) }); err != nil {
		return err
	}
	n.waitMembers(ctx, func(m Member) bool { return m.ID == ni.ID && m.ClusterAddr == ni.ClusterAddr }, true)
	return nil
}

// Remove takes a node out of the cluster through the leader, waiting up to
// 5 s for one (ErrNoLeader). A node that is not a member is
// ErrNodeNotFound; one removed already is no error (a retry).
func (n *Node) Remove(ctx context.Context, id, actor string) error {
	if err := n.retryOnLeader(ctx, func(ctx context.Context) error { return n.remove(ctx, id, actor) }); err != nil {
		return err
	}
	n.waitMembers(ctx, func(m Member) bool { return m.ID == id }, false)
	return nil
}

// waitMembers waits (up to noLeaderHold) until this node's Raft
// configuration holds a member that matches (present) or none (not
// present). A follower that forwarded a membership change learns the
// configuration entry from the leader a moment after the leader answered;
// its answer, the cluster as it sees it, must already show the change.
func (n *Node) waitMembers(ctx context.Context, match func(Member) bool, present bool) {
	ctx, cancel := context.WithTimeout(ctx, noLeaderHold)
	defer cancel()
	for {
		found := false
		for _, m := range n.Members() {
			found = found || match(m)
		}
		if found == present {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
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

// VerifyClusterCall checks a signed admin call from a peer
// (cluster.CallVerifier.Verify).
func (n *Node) VerifyClusterCall(r *http.Request) (bodyDigest string, err error) {
	return n.signedCalls.Verify(r)
}

// join adds a node as a voter. It runs on the leader (followers forward it)
// and is idempotent: a node already present with the same address is left
// alone. Everything is checked before anything changes, so a wrong request
// never costs a live member its vote: a removed node may not join by itself
// (actor state.ActorCluster), an address belongs to one member, and the node
// must answer on its address as the ID it claims. A member whose address
// changed keeps its vote: AddVoter moves it in one configuration change.
func (n *Node) join(ctx context.Context, ni state.NodeInfo, actor string) error {
	if err := state.NewCommand("", "", state.NodeJoin{Node: &ni}).Validate(); err != nil {
		return err
	}
	if actor == "" {
		// A follower of an older version forwards no actor: only nodes
		// joined by themselves then.
		actor = state.ActorCluster
	}
	if n.raft.State() != raft.Leader {
		return n.Forward(ctx, rpcJoin, joinRequest{NodeInfo: ni, Actor: actor}, nil)
	}
	// A leader that has just been elected may not have applied the removal
	// yet: read the state as committed.
	if err := n.ConsistentRead(ctx); err != nil {
		return err
	}
	if at, removed := n.View().Removed[ni.ID]; removed && actor == state.ActorCluster {
		return &ConflictError{Code: state.CodeNodeRemoved, Msg: state.RemovedNodeMessage(ni.ID, at)}
	}
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	present := false
	for _, s := range f.Configuration().Servers {
		sameID, sameAddr := s.ID == raft.ServerID(ni.ID), s.Address == raft.ServerAddress(ni.ClusterAddr)
		switch {
		case sameID && sameAddr:
			present = true
		case sameAddr:
			return &ConflictError{Code: codeAddressTaken, Msg: fmt.Sprintf(
				"cluster address %s is member %s's, not %s's: each node joins on an address of its own; if %s is gone for good, remove it first (cbproxy cluster remove %s)",
				ni.ClusterAddr, s.ID, ni.ID, s.ID, s.ID)}
		}
	}
	if !present {
		if err := n.checkJoiner(ctx, ni); err != nil {
			return err
		}
		// With the ID already a voter (its address changed), AddVoter only
		// moves it: it never stops being a member.
		if err := n.raft.AddVoter(raft.ServerID(ni.ID), raft.ServerAddress(ni.ClusterAddr), 0, 10*time.Second).Error(); err != nil {
			return fmt.Errorf("adding %s as a voter: %w", ni.ID, err)
		}
	}
	a, err := n.Propose(ctx, state.NewCommand("", actor, state.NodeJoin{Node: &ni}))
	if err != nil {
		return err
	}
	if a.Result.Code == state.CodeNodeRemoved {
		return &ConflictError{Code: state.CodeNodeRemoved, Msg: a.Result.Err}
	}
	return nil
}

// checkJoiner calls a joining node on its cluster address. The answer
// proves it holds the cluster secret (the handshake is mutual) before it
// can count towards quorum, and that it is the node it says it is, with
// Raft running.
func (n *Node) checkJoiner(ctx context.Context, ni state.NodeInfo) error {
	var st NodeStatus
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	err := n.cluster.Call(cctx, ni.ClusterAddr, rpcStatus, nil, &st)
	cancel()
	switch {
	case err != nil:
		return fmt.Errorf("node %s does not answer on its cluster address %s with the cluster secret: %w", ni.ID, ni.ClusterAddr, err)
	case st.ID != ni.ID:
		return fmt.Errorf("the node at %s calls itself %q, not %q", ni.ClusterAddr, st.ID, ni.ID)
	case st.State == stateName(raft.Shutdown):
		return fmt.Errorf("node %s answers at %s but its Raft has stopped (a leader removed from the cluster stops it): restart the node, then join it", ni.ID, ni.ClusterAddr)
	}
	return nil
}

// joinRequest is a join a follower forwards to the leader (rpcJoin): the
// node, inlined as a leader of an older version reads it, and who asked.
type joinRequest struct {
	state.NodeInfo
	Actor string `json:"actor,omitempty"`
}

// codeAddressTaken refuses a join on a member's cluster address (409).
const codeAddressTaken = "address_taken"

// ConflictError is a join the cluster's state refuses (409): the node
// was removed (state.CodeNodeRemoved) or its address is another member's
// (codeAddressTaken). It crosses the forwarding RPC with its code.
type ConflictError struct{ Code, Msg string }

func (e *ConflictError) Error() string { return e.Msg }

// remove takes a node out of the cluster (on the leader; followers forward).
func (n *Node) remove(ctx context.Context, id string, actor string) error {
	if err := state.ValidateNodeID(id); err != nil {
		return err
	}
	if n.raft.State() != raft.Leader {
		return n.Forward(ctx, rpcRemove, removeRequest{ID: id, Actor: actor}, nil)
	}
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	found := false
	for _, s := range f.Configuration().Servers {
		found = found || s.ID == raft.ServerID(id)
	}
	if !found && n.View().Nodes[id].ID == "" {
		if _, removed := n.View().Removed[id]; removed {
			// Removed already: a retry gets the answer of the first call.
			return nil
		}
		return ErrNodeNotFound
	}
	// Forget the node first, while this leader surely has quorum.
	if _, err := n.Propose(ctx, state.NewCommand("", actor, state.NodeRemove{Node: &state.NodeInfo{ID: id}})); err != nil {
		return err
	}
	if found {
		if err := n.raft.RemoveServer(raft.ServerID(id), 0, 10*time.Second).Error(); err != nil {
			return fmt.Errorf("removing %s: %w", id, err)
		}
	}
	return nil
}

// ErrNodeNotFound is a removal of a node that is not a member (404).
var ErrNodeNotFound = errors.New("no such node in the cluster")

// handOverLeadership transfers leadership before a graceful stop, so the
// cluster does not wait an election timeout for a new leader.
func (n *Node) handOverLeadership() {
	if n.raft == nil || n.raft.State() != raft.Leader {
		return
	}
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	voters := 0
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			voters++
		}
	}
	if voters < 2 {
		return
	}
	if err := n.raft.LeadershipTransfer().Error(); err != nil {
		n.log().Warn("handing over leadership before stopping", zap.Error(err))
		return
	}
	n.log().Info("handed over leadership before stopping")
}

// clusterPost sends a signed POST to a peer's admin API.
func (n *Node) clusterPost(adminAddr, path string, body []byte) error {
	scheme := "http://"
	if n.cfg.AdminTLS {
		scheme = "https://"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, scheme+adminAddr+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	cluster.SignCall(req, n.clusterSecret, body)
	req.Header.Set("Content-Type", "application/json")
	resp, err := peerClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		var e struct{ Error, Code string }
		_ = json.Unmarshal(raw, &e)
		return &peerRefusal{peer: adminAddr + path, status: resp.StatusCode, code: e.Code, msg: e.Error, raw: string(bytes.TrimSpace(raw))}
	}
	return nil
}

// peerRefusal is a peer's error answer to a cluster-signed call.
type peerRefusal struct {
	peer      string
	status    int
	code, msg string // from the JSON error body, when it is one
	raw       string
}

func (e *peerRefusal) Error() string { return fmt.Sprintf("%s: %d %s", e.peer, e.status, e.raw) }

// peerClient talks to peers' admin APIs. Admin certificates of peers are
// checked against the system roots; a private admin CA needs them installed.
var peerClient = &http.Client{Timeout: 10 * time.Second}
