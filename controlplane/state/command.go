package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Kind is the first byte of an encoded command; it selects the command's
// payload type and handlers in the registry (registry.go). A node never skips a
// kind it does not know: it stops before it rather than let its state
// diverge, and the leader writes no kind some member lacks (Capabilities).
type Kind uint8

const (
	KindPutService    Kind = 0x01
	KindDeleteService Kind = 0x02
	KindSetWeights    Kind = 0x03
	KindSetPool       Kind = 0x04
	KindSetDrain      Kind = 0x05

	KindNodeJoin   Kind = 0x06
	KindNodeRemove Kind = 0x07

	KindRolloutStart  Kind = 0x08
	KindRolloutChange Kind = 0x09 // step, promote, pause, resume, wait
	KindRollback      Kind = 0x0A
)

// Command is one replicated change: the envelope every kind shares and the
// payload of its kind, which says what changes. The node that proposes it
// (the leader) stamps Time; Apply never reads a clock.
//
// In the log and between nodes a command is one JSON object: the envelope's
// fields, then the payload's (MarshalJSON), exactly as builds wrote it when
// Command was one struct with every field (testdata/entries.golden).
type Command struct {
	Envelope
	Payload Payload
}

// Envelope is what every command carries, whatever its kind.
type Envelope struct {
	Time time.Time `json:"time"`
	// Actor is the token name that asked for the change ("local" without tokens,
	// "seed" for the Caddyfile, "watcher" for automatic decisions, "cluster"
	// for what nodes do by themselves).
	Actor string `json:"actor"`
	// IdemKey and IdemHash make a retried write a no-op: the same key with the
	// same hash returns the first result; with another hash it is a conflict.
	IdemKey  string `json:"idem_key,omitempty"`
	IdemHash string `json:"idem_hash,omitempty"`
	// IfVersion, when set, must equal the service's current version (0 means
	// "the service must not exist").
	IfVersion *uint64 `json:"if_version,omitempty"`
	// Service is the service the command is about; commands about the
	// cluster's members name none.
	Service string `json:"service"`
	// Reason is the actor's reason, recorded in the command's event.
	Reason string `json:"reason,omitempty"`
}

// Payload is what one kind of command says beyond the envelope. Each payload
// type is registered once, with its kind's handlers (registry.go).
type Payload interface {
	Kind() Kind
}

// NewCommand is a command about service, asked for by actor.
func NewCommand(service, actor string, p Payload) Command {
	return Command{Envelope: Envelope{Service: service, Actor: actor}, Payload: p}
}

// Kind is the kind of the command's payload (0 without one).
func (c Command) Kind() Kind {
	if c.Payload == nil {
		return 0
	}
	return c.Payload.Kind()
}

// The payloads, one per kind. Never remove, rename or retype a field: logs
// and forwarded commands of older builds hold them (see DESIGN.md, "Changing
// commands"). Within a payload the fields keep the order of the one Command
// struct of earlier builds, so that encodings stay byte for byte the same.

// PutService creates or replaces the envelope's service.
type PutService struct {
	// Spec is the new definition.
	Spec *ServiceSpec `json:"spec,omitempty"`
	// Seed marks a definition from a Caddyfile: it applies only to a name the
	// cluster has never seen (neither live nor deleted).
	Seed bool `json:"seed,omitempty"`
}

// DeleteService deletes the envelope's service.
type DeleteService struct{}

// SetWeights sets the service's weights; pools left out get 0.
type SetWeights struct {
	Weights Weights `json:"weights,omitempty"`
	// Action names the event ("" is ChangeWeights).
	Action WeightsAction `json:"action,omitempty"`
}

// WeightsAction is what a weights change is: the event it records. Both
// make the weights they replace the new LKG and open a guard.
type WeightsAction string

const (
	ChangeWeights WeightsAction = WeightsAction(ActionWeights) // PUT …/weights
	SwitchWeights WeightsAction = WeightsAction(ActionSwitch)  // POST …/switch: 100 % to one pool
)

// SetPool gives a pool its backends and version label; a new pool enters
// with weight 0.
type SetPool struct {
	Pool     string   `json:"pool,omitempty"`
	Backends []string `json:"backends,omitempty"`
	// PoolVersion is the pool's free-text version label.
	PoolVersion string `json:"pool_version,omitempty"`
}

