package raftnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/cluster"
	"github.com/hashicorp/raft"
	"github.com/hashicorp/raft-wal/metadb"
	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"go.uber.org/zap"
)

// RecoverOptions say how Recover runs.
type RecoverOptions struct {
	// Force recovers even though another member of the old configuration
	// answers on its cluster address.
	Force bool
	// DryRun reports what Recover finds and would do, and changes nothing.
	DryRun bool
	// Out receives what Recover finds, will do and did, for the operator.
	Out io.Writer
	// ProbeTimeout bounds the call to each other member (default 2 s).
	ProbeTimeout time.Duration
	// Report, if set, receives what Out says as data, as far as Recover got
	// (cbproxy cluster recover --json).
	Report *RecoverReport
}

// RecoverReport is what Recover found, planned and did.
type RecoverReport struct {
	DataDir string `json:"data_dir"`
	NodeID  string `json:"node_id"`
	// ClusterAddr is the node's address in the new configuration.
	ClusterAddr string `json:"cluster_addr"`
	// RaftLog is false when the state came from applied.json alone.
	RaftLog bool `json:"raft_log"`
	// Before is the state found, After the state once recovered (absent on
	// a dry run).
	Before RecoverState  `json:"before"`
	After  *RecoverState `json:"after,omitempty"`
	// Members is the old configuration, with what each other member
	// answered on its cluster address.
	Members []RecoverMember `json:"members"`
	DryRun  bool            `json:"dry_run"`
	// Forced is set when --force made it go on although a member answered.
	Forced    bool `json:"forced"`
	Recovered bool `json:"recovered"`
}

// RecoverState sums up a node's replicated state.
type RecoverState struct {
	Index    uint64 `json:"index"`
	Services int    `json:"services"`
	Events   int    `json:"events"`
	Nodes    int    `json:"nodes"`
}

// RecoverMember is one member of the old configuration.
type RecoverMember struct {
	ID          string `json:"id"`
	ClusterAddr string `json:"cluster_addr"`
	Self        bool   `json:"self"`
	Answered    bool   `json:"answered"`
	Answer      string `json:"answer,omitempty"`
}

