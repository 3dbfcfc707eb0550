// Package state is cbproxy's replicated state machine: the services, their pools,
// weights and event trail, and the commands that change them. It is pure: no clock,
// no randomness, no I/O, no Raft. Every node applies the same commands in the same
// order and ends with the same state; see DESIGN.md in this folder for the
// invariants.
package state

import "time"

// Service is one traffic-switching unit. Values are immutable once published:
// Apply copies a service before it changes it, so readers (the data plane, the
// admin API) may keep a *Service without locks.
type Service struct {
	Name string `json:"name"`
	// Version is the Raft index of the last committed change to this service.
	Version uint64 `json:"version"`
	// Pools by name. Every pool has an entry in Weights (0 included).
	Pools map[string]*Pool `json:"pools"`
	// Weights always sum to exactly 100 % (10000 basis points).
	Weights Weights `json:"weights"`
	// LKG is the last known good weights: the weights in force just before the
	// last weights/switch change. A rollback restores them. Like Weights, it
	// lists every pool and sums to 100 %.
	LKG    Weights      `json:"lkg"`
	Health *HealthCheck `json:"health,omitempty"`
	SLO    SLO          `json:"slo"`
	Guard  Duration     `json:"guard"`

	// Rollout is the current or last rollout (nil if there never was one).
	Rollout *Rollout `json:"rollout,omitempty"`
	// Guarded is the open guard period, if any.
	Guarded *Guarded `json:"guarded,omitempty"`
	// Rollbacks counts the rollbacks by trigger (auto, manual, abort).
	Rollbacks map[Trigger]uint64 `json:"rollbacks,omitempty"`
}

// Pool is a named group of backends with an optional free-text version label.
type Pool struct {
	Version  string    `json:"version"`
	Backends []Backend `json:"backends"`
}

// Backend is one upstream address of a pool: host:port, [ipv6]:port, a DNS name
// with port, or https://host:port for TLS to the backend.
type Backend struct {
	Address  string `json:"address"`
	Draining bool   `json:"draining"`
}

// HealthCheck is how every node actively checks the backends of a service.
type HealthCheck struct {
	Path     string   `json:"path"`
	Interval Duration `json:"interval"`
	Timeout  Duration `json:"timeout"`
	Fails    int      `json:"fails"`
	Passes   int      `json:"passes"`
}

// SLO holds the thresholds a rollout is judged by.
type SLO struct {
	Advance     Thresholds `json:"advance"`
	Rollback    Thresholds `json:"rollback"`
	Window      Duration   `json:"window"`
	MinRequests int        `json:"min_requests"`
	Consecutive int        `json:"consecutive"`
}

// Thresholds is one pair of limits: an error rate (a fraction, 0.01 = 1 %) and a
// P95 latency in milliseconds.
type Thresholds struct {
	ErrorRate float64 `json:"error_rate"`
	P95ms     float64 `json:"p95_ms"`
}

// Defaults of a service's SLO, guard and active health check (docs/caddyfile.md
// "Directive cbproxy", docs/api.md "PUT /v1/services/{svc}").
var (
	DefaultSLO = SLO{
		Advance:     Thresholds{ErrorRate: 0.001, P95ms: 500},
		Rollback:    Thresholds{ErrorRate: 0.01, P95ms: 2000},
		Window:      Duration(30 * time.Second),
		MinRequests: 100,
		Consecutive: 3,
	}
	DefaultGuard       = Duration(10 * time.Minute)
	DefaultHealthCheck = HealthCheck{Interval: Duration(2 * time.Second), Timeout: Duration(2 * time.Second), Fails: 2, Passes: 2}
)

// Event is one entry of the audit trail. Index is the Raft index of the command
// that caused it, so events are ordered and unique across the cluster.
type Event struct {
	Index   uint64         `json:"index"`
	Time    time.Time      `json:"time"`
	Actor   string         `json:"actor"`
	Action  EventAction    `json:"action"`
	Service string         `json:"service,omitempty"`
	Before  Weights        `json:"before,omitempty"`
	After   Weights        `json:"after,omitempty"`
	Reason  string         `json:"reason,omitempty"`
	Figures map[string]any `json:"figures,omitempty"`
}

// EventAction names what an event records (docs/api.md "Events").
type EventAction string

// Event actions (docs/api.md "Events").
const (
	ActionServicePut    EventAction = "service_put"
	ActionServiceDelete EventAction = "service_delete"
	ActionPool          EventAction = "pool"
	ActionWeights       EventAction = "weights"
	ActionSwitch        EventAction = "switch"
	ActionDrain         EventAction = "drain"
	ActionUndrain       EventAction = "undrain"
	ActionRollback      EventAction = "rollback"
	ActionNodeJoin      EventAction = "node_join"
	ActionNodeRemove    EventAction = "node_remove"
)

// NodeInfo is one member of the cluster as the replicated state knows it: the
// addresses its peers reach it on. Raft's configuration holds the voters; this
// adds the admin address the cluster status shows.
type NodeInfo struct {
	ID          string `json:"id"`
	ClusterAddr string `json:"cluster_addr"`
	AdminAddr   string `json:"admin_addr"`
}
