package proxymod

import (
	"maps"
	"net/http"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/cbproxy/cbproxy/controlplane"
	"github.com/cbproxy/cbproxy/controlplane/adminapi"
	"github.com/cbproxy/cbproxy/controlplane/state"
)

// TestAppLifecycle drives the app through Caddy config loads: start, a
// reload with new tokens, a reload that needs a restart, and the stop.
func TestAppLifecycle(t *testing.T) {
	dataDir := t.TempDir()
	t.Setenv("CBPROXY_TEST_TOKEN", "first-secret")
	t.Setenv("CBPROXY_TEST_HOOK", "https://hooks.example/T1/secret-path")
	app := map[string]any{
		"data_dir":  dataDir,
		"tokens":    []any{map[string]any{"name": "ops", "secret": "{env.CBPROXY_TEST_TOKEN}", "role": "operate"}},
		"notifiers": []any{map[string]any{"name": "chat", "url": "{env.CBPROXY_TEST_HOOK}", "format": "slack", "secret": "{env.CBPROXY_TEST_TOKEN}"}},
	}
	seed := map[string]any{
		"service":   "life",
		"pools":     map[string]any{"blue": map[string]any{"backends": []string{"10.0.0.1:80"}, "version": "v1"}},
		"weights":   map[string]any{"blue": 100},
		"notifiers": []any{map[string]any{"name": "life-pager", "url": "http://127.0.0.1:9/x", "events": []string{"guard_breach"}, "timeout": "2s"}},
	}
	started := nodesStarted.Load()

	cfg, _ := caddyConfig(t, app, seed)
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			caddy.Stop()
		}
	}()
	n := lastNode.Load()
	if nodesStarted.Load() != started+1 {
		t.Fatalf("nodes started: %d, want 1", nodesStarted.Load()-started)
	}
	if n.cfg.DataDir != dataDir || n.cfg.AdminListen != controlplane.DefaultAdminListen || n.cfg.ClusterListen != controlplane.DefaultClusterListen {
		t.Errorf("node config %+v", n.cfg)
	}
	wantTokens := []adminapi.Token{{Name: "ops", Secret: "first-secret", Role: adminapi.RoleOperate}}
	n.mu.Lock()
	if !reflect.DeepEqual(n.tokens, wantTokens) {
		t.Errorf("tokens %+v, want %+v (placeholder replaced)", n.tokens, wantTokens)
	}
	wantSeed := state.ServiceSpec{
		Pools:   map[string]state.PoolSpec{"blue": {Version: "v1", Backends: []string{"10.0.0.1:80"}}},
		Weights: state.Weights{"blue": 10000},
	}
	if !reflect.DeepEqual(n.seeds["life"], wantSeed) {
		t.Errorf("seed %+v, want %+v", n.seeds["life"], wantSeed)
	}
	wantNotifiers := map[string]state.NotifierSpec{
		"chat":       {URL: "https://hooks.example/T1/secret-path", Format: state.FormatSlack, Secret: "first-secret"},
		"life-pager": {URL: "http://127.0.0.1:9/x", Service: "life", Events: []string{"guard_breach"}, Timeout: state.Duration(2e9)},
	}
	if !reflect.DeepEqual(n.notifiers, wantNotifiers) {
		t.Errorf("notifier seeds %+v, want %+v (placeholders replaced, the service's limited to it)", n.notifiers, wantNotifiers)
	}
	if n.dataPlane == nil || n.watchers != 1 || n.logger == nil {
		t.Errorf("node not connected: data plane %v, watchers %d, logger %v", n.dataPlane, n.watchers, n.logger)
	}
	// The node knows the declared services from its start, for readiness.
	if n.cfg.DataPlane == nil || !reflect.DeepEqual(n.cfg.DataPlane.Declared(), []string{"life"}) || !reflect.DeepEqual(n.dataPlane.Declared(), []string{"life"}) {
		t.Errorf("declared services: at start %v, now %v; want [life]", n.cfg.DataPlane, n.dataPlane)
	}
	n.mu.Unlock()

	// A reload with a new token secret: applied live, same node.
	t.Setenv("CBPROXY_TEST_TOKEN", "second-secret")
	// The reloaded config's listeners serve from here on.
	cfg, addrs := caddyConfig(t, app, seed)
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	n.mu.Lock()
	if nodesStarted.Load() != started+1 || n.tokens[0].Secret != "second-secret" || n.watchers != 1 || n.shutdowns != 0 {
		t.Errorf("after a token reload: started %d, tokens %+v, watchers %d, shutdowns %d", nodesStarted.Load()-started, n.tokens, n.watchers, n.shutdowns)
	}
	n.mu.Unlock()

	// A reload that moves the admin API needs a restart: refused, and the
	// running config stays.
	moved := map[string]any{"data_dir": dataDir, "admin_listen": "127.0.0.1:7199", "tokens": app["tokens"]}
	cfgMoved, _ := caddyConfig(t, moved, map[string]any{"service": "life"})
	err := caddy.Load(cfgMoved, true)
	if err == nil || !strings.Contains(err.Error(), "restart required") || !strings.Contains(err.Error(), "admin_listen") {
		t.Fatalf("moving admin_listen: %v, want a restart-required error naming it", err)
	}
	resp, err := http.Get("http://" + addrs[0] + "/")
	if err != nil {
		t.Fatalf("the running config must keep serving: %v", err)
	}
	resp.Body.Close()
	n.mu.Lock()
	if n.shutdowns != 0 || n.tokens[0].Secret != "second-secret" {
		t.Errorf("a refused reload touched the node: shutdowns %d tokens %+v", n.shutdowns, n.tokens)
	}
	n.mu.Unlock()

	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped = true
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.shutdowns != 1 || n.watchers != 0 {
		t.Errorf("after stop: shutdowns %d, watchers %d; want 1, 0", n.shutdowns, n.watchers)
	}
	if runningNode() != nil {
		t.Error("the node is still in the pool after the last config unloaded")
	}
}

