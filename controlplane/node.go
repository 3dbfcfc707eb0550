// Package controlplane is cbproxy's replicated control plane: the Raft node that
// holds the state machine of package state, the admin API with its tokens, and
// the metrics and readiness that come with them. It imports no Caddy package;
// proxymod adapts it to Caddy. See DESIGN.md in this folder.
package controlplane

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/cluster"
	"github.com/cbproxy/cbproxy/controlplane/slo"
	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/cbproxy/cbproxy/healthcheck"
	"github.com/hashicorp/raft"
	raftwal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Role is what a token may do (CONTRACT §3).
type Role int

const (
	RoleRead    Role = iota + 1 // GET only
	RoleOperate                 // weights, switch, rollout, rollback, drain
	RoleAdmin                   // everything
)

// ParseRole reads a role name as written in the Caddyfile.
func ParseRole(s string) (Role, error) {
	switch s {
	case "read":
		return RoleRead, nil
	case "operate":
		return RoleOperate, nil
	case "admin":
		return RoleAdmin, nil
	}
	return 0, fmt.Errorf("unknown role %q: use read, operate or admin", s)
}

func (r Role) String() string {
	switch r {
	case RoleRead:
		return "read"
	case RoleOperate:
		return "operate"
	case RoleAdmin:
		return "admin"
	}
	return "none"
}

// Token is one named bearer token of the admin API.
type Token struct {
	Name   string
	Secret string
	Role   Role
}

// Config is what a node needs to start. Empty fields take the documented
// defaults.
type Config struct {
	NodeID          string // default: a random id persisted in DataDir
	DataDir         string // required
	ClusterListen   string // default 127.0.0.1:7001
	AdminListen     string // default 127.0.0.1:7101
	AdminTLSCert    string
	AdminTLSKey     string
	Bootstrap       bool
	BootstrapExpect int
	Join            []string
	Tokens          []Token
	// ClusterSecret authenticates nodes to each other; "" means the one
	// kept in DataDir/cluster-secret, generated on first start.
	ClusterSecret string
	// Mutual TLS on the cluster port: this node's certificate and key, and the
	// CA that signs every node's certificate. Optional.
	ClusterTLSCert string
	ClusterTLSKey  string
	ClusterTLSCA   string
	Logger         *zap.Logger

	// DataPlane is the local data plane from the start, so readiness never
	// judges without it; SetDataPlane replaces it (a config reload). Nil
	// means a node without one (readiness is then catching up alone).
	DataPlane DataPlane

	// The fields below are test seams, not settings: no configuration sets
	// them, so they stay out of the package's API. Tests in this package set
	// them directly (DESIGN.md, "Test seams").

	// raft shortens Raft's timings and snapshots its log sooner.
	raft raftTuning
	// maxEvents is how many events the trail keeps; zero takes 10,000.
	// Tests make it small to exercise a trail that dropped events.
	maxEvents int
	// withoutKinds and withoutFields make the node apply like an older
	// build that lacks them (state.Options), so tests run mixed-version
	// clusters in one process.
	withoutKinds  []state.Kind
	withoutFields []string
	// adminLimits replaces defaultAdminLimits; tests shorten them.
	adminLimits *adminLimits
}

// raftTuning overrides hashicorp/raft's timings and cbproxy's snapshot
// defaults; a zero field keeps the default. Tests shorten elections so
// that a failover takes milliseconds, and snapshot after a few entries to
// exercise catch-up by snapshot.
type raftTuning struct {
	heartbeatTimeout  time.Duration
	electionTimeout   time.Duration
	leaderLease       time.Duration
	snapshotThreshold uint64 // default 1024 entries
	trailingLogs      uint64 // default 4096 entries
}

// Defaults for the listeners (CONTRACT §3).
const (
	DefaultClusterListen = "127.0.0.1:7001"
	DefaultAdminListen   = "127.0.0.1:7101"
)

