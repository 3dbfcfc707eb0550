package proxymod

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/cbproxy/cbproxy/controlplane"
	"github.com/cbproxy/cbproxy/controlplane/adminapi"
	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/cbproxy/cbproxy/healthcheck"
)

func init() {
	caddy.RegisterModule(App{})
}

// App runs cbproxy's control plane inside Caddy: the process's one node of
// the Raft cluster that replicates services, pools and weights, with its
// admin API on admin_listen. It feeds the routing tables of the cbproxy
// handlers. The node outlives config reloads: a reload applies changed
// tokens live, and one that changes node_id, data_dir, cluster_listen or
// admin_listen fails with "restart required" while the running config stays.
//
// Sites that use the cbproxy handler without this app configured get it with
// its defaults: a node that bootstraps a single-node cluster.
type App struct {
	// The node's id in the cluster. Default: a random id persisted in
	// data_dir.
	NodeID string `json:"node_id,omitempty"`

	// Where the node keeps its Raft log and snapshots. Default: Caddy's data
	// directory + /cbproxy.
	DataDir string `json:"data_dir,omitempty"`

	// The address of Raft and node-to-node RPC. Default: 127.0.0.1:7001.
	ClusterListen string `json:"cluster_listen,omitempty"`

	// The address of the admin API, /health/* and /metrics. Default:
	// 127.0.0.1:7101. Without tokens it must be a loopback address.
	AdminListen string `json:"admin_listen,omitempty"`

	// Serves the admin API over HTTPS with this certificate and key.
	AdminTLS *AdminTLS `json:"admin_tls,omitempty"`

	// Bootstraps a single-node cluster. With neither bootstrap,
	// bootstrap_expect nor join, a node with an empty data dir does so too.
	Bootstrap bool `json:"bootstrap,omitempty"`

	// Bootstraps a cluster once this many nodes know each other.
	BootstrapExpect int `json:"bootstrap_expect,omitempty"`

	// Admin addresses of peers to join.
	Join []string `json:"join,omitempty"`

	// Bearer tokens of the admin API. With none, loopback callers are
	// admins. Secrets may be placeholders like `{env.CBPROXY_OPS_TOKEN}`.
	Tokens []Token `json:"tokens,omitempty"`

	// The secret nodes authenticate each other with, on the cluster port and
	// in the admin calls they make to each other. Default: a random secret
	// generated on first start and kept in data_dir/cluster-secret (mode
	// 0600); nodes that join this one need its content as their
	// cluster_secret. Required with bootstrap_expect or join. May be a
	// placeholder, such as `{env.CBPROXY_CLUSTER_SECRET}` or
	// `{file./path/to/cluster-secret}`.
	ClusterSecret string `json:"cluster_secret,omitempty"`

	// Mutual TLS between nodes.
	ClusterTLS *ClusterTLS `json:"cluster_tls,omitempty"`

	// Webhooks the leader sends every service's events, and the cluster's
	// own, to (docs/caddyfile.md "notify"); each seeds the replicated
	// notifier of its name.
	Notifiers []Notifier `json:"notifiers,omitempty"`

	logger *zap.Logger
	// seeds by service; handlers add theirs while the config is provisioned,
	// which Caddy does on one goroutine.
	seeds map[string]state.ServiceSpec
	// notifierSeeds by name: the app's and the handlers' notify.
	notifierSeeds map[string]state.NotifierSpec
	// declared holds every service a handler of this config routes, seeded
	// or not: /health/ready waits for each.
	declared map[string]bool

	// node is set once Start acquired it from the pool; only then may
	// Cleanup release it.
	node         controlNode
	stopWatching func()
}

// AdminTLS is the certificate of the admin API.
type AdminTLS struct {
	Cert string `json:"cert,omitempty"`
	Key  string `json:"key,omitempty"`
}

// ClusterTLS is the certificate, key and CA of mutual TLS between nodes.
type ClusterTLS struct {
	Cert string `json:"cert,omitempty"`
	Key  string `json:"key,omitempty"`
	CA   string `json:"ca,omitempty"`
}

// Token is one named bearer token of the admin API.
type Token struct {
	Name string `json:"name,omitempty"`
	// The token itself; may be a placeholder.
	Secret string `json:"secret,omitempty"`
	// What it may do: read (GET only), operate (weights, switch, rollout,
	// rollback, drain) or admin (everything).
	Role string `json:"role,omitempty"`
}

