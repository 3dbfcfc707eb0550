// Package raftnode is the replicated half of a cbproxy node: hashicorp/raft
// with its log in raft-wal and its snapshots on disk, the state machine of
// package state behind a thin raft.FSM adapter, the cluster port with its
// node-to-node RPC, and everything that writes or reads through Raft:
// Propose (forwarding from followers), membership, consistent reads,
// ?wait=all, versioned commands, and Recover. It knows nothing of HTTP or of
// the data plane. See DESIGN.md in this folder.
package raftnode

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/cluster"
	"github.com/cbproxy/cbproxy/controlplane/internal/seams"
	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/hashicorp/raft"
	raftwal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
	"go.uber.org/zap"
)

// Config is what the Raft node needs to start. Package controlplane fills it
// from the node's configuration, defaults included.
type Config struct {
	NodeID        string // required
	DataDir       string // required
	ClusterListen string // required
	// AdminAddr is where this node's admin API listens, bound: peers and
	// clients are told it. AdminTLS says whether it speaks HTTPS (signed
	// calls to peers use the same scheme).
	AdminAddr       string
	AdminTLS        bool
	Bootstrap       bool
	BootstrapExpect int
	Join            []string
	// ClusterSecret authenticates nodes to each other; "" means the one
	// kept in DataDir/cluster-secret, generated on first start.
	ClusterSecret                               string
	ClusterTLSCert, ClusterTLSKey, ClusterTLSCA string
	Logger                                      *zap.Logger
	// Seams are test powers (short elections, a small event trail, an
	// older build); nil or zero in production. Only packages under controlplane can
	// build one.
	Seams *seams.Raft
}

// MultiNode reports whether the node forms or joins a cluster of several.
func (c Config) MultiNode() bool { return c.BootstrapExpect > 1 || len(c.Join) > 0 }

func (c Config) seams() seams.Raft {
	if c.Seams == nil {
		return seams.Raft{}
	}
	return *c.Seams
}