// DataPlane is what the control plane asks the local data plane: the
// ordinary requests in flight to a backend and its long-lived connections
// (upgraded connections and event streams), apart (its health comes from
// the node's checker); a pool's traffic over the last d, for the SLO judge;
// and which services it declares and whether it routes them, for readiness
// and for the judge, which expects the figures of every node that serves a
// service.
type DataPlane interface {
	InFlight(service, pool, address string) int64
	LongLived(service, pool, address string) int64
	Window(service, pool string, d time.Duration) slo.Window
	// Declared lists the services this node's configuration routes (the
	// handlers of its Caddyfile, with a seed or without), in name order: the
	// services it must serve to be ready, and whose figures the SLO judge
	// expects from it.
	Declared() []string
	// Routes reports whether the data plane has built a routing table from
	// the replicated service: it routes the service's requests instead of
	// answering that it does not know the service.
	Routes(service string) bool
}

// Node is one running cbproxy control-plane node: Raft with its on-disk log,
// the state machine, and the admin API listener. It outlives Caddy config
// reloads (proxymod keeps it in a usage pool).
type Node struct {
	cfg    Config
	logger atomic.Pointer[zap.Logger]
	tokens atomic.Pointer[[]Token]
	// tokensChanged is closed and replaced by SetTokens.
	tokensChanged atomic.Pointer[chan struct{}]
	dp            atomic.Pointer[DataPlane]

	fsm       *fsm
	raft      *raft.Raft
	wal       *raftwal.WAL
	walMeta   *metadb.BoltMetaDB
	transport *raft.NetworkTransport
	cluster   *cluster.Transport
	snaps     *raft.FileSnapshotStore

	health   *healthcheck.Checker
	watcher  *watcher
	registry *prometheus.Registry
	// clusterSecret is the configured cluster_secret or else the one kept in
	// the data dir (effectiveClusterSecret); never empty. Config keeps what
	// was configured, so that a reload compares like with like.
	clusterSecret string
	// seenCalls holds the signed admin calls accepted lately, so that a
	// replay is refused.
	seenCalls seenCalls
	// stickyKey seals the data plane's sticky cookies (StickyKey).
	stickyKey []byte
	metrics   *nodeMetrics
	admin     *adminServer

	// startIndex is the last log index on disk when the node started: the node
	// is ready once it has applied at least that far with a leader known.
	startIndex uint64
	hadState   bool
	caughtUp   atomic.Bool
	ready      atomic.Bool
	// seedErrors holds, by service, why the cluster refused this node's
	// Caddyfile seed: readiness says it while it waits for the service.
	seedErrors sync.Map
	// notified collects the nodes that announced themselves while a
	// bootstrap_expect cluster forms.
	notifyMu sync.Mutex
	notified map[string]state.NodeInfo
	// bootstrapNotice says that a single-node start met the state of a
	// cluster of several (noteBootstrapIgnored); readiness shows it.
	bootstrapNotice string
	// removedNotice is why the cluster refuses this node's own join (it was
	// removed); readiness shows it until an operator joins the node.
	removedNotice atomic.Pointer[string]
	// members is what the other members can apply, as the leader learned
	// it (versions.go).
	members memberCapabilities
	// raftStop is Raft's shutdown, started once: by Shutdown, or when the
	// state machine halts.
	raftStopOnce sync.Once
	raftStop     raft.Future

	done     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// Start opens the node's data dir, starts Raft and the admin API.
func Start(cfg Config) (*Node, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("data_dir is required")
	}
	if cfg.ClusterListen == "" {
		cfg.ClusterListen = DefaultClusterListen
	}
	if cfg.AdminListen == "" {
		cfg.AdminListen = DefaultAdminListen
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Bootstrap && (cfg.BootstrapExpect > 0 || len(cfg.Join) > 0) {
		return nil, errors.New("bootstrap starts a single-node cluster; it cannot be combined with bootstrap_expect or join")
	}
	if cfg.BootstrapExpect > 1 && len(cfg.Join) == 0 {
		return nil, fmt.Errorf("bootstrap_expect %d needs join with the admin addresses of the other nodes", cfg.BootstrapExpect)
	}
	if cfg.multiNode() && cfg.ClusterSecret == "" {
		return nil, errors.New("a multi-node cluster needs cluster_secret: nodes prove to each other that they belong with it (a node started without one keeps its own in data_dir/cluster-secret)")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating data dir: %w", err)
	}
	if cfg.NodeID == "" {
		id, err := persistedNodeID(cfg.DataDir)
		if err != nil {
			return nil, err
		}
		cfg.NodeID = id
	}
	if err := checkAdminListen(cfg); err != nil {
		return nil, err
	}

	secret, err := effectiveClusterSecret(cfg, cfg.Logger)
	if err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, done: make(chan struct{}), registry: prometheus.NewRegistry(),
		clusterSecret: secret, stickyKey: stickyKeyFrom(secret)}
	n.logger.Store(cfg.Logger)
	n.SetTokens(cfg.Tokens)
	if cfg.DataPlane != nil {
		n.SetDataPlane(cfg.DataPlane)
	}

	defer func() {
		if err != nil {
			n.closeStores()
		}
	}()
	if err = n.openRaft(); err != nil {
		return nil, err
	}
	// Every node checks every backend itself (CONTRACT §6); the checker
	// follows the replicated services.
	n.health = healthcheck.New(healthcheck.Config{Logger: n.log().Named("health")})
	n.OnChange(n.health.Update)
	n.metrics = newNodeMetrics(n)
	n.registry.MustRegister(n.metrics)
	if n.admin, err = newAdminServer(n); err != nil {
		_ = n.raft.Shutdown().Error()
		return nil, err
	}
	n.registerRPC()
	n.watcher = newWatcher(n)
	n.wg.Add(3)
	go n.watchReadiness()
	go n.maintainMembership()
	go n.watcher.run()
	n.log().Info("cbproxy node started",
		zap.String("node_id", cfg.NodeID),
		zap.String("data_dir", cfg.DataDir),
		zap.String("cluster_listen", cfg.ClusterListen),
		zap.String("admin_listen", n.admin.addr()),
		zap.Uint64("applied_index", n.fsm.machine.View().Index))
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
	if !n.cfg.multiNode() {
		if hasState {
			n.noteBootstrapIgnored()
			return nil
		}
		conf := raft.Configuration{Servers: []raft.Server{{
			Suffrage: raft.Voter,
			ID:       raft.ServerID(n.cfg.NodeID),
			Address:  n.transport.LocalAddr(),
		}}}
		if err := n.raft.BootstrapCluster(conf).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return fmt.Errorf("bootstrapping single-node cluster: %w", err)
		}
	}
	return nil
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
	n.fsm, err = newFSM(n.cfg.DataDir, state.Options{MaxEvents: n.cfg.maxEvents, WithoutKinds: n.cfg.withoutKinds, WithoutFields: n.cfg.withoutFields}, n.snaps, n.log)
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
	// AppendEntries, which an idle leader sends after CommitTimeout (jittered
	// up to twice that). Raft's 50 ms default would make ?wait=all and
	// read-your-writes on followers take up to 100 ms; 10 ms costs ~100
	// small messages per second per follower.
	rc.CommitTimeout = 10 * time.Millisecond
	tune := n.cfg.raft
	if tune.snapshotThreshold > 0 {
		rc.SnapshotThreshold = tune.snapshotThreshold
		rc.SnapshotInterval = 200 * time.Millisecond
	}
	if tune.trailingLogs > 0 {
		rc.TrailingLogs = tune.trailingLogs
	}
	if tune.heartbeatTimeout > 0 {
		rc.HeartbeatTimeout = tune.heartbeatTimeout
	}
	if tune.electionTimeout > 0 {
		rc.ElectionTimeout = tune.electionTimeout
	}
	if tune.leaderLease > 0 {
		rc.LeaderLeaseTimeout = tune.leaderLease
	}
	return rc
}