// TestAppWithoutGlobalOption: the directive alone gets the app with its
// defaults, and so a node.
func TestAppWithoutGlobalOption(t *testing.T) {
	cfg, _ := caddyConfig(t, nil, map[string]any{"service": "bare"})
	runCaddy(t, cfg)
	n := lastNode.Load()
	if n == nil || n.cfg.DataDir != filepath.Join(caddy.AppDataDir(), "cbproxy") || n.cfg.AdminListen != controlplane.DefaultAdminListen {
		t.Fatalf("default node config: %+v", n)
	}
	// A block without a seed declares its service too: readiness waits for
	// it to be created through the API.
	if got := n.cfg.DataPlane.Declared(); !reflect.DeepEqual(got, []string{"bare"}) {
		t.Errorf("declared %v, want [bare]", got)
	}
}

// TestDataPlaneRoutes: the data plane routes a service once its route holds a
// table built from the replicated service, not before and not once deleted.
func TestDataPlaneRoutes(t *testing.T) {
	dp := dataPlane{}
	if dp.Routes("routes-probe") {
		t.Error("routes a service without a route")
	}
	routes.hold("routes-probe") // a handler provisioned before the service exists
	if dp.Routes("routes-probe") {
		t.Error("routes a service the replicated state does not have")
	}
	applyService(service("routes-probe", map[string]state.Weight{"blue": 10000}, map[string][]string{"blue": {"10.0.0.1:80"}}))
	if !dp.Routes("routes-probe") {
		t.Error("does not route a service of the applied view")
	}
	routes.mu.Lock()
	v := routes.view
	routes.mu.Unlock()
	services := maps.Clone(v.Services)
	delete(services, "routes-probe")
	routes.apply(&state.View{Index: v.Index + 1, Services: services, Deleted: map[string]uint64{"routes-probe": v.Index + 1}})
	if dp.Routes("routes-probe") {
		t.Error("routes a deleted service")
	}
}