// Node is one running Raft node. It outlives Caddy config reloads with the
// control plane that owns it.
type Node struct {
	cfg    Config
	logger atomic.Pointer[zap.Logger]

	fsm       *fsm
	raft      *raft.Raft
	wal       *raftwal.WAL
	walMeta   *metadb.BoltMetaDB
	transport *raft.NetworkTransport
	cluster   *cluster.Transport
	snaps     *raft.FileSnapshotStore
	metrics   *metrics

	// clusterSecret is the configured cluster_secret or else the one kept in
	// the data dir (effectiveClusterSecret); never empty.
	clusterSecret string
	// signedCalls checks the signed admin calls peers send (join, notify).
	signedCalls *cluster.CallVerifier

	// startIndex is the last log index on disk when the node started: the
	// node has caught up once it has applied at least that far with a
	// leader known.
	startIndex uint64
	hadState   bool
	// notified collects the nodes that announced themselves while a
	// bootstrap_expect cluster forms.
	notifyMu sync.Mutex
	notified map[string]state.NodeInfo
	// bootstrapNotice says that a single-node start met the state of a
	// cluster of several (noteBootstrapIgnored).
	bootstrapNotice string
	// removedNotice is why the cluster refuses this node's own join (it was
	// removed), until an operator joins the node.
	removedNotice atomic.Pointer[string]
	// members is what the other members can apply, as the leader learned
	// it (versions.go).
	members memberCapabilities
	// raftStop is Raft's shutdown, started once: by Shutdown, or when the
	// state machine halts.
	raftStopOnce sync.Once
	raftStop     raft.Future
	// committed wakes announceCommits after a write committed on this
	// leader; one pending wake-up is enough.
	committed chan struct{}
	// leaders wakes writes waiting for a leader (watchRaft).
	leaders *leaderWatch
	// peers is what the leader's heartbeats say of each peer
	// (watchRaft).
	peers peerContact

	done     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// Start opens the data dir's log, snapshots and applied state, listens on
// the cluster port, starts Raft (bootstrapping a fresh single node) and the
// loop that forms, joins and keeps the cluster's membership.
func Start(cfg Config) (*Node, error) {
	if cfg.NodeID == "" || cfg.DataDir == "" || cfg.ClusterListen == "" {
		return nil, errors.New("raftnode: NodeID, DataDir and ClusterListen are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	secret, err := effectiveClusterSecret(cfg, cfg.Logger)
	if err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, done: make(chan struct{}), committed: make(chan struct{}, 1), leaders: newLeaderWatch(), clusterSecret: secret, signedCalls: cluster.NewCallVerifier(secret),
		peers: peerContact{failing: map[string]time.Time{}}}
	n.logger.Store(cfg.Logger)
	defer func() {
		if err != nil {
			if n.raft != nil {
				_ = n.stopRaft().Error()
			}
			n.closeStores()
		}
	}()
	if err = n.openRaft(); err != nil {
		return nil, err
	}
	n.metrics = newMetrics(n)
	n.registerRPC()
	n.wg.Add(3)
	go n.maintainMembership()
	go n.announceCommits()
	go n.watchRaft()
	return n, nil
}

// openRaft opens the stores, restores the state the node last applied, and
// starts Raft on the cluster port (bootstrapping a fresh single node).
func (n *Node) openRaft() error {
	if err := n.openStores(); err != nil {
		return err
	}
	var err error
	if n.cluster, err = n.openClusterPort(); err != nil {
		return err
	}
	n.transport = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: n.cluster.RaftStreamLayer(), MaxPool: 3, Timeout: 10 * time.Second, Logger: n.hclogger(),
	})

	hasState, err := raft.HasExistingState(n.wal, n.wal, n.snaps)
	if err != nil {
		return fmt.Errorf("reading raft state: %w", err)
	}
	if idx := n.fsm.machine.View().Index; !hasState && idx > 0 {
		// Every entry of a new log up to idx would count as already applied
		// (fsm.Apply), and a log from the cluster would be mixed with a
		// state of another history.
		return fmt.Errorf("data dir %s holds the applied state up to index %d (applied.json) but no Raft log or snapshot: "+
			"the node cannot start a new log under it. To keep this state as a one-node cluster, run `cbproxy cluster recover --data-dir %s` "+
			"(docs/operations.md, \"Recovering from quorum loss\"); to start empty, move applied.json away", n.cfg.DataDir, idx, n.cfg.DataDir)
	}
	if n.startIndex, err = n.wal.LastIndex(); err != nil {
		return fmt.Errorf("reading raft log: %w", err)
	}
	if n.raft, err = raft.NewRaft(n.raftConfig(), n.fsm, n.wal, n.wal, n.snaps, n.transport); err != nil {
		return fmt.Errorf("starting raft: %w", err)
	}
	n.fsm.notifyHalt(n.halted)
	n.hadState = hasState
	// Bootstrap only over empty state: bootstrapping again would fork the
	// cluster. A multi-node cluster forms in maintainMembership.
	if !n.cfg.MultiNode() {
		if hasState {
			n.noteBootstrapIgnored()
		} else {
			conf := raft.Configuration{Servers: []raft.Server{{
				Suffrage: raft.Voter,
				ID:       raft.ServerID(n.cfg.NodeID),
				Address:  n.transport.LocalAddr(),
			}}}
			if err := n.raft.BootstrapCluster(conf).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
				return fmt.Errorf("bootstrapping single-node cluster: %w", err)
			}
		}
	}
	n.electIfAlone()
	return nil
}