// multiNode reports whether the node forms or joins a cluster of several.
func (c Config) multiNode() bool { return c.BootstrapExpect > 1 || len(c.Join) > 0 }

// checkAdminListen refuses an admin API reachable from other hosts without
// tokens: without tokens every caller is admin (CONTRACT §3).
func checkAdminListen(cfg Config) error {
	if len(cfg.Tokens) > 0 {
		return nil
	}
	if !IsLoopbackListen(cfg.AdminListen) {
		return fmt.Errorf("admin_listen %s is not a loopback address and no token is configured: add token lines or listen on 127.0.0.1", cfg.AdminListen)
	}
	return nil
}

// IsLoopbackListen reports whether a listen address only accepts loopback
// connections.
func IsLoopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// persistedNodeID returns the node id stored in the data dir, creating a random
// one on first start.
func persistedNodeID(dir string) (string, error) {
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

// watchReadiness marks the node ready (CONTRACT §6: 503 until caught up
// once) in two steps: first it waits until the node knows a leader and has
// applied everything the leader had committed; then until every service the
// data plane declares exists and is routed (pendingServices). Ready stays
// ready.
func (n *Node) watchReadiness() {
	defer n.wg.Done()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-n.done:
			return
		case <-t.C:
		}
		if !n.caughtUp.Load() {
			if !n.catchUp() {
				continue
			}
			n.caughtUp.Store(true)
		}
		if pending := n.pendingServices(); len(pending) == 0 {
			n.ready.Store(true)
			n.log().Info("node ready: caught up, and every declared service is routed", zap.Uint64("applied_index", n.raft.AppliedIndex()))
			return
		}
	}
}