// controlNode is what the app needs of a running control-plane node
// (*controlplane.Node); tests substitute a fake.
type controlNode interface {
	Shutdown() error
	Config() controlplane.Config
	SetLogger(*zap.Logger)
	SetTokens([]adminapi.Token)
	SetDataPlane(controlplane.DataPlane)
	OnChange(func(*state.View)) (cancel func())
	Seed(name string, spec state.ServiceSpec)
	SeedNotifier(name string, spec state.NotifierSpec)
	Registry() *prometheus.Registry
	Health() *healthcheck.Checker
	StickyKey() []byte
}

// startNode starts the process's node; a variable so tests can run the app
// without Raft.
var startNode = func(cfg controlplane.Config) (controlNode, error) {
	n, err := controlplane.Start(cfg)
	if err != nil {
		return nil, err
	}
	return n, nil
}

// nodes holds the process's node across config loads: the new config
// acquires it before the old one releases it, so it runs on.
var nodes = caddy.NewUsagePool()

const nodeKey = "node"

// nodeHandle makes a node a caddy.Destructor: it shuts down when the last
// config using it is unloaded.
type nodeHandle struct{ controlNode }

func (h nodeHandle) Destruct() error { return h.Shutdown() }

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "cbproxy",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision fills in defaults and checks that the config can take over the
// running node. It has no side effects: `cbproxy validate` and `adapt`
// provision too.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	a.fillDefaults()
	for _, nt := range a.Notifiers {
		if err := a.addNotifier(nt, ""); err != nil {
			return err
		}
	}
	// The data plane's series go to the node's registry (Start), served on
	// admin_listen, and not to Caddy's too: a Prometheus scraping both
	// endpoints would count every request twice (docs/decisions.md, "One
	// home per series").
	if n := runningNode(); n != nil {
		return a.checkRestart(n.Config())
	}
	return nil
}

// fillDefaults replaces placeholders and fills in the defaults of the node's
// settings.
func (a *App) fillDefaults() {
	repl := caddy.NewReplacer()
	secrets := []namedSecret{{"cluster_secret", a.ClusterSecret}}
	for _, t := range a.Tokens {
		secrets = append(secrets, namedSecret{"token " + t.Name, t.Secret})
	}
	warnLiteralSecrets(a.logger, repl, secrets...)
	for _, s := range []*string{&a.NodeID, &a.DataDir, &a.ClusterSecret} {
		*s = repl.ReplaceKnown(*s, "")
	}
	if a.DataDir == "" {
		a.DataDir = filepath.Join(caddy.AppDataDir(), "cbproxy")
	}
	if a.ClusterListen == "" {
		a.ClusterListen = controlplane.DefaultClusterListen
	}
	if a.AdminListen == "" {
		a.AdminListen = controlplane.DefaultAdminListen
	}
	for i := range a.Tokens {
		a.Tokens[i].Secret = repl.ReplaceKnown(a.Tokens[i].Secret, "")
	}
}

