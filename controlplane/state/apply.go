package state

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"reflect"
	"strings"
)

// handler is the code of one command kind.
type handler struct {
	// check validates what the command says on its own, without the state:
	// the admin API runs it (Command.Validate) before it proposes, and Apply
	// runs it again because the log may hold commands from any node.
	check func(c *Command) error
	// apply applies a command that passed check at index to the view v;
	// cur is the command's service (nil when it does not exist). Refusals
	// come back as results; the effect is nil when nothing changed.
	apply func(v *View, cur *Service, index uint64, c *Command) (Result, *effect)
}

// effect is what a command changed: the service it leaves (nil when it
// deleted it) and the event to record. Apply fills in the event's index, time,
// actor and service, and the command's reason when it has one.
type effect struct {
	service *Service
	event   Event
	// node, for membership commands, is the node to store (or, with an empty
	// ClusterAddr, to forget); service is then unused.
	node *NodeInfo
}

// handlers is the dispatch table, one entry per kind (Consul's FSM style).
// Its kinds are the build's kind capabilities; a kind added here needs a name
// in kindNames.
var handlers = map[Kind]handler{
	KindPutService:    {checkPutService, applyPutService},
	KindDeleteService: {func(*Command) error { return nil }, applyDeleteService},
	KindSetWeights:    {checkSetWeights, applySetWeights},
	KindSetPool:       {checkSetPool, applySetPool},
	KindSetDrain:      {checkSetDrain, applySetDrain},
	KindNodeJoin:      {checkNode, applyNodeJoin},
	KindNodeRemove:    {checkNode, applyNodeRemove},
	KindRolloutStart:  {checkRolloutStart, applyRolloutStart},
	KindRolloutChange: {checkRolloutChange, applyRolloutChange},
	KindRollback:      {checkRollback, applyRollback},
}

// Validate checks the parts of c that need no state: the kind, the service
// name and what the kind's handler checks (a spec, weights that sum to 100, a
// pool's backends), and for a new definition the limits of CheckSpec. Apply
// also checks c against the state (the service and its pools must exist, for
// example), but not those limits (see CheckSpec).
func (c Command) Validate() error {
	h, err := c.handler()
	if err != nil {
		return err
	}
	if err := c.validateCommon(); err != nil {
		return err
	}
	if err := h.check(&c); err != nil {
		return err
	}
	if c.Kind == KindPutService {
		return CheckSpec(c.Service, *c.Spec)
	}
	return nil
}

func (c *Command) handler() (handler, error) {
	h, ok := handlers[c.Kind]
	if !ok {
		return h, fmt.Errorf("unknown command kind %#02x; is this node older than the one that proposed it?", byte(c.Kind))
	}
	return h, nil
}

func (c *Command) validateCommon() error {
	if len(c.IdemKey) > maxIdemKeyLen {
		return fmt.Errorf("idempotency key is longer than %d characters", maxIdemKeyLen)
	}
	if c.Kind == KindNodeJoin || c.Kind == KindNodeRemove {
		if c.Service != "" {
			return errors.New("a membership command names no service")
		}
		return nil
	}
	return ValidateServiceName(c.Service)
}

func checkPutService(c *Command) error {
	if c.Spec == nil {
		return errors.New("a service definition needs pools; none was given")
	}
	_, err := NormalizeSpec(c.Service, *c.Spec)
	return err
}