// Recover turns a stopped node whose cluster lost its quorum for good into a
// one-node cluster that keeps its whole state: every service, weight,
// version and event. cfg is the node's configuration (its data dir, node ID,
// cluster secret and TLS); the node must not run.
//
// With a Raft log it uses hashicorp/raft's RecoverCluster: every entry of the
// log is applied (also entries the old cluster may not have committed; no
// node can tell any more), a snapshot is written with a configuration that
// holds only this node, and the log is compacted. A data dir with
// applied.json but no Raft log (raft/ deleted) gets a snapshot of that state
// with the same one-node configuration. Fresh nodes then join it.
//
// It refuses while a node runs on the data dir (raft-wal's lock is held), and
// while any other member of the old configuration answers on its cluster
// address, unless o.Force: a healthy cluster must not be split in two.
func Recover(ctx context.Context, cfg Config, o RecoverOptions) error {
	out := o.Out
	if out == nil {
		out = io.Discard
	}
	if o.ProbeTimeout <= 0 {
		o.ProbeTimeout = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.DataDir == "" {
		return errors.New("no data dir: name the stopped node's data_dir")
	}
	if st, err := os.Stat(cfg.DataDir); err != nil {
		return fmt.Errorf("data dir: %w", err)
	} else if !st.IsDir() {
		return fmt.Errorf("data dir %s is not a directory", cfg.DataDir)
	}
	if cfg.NodeID == "" {
		id, err := readNodeID(cfg.DataDir)
		if err != nil {
			return err
		}
		cfg.NodeID = id
	}
	if err := checkNotRunning(cfg.DataDir); err != nil {
		return err
	}

	n := &Node{cfg: cfg}
	n.logger.Store(cfg.Logger)
	defer n.closeStores()
	if err := n.openStores(); err != nil {
		return err
	}
	hasState, err := raft.HasExistingState(n.wal, n.wal, n.snaps)
	if err != nil {
		return fmt.Errorf("reading raft state: %w", err)
	}
	before := n.fsm.machine.View()
	if !hasState && before.Index == 0 {
		return fmt.Errorf("nothing to recover in %s: it holds neither a Raft log nor an applied state", cfg.DataDir)
	}
	_, trans := raft.NewInmemTransport("")
	defer trans.Close()

	// The old configuration: Raft's, or without a log the node list of the
	// applied state.
	var members []raft.Server
	if hasState {
		c, err := raft.GetConfiguration(n.raftConfig(), n.fsm, n.wal, n.wal, n.snaps, trans)
		if err != nil {
			return fmt.Errorf("reading the Raft configuration: %w", err)
		}
		members = c.Servers
	} else {
		for _, ni := range before.Nodes {
			members = append(members, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(ni.ID), Address: raft.ServerAddress(ni.ClusterAddr)})
		}
		slices.SortFunc(members, func(a, b raft.Server) int { return strings.Compare(string(a.ID), string(b.ID)) })
	}
	var self raft.Server
	var others []raft.Server
	var listed []string
	for _, s := range members {
		listed = append(listed, fmt.Sprintf("%s %s", s.ID, s.Address))
		if s.ID == raft.ServerID(cfg.NodeID) {
			self = s
		} else {
			others = append(others, s)
		}
	}
	switch {
	case self.ID != "":
	case hasState:
		return fmt.Errorf("node %s is not in the Raft configuration of %s (%s): is the node ID right? Recover a node of that configuration",
			cfg.NodeID, cfg.DataDir, strings.Join(listed, ", "))
	default:
		self = raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(cfg.NodeID), Address: raft.ServerAddress(cfg.ClusterListen)}
	}

	report := o.Report
	if report == nil {
		report = &RecoverReport{}
	}
	*report = RecoverReport{DataDir: cfg.DataDir, NodeID: cfg.NodeID, ClusterAddr: string(self.Address), RaftLog: hasState,
		Before: stateOf(n), DryRun: o.DryRun, Members: []RecoverMember{}}
	for _, s := range members {
		report.Members = append(report.Members, RecoverMember{ID: string(s.ID), ClusterAddr: string(s.Address), Self: s.ID == self.ID})
	}
	fmt.Fprintf(out, "data dir %s: node %s, state at index %d: %s\n", cfg.DataDir, cfg.NodeID, before.Index, stateSummary(n))
	if hasState {
		fmt.Fprintf(out, "Raft configuration: %s\n", strings.Join(listed, ", "))
	} else {
		fmt.Fprintf(out, "no Raft log or snapshot (raft/ was deleted?): the state comes from applied.json; members it lists: %s\n", strings.Join(listed, ", "))
	}
	var answering []string
	if len(others) > 0 {
		fmt.Fprintln(out, "asking the other members on their cluster addresses:")
		for _, p := range probeMembers(ctx, cfg, others, o.ProbeTimeout) {
			fmt.Fprintf(out, "  %s %s: %s\n", p.server.ID, p.server.Address, p.answer)
			for i := range report.Members {
				if report.Members[i].ID == string(p.server.ID) {
					report.Members[i].Answered, report.Members[i].Answer = p.answered, p.answer
				}
			}
			if p.answered {
				answering = append(answering, fmt.Sprintf("%s at %s (%s)", p.server.ID, p.server.Address, p.answer))
			}
		}
	}
	fmt.Fprintf(out, "plan: %s becomes the only voter of a new configuration, at %s; ", self.ID, self.Address)
	if hasState {
		fmt.Fprintln(out, "every entry of its Raft log is applied (also any the old cluster may not have committed), then the log is compacted into a snapshot")
	} else {
		fmt.Fprintln(out, "a snapshot of applied.json becomes the start of a new Raft log")
	}
	if len(answering) > 0 {
		if !o.Force {
			return fmt.Errorf("refused: %s answers on its cluster address, so the old cluster may still be alive, and recovering this node would split it in two. "+
				"A cluster with quorum needs no recovery: remove dead members with `cbproxy cluster remove`. If those nodes are gone for good and what answers is something else, stop it or pass --force",
				strings.Join(answering, "; "))
		}
		report.Forced = true
		fmt.Fprintf(out, "--force: going ahead although %s answers\n", strings.Join(answering, "; "))
	}
	if o.DryRun {
		fmt.Fprintln(out, "dry run: nothing changed")
		return nil
	}

	conf := raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: self.ID, Address: self.Address}}}
	if hasState {
		if err := raft.RecoverCluster(n.raftConfig(), n.fsm, n.wal, n.wal, n.snaps, trans, conf); err != nil {
			return fmt.Errorf("recovering the Raft configuration: %w", err)
		}
	} else if err := snapshotAppliedState(n, conf, trans); err != nil {
		return err
	}
	after := stateOf(n)
	report.After, report.Recovered = &after, true
	fmt.Fprintf(out, "done: %s is a one-node cluster; its state is at index %d: %s\n", self.ID, n.fsm.machine.View().Index, stateSummary(n))
	fmt.Fprintln(out, "next: start the node (its Caddyfile may keep join and bootstrap_expect: it is a member and does not bootstrap again), "+
		"check `cbproxy cluster status`, then start fresh nodes (new data dirs) with `join` naming this node's admin address")
	return nil
}

