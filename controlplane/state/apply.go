package state

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"reflect"
	"strings"
)

func checkPutService(e *Envelope, p PutService) error {
	if p.Spec == nil {
		return errors.New("a service definition needs pools; none was given")
	}
	_, err := NormalizeSpec(e.Service, *p.Spec)
	return err
}

// applyPutService creates or replaces a service. A seed applies only to a name
// the cluster has never seen. When a replacing spec has no weights, the
// current weights stay if every pool they give traffic to still exists;
// otherwise the first pool gets 100 %. The LKG moves to the replaced weights
// only when the weights change, so editing a health check does not lose the
// way back. Drained backends that stay in their pool stay drained.
func applyPutService(v *View, cur *Service, index uint64, e *Envelope, p PutService) (Result, *effect) {
	if _, deleted := v.Deleted[e.Service]; p.Seed && (cur != nil || deleted) {
		return Result{Version: cur.version(), Service: cur}, nil
	}
	s, _ := NormalizeSpec(e.Service, *p.Spec) // checkPutService accepted it
	ev := Event{Action: ActionServicePut}
	pools := s.PoolNames()
	if cur == nil {
		ev.Reason = "created with pools " + strings.Join(pools, ", ")
	} else {
		if cur.Rollout.Active() {
			return refuse(CodeRolloutRunning, cur, "rollout %s of service %q is %s: replace the service once it is promoted, aborted or rolled back", cur.Rollout.ID, cur.Name, cur.Rollout.State), nil
		}
		// The last rollout and the rollback counts stay with the service.
		s.Rollout, s.Rollbacks = cur.Rollout, cur.Rollbacks
		if w, ok := carry(cur.Weights, pools); ok && len(p.Spec.Weights) == 0 {
			s.Weights = w
		}
		lkg := cur.LKG
		if !s.Weights.Equal(cur.Weights) {
			lkg = cur.Weights
		}
		s.LKG = s.Weights
		if w, ok := carry(lkg, pools); ok {
			s.LKG = w
		}
		for pn, pool := range s.Pools {
			keepDrains(pool, cur.Pools[pn])
		}
		s.Version = cur.Version
		if reflect.DeepEqual(s, cur) {
			return Result{Version: cur.Version, Service: cur}, nil
		}
		ev.Before = cur.Weights
		ev.Reason = "replaced; pools " + strings.Join(pools, ", ")
	}
	ev.After = s.Weights
	s.Version = index
	return Result{Version: index, Service: s, Changed: true}, &effect{service: s, event: ev}
}

// carry returns w restricted to pools (0 for pools w leaves out), and whether
// that is still a valid split: whether every pool w gives traffic to is among
// pools.
func carry(w Weights, pools []string) (Weights, bool) {
	f := w.Fill(pools)
	return f, f.Sum() == Total
}

// keepDrains marks the backends of the new, unpublished pool p draining where
// the same address drains in old.
func keepDrains(p, old *Pool) {
	if old == nil {
		return
	}
	draining := map[string]bool{}
	for _, b := range old.Backends {
		if b.Draining {
			draining[b.Address] = true
		}
	}
	for i := range p.Backends {
		p.Backends[i].Draining = draining[p.Backends[i].Address]
	}
}

func applyDeleteService(_ *View, cur *Service, _ uint64, e *Envelope, _ DeleteService) (Result, *effect) {
	if cur == nil {
		return notFound(e.Service), nil
	}
	return Result{Changed: true}, &effect{event: Event{Action: ActionServiceDelete, Before: cur.Weights, Reason: "deleted"}}
}

func notFound(service string) Result {
	return refuse(CodeNotFound, nil, "service %q does not exist", service)
}

// checkSetWeights refuses any other action, "rollback" too: no build wrote
// a set_weights with it (rollbacks are their own kind), and an entry with it
// is refused the same way by every node of this build (docs/decisions.md,
// "Typed commands").
func checkSetWeights(_ *Envelope, p SetWeights) error {
	switch p.Action {
	case "", ChangeWeights, SwitchWeights:
	default:
		return fmt.Errorf("weights action %q is not one of %s, %s", p.Action, ChangeWeights, SwitchWeights)
	}
	// Without the service the pools are unknown, but names, ranges and the
	// sum can be checked already.
	for _, pool := range sortedKeys(p.Weights) {
		if err := ValidatePoolName(pool); err != nil {
			return err
		}
	}
	return p.Weights.Validate(sortedKeys(p.Weights))
}

