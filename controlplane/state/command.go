package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Kind is the first byte of an encoded command; it selects the handler in the
// dispatch table. A node never skips a kind it does not know: it stops before
// it rather than let its state diverge, and the leader writes no kind some
// member lacks (Capabilities).
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

// Command is one replicated change. The node that proposes it (the leader)
// stamps Time; Apply never reads a clock.
type Command struct {
	Kind Kind      `json:"kind"`
	Time time.Time `json:"time"`
	// Actor is the token name that asked for the change ("local" without tokens,
	// "seed" for the Caddyfile, "watcher" for automatic decisions).
	Actor string `json:"actor"`
	// IdemKey and IdemHash make a retried write a no-op: the same key with the
	// same hash returns the first result; with another hash it is a conflict.
	IdemKey  string `json:"idem_key,omitempty"`
	IdemHash string `json:"idem_hash,omitempty"`
	// IfVersion, when set, must equal the service's current version (0 means
	// "the service must not exist").
	IfVersion *uint64 `json:"if_version,omitempty"`
	Service   string  `json:"service"`
	Reason    string  `json:"reason,omitempty"`

	// KindPutService: the new definition. With Seed, it applies only to a name the
	// cluster has never seen (neither live nor deleted).
	Spec *ServiceSpec `json:"spec,omitempty"`
	Seed bool         `json:"seed,omitempty"`

	// KindSetWeights: the new weights (pools left out get 0) and whether this is
	// a "weights" (the default), "switch" or "rollback" change. The action names
	// the event; a rollback leaves the LKG as it is, the others make the weights
	// they replace the new LKG.
	Weights Weights `json:"weights,omitempty"`
	Action  string  `json:"action,omitempty"`

	// KindSetPool: the pool's new backends and version label; creates the pool
	// with weight 0 if it is new. KindSetDrain: the pool and the addresses to
	// drain (Action "drain") or undrain (Action "undrain").
	Pool        string   `json:"pool,omitempty"`
	Backends    []string `json:"backends,omitempty"`
	PoolVersion string   `json:"pool_version,omitempty"`

	// KindNodeJoin: the node that joined the cluster; KindNodeRemove: the
	// node that left (only its ID counts).
	Node *NodeInfo `json:"node,omitempty"`

	// KindRolloutStart: what to roll out.
	RolloutSpec *RolloutSpec `json:"rollout_spec,omitempty"`
	// KindRolloutChange and KindRollback: the rollout (and, for a step, the
	// step and when its hold last started) a decision is about; a decision
	// about an earlier one changes nothing. GuardID names the guard an
	// automatic rollback answers.
	RolloutID       string    `json:"rollout_id,omitempty"`
	FromStep        int       `json:"from_step,omitempty"`
	FromStepStarted time.Time `json:"from_step_started,omitzero"`
	GuardID         string    `json:"guard_id,omitempty"`
	// KindRollback: auto, manual or abort; Figures are the measurements
	// behind an automatic decision, kept in its event.
	Trigger string         `json:"trigger,omitempty"`
	Figures map[string]any `json:"figures,omitempty"`
}

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
	return append([]byte{byte(c.Kind)}, b...), nil
}

// Decode is the inverse of Encode. The Kind byte is authoritative. Decode
// itself ignores JSON fields Command lacks; Apply refuses such an entry as
// unsupported first (Capabilities.Lacks), so a field a newer leader added is
// never dropped in silence.
func Decode(data []byte) (Command, error) {
	if len(data) == 0 {
		return Command{}, errors.New("empty command")
	}
	var c Command
	if err := json.Unmarshal(data[1:], &c); err != nil {
		return Command{}, fmt.Errorf("command of kind %#02x: %w", data[0], err)
	}
	c.Kind = Kind(data[0])
	return c, nil
}