func TestAppSeedConflict(t *testing.T) {
	seed := func(backend string) map[string]any {
		return map[string]any{"service": "twice", "pools": map[string]any{"blue": map[string]any{"backends": []string{backend}}}}
	}
	cfg, _ := caddyConfig(t, nil, seed("10.0.0.1:80"), seed("10.0.0.2:80"))
	if err := caddy.Load(cfg, true); err == nil || !strings.Contains(err.Error(), "seeded by two cbproxy blocks") {
		caddy.Stop()
		t.Fatalf("two different seeds for one service: %v", err)
	}
	// The same seed twice (one block used by two sites) is fine.
	cfg, _ = caddyConfig(t, nil, seed("10.0.0.1:80"), seed("10.0.0.1:80"))
	runCaddy(t, cfg)
}

func TestAppValidate(t *testing.T) {
	tokens := []Token{{Name: "ops", Secret: "s", Role: "operate"}}
	tests := []struct {
		name string
		app  App
		want string // "" = valid
	}{
		{"defaults", App{AdminListen: "127.0.0.1:7101"}, ""},
		{"public with tokens", App{AdminListen: "0.0.0.0:7101", Tokens: tokens}, ""},
		{"public without tokens", App{AdminListen: "0.0.0.0:7101"}, "not a loopback address and no token"},
		{"bad role", App{AdminListen: "127.0.0.1:7101", Tokens: []Token{{Name: "x", Secret: "s", Role: "root"}}}, "unknown role"},
		{"empty secret", App{AdminListen: "127.0.0.1:7101", Tokens: []Token{{Name: "x", Role: "read"}}}, "empty secret"},
		{"nameless token", App{AdminListen: "127.0.0.1:7101", Tokens: []Token{{Secret: "s", Role: "read"}}}, "no name"},
		{"duplicate token", App{AdminListen: "127.0.0.1:7101", Tokens: append(tokens, tokens[0])}, "defined twice"},
		{"half admin_tls", App{AdminListen: "127.0.0.1:7101", AdminTLS: &AdminTLS{Cert: "c"}}, "certificate and a key"},
		{"bootstrap both ways", App{AdminListen: "127.0.0.1:7101", Bootstrap: true, BootstrapExpect: 3}, "not both"},
		{"cluster_tls", App{AdminListen: "127.0.0.1:7101", ClusterTLS: &ClusterTLS{Cert: "c", Key: "k", CA: "a"}}, ""},
		{"half cluster_tls", App{AdminListen: "127.0.0.1:7101", ClusterTLS: &ClusterTLS{Cert: "c", Key: "k"}}, "a CA file"},
		{"cluster without secret", App{AdminListen: "127.0.0.1:7101", BootstrapExpect: 3, Join: []string{"127.0.0.1:7102"}}, "needs cluster_secret"},
		{"cluster", App{AdminListen: "127.0.0.1:7101", BootstrapExpect: 3, Join: []string{"127.0.0.1:7102"}, ClusterSecret: "s"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.app.Validate()
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("Validate() = %v, want %q", err, tt.want)
			}
		})
	}
}

// TestNodeConfig: a tool that works on a stopped node (cluster recover)
// reads the node's settings from its Caddyfile as the node has them:
// placeholders replaced, defaults filled in.
func TestNodeConfig(t *testing.T) {
	t.Setenv("CBPROXY_TEST_SECRET", "s3cret")
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(`{
	cbproxy {
		node_id        node7
		data_dir       /var/lib/cbproxy7
		cluster_secret {env.CBPROXY_TEST_SECRET}
		join           10.0.0.5:7101
	}
}
:8080 {
	cbproxy demo
}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := NodeConfig(out)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeID != "node7" || cfg.DataDir != "/var/lib/cbproxy7" || cfg.ClusterSecret != "s3cret" ||
		cfg.ClusterListen != controlplane.DefaultClusterListen || len(cfg.Join) != 1 {
		t.Fatalf("node config %+v", cfg)
	}
	// Without the global option: the defaults a cbproxy handler's node has.
	cfg, err = NodeConfig([]byte(`{"apps":{"http":{}}}`))
	if err != nil || cfg.DataDir != filepath.Join(caddy.AppDataDir(), "cbproxy") || cfg.NodeID != "" {
		t.Fatalf("default node config %+v, %v", cfg, err)
	}
	if _, err := NodeConfig([]byte(`{"apps":`)); err == nil {
		t.Fatal("accepted a broken config")
	}
}
