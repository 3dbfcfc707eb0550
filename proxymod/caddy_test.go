package proxymod

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/cbproxy/cbproxy/controlplane"
	"github.com/cbproxy/cbproxy/controlplane/adminapi"
	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/cbproxy/cbproxy/healthcheck"
)

func TestMain(m *testing.M) {
	// Keep Caddy's data, config and storage out of the user's home.
	dir, err := os.MkdirTemp("", "proxymod-test")
	if err != nil {
		panic(err)
	}
	for _, v := range []string{"XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "HOME"} {
		os.Setenv(v, dir)
	}
	startNode = startFakeNode
	// Tests that choose pools without an app seal cookies as a node would.
	if err := routes.useStickyKey(testStickyKey); err != nil {
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// fakeNode stands in for controlplane.Node: the tests here cover the data
// plane and the app's lifecycle, not Raft.
type fakeNode struct {
	cfg      controlplane.Config
	registry *prometheus.Registry
	health   *healthcheck.Checker

	mu        sync.Mutex
	tokens    []adminapi.Token
	seeds     map[string]state.ServiceSpec
	notifiers map[string]state.NotifierSpec
	dataPlane controlplane.DataPlane
	watchers  int
	logger    *zap.Logger
	shutdowns int
}

var (
	nodesStarted atomic.Int32
	lastNode     atomic.Pointer[fakeNode]
)

func startFakeNode(cfg controlplane.Config) (controlNode, error) {
	n := &fakeNode{cfg: cfg, registry: prometheus.NewRegistry(), seeds: map[string]state.ServiceSpec{}, notifiers: map[string]state.NotifierSpec{}, health: healthcheck.New(healthcheck.Config{})}
	nodesStarted.Add(1)
	lastNode.Store(n)
	return n, nil
}

func (n *fakeNode) Shutdown() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.shutdowns++
	return nil
}

func (n *fakeNode) Config() controlplane.Config { return n.cfg }

func (n *fakeNode) SeedNotifier(name string, spec state.NotifierSpec) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.notifiers[name] = spec
}

func (n *fakeNode) Health() *healthcheck.Checker { return n.health }

func (n *fakeNode) SetLogger(l *zap.Logger) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.logger = l
}

func (n *fakeNode) SetTokens(t []adminapi.Token) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.tokens = t
}

func (n *fakeNode) SetDataPlane(dp controlplane.DataPlane) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.dataPlane = dp
}

// OnChange reports no view: tests feed the route registry directly.
func (n *fakeNode) OnChange(func(*state.View)) func() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.watchers++
	return func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		n.watchers--
	}
}

func (n *fakeNode) Seed(name string, spec state.ServiceSpec) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.seeds[name] = spec
}

func (n *fakeNode) Registry() *prometheus.Registry { return n.registry }

// testStickyKey is the fake node's sticky cookie key.
var testStickyKey = []byte("0123456789abcdef")

func (n *fakeNode) StickyKey() []byte { return testStickyKey }

// freeAddr returns a loopback address with a port nobody listens on.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// caddyConfig returns a Caddy JSON config with one HTTP server per handler
// (listening on the returned addresses; a handler without a "handler" key
// is a cbproxy one) and the given cbproxy app (nil: not configured).
func caddyConfig(t testing.TB, app map[string]any, handlers ...map[string]any) ([]byte, []string) {
	t.Helper()
	servers := map[string]any{}
	var addrs []string
	for i, h := range handlers {
		if h["handler"] == nil {
			h["handler"] = "cbproxy"
		}
		addr := freeAddr(t)
		addrs = append(addrs, addr)
		servers[fmt.Sprintf("s%d", i)] = map[string]any{
			"listen":          []string{addr},
			"automatic_https": map[string]any{"disable": true},
			"routes":          []any{map[string]any{"handle": []any{h}}},
		}
	}
	apps := map[string]any{"http": map[string]any{"servers": servers}}
	if app != nil {
		apps["cbproxy"] = app
	}
	cfg, err := json.Marshal(map[string]any{
		"admin":   map[string]any{"disabled": true, "config": map[string]any{"persist": false}},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "ERROR"}}},
		"apps":    apps,
	})
	if err != nil {
		t.Fatal(err)
	}
	return cfg, addrs
}

// runCaddy loads cfg into this process's Caddy and stops it when the test
// ends.
func runCaddy(t testing.TB, cfg []byte) {
	t.Helper()
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("loading config: %v", err)
	}
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping caddy: %v", err)
		}
	})
}

// countingBackend is an httptest server that counts its requests and names
// itself in X-Backend.
type countingBackend struct {
	*httptest.Server
	name string
	hits atomic.Int64
}

func newBackend(t testing.TB, name string, next http.HandlerFunc) *countingBackend {
	t.Helper()
	b := &countingBackend{name: name}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		w.Header().Set("X-Backend", name)
		if next != nil {
			next(w, r)
			return
		}
		fmt.Fprintln(w, name)
	}))
	t.Cleanup(b.Close)
	return b
}

// addr is the backend's host:port as a pool lists it.
func (b *countingBackend) addr() string { return b.Listener.Addr().String() }

// applyService publishes a service to the route registry as a node's view
// would, keeping the other services of the last view.
func applyService(svc *state.Service) {
	routes.mu.Lock()
	services := map[string]*state.Service{}
	var index uint64
	if v := routes.view; v != nil {
		for k, s := range v.Services {
			services[k] = s
		}
		index = v.Index
	}
	routes.mu.Unlock()
	services[svc.Name] = svc
	routes.apply(&state.View{Index: index + 1, Services: services})
}