// snapshotAppliedState starts a Raft history under the state restored from
// applied.json: a snapshot at its index, in term 1, with conf. Raft then
// continues the log after that index, so no new entry is taken for one the
// state already holds.
func snapshotAppliedState(n *Node, conf raft.Configuration, trans raft.Transport) error {
	snap, err := n.fsm.Snapshot()
	if err != nil {
		return err
	}
	sink, err := n.snaps.Create(raft.SnapshotVersionMax, n.fsm.machine.View().Index, 1, conf, 1, trans)
	if err != nil {
		return fmt.Errorf("creating a snapshot: %w", err)
	}
	if err := snap.Persist(sink); err != nil {
		return fmt.Errorf("writing the snapshot: %w", err)
	}
	return nil
}

// stateSummary counts what the operator wants to see kept.
func stateSummary(n *Node) string {
	s := stateOf(n)
	return fmt.Sprintf("%d services, %d events, %d nodes in the node list", s.Services, s.Events, s.Nodes)
}

func stateOf(n *Node) RecoverState {
	v := n.fsm.machine.View()
	events := n.fsm.machine.Events("", 0, math.MaxInt)
	return RecoverState{Index: v.Index, Services: len(v.Services), Events: len(events), Nodes: len(v.Nodes)}
}

// readNodeID reads the node ID a node generated in its data dir (a node
// whose Caddyfile names node_id has none there).
func readNodeID(dir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "node-id"))
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("no node ID: %s has no node-id file (the Caddyfile names it with node_id); give the node's Caddyfile or its ID", dir)
	}
	if err != nil {
		return "", fmt.Errorf("reading node id: %w", err)
	}
	id := strings.TrimSpace(string(b))
	if id == "" {
		return "", fmt.Errorf("%s/node-id is empty", dir)
	}
	return id, nil
}

// checkNotRunning refuses a data dir a node runs on: raft-wal's meta
// database is locked (flock) while a node has the log open.
func checkNotRunning(dataDir string) error {
	path := filepath.Join(dataDir, "raft", "wal", metadb.FileName)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: 500 * time.Millisecond})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return fmt.Errorf("the data dir %s is in use: a cbproxy node runs on it (its Raft log is locked); stop that node first", dataDir)
	}
	if err != nil {
		return fmt.Errorf("opening %s: %w", path, err)
	}
	return db.Close()
}

// memberProbe is what one other member's cluster address answered.
type memberProbe struct {
	server   raft.Server
	answered bool
	answer   string
}

// probeMembers calls every member on its cluster address, all at once. Any
// process that accepts the connection counts as an answer; with the
// cluster's secret (or TLS) the member also says who and how it is.
func probeMembers(ctx context.Context, cfg Config, members []raft.Server, timeout time.Duration) []memberProbe {
	probes := make([]memberProbe, len(members))
	var client *cluster.Transport
	if auth, err := peerAuth(storedClusterSecret(cfg), cfg); err == nil && (auth.Secret != "" || auth.TLS != nil) {
		client, _ = cluster.Listen(cluster.Config{Listen: "127.0.0.1:0", Auth: auth, Logger: cfg.Logger.Named("cluster"), Timeout: timeout})
	}
	if client != nil {
		defer client.Close()
	}
	var wg sync.WaitGroup
	for i, s := range members {
		wg.Add(1)
		go func(p *memberProbe) {
			defer wg.Done()
			p.server = s
			conn, err := (&net.Dialer{Timeout: timeout}).DialContext(ctx, "tcp", string(s.Address))
			if err != nil {
				p.answer = "no answer (" + err.Error() + ")"
				return
			}
			_ = conn.Close()
			p.answered = true
			p.answer = "accepts connections on its cluster port"
			if client == nil {
				p.answer += " (no cluster secret given to ask who it is)"
				return
			}
			var st NodeStatus
			cctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			if err := client.Call(cctx, string(s.Address), rpcStatus, nil, &st); err != nil {
				p.answer += " but does not answer as a member (" + err.Error() + ")"
				return
			}
			p.answer = fmt.Sprintf("runs as %s, %s, applied index %d", st.ID, st.State, st.AppliedIndex)
		}(&probes[i])
	}
	wg.Wait()
	return probes
}
