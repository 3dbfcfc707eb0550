// Package controlplane is cbproxy's replicated control plane, put together
// from its parts: the Raft node (raftnode), the admin API (adminapi), the
// SLO watcher that moves rollouts (rollouts), and this node's health
// checker. This package is the only one the data plane (proxymod) and the
// CLI start it through: Config, Start, Node, DataPlane. It imports no Caddy
// package. See DESIGN.md in this folder.
package controlplane

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/adminapi"
	"github.com/cbproxy/cbproxy/controlplane/internal/seams"
	"github.com/cbproxy/cbproxy/controlplane/notify"
	"github.com/cbproxy/cbproxy/controlplane/raftnode"
	"github.com/cbproxy/cbproxy/controlplane/rollouts"
	"github.com/cbproxy/cbproxy/controlplane/slo"
	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/cbproxy/cbproxy/healthcheck"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
)

// Config is what a node needs to start. Empty fields take the documented
// defaults (docs/caddyfile.md, "Global options").
type Config struct {
	NodeID          string // default: a random id persisted in DataDir
	DataDir         string // required
	ClusterListen   string // default 127.0.0.1:7001
	AdminListen     string // default 127.0.0.1:7101
	AdminTLSCert    string
	AdminTLSKey     string
	Bootstrap       bool
	BootstrapExpect int
	Join            []string
	Tokens          []adminapi.Token
	// ClusterSecret authenticates nodes to each other; "" means the one
	// kept in DataDir/cluster-secret, generated on first start.
	ClusterSecret string
	// Mutual TLS on the cluster port: this node's certificate and key, and the
	// CA that signs every node's certificate. Optional.
	ClusterTLSCert string
	ClusterTLSKey  string
	ClusterTLSCA   string
	Logger         *zap.Logger

	// DataPlane is the local data plane from the start, so readiness never
	// judges without it; SetDataPlane replaces it (a config reload). Nil
	// means a node without one (readiness is then catching up alone).
	DataPlane DataPlane

	// The fields below are test seams, not settings: no configuration sets
	// them, so they stay out of the package's API. Tests in this package set
	// them directly (DESIGN.md, "Test seams").
	raft        seams.Raft
	adminLimits *adminapi.Limits
	// notify tunes the notification dispatcher (retries, cursor
	// interval, node-lost threshold); zero values take its defaults.
	notify notify.Config
}

// Defaults for the listeners (docs/caddyfile.md, "Global options").
const (
	DefaultClusterListen = "127.0.0.1:7001"
	DefaultAdminListen   = "127.0.0.1:7101"
)

// DataPlane is what the control plane asks the local data plane: the
// ordinary requests in flight to a backend and its long-lived connections
// (upgraded connections and event streams), apart (its health comes from
// the node's checker); a pool's traffic over the last d, for the SLO judge;
// and which services it declares and whether it routes them, for readiness
// and for the judge, which expects the figures of every node that serves a
// service.
type DataPlane interface {
	InFlight(service, pool, address string) int64
	LongLived(service, pool, address string) int64
	Window(service, pool string, d time.Duration) slo.Window
	// Declared lists the services this node's configuration routes (the
	// handlers of its Caddyfile, with a seed or without), in name order: the
	// services it must serve to be ready, and whose figures the SLO judge
	// expects from it.
	Declared() []string
	// Routes reports whether the data plane has built a routing table from
	// the replicated service: it routes the service's requests instead of
	// answering that it does not know the service.
	Routes(service string) bool
}