func applySetWeights(_ *View, cur *Service, index uint64, e *Envelope, p SetWeights) (Result, *effect) {
	if cur == nil {
		return notFound(e.Service), nil
	}
	if cur.Rollout.Active() {
		return refuse(CodeRolloutRunning, cur, "rollout %s of service %q is %s: weights and switch wait until it is promoted, aborted or rolled back", cur.Rollout.ID, cur.Name, cur.Rollout.State), nil
	}
	pools := cur.PoolNames()
	if err := p.Weights.Validate(pools); err != nil {
		return refuse(CodeInvalid, cur, "%v", err), nil
	}
	w := p.Weights.Fill(pools)
	if w.Equal(cur.Weights) {
		return Result{Version: cur.Version, Service: cur}, nil
	}
	action := p.Action
	if action == "" {
		action = ChangeWeights
	}
	s := *cur
	s.Version, s.Weights, s.LKG = index, w, cur.Weights
	s.Guarded = guard(&s, cur.Weights, index, e.Time)
	// Before and After show the weights; the operator's reason, if any, is
	// added in Apply.
	ev := Event{Action: EventAction(action), Before: cur.Weights, After: w}
	return Result{Version: index, Service: &s, Changed: true}, &effect{service: &s, event: ev}
}

func checkSetPool(_ *Envelope, p SetPool) error {
	_, err := newPool(p.Pool, p.PoolVersion, p.Backends)
	return err
}

// applySetPool creates a pool with weight 0 or replaces the backends and
// version label of an existing one; addresses that stay keep their drain.
func applySetPool(_ *View, cur *Service, index uint64, e *Envelope, p SetPool) (Result, *effect) {
	if cur == nil {
		return notFound(e.Service), nil
	}
	pool, _ := newPool(p.Pool, p.PoolVersion, p.Backends) // checkSetPool accepted it
	old := cur.Pools[p.Pool]
	keepDrains(pool, old)
	if reflect.DeepEqual(pool, old) {
		return Result{Version: cur.Version, Service: cur}, nil
	}
	s := *cur
	s.Version = index
	s.Pools = maps.Clone(cur.Pools)
	s.Pools[p.Pool] = pool
	verb := "updated"
	ev := Event{Action: ActionPool}
	if old == nil {
		verb = "created"
		pools := s.PoolNames()
		s.Weights, s.LKG = cur.Weights.Fill(pools), cur.LKG.Fill(pools)
		ev.Before, ev.After = cur.Weights, s.Weights
	}
	backends := strings.Join(p.Backends, ", ")
	if backends == "" {
		backends = "none"
	}
	ev.Reason = fmt.Sprintf("pool %s %s: backends %s", p.Pool, verb, backends)
	if p.PoolVersion != "" {
		ev.Reason += ", version " + p.PoolVersion
	}
	return Result{Version: index, Service: &s, Changed: true}, &effect{service: &s, event: ev}
}

func checkSetDrain(_ *Envelope, p SetDrain) error {
	if p.Action != DrainBackends && p.Action != UndrainBackends {
		return fmt.Errorf("drain action %q is not %s or %s", p.Action, DrainBackends, UndrainBackends)
	}
	if err := ValidatePoolName(p.Pool); err != nil {
		return err
	}
	if len(p.Backends) == 0 {
		return errors.New("name the backend address to " + string(p.Action))
	}
	for _, a := range p.Backends {
		if err := ValidateBackend(a); err != nil {
			return err
		}
	}
	return nil
}

// applySetDrain drains or undrains backends of one pool. Draining stops new
// requests from the split; the weights stay as they are.
func applySetDrain(_ *View, cur *Service, index uint64, e *Envelope, p SetDrain) (Result, *effect) {
	if cur == nil {
		return notFound(e.Service), nil
	}
	old := cur.Pools[p.Pool]
	if old == nil {
		return refuse(CodeNotFound, cur, "service %q has no pool %q", e.Service, p.Pool), nil
	}
	pool := &Pool{Version: old.Version, Backends: append([]Backend(nil), old.Backends...)}
	drain := p.Action == DrainBackends
	changed := false
	for _, a := range p.Backends {
		i := pool.index(a)
		if i < 0 {
			return refuse(CodeNotFound, cur, "pool %q of service %q has no backend %q", p.Pool, e.Service, a), nil
		}
		changed = changed || pool.Backends[i].Draining != drain
		pool.Backends[i].Draining = drain
	}
	if !changed {
		return Result{Version: cur.Version, Service: cur}, nil
	}
	s := *cur
	s.Version = index
	s.Pools = maps.Clone(cur.Pools)
	s.Pools[p.Pool] = pool
	ev := Event{Action: EventAction(p.Action), Reason: fmt.Sprintf("%s of pool %s: %s", p.Action, p.Pool, strings.Join(p.Backends, ", "))}
	return Result{Version: index, Service: &s, Changed: true}, &effect{service: &s, event: ev}
}

