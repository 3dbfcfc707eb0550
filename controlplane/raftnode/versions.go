package raftnode

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/hashicorp/raft"
)

// Versioned commands: every node advertises what it can apply (its
// state.Capabilities, in the status RPC); the leader writes an entry only when
// every member of the configuration can apply it, and refuses the write with
// an UpgradeError naming the others. A node that meets an entry it cannot
// apply anyway (a member downgraded since the leader asked, or one that was
// down and unknown) halts instead of skipping it (fsm.go).

// UpgradeError is a write the leader refused because a member runs a cbproxy
// build that cannot apply it. Nothing was written; the admin API answers
// 503 upgrade_in_progress with the message, which names the members.
type UpgradeError struct{ msg string }

func (e *UpgradeError) Error() string { return e.msg }

// ErrHalted is a request this node cannot serve because its state machine
// stopped at an entry its build cannot apply. The admin API answers
// 503 node_halted.
var ErrHalted = errors.New("this node stopped applying the replicated log")

// haltedError says where and why this node halted, or is nil.
func (n *Node) haltedError() error {
	if h := n.fsm.halt(); h != nil {
		return fmt.Errorf("%w at index %d (%s); upgrade cbproxy on %s and restart it; meanwhile send requests to another node", ErrHalted, h.Index, h.Reason, n.cfg.NodeID)
	}
	return nil
}

// How the leader keeps what the members can apply: it asks a member before
// a write when it never asked it, and whenever the member lacks what the
// write needs (so a refusal is never about a member upgraded since;
// refusals are rare, one call each). An answer older than capabilitiesTTL
// that allows the write is used, and renewed in the background beside it
// (a write never waits for that round trip). A member
// that does not answer keeps its last answer; one that never answered, or
// answers without capabilities (a build from before them), is taken to apply
// the baseline.
const (
	capabilitiesTTL     = 10 * time.Second
	capabilitiesTimeout = time.Second
)

// memberCapabilities is what the leader last learned of each member.
type memberCapabilities struct {
	mu    sync.Mutex
	nodes map[string]*memberSeen
	// refreshing holds the members asked in the background right now.
	refreshing map[string]bool
}

// startRefresh reports whether a background ask of the member may start
// (none is under way), and marks it under way.
func (m *memberCapabilities) startRefresh(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.refreshing[id] {
		return false
	}
	if m.refreshing == nil {
		m.refreshing = map[string]bool{}
	}
	m.refreshing[id] = true
	return true
}

func (m *memberCapabilities) endRefresh(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.refreshing, id)
}

type memberSeen struct {
	// caps is the member's own answer; nil while it has not given one.
	caps *state.Capabilities
	// legacy: it answered, without capabilities (a build from before them).
	legacy          bool
	asked, answered time.Time
}

func (m *memberCapabilities) get(id string) memberSeen {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s := m.nodes[id]; s != nil {
		return *s
	}
	return memberSeen{}
}

func (m *memberCapabilities) record(id string, asked time.Time, st *NodeStatus) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.nodes == nil {
		m.nodes = map[string]*memberSeen{}
	}
	s := m.nodes[id]
	if s == nil {
		s = &memberSeen{}
		m.nodes[id] = s
	}
	s.asked = asked
	if st != nil {
		s.caps, s.legacy, s.answered = st.Capabilities, st.Capabilities == nil, time.Now()
	}
}

// lacks is what of the entry the member cannot apply, as far as the leader
// knows.
func (s memberSeen) lacks(entry []byte) []string {
	caps := state.Baseline()
	if s.caps != nil {
		caps = *s.caps
	}
	return caps.Lacks(entry)
}

// why tells an operator what the leader's knowledge of the member rests on.
func (s memberSeen) why(now time.Time) string {
	switch {
	case s.answered.IsZero():
		return " (it has not answered yet: taken to apply only what every versioned cbproxy applies)"
	case s.legacy:
		return " (it runs a cbproxy from before versioned commands)"
	case now.Sub(s.answered) > capabilitiesTTL:
		return fmt.Sprintf(" (as it said %s ago; it does not answer now)", now.Sub(s.answered).Round(time.Second))
	}
	return ""
}