// electIfAlone makes a node that is the only voter of its configuration
// elect itself now. Raft's follower waits a heartbeat timeout (1 to 2 s at
// the defaults) for a leader before it stands, although none but itself can
// exist; every write, the Caddyfile's seeds included, waited for it. Raft
// re-checks for a leader at once when the heartbeat timeout is lowered, and
// a follower that never heard from one then stands and, alone, wins; the
// timeout is put back right away, so Raft's settings stay as they are. A
// configuration the lowered timeout would not validate (a lease as long as
// the heartbeat timeout) keeps Raft's usual wait.
func (n *Node) electIfAlone() {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	servers := f.Configuration().Servers
	if len(servers) != 1 || servers[0].ID != raft.ServerID(n.cfg.NodeID) || servers[0].Suffrage != raft.Voter {
		return
	}
	settings := n.raft.ReloadableConfig()
	lowered := settings
	lowered.HeartbeatTimeout -= time.Millisecond
	if n.raft.ReloadConfig(lowered) == nil {
		_ = n.raft.ReloadConfig(settings)
	}
}

// noteBootstrapIgnored says loudly, in the log and in readiness, that a
// single-node start (bootstrap, or no cluster settings) over the state of a
// cluster of several does not make a one-node cluster: the state on disk
// wins, and the node waits for a quorum of its members. Bootstrapping over
// it would fork the cluster; `cbproxy cluster recover` is the way.
func (n *Node) noteBootstrapIgnored() {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	var members []string
	for _, s := range f.Configuration().Servers {
		members = append(members, string(s.ID))
	}
	if len(members) == 0 || len(members) == 1 && members[0] == n.cfg.NodeID {
		return
	}
	msg := fmt.Sprintf("bootstrap is ignored: the data dir holds the state of a cluster of %d (%s), which wins over the Caddyfile; "+
		"the node waits for a quorum of those members. If the others are gone for good, stop this node and run `cbproxy cluster recover` "+
		"(docs/operations.md, \"Recovering from quorum loss\")", len(members), strings.Join(members, ", "))
	n.bootstrapNotice = msg
	n.log().Warn(msg)
}

// openStores opens the data dir's Raft log (raft-wal), its snapshots, and
// the state machine, restored from the newer of applied.json and the latest
// snapshot. Recover opens them the same way.
func (n *Node) openStores() error {
	raftDir := filepath.Join(n.cfg.DataDir, "raft")
	walDir := filepath.Join(raftDir, "wal")
	if err := os.MkdirAll(walDir, 0o700); err != nil {
		return fmt.Errorf("creating raft dir: %w", err)
	}
	hl := n.hclogger()
	var err error
	// raft-wal's Close leaves its meta database open (and locked); we own it
	// so a restart in the same process can open the log again.
	n.walMeta = &metadb.BoltMetaDB{}
	if n.wal, err = raftwal.Open(walDir, raftwal.WithLogger(hl), raftwal.WithMetaStore(n.walMeta)); err != nil {
		return fmt.Errorf("opening raft log in %s: %w", walDir, err)
	}
	if n.snaps, err = raft.NewFileSnapshotStoreWithLogger(raftDir, 3, hl); err != nil {
		return fmt.Errorf("opening raft snapshots: %w", err)
	}
	s := n.cfg.seams()
	n.fsm, err = newFSM(n.cfg.DataDir, state.Options{MaxEvents: s.MaxEvents, WithoutKinds: s.WithoutKinds, WithoutFields: s.WithoutFields}, n.snaps, n.log)
	return err
}