// applyPutService creates or replaces a service. A seed applies only to a name
// the cluster has never seen. When a replacing spec has no weights, the
// current weights stay if every pool they give traffic to still exists;
// otherwise the first pool gets 100 %. The LKG moves to the replaced weights
// only when the weights change, so editing a health check does not lose the
// way back. Drained backends that stay in their pool stay drained.
func applyPutService(v *View, cur *Service, index uint64, c *Command) (Result, *effect) {
	if _, deleted := v.Deleted[c.Service]; c.Seed && (cur != nil || deleted) {
		return Result{Version: cur.version(), Service: cur}, nil
	}
	s, _ := NormalizeSpec(c.Service, *c.Spec) // checkPutService accepted it
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
		if w, ok := carry(cur.Weights, pools); ok && len(c.Spec.Weights) == 0 {
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
		for pn, p := range s.Pools {
			keepDrains(p, cur.Pools[pn])
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

func applyDeleteService(_ *View, cur *Service, _ uint64, c *Command) (Result, *effect) {
	if cur == nil {
		return notFound(c.Service), nil
	}
	return Result{Changed: true}, &effect{event: Event{Action: ActionServiceDelete, Before: cur.Weights, Reason: "deleted"}}
}

func notFound(service string) Result {
	return refuse(CodeNotFound, nil, "service %q does not exist", service)
}

func checkSetWeights(c *Command) error {
	switch c.Action {
	case "", ActionWeights, ActionSwitch, ActionRollback:
	default:
		return fmt.Errorf("weights action %q is not one of %s, %s, %s", c.Action, ActionWeights, ActionSwitch, ActionRollback)
	}
	// Without the service the pools are unknown, but names, ranges and the
	// sum can be checked already.
	for _, p := range sortedKeys(c.Weights) {
		if err := ValidatePoolName(p); err != nil {
			return err
		}
	}
	return c.Weights.Validate(sortedKeys(c.Weights))
}

func applySetWeights(_ *View, cur *Service, index uint64, c *Command) (Result, *effect) {
	if cur == nil {
		return notFound(c.Service), nil
	}
	if cur.Rollout.Active() {
		return refuse(CodeRolloutRunning, cur, "rollout %s of service %q is %s: weights and switch wait until it is promoted, aborted or rolled back", cur.Rollout.ID, cur.Name, cur.Rollout.State), nil
	}
	pools := cur.PoolNames()
	if err := c.Weights.Validate(pools); err != nil {
		return refuse(CodeInvalid, cur, "%v", err), nil
	}
	w := c.Weights.Fill(pools)
	if w.Equal(cur.Weights) {
		return Result{Version: cur.Version, Service: cur}, nil
	}
	action := c.Action
	if action == "" {
		action = ActionWeights
	}
	s := *cur
	s.Version, s.Weights = index, w
	// Before and After already show the weights; the reason says only what
	// they cannot (the operator's own reason replaces it in Apply).
	reason := ""
	if action == ActionRollback {
		reason = "back to the last known good weights"
	} else {
		s.LKG = cur.Weights
	}
	if action != ActionRollback {
		s.Guarded = guard(&s, cur.Weights, index, c.Time)
	}
	ev := Event{Action: action, Before: cur.Weights, After: w, Reason: reason}
	return Result{Version: index, Service: &s, Changed: true}, &effect{service: &s, event: ev}
}

func checkSetPool(c *Command) error {
	_, err := newPool(c.Pool, c.PoolVersion, c.Backends)
	return err
}

// applySetPool creates a pool with weight 0 or replaces the backends and
// version label of an existing one; addresses that stay keep their drain.
func applySetPool(_ *View, cur *Service, index uint64, c *Command) (Result, *effect) {
	if cur == nil {
		return notFound(c.Service), nil
	}
	p, _ := newPool(c.Pool, c.PoolVersion, c.Backends) // checkSetPool accepted it
	old := cur.Pools[c.Pool]
	keepDrains(p, old)
	if reflect.DeepEqual(p, old) {
		return Result{Version: cur.Version, Service: cur}, nil
	}
	s := *cur
	s.Version = index
	s.Pools = maps.Clone(cur.Pools)
	s.Pools[c.Pool] = p
	verb := "updated"
	ev := Event{Action: ActionPool}
	if old == nil {
		verb = "created"
		pools := s.PoolNames()
		s.Weights, s.LKG = cur.Weights.Fill(pools), cur.LKG.Fill(pools)
		ev.Before, ev.After = cur.Weights, s.Weights
	}
	backends := strings.Join(c.Backends, ", ")
	if backends == "" {
		backends = "none"
	}
	ev.Reason = fmt.Sprintf("pool %s %s: backends %s", c.Pool, verb, backends)
	if c.PoolVersion != "" {
		ev.Reason += ", version " + c.PoolVersion
	}
	return Result{Version: index, Service: &s, Changed: true}, &effect{service: &s, event: ev}
}

func checkSetDrain(c *Command) error {
	if c.Action != ActionDrain && c.Action != ActionUndrain {
		return fmt.Errorf("drain action %q is not %s or %s", c.Action, ActionDrain, ActionUndrain)
	}
	if err := ValidatePoolName(c.Pool); err != nil {
		return err
	}
	if len(c.Backends) == 0 {
		return errors.New("name the backend address to " + c.Action)
	}
	for _, a := range c.Backends {
		if err := ValidateBackend(a); err != nil {
			return err
		}
	}
	return nil
}

// applySetDrain drains or undrains backends of one pool. Draining stops new
// requests from the split; the weights stay as they are.
func applySetDrain(_ *View, cur *Service, index uint64, c *Command) (Result, *effect) {
	if cur == nil {
		return notFound(c.Service), nil
	}
	old := cur.Pools[c.Pool]
	if old == nil {
		return refuse(CodeNotFound, cur, "service %q has no pool %q", c.Service, c.Pool), nil
	}
	p := &Pool{Version: old.Version, Backends: append([]Backend(nil), old.Backends...)}
	drain := c.Action == ActionDrain
	changed := false
	for _, a := range c.Backends {
		i := p.index(a)
		if i < 0 {
			return refuse(CodeNotFound, cur, "pool %q of service %q has no backend %q", c.Pool, c.Service, a), nil
		}
		changed = changed || p.Backends[i].Draining != drain
		p.Backends[i].Draining = drain
	}
	if !changed {
		return Result{Version: cur.Version, Service: cur}, nil
	}
	s := *cur
	s.Version = index
	s.Pools = maps.Clone(cur.Pools)
	s.Pools[c.Pool] = p
	ev := Event{Action: c.Action, Reason: fmt.Sprintf("%s of pool %s: %s", c.Action, c.Pool, strings.Join(c.Backends, ", "))}
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

// checkNode validates a membership command's node: an ID like a pool name
// (but up to 64 characters) and, to join, two host:port addresses.
func checkNode(c *Command) error {
	n := c.Node
	if n == nil {
		return errors.New("a membership command needs a node")
	}
	if err := ValidateNodeID(n.ID); err != nil {
		return err
	}
	if c.Kind == KindNodeRemove {
		return nil
	}
	for what, addr := range map[string]string{"cluster_addr": n.ClusterAddr, "admin_addr": n.AdminAddr} {
		if _, _, err := net.SplitHostPort(addr); err != nil || strings.ContainsAny(addr, " /") {
			return fmt.Errorf("node %s: %s %q is not host:port", n.ID, what, addr)
		}
	}
	return nil
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
func applyNodeJoin(v *View, _ *Service, _ uint64, c *Command) (Result, *effect) {
	n := *c.Node
	if at, removed := v.Removed[n.ID]; removed && c.Actor == ActorCluster {
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
func applyNodeRemove(v *View, _ *Service, _ uint64, c *Command) (Result, *effect) {
	_, member := v.Nodes[c.Node.ID]
	if _, removed := v.Removed[c.Node.ID]; removed && !member {
		return Result{}, nil
	}
	ev := Event{Action: ActionNodeRemove, Reason: fmt.Sprintf("node %s removed", c.Node.ID)}
	return Result{Changed: true}, &effect{node: &NodeInfo{ID: c.Node.ID}, event: ev}
}