// index returns the position of the backend with address a, or -1.
func (p *Pool) index(a string) int {
	for i, b := range p.Backends {
		if b.Address == a {
			return i
		}
	}
	return -1
}

// checkNodeJoin validates a joining node: its ID and two host:port
// addresses.
func checkNodeJoin(_ *Envelope, p NodeJoin) error {
	if err := checkNode(p.Node); err != nil {
		return err
	}
	n := p.Node
	for what, addr := range map[string]string{"cluster_addr": n.ClusterAddr, "admin_addr": n.AdminAddr} {
		if _, _, err := net.SplitHostPort(addr); err != nil || strings.ContainsAny(addr, " /") {
			return fmt.Errorf("node %s: %s %q is not host:port", n.ID, what, addr)
		}
	}
	return nil
}

// checkNodeRemove validates the node a removal names (only its ID counts).
func checkNodeRemove(_ *Envelope, p NodeRemove) error { return checkNode(p.Node) }

// checkNode validates the node of a membership command: an ID like a pool
// name, but up to 64 characters.
func checkNode(n *NodeInfo) error {
	if n == nil {
		return errors.New("a membership command needs a node")
	}
	return ValidateNodeID(n.ID)
}

// ValidateNodeID checks a node ID: 1 to 64 of a-z, A-Z, 0-9, '.', '_', '-'.
func ValidateNodeID(id string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("node id %q must be 1 to 64 characters", id)
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Errorf("node id %q may hold only letters, digits, '.', '_' and '-'", id)
		}
	}
	return nil
}

// ActorCluster is the actor of what nodes do by themselves: a node that
// joins through its join list, records its addresses, or forms the cluster.
const ActorCluster = "cluster"

// CodeNodeRemoved refuses a node that asks to join by itself after it was
// removed (409): removed means removed until an operator joins it.
const CodeNodeRemoved = "node_removed"

// RemovedNodeMessage is why a removed node may not join by itself, and what
// the operator does to take it back.
func RemovedNodeMessage(id string, index uint64) string {
	return fmt.Sprintf("node %s was removed from the cluster (at index %d) and does not join again by itself; to take it back, run `cbproxy cluster join %s CLUSTER_ADDR ADMIN_ADDR` by hand (POST /v1/cluster/join with an admin token)", id, index, id)
}

// applyNodeJoin records a member's addresses. A node removed earlier joins
// again only through an operator (any actor but ActorCluster), which clears
// its tombstone.
func applyNodeJoin(v *View, _ *Service, _ uint64, e *Envelope, p NodeJoin) (Result, *effect) {
	n := *p.Node
	if at, removed := v.Removed[n.ID]; removed && e.Actor == ActorCluster {
		return Result{Code: CodeNodeRemoved, Err: RemovedNodeMessage(n.ID, at)}, nil
	}
	if old, ok := v.Nodes[n.ID]; ok && old == n {
		return Result{}, nil
	}
	ev := Event{Action: ActionNodeJoin, Reason: fmt.Sprintf("node %s joined: cluster %s, admin %s", n.ID, n.ClusterAddr, n.AdminAddr)}
	return Result{Changed: true}, &effect{node: &n, event: ev}
}

// applyNodeRemove forgets a member and remembers it as removed (also a voter
// that never recorded its addresses). Removing a removed node changes nothing.
func applyNodeRemove(v *View, _ *Service, _ uint64, _ *Envelope, p NodeRemove) (Result, *effect) {
	id := p.Node.ID
	_, member := v.Nodes[id]
	if _, removed := v.Removed[id]; removed && !member {
		return Result{}, nil
	}
	ev := Event{Action: ActionNodeRemove, Reason: fmt.Sprintf("node %s removed", id)}
	return Result{Changed: true}, &effect{node: &NodeInfo{ID: id}, event: ev}
}