// Node is one running cbproxy control-plane node. It outlives Caddy config
// reloads (proxymod keeps it in a usage pool).
type Node struct {
	cfg    Config
	logger atomic.Pointer[zap.Logger]
	dp     atomic.Pointer[DataPlane]

	raft     *raftnode.Node
	health   *healthcheck.Checker
	watcher  *rollouts.Watcher
	notifier *notify.Dispatcher
	admin    *adminapi.Server
	registry *prometheus.Registry

	// caughtUp and ready latch readiness (readiness.go).
	caughtUp atomic.Bool
	ready    atomic.Bool
	// seedErrors holds, by service, why the cluster refused this node's
	// Caddyfile seed: readiness says it while it waits for the service.
	seedErrors sync.Map

	done     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// Start opens the node's data dir, starts Raft, the health checker, the SLO
// watcher and the admin API.
func Start(cfg Config) (*Node, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("data_dir is required")
	}
	if cfg.ClusterListen == "" {
		cfg.ClusterListen = DefaultClusterListen
	}
	if cfg.AdminListen == "" {
		cfg.AdminListen = DefaultAdminListen
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Bootstrap && (cfg.BootstrapExpect > 0 || len(cfg.Join) > 0) {
		return nil, errors.New("bootstrap starts a single-node cluster; it cannot be combined with bootstrap_expect or join")
	}
	if cfg.BootstrapExpect > 1 && len(cfg.Join) == 0 {
		return nil, fmt.Errorf("bootstrap_expect %d needs join with the admin addresses of the other nodes", cfg.BootstrapExpect)
	}
	rcfg := cfg.raftConfig()
	if rcfg.MultiNode() && cfg.ClusterSecret == "" {
		return nil, errors.New("a multi-node cluster needs cluster_secret: nodes prove to each other that they belong with it (a node started without one keeps its own in data_dir/cluster-secret)")
	}
	if err := adminapi.CheckListen(cfg.AdminListen, cfg.Tokens); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating data dir: %w", err)
	}
	if cfg.NodeID == "" {
		id, err := raftnode.PersistedNodeID(cfg.DataDir)
		if err != nil {
			return nil, err
		}
		cfg.NodeID = id
	}

	// The admin listener first: its bound address is what peers are told.
	ln, err := adminapi.Listen(cfg.AdminListen, cfg.AdminTLSCert, cfg.AdminTLSKey)
	if err != nil {
		return nil, err
	}
	rcfg = cfg.raftConfig()
	rcfg.AdminAddr = ln.Addr().String()
	n := &Node{cfg: cfg, done: make(chan struct{}), registry: prometheus.NewRegistry()}
	n.logger.Store(cfg.Logger)
	if cfg.DataPlane != nil {
		n.SetDataPlane(cfg.DataPlane)
	}
	if n.raft, err = raftnode.Start(rcfg); err != nil {
		ln.Close()
		return nil, err
	}
	// Every node checks every backend itself (docs/api.md "Health"); the
	// checker follows the replicated services.
	n.health = healthcheck.New(healthcheck.Config{Logger: n.log().Named("health")})
	n.raft.OnChange(n.health.Update)
	n.watcher = rollouts.New(rollouts.Config{
		Node:      n.raft,
		Transport: n.raft.Transport(),
		DataPlane: func() rollouts.DataPlane {
			if dp := n.dataPlane(); dp != nil {
				return dp
			}
			return nil
		},
		Logger: n.log,
	})
	// Only the leader sends notifications; every node runs the dispatcher,
	// which starts its workers when the node leads.
	ncfg := cfg.notify
	ncfg.Node, ncfg.Logger = n.raft, func() *zap.Logger { return n.log().Named("notify") }
	n.notifier = notify.New(ncfg)
	n.registry.MustRegister(n.raft.Metrics(), rollouts.Metrics(n.raft.View),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "cbproxy_ready",
			Help: "1 while this node is ready (GET /health/ready answers 200), 0 while it starts, catches up or has halted.",
		}, func() float64 {
			if n.Ready() {
				return 1
			}
			return 0
		}),
		// The process's own figures, here because this endpoint always
		// exists; Caddy's admin /metrics has the same two families of the
		// same process (docs/api.md "Metrics": take them from one).
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	n.registry.MustRegister(n.notifier.Metrics()...)
	n.admin = adminapi.Serve(ln, adminapi.Deps{
		Node:      n.raft,
		Verdicts:  n.watcher,
		Health:    n.health,
		Readiness: n,
		Loads: func() adminapi.Loads {
			if dp := n.dataPlane(); dp != nil {
				return dp
			}
			return nil
		},
		Metrics:   n.registry,
		Notifiers: n.notifier,
	}, adminapi.Config{Tokens: cfg.Tokens, Limits: cfg.adminLimits, Logger: n.log})
	n.wg.Add(3)
	go n.watchReadiness()
	go func() {
		defer n.wg.Done()
		n.watcher.Run(n.done)
	}()
	go func() {
		defer n.wg.Done()
		n.notifier.Run(n.done)
	}()
	n.log().Info("cbproxy node started",
		zap.String("node_id", cfg.NodeID),
		zap.String("data_dir", cfg.DataDir),
		zap.String("cluster_listen", cfg.ClusterListen),
		zap.String("admin_listen", n.admin.Addr()),
		zap.Uint64("applied_index", n.View().Index))
	return n, nil
}