// NodeConfig is the node configuration a Caddy config (JSON, as adapted
// from a Caddyfile) gives its cbproxy app, with placeholders replaced and
// defaults filled in as the running node has them: for tools that work on
// a stopped node's data dir, such as cbproxy cluster recover. A config
// without the app gets the app's defaults, as a site with a cbproxy handler
// does.
func NodeConfig(caddyJSON []byte) (controlplane.Config, error) {
	var cfg struct {
		Apps struct {
			Cbproxy *App `json:"cbproxy"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(caddyJSON, &cfg); err != nil {
		return controlplane.Config{}, fmt.Errorf("reading the config: %w", err)
	}
	a := cfg.Apps.Cbproxy
	if a == nil {
		a = new(App)
	}
	a.fillDefaults()
	return a.nodeConfig(), nil
}

// namedSecret is a secret as written in the config, with what it is.
type namedSecret struct{ name, value string }

// warnLiteralSecrets warns about secrets written into the config as they
// are rather than as placeholders: Caddy serves the config it loaded on its
// admin endpoint (GET /config/), placeholders as written, so a literal
// secret is readable by whoever reaches that endpoint. It names the
// secrets, never their values.
func warnLiteralSecrets(log *zap.Logger, repl *caddy.Replacer, secrets ...namedSecret) {
	var literal []string
	for _, s := range secrets {
		if s.value != "" && repl.ReplaceKnown(s.value, "") == s.value {
			literal = append(literal, s.name)
		}
	}
	if len(literal) > 0 {
		log.Warn("secrets written in the config are readable on Caddy's admin endpoint (GET /config/): write them as placeholders, {env.NAME} or {file./path}, or turn the endpoint off with the global option `admin off`",
			zap.Strings("secrets", literal))
	}
}

// runningNode returns the node of this process (nil when none runs).
func runningNode() controlNode {
	var n controlNode
	nodes.Range(func(_, v any) bool {
		n = v.(nodeHandle).controlNode
		return false
	})
	return n
}

// checkRestart refuses a config that would need a different node than the
// one running, and warns about settings that only a restart applies.
func (a *App) checkRestart(running controlplane.Config) error {
	var changed []string
	for _, f := range []struct{ name, was, now string }{
		{"node_id", running.NodeID, a.NodeID},
		{"data_dir", running.DataDir, a.DataDir},
		{"cluster_listen", running.ClusterListen, a.ClusterListen},
		{"admin_listen", running.AdminListen, a.AdminListen},
	} {
		// An empty node_id means "the id the node already has".
		if f.now != "" && f.now != f.was {
			changed = append(changed, fmt.Sprintf("%s %s → %s", f.name, f.was, f.now))
		}
	}
	if len(changed) > 0 {
		return fmt.Errorf("%s: restart required (the running config stays in force)", strings.Join(changed, ", "))
	}
	next := a.nodeConfig()
	var later []string
	if next.AdminTLSCert != running.AdminTLSCert || next.AdminTLSKey != running.AdminTLSKey {
		later = append(later, "admin_tls")
	}
	if next.Bootstrap != running.Bootstrap || next.BootstrapExpect != running.BootstrapExpect || !slices.Equal(next.Join, running.Join) {
		later = append(later, "bootstrap, bootstrap_expect, join")
	}
	if next.ClusterSecret != running.ClusterSecret {
		later = append(later, "cluster_secret")
	}
	if next.ClusterTLSCert != running.ClusterTLSCert || next.ClusterTLSKey != running.ClusterTLSKey || next.ClusterTLSCA != running.ClusterTLSCA {
		later = append(later, "cluster_tls")
	}
	if len(later) > 0 {
		a.logger.Warn("changed settings take effect at the next restart", zap.Strings("settings", later))
	}
	return nil
}

// Validate checks the settings the admin API and the cluster depend on.
func (a *App) Validate() error {
	names := make(map[string]bool, len(a.Tokens))
	for _, t := range a.Tokens {
		switch {
		case t.Name == "":
			return errors.New("a token has no name; write: token NAME SECRET ROLE")
		case names[t.Name]:
			return fmt.Errorf("token %q is defined twice; give each token its own name", t.Name)
		case t.Secret == "":
			return fmt.Errorf("token %q has an empty secret; if it is a placeholder, set the variable it names", t.Name)
		}
		if _, err := adminapi.ParseRole(t.Role); err != nil {
			return fmt.Errorf("token %q: %w", t.Name, err)
		}
		names[t.Name] = true
	}
	if len(a.Tokens) == 0 && !adminapi.IsLoopbackListen(a.AdminListen) {
		return fmt.Errorf("admin_listen %s is not a loopback address and no token is configured: add token lines or listen on 127.0.0.1", a.AdminListen)
	}
	if a.AdminTLS != nil && (a.AdminTLS.Cert == "" || a.AdminTLS.Key == "") {
		return errors.New("admin_tls needs both a certificate and a key file")
	}
	if a.Bootstrap && a.BootstrapExpect > 0 {
		return errors.New("use either bootstrap (a single node) or bootstrap_expect N, not both")
	}
	if a.BootstrapExpect < 0 {
		return fmt.Errorf("bootstrap_expect %d must be a number of nodes, 1 or more", a.BootstrapExpect)
	}
	if t := a.ClusterTLS; t != nil && (t.Cert == "" || t.Key == "" || t.CA == "") {
		return errors.New("cluster_tls needs a certificate, a key and a CA file")
	}
	if (a.BootstrapExpect > 1 || len(a.Join) > 0) && a.ClusterSecret == "" {
		return errors.New("a multi-node cluster (bootstrap_expect, join) needs cluster_secret; set it to the same secret on every node, e.g. cluster_secret {env.CBPROXY_CLUSTER_SECRET}; a node started without one keeps its own in data_dir/cluster-secret")
	}
	return nil
}

func (a *App) nodeConfig() controlplane.Config {
	cfg := controlplane.Config{
		NodeID:          a.NodeID,
		DataDir:         a.DataDir,
		ClusterListen:   a.ClusterListen,
		AdminListen:     a.AdminListen,
		Bootstrap:       a.Bootstrap,
		BootstrapExpect: a.BootstrapExpect,
		Join:            a.Join,
		Tokens:          a.controlTokens(),
		ClusterSecret:   a.ClusterSecret,
		Logger:          a.logger,
		DataPlane:       a.dataPlane(),
	}
	if a.AdminTLS != nil {
		cfg.AdminTLSCert, cfg.AdminTLSKey = a.AdminTLS.Cert, a.AdminTLS.Key
	}
	if a.ClusterTLS != nil {
		cfg.ClusterTLSCert, cfg.ClusterTLSKey, cfg.ClusterTLSCA = a.ClusterTLS.Cert, a.ClusterTLS.Key, a.ClusterTLS.CA
	}
	return cfg
}

// controlTokens converts the tokens for the node (Validate checked roles).
func (a *App) controlTokens() []adminapi.Token {
	tokens := make([]adminapi.Token, len(a.Tokens))
	for i, t := range a.Tokens {
		role, _ := adminapi.ParseRole(t.Role)
		tokens[i] = adminapi.Token{Name: t.Name, Secret: t.Secret, Role: role}
	}
	return tokens
}

// declare registers a service a handler routes.
func (a *App) declare(service string) {
	if a.declared == nil {
		a.declared = make(map[string]bool)
	}
	a.declared[service] = true
}

// dataPlane is the data plane as this config declares it.
func (a *App) dataPlane() dataPlane {
	return dataPlane{declared: slices.Sorted(maps.Keys(a.declared))}
}

// addSeed registers a handler's seed; Start hands it to the node. Two blocks
// may seed the same service only with the same definition.
func (a *App) addSeed(service string, spec state.ServiceSpec) error {
	if prev, ok := a.seeds[service]; ok && !reflect.DeepEqual(prev, spec) {
		return fmt.Errorf("service %q is seeded by two cbproxy blocks that differ; define its pools, weights, health, slo and guard in one block and use `cbproxy %s` alone elsewhere", service, service)
	}
	if a.seeds == nil {
		a.seeds = make(map[string]state.ServiceSpec)
	}
	a.seeds[service] = spec
	return nil
}

// Start acquires the node (starting it on the first load) and connects it
// to this config: logger, tokens, data plane and seeds.
func (a *App) Start() error {
	v, _, err := nodes.LoadOrNew(nodeKey, func() (caddy.Destructor, error) {
		n, err := startNode(a.nodeConfig())
		if err != nil {
			return nil, err
		}
		return nodeHandle{n}, nil
	})
	if err != nil {
		return fmt.Errorf("starting cbproxy node: %w", err)
	}
	n := v.(nodeHandle).controlNode
	a.node = n
	if err := registerCollector(n.Registry()); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	if err := routes.useStickyKey(n.StickyKey()); err != nil {
		return err
	}
	// Caddy closes this config's log writers when it unloads.
	n.SetLogger(a.logger)
	n.SetTokens(a.controlTokens())
	stopViews := n.OnChange(routes.apply)
	stopHealth := routes.useHealth(n.Health())
	a.stopWatching = func() { stopViews(); stopHealth() }
	for _, name := range slices.Sorted(maps.Keys(a.seeds)) {
		n.Seed(name, a.seeds[name])
	}
	for _, name := range slices.Sorted(maps.Keys(a.notifierSeeds)) {
		n.SeedNotifier(name, a.notifierSeeds[name])
	}
	// A reload's handlers may declare other services.
	n.SetDataPlane(a.dataPlane())
	if len(a.Tokens) > 0 && a.AdminTLS == nil && !adminapi.IsLoopbackListen(a.AdminListen) {
		a.logger.Warn("admin tokens travel in clear text: admin_listen is not a loopback address and admin_tls is not set",
			zap.String("admin_listen", a.AdminListen))
	}
	return nil
}

// Stop stops feeding this config's view of the node; the node itself runs
// on, because a reload stops the old config only after the new one started.
func (a *App) Stop() error {
	if a.stopWatching != nil {
		a.stopWatching()
		a.stopWatching = nil
	}
	return nil
}

// Cleanup releases the node if this config acquired it; the last release
// shuts it down.
func (a *App) Cleanup() error {
	if a.node == nil {
		return nil
	}
	a.node = nil
	_, err := nodes.Delete(nodeKey)
	return err
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