// catchUp reports whether the node knows a leader and has applied everything
// the leader had committed (and its own log held at start).
func (n *Node) catchUp() bool {
	addr, id := n.raft.LeaderWithID()
	if id == "" {
		return false
	}
	target := max(n.startIndex, n.raft.CommitIndex())
	if id != raft.ServerID(n.cfg.NodeID) {
		var st nodeStatus
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := n.cluster.Call(ctx, string(addr), rpcStatus, nil, &st)
		cancel()
		if err != nil {
			return false
		}
		target = max(target, st.CommitIndex)
	}
	applied := n.raft.AppliedIndex()
	if applied < target {
		return false
	}
	n.log().Info("node caught up", zap.Uint64("applied_index", applied), zap.String("leader", string(id)))
	return true
}

// pendingServices says, for each service the data plane declares that it
// cannot serve yet, why: it is not in this node's applied state, or the data
// plane has no routing table for it yet. A declared service deleted through
// the API does not count: seeds never re-create it, so waiting would be
// forever, and the proxy answers for it as the operator decided.
func (n *Node) pendingServices() []string {
	dp := n.dataPlane()
	if dp == nil {
		return nil
	}
	v := n.View()
	var pending []string
	for _, name := range dp.Declared() {
		switch {
		case v.Deleted[name] != 0:
		case v.Services[name] == nil:
			why := "not in the replicated state yet: its Caddyfile seed is not committed yet, or (a cbproxy block without pools) create it with the admin API"
			if refused, ok := n.seedErrors.Load(name); ok {
				why = "its Caddyfile seed was refused: " + refused.(string)
			}
			pending = append(pending, fmt.Sprintf("service %s: %s", name, why))
		case !dp.Routes(name):
			pending = append(pending, fmt.Sprintf("service %s: the proxy has no routing table for it yet", name))
		}
	}
	return pending
}