// raftConfig is hashicorp/raft's configuration of this node.
func (n *Node) raftConfig() *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(n.cfg.NodeID)
	rc.Logger = n.hclogger()
	// Our FSM restores itself from the state it last applied (fsm.go), which is
	// never older than the newest snapshot, and skips entries it already has.
	rc.NoSnapshotRestoreOnStart = true
	// The state is small: snapshot often so a restart or a lagging follower
	// catches up quickly.
	rc.SnapshotThreshold = 1024
	rc.SnapshotInterval = 30 * time.Second
	rc.TrailingLogs = 4096
	// Followers learn that an entry is committed from the leader's next
	// AppendEntries. After a write, announceCommits sends one at once (a
	// barrier); otherwise an idle leader sends one after CommitTimeout
	// (jittered up to twice that), which still tells followers of commits
	// no write announces (a new leader's no-op, a configuration change, the
	// barrier itself). Raft's 50 ms default would make those take up to
	// 100 ms; 10 ms costs ~100 small messages per second per follower.
	rc.CommitTimeout = 10 * time.Millisecond
	tune := n.cfg.seams()
	if tune.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = tune.SnapshotThreshold
		rc.SnapshotInterval = 200 * time.Millisecond
	}
	if tune.TrailingLogs > 0 {
		rc.TrailingLogs = tune.TrailingLogs
	}
	if tune.HeartbeatTimeout > 0 {
		rc.HeartbeatTimeout = tune.HeartbeatTimeout
	}
	if tune.ElectionTimeout > 0 {
		rc.ElectionTimeout = tune.ElectionTimeout
	}
	if tune.LeaderLease > 0 {
		rc.LeaderLeaseTimeout = tune.LeaderLease
	}
	if tune.CommitTimeout > 0 {
		rc.CommitTimeout = tune.CommitTimeout
	}
	return rc
}

// PersistedNodeID returns the node id stored in the data dir, creating a
// random one on first start.
func PersistedNodeID(dir string) (string, error) {
	path := filepath.Join(dir, "node-id")
	b, err := os.ReadFile(path)
	if err == nil {
		if id := strings.TrimSpace(string(b)); id != "" {
			return id, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("reading node id: %w", err)
	}
	var r [6]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", err
	}
	id := "node-" + hex.EncodeToString(r[:])
	if err := writeFileAtomic(path, []byte(id+"\n")); err != nil {
		return "", fmt.Errorf("writing node id: %w", err)
	}
	return id, nil
}

// CaughtUp reports whether the node knows a leader and has applied
// everything the leader had committed (and its own log held at start). It
// asks a remote leader for its commit index (an RPC, up to 1 s).
func (n *Node) CaughtUp() bool {
	addr, id := n.raft.LeaderWithID()
	if id == "" {
		return false
	}
	target := max(n.startIndex, n.raft.CommitIndex())
	if id != raft.ServerID(n.cfg.NodeID) {
		var st NodeStatus
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := n.cluster.Call(ctx, string(addr), rpcStatus, nil, &st)
		cancel()
		if err != nil {
			return false
		}
		target = max(target, st.CommitIndex)
	}
	// Raft's applied index, not the machine's: the target counts no-ops
	// and configuration entries, which the machine never sees.
	applied := n.raft.AppliedIndex()
	if applied < target {
		return false
	}
	n.log().Info("node caught up", zap.Uint64("applied_index", applied), zap.String("leader", string(id)))
	return true
}

// Notices say why this node cannot serve the cluster's current state, for
// readiness: a single-node start ignored over a cluster's state, a join the
// cluster refuses because the node was removed, a halt.
func (n *Node) Notices() []string {
	var why []string
	if n.bootstrapNotice != "" {
		why = append(why, n.bootstrapNotice)
	}
	if msg := n.removedNotice.Load(); msg != nil {
		why = append(why, *msg)
	}
	if h := n.fsm.halt(); h != nil {
		why = append(why, "this node "+h.String())
	}
	return why
}

// Shutdown stops Raft and closes the log store. With handOver a leader
// hands leadership over first; without, the node stops as abruptly as Raft
// allows (tests play a crash with it).
func (n *Node) Shutdown(handOver bool) error {
	var err error
	n.stopOnce.Do(func() {
		if handOver {
			n.handOverLeadership()
		}
		close(n.done)
		if n.raft != nil {
			err = n.stopRaft().Error()
		}
		n.wg.Wait()
		n.closeStores()
	})
	return err
}

// stopRaft starts Raft's shutdown once and returns its future. It does not
// wait, so the state machine may call it from Raft's FSM goroutine.
func (n *Node) stopRaft() raft.Future {
	n.raftStopOnce.Do(func() { n.raftStop = n.raft.Shutdown() })
	return n.raftStop
}