// SetDrain drains or undrains backends of one pool.
type SetDrain struct {
	Action   DrainAction `json:"action,omitempty"`
	Pool     string      `json:"pool,omitempty"`
	Backends []string    `json:"backends,omitempty"`
}

// DrainAction says whether a SetDrain drains or undrains; it names the
// event.
type DrainAction string

const (
	DrainBackends   DrainAction = DrainAction(ActionDrain)
	UndrainBackends DrainAction = DrainAction(ActionUndrain)
)

// NodeJoin records the addresses of a member of the cluster.
type NodeJoin struct {
	Node *NodeInfo `json:"node,omitempty"`
}

// NodeRemove takes a member out of the cluster; only Node.ID counts.
type NodeRemove struct {
	Node *NodeInfo `json:"node,omitempty"`
}

// RolloutStart starts a rollout of the service.
type RolloutStart struct {
	Spec *RolloutSpec `json:"rollout_spec,omitempty"`
}

// RolloutChange moves the service's active rollout. RolloutID, FromStep and
// FromStepStarted, when set, name the step epoch a decision is about: a
// decision about an earlier one changes nothing (StepDecision).
type RolloutChange struct {
	Action          RolloutAction `json:"action,omitempty"`
	RolloutID       string        `json:"rollout_id,omitempty"`
	FromStep        int           `json:"from_step,omitempty"`
	FromStepStarted time.Time     `json:"from_step_started,omitzero"`
	// Figures are the measurements behind the watcher's decision. They stay
	// in the log only: the event records none, as every build before typed
	// commands applied it (an event that differed between builds would make
	// their states differ).
	Figures map[string]any `json:"figures,omitempty"`
}

// RolloutAction is what a RolloutChange does to the rollout.
type RolloutAction string

const (
	// StepRollout is the watcher's: the step passed its hold and the SLO;
	// the next step, or promoted after the last one.
	StepRollout RolloutAction = RolloutAction(ActionRolloutStep)
	// PromoteRollout is an operator's: the next step now, whatever the hold.
	PromoteRollout RolloutAction = RolloutAction(ActionRolloutPromote)
	PauseRollout   RolloutAction = RolloutAction(ActionRolloutPause)
	// ResumeRollout restarts the hold of the paused step.
	ResumeRollout RolloutAction = RolloutAction(ActionRolloutResume)
	// WaitRollout is the watcher's at a manual gate: the step passed, the
	// rollout waits for promote. Its event is a rollout_step.
	WaitRollout RolloutAction = "rollout_wait"
)

// Rollback restores the service's LKG weights; an active rollout ends
// rolled back, or aborted. An automatic one names the rollout or guard it
// answers: once that has ended, it changes nothing.
type Rollback struct {
	RolloutID string  `json:"rollout_id,omitempty"`
	GuardID   string  `json:"guard_id,omitempty"`
	Trigger   Trigger `json:"trigger,omitempty"`
	// Figures are the measurements behind an automatic rollback, kept in its
	// event.
	Figures map[string]any `json:"figures,omitempty"`
}

func (PutService) Kind() Kind    { return KindPutService }
func (DeleteService) Kind() Kind { return KindDeleteService }
func (SetWeights) Kind() Kind    { return KindSetWeights }
func (SetPool) Kind() Kind       { return KindSetPool }
func (SetDrain) Kind() Kind      { return KindSetDrain }
func (NodeJoin) Kind() Kind      { return KindNodeJoin }
func (NodeRemove) Kind() Kind    { return KindNodeRemove }
func (RolloutStart) Kind() Kind  { return KindRolloutStart }
func (RolloutChange) Kind() Kind { return KindRolloutChange }
func (Rollback) Kind() Kind      { return KindRollback }

// Commands about the cluster's members name no service.
func (NodeJoin) aboutCluster()   {}
func (NodeRemove) aboutCluster() {}

type clusterPayload interface{ aboutCluster() }

// ServiceSpec is what a PUT of a service (or a Caddyfile seed) defines. Omitted
// parts take defaults: weights give 100 to the first pool in name order when
// absent, the SLO and guard take the runbook defaults, no health check runs.
type ServiceSpec struct {
	Pools   map[string]PoolSpec `json:"pools"`
	Weights Weights             `json:"weights,omitempty"`
	Health  *HealthCheck        `json:"health,omitempty"`
	SLO     *SLO                `json:"slo,omitempty"`
	Guard   *Duration           `json:"guard,omitempty"`
}

