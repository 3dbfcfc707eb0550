package controlplane

import (
	"fmt"
	"time"

	"go.uber.org/zap"
)

// watchReadiness marks the node ready (docs/api.md "Health": 503 until
// caught up once) in two steps: first it waits until the Raft node knows a
// leader and has applied everything the leader had committed; then until
// every service the data plane declares exists and is routed
// (pendingServices). Ready stays ready.
//
// It looks at the services again after every view the data plane has
// taken (the seeds of a start arrive in a few batches, and the last one
// makes the node ready at once), and at both every 50 ms (Raft's own
// entries publish no view, the data plane may be set after the node
// starts, and on a follower the catch-up check asks the leader).
func (n *Node) watchReadiness() {
	defer n.wg.Done()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	tick := true
	for {
		// Taken before looking, so that a view published meanwhile wakes
		// the wait below.
		published := n.raft.NextPublished()
		if !n.caughtUp.Load() && tick && n.raft.CaughtUp() {
			n.caughtUp.Store(true)
		}
		if n.caughtUp.Load() && len(n.pending(true)) == 0 {
			n.ready.Store(true)
			n.log().Info("node ready: caught up, and every declared service is routed", zap.Uint64("applied_index", n.View().Index))
			return
		}
		select {
		case <-n.done:
			return
		case <-published:
			tick = false
		case <-t.C:
			tick = true
		}
	}
}

// pendingServices says, for each service the data plane declares that it
// cannot serve yet, why: it is not in this node's applied state, or the data
// plane has no routing table for it yet. A declared service deleted through
// the API does not count: seeds never re-create it, so waiting would be
// forever, and the proxy answers for it as the operator decided.
func (n *Node) pendingServices() []string { return n.pending(false) }

// pending is pendingServices, or only its first entry when first is set
// (to know whether any is pending, without a reason for each of 1,000).
func (n *Node) pending(first bool) []string {
	dp := n.dataPlane()
	if dp == nil {
		return nil
	}
	v := n.View()
	var pending []string
	for _, name := range dp.Declared() {
		if first && len(pending) > 0 {
			break
		}
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

// Ready reports whether the node has caught up with the cluster once and
// then served every service its data plane declares, and has not halted
// since (a halted node serves an old state).
func (n *Node) Ready() bool { return n.ready.Load() && n.raft.Halted() == nil }

// WaitingFor says why the node is not ready yet (nothing once it is).
func (n *Node) WaitingFor() []string {
	why := []string{}
	if n.Ready() {
		return why
	}
	why = append(why, n.raft.Notices()...)
	if !n.caughtUp.Load() {
		st := n.raft.Status()
		why = append(why, fmt.Sprintf("catching up with the cluster: applied index %d, leader %q", st.Applied, st.Leader))
	}
	return append(why, n.pendingServices()...)
}