// halted runs on Raft's FSM goroutine when the state machine meets an entry
// it cannot apply. The node stops Raft: a node that stays in the cluster
// without applying would, as leader, keep its leadership while it applies
// nothing (a blocked FSM stalls Raft's own loop once its queue of 128
// batches is full, which also runs the lease check that would make it step
// down). Stopped, it counts as down: the others elect a leader and go on.
// The data plane keeps serving the last applied state; readiness, health and
// cbproxy_raft_halted say why.
func (n *Node) halted(h Halt) {
	future := n.stopRaft()
	// Close the Raft transport once Raft's goroutines are gone, so peers
	// are refused at once rather than left waiting on an RPC nobody reads.
	go func() { _ = future.Error() }()
}

func (n *Node) closeStores() {
	if n.fsm != nil {
		n.fsm.close()
	}
	if n.transport != nil {
		_ = n.transport.Close()
	}
	if n.cluster != nil {
		_ = n.cluster.Close()
	}
	if n.wal != nil {
		_ = n.wal.Close()
	}
	if n.walMeta != nil {
		_ = n.walMeta.Close()
	}
}

// ID is the node's id.
func (n *Node) ID() string { return n.cfg.NodeID }

// SetLogger replaces the logger (Caddy closes log writers on reload).
func (n *Node) SetLogger(l *zap.Logger) {
	if l != nil {
		n.logger.Store(l)
	}
}

func (n *Node) log() *zap.Logger { return n.logger.Load() }

// View returns the last applied state.
func (n *Node) View() *state.View { return n.fsm.machine.View() }

// OnChange calls fn with every new view (and at once with the current one)
// until cancel is called. fn runs on the applying goroutine and must not
// block: the index counts as applied (WaitAll, ConsistentRead) only once
// every fn has returned.
func (n *Node) OnChange(fn func(*state.View)) (cancel func()) {
	return n.fsm.views.subscribe(fn, n.View)
}

// NextPublished returns a channel closed once the next view has been
// handed to every OnChange subscriber (or the state machine halted), for
// waiters that look at the data plane after each change.
func (n *Node) NextPublished() <-chan struct{} {
	return n.fsm.views.nextWake()
}

// Events returns a channel of events as they are applied; it is closed when
// the reader falls behind or cancel is called.
func (n *Node) Events() (<-chan state.Event, func()) { return n.fsm.events.subscribe() }

// QueryEvents reads the replicated event trail (state.Machine.QueryEvents).
func (n *Node) QueryEvents(q state.EventQuery) ([]state.Event, *state.EventGap) {
	return n.fsm.machine.QueryEvents(q)
}

// RemembersKey reports whether the state machine remembers an idempotency
// key (state.Machine.RemembersKey).
func (n *Node) RemembersKey(key string, now time.Time) bool {
	return n.fsm.machine.RemembersKey(key, now)
}

// Transport is the cluster port: other parts of the control plane serve and
// call their own node-to-node RPC methods on it.
func (n *Node) Transport() *cluster.Transport { return n.cluster }

// ClusterAddr is the address peers reach this node's cluster port on.
func (n *Node) ClusterAddr() string { return n.cluster.Addr() }

// IsLeader reports whether this node leads the cluster now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Member is one server of the Raft configuration.
type Member struct {
	ID, ClusterAddr string
	Voter           bool
}

// Members lists the servers of the current Raft configuration (nil when
// Raft cannot say).
func (n *Node) Members() []Member {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	var out []Member
	for _, s := range f.Configuration().Servers {
		out = append(out, Member{ID: string(s.ID), ClusterAddr: string(s.Address), Voter: s.Suffrage == raft.Voter})
	}
	return out
}

// Halted returns where and why the state machine stopped applying, nil
// while it applies.
func (n *Node) Halted() *Halt { return n.fsm.halt() }

func init() { seams.RaftOf = func(node any) *raft.Raft { return node.(*Node).raft } }
