package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"go.uber.org/zap"
)

// listFSM is a state machine that records the entries it applied.
type listFSM struct {
	mu      sync.Mutex
	entries []string
}

func (f *listFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.entries = append(f.entries, string(l.Data))
	return nil
}

func (f *listFSM) list() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.entries)
}

func (f *listFSM) Snapshot() (raft.FSMSnapshot, error) { return listSnapshot(f.list()), nil }

func (f *listFSM) Restore(r io.ReadCloser) error {
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.entries = nil
	if len(b) > 0 {
		f.entries = strings.Split(string(b), "\n")
	}
	return nil
}

type listSnapshot []string

func (s listSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write([]byte(strings.Join(s, "\n"))); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (listSnapshot) Release() {}

// raftNode is one member of an in-process Raft cluster over the transport.
type raftNode struct {
	*node
	raft *raft.Raft
	fsm  *listFSM
}

// startRaftCluster starts one Raft node per auth, over real TCP, all of them
// voters.
func startRaftCluster(t *testing.T, auths ...Auth) []*raftNode {
	t.Helper()
	nodes := make([]*raftNode, len(auths))
	var servers []raft.Server
	for i, auth := range auths {
		nodes[i] = &raftNode{node: listenNode(t, auth, time.Second), fsm: &listFSM{}}
		addr := raft.ServerAddress(nodes[i].Addr())
		servers = append(servers, raft.Server{ID: raft.ServerID(addr), Address: addr})
	}
	for _, n := range nodes {
		conf := raft.DefaultConfig()
		conf.LocalID = raft.ServerID(n.Addr())
		conf.HeartbeatTimeout = 100 * time.Millisecond
		conf.ElectionTimeout = 100 * time.Millisecond
		conf.LeaderLeaseTimeout = 100 * time.Millisecond
		conf.CommitTimeout = 10 * time.Millisecond
		conf.Logger = hclog.NewNullLogger()
		trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			Stream: n.RaftStreamLayer(), MaxPool: 3, Timeout: time.Second, Logger: hclog.NewNullLogger(),
		})
		store := raft.NewInmemStore()
		r, err := raft.NewRaft(conf, n.fsm, store, store, raft.NewInmemSnapshotStore(), trans)
		if err != nil {
			t.Fatalf("NewRaft: %v", err)
		}
		n.raft = r
		// Registered after listenNode's cleanup, so it runs first: Raft
		// stops before its transport closes.
		t.Cleanup(func() {
			if err := r.Shutdown().Error(); err != nil {
				t.Errorf("raft shutdown: %v", err)
			}
		})
	}
	// Every node bootstraps with the same servers, as bootstrap_expect does,
	// so that every node campaigns.
	for _, n := range nodes {
		if err := n.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
			t.Fatalf("bootstrap: %v", err)
		}
	}
	return nodes
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// leaderOf returns the only leader among nodes, or nil.
func leaderOf(nodes []*raftNode) *raftNode {
	var leader *raftNode
	for _, n := range nodes {
		if n.raft.State() == raft.Leader {
			if leader != nil {
				return nil
			}
			leader = n
		}
	}
	return leader
}

func waitLeader(t *testing.T, nodes []*raftNode) *raftNode {
	t.Helper()
	var leader *raftNode
	waitFor(t, 5*time.Second, "a leader", func() bool { leader = leaderOf(nodes); return leader != nil })
	return leader
}

func waitEntries(t *testing.T, nodes []*raftNode, want ...string) {
	t.Helper()
	for _, n := range nodes {
		waitFor(t, 5*time.Second, fmt.Sprintf("%s to apply %v", n.Addr(), want), func() bool {
			return slices.Equal(n.fsm.list(), want)
		})
	}
}

func apply(t *testing.T, n *raftNode, entry string) {
	t.Helper()
	if err := n.raft.Apply([]byte(entry), time.Second).Error(); err != nil {
		t.Fatalf("Apply %q on %s: %v", entry, n.Addr(), err)
	}
}