// Shutdown stops the admin API and Raft and closes the log store. A leader
// hands leadership over first.
func (n *Node) Shutdown() error { return n.shutdown(true) }

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
func (n *Node) halted(h halt) {
	future := n.stopRaft()
	// Close the Raft transport once Raft's goroutines are gone, so peers
	// are refused at once rather than left waiting on an RPC nobody reads.
	go func() { _ = future.Error() }()
}

// shutdown stops the node; without handOver it stops as abruptly as Raft
// allows (tests use it to play a crash).
func (n *Node) shutdown(handOver bool) error {
	var err error
	n.stopOnce.Do(func() {
		if handOver {
			n.handOverLeadership()
		}
		close(n.done)
		if n.admin != nil {
			n.admin.close()
		}
		if n.raft != nil {
			err = n.stopRaft().Error()
		}
		n.wg.Wait()
		n.closeStores()
		n.log().Info("cbproxy node stopped", zap.String("node_id", n.cfg.NodeID))
	})
	return err
}

func (n *Node) closeStores() {
	if n.health != nil {
		n.health.Close()
	}
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

// Config returns the configuration the node was started with (defaults filled).
func (n *Node) Config() Config { return n.cfg }

// ID is the node's id.
func (n *Node) ID() string { return n.cfg.NodeID }

// SetLogger replaces the logger (Caddy closes log writers on reload).
func (n *Node) SetLogger(l *zap.Logger) {
	if l != nil {
		n.logger.Store(l)
	}
}

func (n *Node) log() *zap.Logger { return n.logger.Load() }

// SetTokens replaces the admin API tokens live. Event streams whose caller
// the new tokens no longer let read are closed.
func (n *Node) SetTokens(t []Token) {
	c := append([]Token(nil), t...)
	n.tokens.Store(&c)
	next := make(chan struct{})
	if prev := n.tokensChanged.Swap(&next); prev != nil {
		close(*prev)
	}
}

// tokensChange is closed by the next SetTokens.
func (n *Node) tokensChange() <-chan struct{} { return *n.tokensChanged.Load() }

// SetDataPlane tells the admin API where to read backends' in-flight requests
// and long-lived connections from.
func (n *Node) SetDataPlane(dp DataPlane) { n.dp.Store(&dp) }

func (n *Node) dataPlane() DataPlane {
	if p := n.dp.Load(); p != nil {
		return *p
	}
	return nil
}

// View returns the last applied state.
func (n *Node) View() *state.View { return n.fsm.machine.View() }

// OnChange calls fn with every new view (and at once with the current one)
// until cancel is called. fn runs on the applying goroutine and must not block.
func (n *Node) OnChange(fn func(*state.View)) (cancel func()) {
	return n.fsm.subscribe(fn)
}

// Health is this node's view of every backend's health.
func (n *Node) Health() *healthcheck.Checker { return n.health }

// Registry is the Prometheus registry served on the admin listener at /metrics.
func (n *Node) Registry() *prometheus.Registry { return n.registry }

// Ready reports whether the node has caught up with the cluster once and
// then served every service its data plane declares, and has not halted
// since (a halted node serves an old state).
func (n *Node) Ready() bool { return n.ready.Load() && n.fsm.halt() == nil }

// waitingFor says why the node is not ready yet (nothing once it is).
func (n *Node) waitingFor() []string {
	why := []string{}
	if n.Ready() {
		return why
	}
	if n.bootstrapNotice != "" {
		why = append(why, n.bootstrapNotice)
	}
	if msg := n.removedNotice.Load(); msg != nil {
		why = append(why, *msg)
	}
	if h := n.fsm.halt(); h != nil {
		why = append(why, "this node "+h.String())
	}
	if !n.caughtUp.Load() {
		why = append(why, fmt.Sprintf("catching up with the cluster: applied index %d, leader %q", n.raft.AppliedIndex(), n.raftDependency().Leader))
	}
	return append(why, n.pendingServices()...)
}

// AdminAddr is the address the admin API listens on.
func (n *Node) AdminAddr() string { return n.admin.addr() }
