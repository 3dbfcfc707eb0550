// Package adminapi is cbproxy's HTTP admin API (/v1, /health/*, /metrics;
// docs/api.md). It depends only on Deps, the narrow interfaces it declares
// here, so it can be served over anything that answers them; the methods
// that do I/O say so. See DESIGN.md in this folder.
package adminapi

import (
	"context"
	"net/http"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/raftnode"
	"github.com/cbproxy/cbproxy/controlplane/slo"
	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/cbproxy/cbproxy/healthcheck"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Deps is everything the admin API asks of the rest of the node, each part
// behind the narrow interface it needs, so that the API can be served over
// anything that answers them. Methods that do I/O (Raft, calls to other
// nodes) say so; the others read memory.
type Deps struct {
	Node      Replicated
	Verdicts  Verdicts
	Health    Health
	Readiness Readiness
	// Loads returns the local data plane's in-flight and long-lived counts,
	// nil while the node has none.
	Loads func() Loads
	// Metrics is served at /metrics.
	Metrics prometheus.Gatherer
	// Notifiers sends test notifications; nil on a node without them.
	Notifiers NotifierTester
}

// Replicated is the replicated state and what writes and reads it
// (*raftnode.Node).
type Replicated interface {
	ID() string
	View() *state.View
	QueryEvents(q state.EventQuery) ([]state.Event, *state.EventGap)
	RemembersKey(key string, now time.Time) bool
	// Events streams events as they are applied; the channel closes when
	// the reader falls behind or cancel is called.
	Events() (events <-chan state.Event, cancel func())
	Status() raftnode.Status
	// SelfLacks refuses a command this node's build cannot apply.
	SelfLacks(entry []byte) error

	// Propose commits a command through the leader (Raft I/O; a follower
	// forwards it) and returns once this node applied it.
	Propose(ctx context.Context, cmd state.Command) (raftnode.Applied, error)
	// ConsistentRead waits until this node applied what the leader had
	// committed (I/O: the leader's read index).
	ConsistentRead(ctx context.Context) error
	// WaitAll waits until every node applied index (I/O: every node).
	WaitAll(ctx context.Context, index uint64) (appliedOn, notApplied []string)
	// ClusterStatus asks every node for its view of itself (I/O).
	ClusterStatus(ctx context.Context) raftnode.ClusterStatus
	// Join and Remove change the membership through the leader (I/O).
	Join(ctx context.Context, ni state.NodeInfo, actor string) error
	Remove(ctx context.Context, id, actor string) error
	// Notify records a node announcing itself while a cluster forms.
	Notify(ni state.NodeInfo)
	// VerifyClusterCall checks a peer's signed call from its header.
	VerifyClusterCall(r *http.Request) (bodyDigest string, err error)
}

// Verdicts are the SLO watcher's (*rollouts.Watcher).
type Verdicts interface {
	// Verdict is the leader's latest verdict on a service (I/O on a
	// follower: it asks the leader).
	Verdict(ctx context.Context, service string) *slo.Verdict
}

// Health is this node's view of every backend's health
// (*healthcheck.Checker).
type Health interface {
	Get(service, pool, address string) healthcheck.Backend
	// WaitChecked waits until every backend of a pool was checked once
	// since it appeared (up to ctx).
	WaitChecked(ctx context.Context, service, pool string)
}

// Loads are the local data plane's counts of a backend's ordinary requests
// in flight and its long-lived connections.
type Loads interface {
	InFlight(service, pool, address string) int64
	LongLived(service, pool, address string) int64
}

// ServiceLoads is what a Loads may also answer: the counts of every backend
// of a service in one call, in the order of the replicated service (pools
// by name, then each pool's backends), for GET /v1/services (one look-up
// per backend was a third of its time at 6,000 backends). A backend it does
// not list, or lists in another order, is asked for alone.
type ServiceLoads interface {
	ServiceLoads(service string, dst []BackendLoad) []BackendLoad
}

// BackendLoad is one backend's counts in ServiceLoads' list.
type BackendLoad struct {
	Pool, Address       string
	InFlight, LongLived int64
}

// ServiceHealth is what a Health may also answer: the status of every
// backend of a service in one call, in the same order
// (*healthcheck.Checker).
type ServiceHealth interface {
	ServiceHealth(service string, dst []healthcheck.BackendStatus) []healthcheck.BackendStatus
}

// Readiness says whether the node may take traffic, and what it waits for.
type Readiness interface {
	Ready() bool
	WaitingFor() []string
}

// Config is the admin API's own settings.
type Config struct {
	Tokens []Token
	// Limits bound slow clients; nil takes DefaultLimits.
	Limits *Limits
	// Logger returns the logger of the moment (Caddy replaces it on
	// reload); nil logs nothing.
	Logger func() *zap.Logger
}

// loads returns the data plane's counts, nil without a data plane.
func (a *Server) loads() Loads {
	if a.Loads == nil {
		return nil
	}
	return a.Loads()
}