// isolate cuts the given node off from all others, both ways.
func isolate(isolated *raftNode, nodes []*raftNode) {
	for _, n := range nodes {
		if n != isolated {
			n.block(isolated.Addr())
			isolated.block(n.Addr())
		}
	}
}

func without(nodes []*raftNode, drop *raftNode) []*raftNode {
	return slices.DeleteFunc(slices.Clone(nodes), func(n *raftNode) bool { return n == drop })
}

func TestRaftOverTransport(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	tests := []struct {
		name  string
		auths []Auth
	}{
		{name: "secret", auths: []Auth{{Secret: "s3cret"}, {Secret: "s3cret"}, {Secret: "s3cret"}}},
		{name: "mutual TLS", auths: []Auth{
			{TLS: nodeTLS(t, ca, ca, "a")}, {TLS: nodeTLS(t, ca, ca, "b")}, {TLS: nodeTLS(t, ca, ca, "c")},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkNoGoroutineLeak(t)
			nodes := startRaftCluster(t, tt.auths...)
			leader := waitLeader(t, nodes)
			apply(t, leader, "a")
			waitEntries(t, nodes, "a")

			// Isolate the leader: the majority elects another and commits.
			isolate(leader, nodes)
			majority := without(nodes, leader)
			newLeader := waitLeader(t, majority)
			apply(t, newLeader, "b")
			waitEntries(t, majority, "a", "b")
			waitFor(t, 2*time.Second, "the isolated leader to step down", func() bool {
				return leader.raft.State() != raft.Leader
			})
			if got := leader.fsm.list(); !slices.Equal(got, []string{"a"}) {
				t.Errorf("isolated node applied %v, want [a]", got)
			}

			// Heal: everyone converges on one leader and the same log.
			for _, n := range nodes {
				n.unblockAll()
			}
			waitEntries(t, nodes, "a", "b")
			apply(t, waitLeader(t, nodes), "c")
			waitEntries(t, nodes, "a", "b", "c")
		})
	}
}

// A node with the wrong secret never takes part: it receives nothing and its
// vote never counts towards a quorum.
func TestRaftWrongSecret(t *testing.T) {
	checkNoGoroutineLeak(t)
	const right, wrong = "correct-horse-7781", "wrong-battery-2210"
	nodes := startRaftCluster(t, Auth{Secret: right}, Auth{Secret: right}, Auth{Secret: wrong})
	a, b, intruder := nodes[0], nodes[1], nodes[2]
	leader := waitLeader(t, nodes)
	if leader == intruder {
		t.Fatal("the node with the wrong secret became leader")
	}
	apply(t, leader, "a")
	waitEntries(t, []*raftNode{a, b}, "a")

	// With a and b apart, only the intruder could make a quorum with either.
	a.block(b.Addr())
	b.block(a.Addr())
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		for _, n := range nodes {
			if n.raft.State() == raft.Leader {
				_ = n.raft.Apply([]byte("split"), 100*time.Millisecond)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, n := range nodes {
		if slices.Contains(n.fsm.list(), "split") {
			t.Errorf("%s applied an entry committed without a real quorum", n.Addr())
		}
	}
	if got := intruder.fsm.list(); len(got) != 0 {
		t.Errorf("the node with the wrong secret applied %v", got)
	}
	a.Handle("echo", echo)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := intruder.Call(ctx, a.Addr(), "echo", nil, nil); !errors.Is(err, ErrAuth) {
		t.Errorf("RPC from the node with the wrong secret: %v, want ErrAuth", err)
	}

	for _, n := range []*raftNode{a, b} {
		if n.logs.FilterField(zap.String("peer", intruder.Addr())).Len() == 0 {
			t.Errorf("%s logged no refusal naming %s", n.Addr(), intruder.Addr())
		}
		checkLogsFree(t, n.logs, right, wrong)
	}
	if intruder.logs.FilterMessage("refused cluster connection").Len() == 0 {
		t.Errorf("the node with the wrong secret logged no refusal")
	}
	checkLogsFree(t, intruder.logs, right, wrong)
}