// PoolSpec is a pool in a ServiceSpec.
type PoolSpec struct {
	Version  string   `json:"version,omitempty"`
	Backends []string `json:"backends"`
}

// Result is what Apply returns for one command. Business failures are values,
// never panics: the command is still in the log, it just changed nothing.
type Result struct {
	// Code is "" on success, otherwise one of the Code* constants.
	Code string `json:"code,omitempty"`
	// Err says what was wrong, in words a user can act on.
	Err string `json:"error,omitempty"`
	// Version is the service's version after the command (or its current one
	// when the command was refused); 0 when the service does not exist.
	Version uint64 `json:"version"`
	// Service is the service as the command left it (nil after a delete or when
	// it does not exist); on a replay, the service as it is now.
	Service *Service `json:"service,omitempty"`
	// Index is the Raft index of the command that gave this result: on a
	// replay the first command's (0 when a snapshot of an older build did
	// not record it); 0 for commands refused before the idempotency step.
	Index uint64 `json:"index,omitempty"`
	// Replayed is true when an idempotency key matched an earlier command.
	// The code, error, version, index and Changed are then the first
	// result's, and Service is the service as it is now.
	Replayed bool `json:"replayed,omitempty"`
	// Changed is false when the command was valid but changed nothing (a seed
	// for a known name).
	Changed bool `json:"changed"`
}

// Result codes; the admin API maps each to an HTTP status.
const (
	CodeInvalid          = "invalid"                // 400
	CodeNotFound         = "not_found"              // 404
	CodeVersionMismatch  = "version_mismatch"       // 409
	CodeIdempotencyReuse = "idempotency_key_reused" // 409
)

// OK reports whether the command succeeded.
func (r Result) OK() bool { return r.Code == "" }

// Encode turns a command into its log entry: the Kind byte, then JSON.
func Encode(c Command) ([]byte, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encoding command: %w", err)
	}
	return append([]byte{byte(c.Kind())}, b...), nil
}

// Decode is the inverse of Encode. The Kind byte is authoritative: it
// selects the payload type (the JSON "kind" is read, to refuse what does not
// decode as a kind, and then ignored). A kind this build does not register is
// an error. Decode itself ignores JSON fields the kind's types lack; Apply
// refuses such an entry as unsupported first (Capabilities.Lacks), so a
// field a newer leader added is never dropped in silence.
func Decode(data []byte) (Command, error) {
	if len(data) == 0 {
		return Command{}, errors.New("empty command")
	}
	return decode(Kind(data[0]), data[1:])
}

// envelopeJSON is the envelope as the log holds it: the kind first.
type envelopeJSON struct {
	Kind Kind `json:"kind"`
	Envelope
}

func decode(k Kind, object []byte) (Command, error) {
	reg, err := registered(k)
	if err != nil {
		return Command{}, err
	}
	var env envelopeJSON
	if err := json.Unmarshal(object, &env); err != nil {
		return Command{}, fmt.Errorf("command of kind %#02x: %w", byte(k), err)
	}
	p, err := reg.decode(object)
	if err != nil {
		return Command{}, fmt.Errorf("command of kind %#02x: %w", byte(k), err)
	}
	return Command{Envelope: env.Envelope, Payload: p}, nil
}

// MarshalJSON writes the command as one object: "kind", the envelope's
// fields, then the payload's. It is what a follower forwards to the leader,
// and the log entry after its Kind byte.
func (c Command) MarshalJSON() ([]byte, error) {
	if _, err := c.registration(); err != nil {
		return nil, err
	}
	env, err := json.Marshal(envelopeJSON{Kind: c.Kind(), Envelope: c.Envelope})
	if err != nil {
		return nil, err
	}
	p, err := json.Marshal(c.Payload)
	if err != nil {
		return nil, err
	}
	if len(p) <= 2 { // {}
		return env, nil
	}
	return append(append(env[:len(env)-1], ','), p[1:]...), nil
}

// UnmarshalJSON reads a command written by MarshalJSON: its "kind" selects
// the payload type.
func (c *Command) UnmarshalJSON(data []byte) error {
	var head struct {
		Kind Kind `json:"kind"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return err
	}
	d, err := decode(head.Kind, data)
	if err != nil {
		return err
	}
	*c = d
	return nil
}
