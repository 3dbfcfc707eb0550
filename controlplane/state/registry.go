package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sort"
)

// commands is the registry: every kind this build knows, once, with its
// name, payload type and handlers. A kind added here is a new capability by
// itself (Capabilities); see DESIGN.md, "Changing commands".
var commands = func() registry {
	r := registry{}
	register(r, "put_service", checkPutService, applyPutService)
	register(r, "delete_service", func(*Envelope, DeleteService) error { return nil }, applyDeleteService)
	register(r, "set_weights", checkSetWeights, applySetWeights)
	register(r, "set_pool", checkSetPool, applySetPool)
	register(r, "set_drain", checkSetDrain, applySetDrain)
	register(r, "node_join", checkNodeJoin, applyNodeJoin)
	register(r, "node_remove", checkNodeRemove, applyNodeRemove)
	register(r, "rollout_start", checkRolloutStart, applyRolloutStart)
	register(r, "rollout_change", checkRolloutChange, applyRolloutChange)
	register(r, "rollback", checkRollback, applyRollback)
	register(r, "put_notifier", checkPutNotifier, applyPutNotifier)
	register(r, "delete_notifier", checkNotifierName, applyDeleteNotifier)
	register(r, "notify_cursor", checkNotifyCursor, applyNotifyCursor)
	register(r, "record_event", checkRecordEvent, applyRecordEvent)
	return r
}()

// builtWithout are kinds this build registers but does not apply, as a
// build from before them (see hide_drain.go): it neither advertises them nor
// applies entries of them. Kind names stay, for its messages.
var builtWithout []Kind

// anyKindFields are the top-level JSON keys of every registered kind, for
// reading an entry of a kind this build lacks.
var anyKindFields = func() map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for _, k := range slices.Sorted(maps.Keys(commands)) {
		maps.Copy(out, commands[k].keys)
	}
	return out
}()

// registry maps each kind to its registration.
type registry map[Kind]*registration

// registration is one kind of command: its name, payload type and handlers,
// and the JSON field paths its entries may hold.
type registration struct {
	kind    Kind
	name    string
	payload reflect.Type
	decode  func(object []byte) (Payload, error)
	// check validates what the command says on its own, without the state:
	// the admin API runs it (Command.Validate) before it proposes, and Apply
	// runs it again because the log may hold commands from any node.
	check func(e *Envelope, p Payload) error
	// apply applies a command that passed check at index to the view v;
	// cur is the command's service (nil when it does not exist). Refusals
	// come back as results; the effect is nil when nothing changed.
	apply func(v *View, cur *Service, index uint64, e *Envelope, p Payload) (Result, *effect)
	// keys are the top-level JSON keys of the kind's entries (the
	// envelope's and the payload's) and their types; fields every field
	// path under them, sorted (see Capabilities).
	keys   map[string]reflect.Type
	fields []string
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
	// notifierName, for notifier commands, is the notifier to store
	// (notifier) or, with notifier nil, to delete; service is then unused.
	notifierName string
	notifier     *Notifier
	// noEvent: the command records no event (a delivery cursor).
	noEvent bool
	// eventOnly: the command only records its event (RecordEvent).
	eventOnly bool
}

// register adds the kind of payload type P to r, with its name, check and
// apply. It panics, at init, on a kind or name registered twice, on kind 0
// (a command without payload), and on a payload field named like an
// envelope field: any of them would make entries ambiguous.
func register[P Payload](r registry, name string, check func(*Envelope, P) error, apply func(*View, *Service, uint64, *Envelope, P) (Result, *effect)) {
	var zero P
	k := zero.Kind()
	t := reflect.TypeFor[P]()
	if k == 0 {
		panic(fmt.Sprintf("state: payload %s has kind 0, which means no payload", t))
	}
	if old, dup := r[k]; dup {
		panic(fmt.Sprintf("state: command kind %#02x registered twice: %s (%s) and %s (%s)", byte(k), old.name, old.payload, name, t))
	}
	for _, old := range r {
		if old.name == name {
			panic(fmt.Sprintf("state: command name %s registered twice: kinds %#02x and %#02x", name, byte(old.kind), byte(k)))
		}
	}
	keys := jsonFields(reflect.TypeFor[envelopeJSON]())
	for key, ft := range jsonFields(t) {
		if _, clash := keys[key]; clash {
			panic(fmt.Sprintf("state: payload %s has a field %q, which the envelope has", t, key))
		}
		keys[key] = ft
	}
	var fields []string
	for key, ft := range keys {
		fields = append(fields, key)
		fieldPaths(ft, key, &fields)
	}
	sort.Strings(fields)
	r[k] = &registration{
		kind: k, name: name, payload: t, keys: keys, fields: fields,
		decode: func(object []byte) (Payload, error) {
			var p P
			err := json.Unmarshal(object, &p)
			return p, err
		},
		check: func(e *Envelope, p Payload) error { return check(e, p.(P)) },
		apply: func(v *View, cur *Service, index uint64, e *Envelope, p Payload) (Result, *effect) {
			return apply(v, cur, index, e, p.(P))
		},
	}
}

// String is the kind's name, as messages about versions show it.
func (k Kind) String() string {
	if reg, ok := commands[k]; ok {
		return reg.name
	}
	return fmt.Sprintf("kind %#02x", byte(k))
}

// registered is the registration of kind k; an unknown kind is an error.
func registered(k Kind) (*registration, error) {
	reg, ok := commands[k]
	if !ok {
		return nil, fmt.Errorf("unknown command kind %#02x; is this node older than the one that proposed it?", byte(k))
	}
	return reg, nil
}

// registration is the registration of the command's kind, which must be
// that of its payload's type.
func (c *Command) registration() (*registration, error) {
	if c.Payload == nil {
		return nil, errors.New("a command needs a payload, what it changes")
	}
	reg, err := registered(c.Payload.Kind())
	if err != nil {
		return nil, err
	}
	if t := reflect.TypeOf(c.Payload); t != reg.payload {
		return nil, fmt.Errorf("a %s command carries a %s, not a %s", reg.name, reg.payload, t)
	}
	return reg, nil
}

// Validate checks the parts of c that need no state: the kind, the service
// name and what the kind's check does (a spec, weights that sum to 100, a
// pool's backends), and for a new definition the limits of CheckSpec. Apply
// also checks c against the state (the service and its pools must exist, for
// example), but not those limits (see CheckSpec).
func (c Command) Validate() error {
	reg, err := c.registration()
	if err != nil {
		return err
	}
	if err := c.validateCommon(); err != nil {
		return err
	}
	if err := reg.check(&c.Envelope, c.Payload); err != nil {
		return err
	}
	if p, ok := c.Payload.(PutService); ok {
		return CheckSpec(c.Service, *p.Spec)
	}
	return nil
}

func (c *Command) validateCommon() error {
	if len(c.IdemKey) > maxIdemKeyLen {
		return fmt.Errorf("idempotency key is longer than %d characters", maxIdemKeyLen)
	}
	if _, ok := c.Payload.(serviceOptionalPayload); ok && c.Service == "" {
		return nil
	}
	if _, ok := c.Payload.(clusterPayload); ok {
		if c.Service != "" {
			return errors.New("a membership command names no service")
		}
		return nil
	}
	return ValidateServiceName(c.Service)
}