// raftConfig is the Raft node's part of the configuration.
func (c Config) raftConfig() raftnode.Config {
	rc := raftnode.Config{
		NodeID: c.NodeID, DataDir: c.DataDir, ClusterListen: c.ClusterListen,
		AdminTLS:  c.AdminTLSCert != "",
		Bootstrap: c.Bootstrap, BootstrapExpect: c.BootstrapExpect, Join: c.Join,
		ClusterSecret:  c.ClusterSecret,
		ClusterTLSCert: c.ClusterTLSCert, ClusterTLSKey: c.ClusterTLSKey, ClusterTLSCA: c.ClusterTLSCA,
		Logger: c.Logger,
	}
	s := c.raft
	rc.Seams = &s
	return rc
}

// Shutdown stops the admin API and Raft and closes the log store. A leader
// hands leadership over first.
func (n *Node) Shutdown() error { return n.shutdown(true) }

// shutdown stops the node; without handOver it stops as abruptly as Raft
// allows (tests use it to play a crash).
func (n *Node) shutdown(handOver bool) error {
	var err error
	n.stopOnce.Do(func() {
		close(n.done)
		n.admin.Close()
		err = n.raft.Shutdown(handOver)
		n.wg.Wait()
		n.health.Close()
		n.log().Info("cbproxy node stopped", zap.String("node_id", n.cfg.NodeID))
	})
	return err
}

// Config returns the configuration the node was started with (defaults filled).
func (n *Node) Config() Config { return n.cfg }

// ID is the node's id.
func (n *Node) ID() string { return n.cfg.NodeID }

// SetLogger replaces the logger (Caddy closes log writers on reload).
func (n *Node) SetLogger(l *zap.Logger) {
	if l != nil {
		n.logger.Store(l)
		n.raft.SetLogger(l)
	}
}

func (n *Node) log() *zap.Logger { return n.logger.Load() }

// SetTokens replaces the admin API tokens live. Event streams whose caller
// the new tokens no longer let read are closed.
func (n *Node) SetTokens(t []adminapi.Token) { n.admin.SetTokens(t) }

// SetDataPlane tells the node where to read backends' in-flight requests,
// long-lived connections, SLO windows and declared services from.
func (n *Node) SetDataPlane(dp DataPlane) { n.dp.Store(&dp) }

func (n *Node) dataPlane() DataPlane {
	if p := n.dp.Load(); p != nil {
		return *p
	}
	return nil
}

// View returns the last applied state.
func (n *Node) View() *state.View { return n.raft.View() }

// OnChange calls fn with every new view (and at once with the current one)
// until cancel is called. fn runs on the applying goroutine and must not
// block; the index counts as applied (?wait=all) once fn returned.
func (n *Node) OnChange(fn func(*state.View)) (cancel func()) { return n.raft.OnChange(fn) }

// Health is this node's view of every backend's health.
func (n *Node) Health() *healthcheck.Checker { return n.health }

// Registry is the Prometheus registry served on the admin listener at /metrics.
func (n *Node) Registry() *prometheus.Registry { return n.registry }

// StickyKey is the key the data plane seals sticky cookies with, derived
// from the cluster secret, so every node of a cluster honours the others'
// cookies.
func (n *Node) StickyKey() []byte { return n.raft.StickyKey() }

// AdminAddr is the address the admin API listens on.
func (n *Node) AdminAddr() string { return n.admin.Addr() }