// SelfLacks refuses (UpgradeError) an encoded command this node cannot
// apply itself.
func (n *Node) SelfLacks(entry []byte) error {
	if lacks := n.fsm.machine.Capabilities().Lacks(entry); len(lacks) > 0 {
		return upgradeError([]string{fmt.Sprintf("%s (this node) runs a cbproxy version that cannot apply %s", n.cfg.NodeID, strings.Join(lacks, ", "))})
	}
	return nil
}

func upgradeError(problems []string) *UpgradeError {
	return &UpgradeError{msg: strings.Join(problems, "; ") + "; upgrade it first: nothing was written (GET /v1/cluster lists the members)"}
}

// checkMembersApply returns an UpgradeError unless every member of the Raft
// configuration, this leader included, can apply the entry. It runs on the
// leader before each write.
func (n *Node) checkMembersApply(ctx context.Context, entry []byte) error {
	if err := n.SelfLacks(entry); err != nil {
		return err
	}
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	var others []raft.Server
	for _, s := range f.Configuration().Servers {
		if s.ID != raft.ServerID(n.cfg.NodeID) {
			others = append(others, s)
		}
	}
	now := time.Now()
	var ask []raft.Server
	for _, s := range others {
		seen := n.members.get(string(s.ID))
		switch {
		case seen.asked.IsZero() || len(seen.lacks(entry)) > 0:
			ask = append(ask, s)
		case now.Sub(seen.asked) > capabilitiesTTL:
			// Its last answer allows the write: the write goes on with it
			// and the answer is renewed beside it, so no write waits for a
			// round trip every capabilitiesTTL.
			n.refreshCapabilities(s)
		}
	}
	n.askCapabilities(ctx, ask)
	var problems []string
	now = time.Now()
	for _, s := range others {
		seen := n.members.get(string(s.ID))
		if lacks := seen.lacks(entry); len(lacks) > 0 {
			problems = append(problems, fmt.Sprintf("%s runs a cbproxy version that cannot apply %s%s", s.ID, strings.Join(lacks, ", "), seen.why(now)))
		}
	}
	if len(problems) > 0 {
		return upgradeError(problems)
	}
	return nil
}

// learnCapabilities asks, in the background, every other member whose
// answer is older than capabilitiesTTL. Every node does it, not only the
// leader: a follower elected after the leader died then knows what the dead
// leader applies (a member that does not answer keeps its last answer),
// instead of taking it to apply only the baseline and refusing every newer
// kind until it comes back — the notifier's cursor and a node_lost record
// among them, in the very outage they report.
func (n *Node) learnCapabilities() {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	now := time.Now()
	for _, s := range f.Configuration().Servers {
		if s.ID == raft.ServerID(n.cfg.NodeID) {
			continue
		}
		if seen := n.members.get(string(s.ID)); seen.answered.IsZero() || now.Sub(seen.asked) > capabilitiesTTL {
			n.refreshCapabilities(s)
		}
	}
}

// refreshCapabilities asks a member in the background, once at a time.
func (n *Node) refreshCapabilities(s raft.Server) {
	if !n.members.startRefresh(string(s.ID)) {
		return
	}
	go func() {
		defer n.members.endRefresh(string(s.ID))
		n.askCapabilities(context.Background(), []raft.Server{s})
	}()
}

// askCapabilities asks the members for their status, all at once, each
// bounded by capabilitiesTimeout, and records the answers.
func (n *Node) askCapabilities(ctx context.Context, members []raft.Server) {
	var wg sync.WaitGroup
	for _, s := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			asked := time.Now()
			cctx, cancel := context.WithTimeout(ctx, capabilitiesTimeout)
			defer cancel()
			var st NodeStatus
			if err := n.cluster.Call(cctx, string(s.Address), rpcStatus, nil, &st); err != nil {
				n.members.record(string(s.ID), asked, nil)
				return
			}
			n.members.record(string(s.ID), asked, &st)
		}()
	}
	wg.Wait()
}
