package adminapi

// These tests serve the admin API over real loopback HTTP with Deps that
// hold no Raft: a real state.Machine behind a one-node "cluster" that
// applies each proposal at once, and health, readiness and loads the test
// sets. They pin what the API itself decides (status codes, bodies,
// headers, the health gate, auth, the event stream) apart from replication,
// which the root package's tests cover with real Raft.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/raftnode"
	"github.com/cbproxy/cbproxy/controlplane/slo"
	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/cbproxy/cbproxy/healthcheck"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// machineNode is Replicated over a real state.Machine: a one-node cluster
// that is its own leader and applies every proposal as it takes it.
type machineNode struct {
	id      string
	machine *state.Machine

	// mu serialises proposals, as Raft's one applying goroutine does.
	mu        sync.Mutex
	lastIndex uint64
	proposals atomic.Int64 // commands proposed, refused ones included

	subsMu sync.Mutex
	subs   map[chan state.Event]struct{}
}

func newMachineNode(id string) *machineNode {
	n := &machineNode{id: id, subs: map[chan state.Event]struct{}{}}
	n.machine = state.NewMachine(state.Options{OnApply: func(_ *state.View, added []state.Event) { n.publish(added) }})
	return n
}

var _ Replicated = (*machineNode)(nil)

func (n *machineNode) ID() string        { return n.id }
func (n *machineNode) View() *state.View { return n.machine.View() }

func (n *machineNode) QueryEvents(q state.EventQuery) ([]state.Event, *state.EventGap) {
	return n.machine.QueryEvents(q)
}

func (n *machineNode) RemembersKey(key string, now time.Time) bool {
	return n.machine.RemembersKey(key, now)
}

// publish hands applied events to the streams; a reader whose buffer is
// full loses its stream, as with the node's fan-out.
func (n *machineNode) publish(added []state.Event) {
	n.subsMu.Lock()
	defer n.subsMu.Unlock()
	for ch := range n.subs {
		for _, e := range added {
			select {
			case ch <- e:
			default:
				close(ch)
				delete(n.subs, ch)
			}
		}
	}
}

func (n *machineNode) Events() (<-chan state.Event, func()) {
	ch := make(chan state.Event, 64)
	n.subsMu.Lock()
	n.subs[ch] = struct{}{}
	n.subsMu.Unlock()
	return ch, func() {
		n.subsMu.Lock()
		defer n.subsMu.Unlock()
		if _, ok := n.subs[ch]; ok {
			close(ch)
			delete(n.subs, ch)
		}
	}
}

func (n *machineNode) Status() raftnode.Status {
	return raftnode.Status{State: "leader", Leader: n.id, Applied: n.View().Index}
}

func (n *machineNode) SelfLacks(entry []byte) error {
	if lacks := n.machine.Capabilities().Lacks(entry); len(lacks) > 0 {
		return fmt.Errorf("%s cannot apply %s", n.id, strings.Join(lacks, ", "))
	}
	return nil
}

// Propose does what the leader does with a command: a key when it has
// none, its time stamped, encoded, applied at the next index.
func (n *machineNode) Propose(ctx context.Context, cmd state.Command) (raftnode.Applied, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if cmd.IdemKey == "" {
		cmd.IdemKey = fmt.Sprintf("auto:%d", n.lastIndex+1)
		cmd.IdemHash = cmd.IdemKey
	}
	cmd.Time = time.Now().UTC()
	data, err := state.Encode(cmd)
	if err != nil {
		return raftnode.Applied{}, err
	}
	n.proposals.Add(1)
	n.lastIndex++
	return raftnode.Applied{Result: n.machine.Apply(n.lastIndex, data), Index: n.lastIndex}, nil
}

// ConsistentRead has nothing to wait for: this node leads and has applied
// everything it committed.
func (n *machineNode) ConsistentRead(context.Context) error { return nil }

func (n *machineNode) WaitAll(_ context.Context, index uint64) (appliedOn, notApplied []string) {
	if n.View().Index >= index {
		return []string{n.id}, []string{}
	}
	return []string{}, []string{n.id}
}

func (n *machineNode) ClusterStatus(context.Context) raftnode.ClusterStatus {
	applied := n.View().Index
	return raftnode.ClusterStatus{Leader: n.id, CommitIndex: applied, Nodes: []raftnode.ClusterMember{
		{ID: n.id, State: "leader", Voter: true, AppliedIndex: applied},
	}}
}

var errNoMembership = errors.New("this one-node cluster takes no membership changes")

func (n *machineNode) Join(context.Context, state.NodeInfo, string) error { return errNoMembership }
func (n *machineNode) Remove(context.Context, string, string) error       { return errNoMembership }
func (n *machineNode) Notify(state.NodeInfo)                              {}
func (n *machineNode) VerifyClusterCall(*http.Request) (string, error) {
	return "", errors.New("this one-node cluster has no peers")
}

// fakeHealth is the health checker as the test sets it; a backend it does
// not list is unknown, as with the checker before its first probe.
type fakeHealth struct {
	mu       sync.Mutex
	backends map[string]healthcheck.Backend // "service/pool/address"
}

func (h *fakeHealth) set(service, pool, address string, b healthcheck.Backend) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.backends[service+"/"+pool+"/"+address] = b
}

func (h *fakeHealth) Get(service, pool, address string) healthcheck.Backend {
	h.mu.Lock()
	defer h.mu.Unlock()
	if b, ok := h.backends[service+"/"+pool+"/"+address]; ok {
		return b
	}
	return healthcheck.Backend{Status: healthcheck.StatusUnknown}
}

func (h *fakeHealth) WaitChecked(context.Context, string, string) {}

// fakeServiceHealth answers ServiceHealth from fakeHealth's Get over the
// backends that order lists (the replicated service's order, as the
// checker does, or another one to make the admin API ask per backend).
type fakeServiceHealth struct {
	*fakeHealth
	order func(service string) [][2]string
}

func (h fakeServiceHealth) ServiceHealth(service string, dst []healthcheck.BackendStatus) []healthcheck.BackendStatus {
	for _, pb := range h.order(service) {
		dst = append(dst, healthcheck.BackendStatus{Pool: pb[0], Address: pb[1], Status: h.Get(service, pb[0], pb[1]).Status})
	}
	return dst
}

// noVerdicts is a watcher that has judged nothing yet.
type noVerdicts struct{}

func (noVerdicts) Verdict(context.Context, string) *slo.Verdict { return nil }

type fakeReadiness struct {
	mu         sync.Mutex
	ready      bool
	waitingFor []string
}

func (r *fakeReadiness) set(ready bool, waitingFor ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ready, r.waitingFor = ready, waitingFor
}

func (r *fakeReadiness) Ready() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ready
}

func (r *fakeReadiness) WaitingFor() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.waitingFor)
}

// fakeLoads counts in-flight and long-lived requests per backend
// ("service/pool/address").
type fakeLoads struct {
	mu                  sync.Mutex
	inFlight, longLived map[string]int64
}

func (l *fakeLoads) InFlight(service, pool, address string) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.inFlight[service+"/"+pool+"/"+address]
}

func (l *fakeLoads) LongLived(service, pool, address string) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.longLived[service+"/"+pool+"/"+address]
}

// fakeServiceLoads answers ServiceLoads like fakeServiceHealth.
type fakeServiceLoads struct {
	*fakeLoads
	order func(service string) [][2]string
}

func (l fakeServiceLoads) ServiceLoads(service string, dst []BackendLoad) []BackendLoad {
	for _, pb := range l.order(service) {
		dst = append(dst, BackendLoad{Pool: pb[0], Address: pb[1], InFlight: l.InFlight(service, pb[0], pb[1]), LongLived: l.LongLived(service, pb[0], pb[1])})
	}
	return dst
}

// backendOrder lists the backends of a service as the health checker and
// the data plane answer a service at once: in the replicated service's
// order (pools by name, then each pool's backends), except for a service
// named "odd", in reverse, which GET /v1/services must not trust (it then
// asks per backend; TestServiceJSONMatchesRender covers both).
func (api *testAPI) backendOrder(service string) [][2]string {
	s := api.node.View().Services[service]
	var out [][2]string
	if s == nil {
		return out
	}
	for _, pool := range s.PoolNames() {
		for _, b := range s.Pools[pool].Backends {
			out = append(out, [2]string{pool, b.Address})
		}
	}
	if service == "odd" {
		slices.Reverse(out)
	}
	return out
}

// testAPI is an admin API served on loopback over the fakes.
type testAPI struct {
	server    *Server
	node      *machineNode
	health    *fakeHealth
	readiness *fakeReadiness
	loads     *fakeLoads
}

func serveTestAPI(t *testing.T, tokens ...Token) *testAPI {
	t.Helper()
	api := &testAPI{
		node:      newMachineNode("solo"),
		health:    &fakeHealth{backends: map[string]healthcheck.Backend{}},
		readiness: &fakeReadiness{ready: true},
		loads:     &fakeLoads{inFlight: map[string]int64{}, longLived: map[string]int64{}},
	}
	ln, err := Listen("127.0.0.1:0", "", "")
	if err != nil {
		t.Fatal(err)
	}
	api.server = Serve(ln, Deps{
		Node:      api.node,
		Verdicts:  noVerdicts{},
		Health:    fakeServiceHealth{api.health, api.backendOrder},
		Readiness: api.readiness,
		Loads:     func() Loads { return fakeServiceLoads{api.loads, api.backendOrder} },
		Metrics:   prometheus.NewRegistry(),
	}, Config{Tokens: tokens, Logger: zap.NewNop})
	t.Cleanup(api.server.Close)
	return api
}

// answer is one HTTP answer of the admin API with its JSON body decoded.
type answer struct {
	status int
	header http.Header
	body   map[string]any
}

// call sends one request (headers as name, value pairs) with the bearer
// token when one is given.
func (api *testAPI) call(t *testing.T, token, method, path, body string, header ...string) answer {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+api.server.Addr()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	a := answer{status: resp.StatusCode, header: resp.Header}
	if err := json.Unmarshal(raw, &a.body); err != nil {
		t.Fatalf("%s %s: answer %d is not a JSON object: %q", method, path, resp.StatusCode, raw)
	}
	return a
}

// version is the answer's "version" (a service body or a 409).
func (a answer) version(t *testing.T) uint64 {
	t.Helper()
	v, ok := a.body["version"].(float64)
	if !ok {
		t.Fatalf("answer has no version: %v", a.body)
	}
	return uint64(v)
}

// index is the answer's X-Cbproxy-Index.
func (a answer) index(t *testing.T) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(a.header.Get("X-Cbproxy-Index"), 10, 64)
	if err != nil {
		t.Fatalf("X-Cbproxy-Index %q: %v", a.header.Get("X-Cbproxy-Index"), err)
	}
	return v
}

func (a answer) weights() map[string]any {
	w, _ := a.body["weights"].(map[string]any)
	return w
}

// shopService has blue at 100 % and canary at 0.
const shopService = `{"pools":{"blue":{"backends":["127.0.0.1:9001"]},"canary":{"backends":["127.0.0.1:9003"]}},"weights":{"blue":100}}`

// putShop creates the shop service with both pools healthy and returns its
// version.
func (api *testAPI) putShop(t *testing.T, token string) uint64 {
	t.Helper()
	api.health.set("shop", "blue", "127.0.0.1:9001", healthcheck.Backend{Status: healthcheck.StatusHealthy})
	api.health.set("shop", "canary", "127.0.0.1:9003", healthcheck.Backend{Status: healthcheck.StatusHealthy})
	a := api.call(t, token, "PUT", "/v1/services/shop", shopService)
	if a.status != 200 {
		t.Fatalf("PUT shop: %d %v", a.status, a.body)
	}
	return a.version(t)
}

func TestWeightsReadBackWithVersionAndIndex(t *testing.T) {
	api := serveTestAPI(t)
	created := api.putShop(t, "")

	before := time.Now().UTC()
	w := api.call(t, "", "PUT", "/v1/services/shop/weights?wait=all", `{"weights":{"blue":99.5,"canary":0.5}}`, "If-Match", strconv.FormatUint(created, 10))
	if w.status != 200 {
		t.Fatalf("PUT weights: %d %v", w.status, w.body)
	}
	version := w.version(t)
	if version <= created || w.index(t) != version {
		t.Fatalf("weights write: version %d (service created at %d), X-Cbproxy-Index %d; want a newer version and the index of the write", version, created, w.index(t))
	}
	if got := w.weights(); got["blue"] != 99.5 || got["canary"] != 0.5 {
		t.Fatalf("written weights = %v", got)
	}
	if lkg, _ := w.body["lkg"].(map[string]any); lkg["blue"] != 100.0 || lkg["canary"] != 0.0 {
		t.Fatalf("lkg = %v, want the weights in force before", lkg)
	}
	if on, _ := w.body["applied_on"].([]any); len(on) != 1 || on[0] != "solo" {
		t.Fatalf("?wait=all applied_on = %v", w.body["applied_on"])
	}

	g := api.call(t, "", "GET", "/v1/services/shop", "")
	if g.status != 200 || g.version(t) != version || g.index(t) != version || g.header.Get("X-Cbproxy-Node") != "solo" {
		t.Fatalf("GET after the write: %d version %v, headers %v", g.status, g.body["version"], g.header)
	}
	if got := g.weights(); got["blue"] != 99.5 || got["canary"] != 0.5 {
		t.Fatalf("weights read back = %v", got)
	}
	// What the API answered is what the state machine holds, in hundredths.
	if s := api.node.View().Services["shop"]; s.Weights["blue"] != 9950 || s.Weights["canary"] != 50 || s.Version != version {
		t.Fatalf("state machine holds %v at version %d", s.Weights, s.Version)
	}
	// The command carried the proposer's time into its event.
	events, _ := api.node.QueryEvents(state.EventQuery{Service: "shop"})
	last := events[len(events)-1]
	if last.Action != state.ActionWeights || last.Index != version || last.Actor != "local" || last.Time.Before(before) {
		t.Fatalf("weights event = %+v, want action weights at index %d by local, stamped after %v", last, version, before)
	}
}

func TestStaleVersionIsAConflict(t *testing.T) {
	api := serveTestAPI(t)
	created := api.putShop(t, "")
	current := api.call(t, "", "PUT", "/v1/services/shop/weights", `{"weights":{"blue":90,"canary":10}}`).version(t)
	proposed := api.node.proposals.Load()

	for _, tc := range []struct {
		name   string
		body   string
		header []string
	}{
		{"If-Match", `{"weights":{"blue":50,"canary":50}}`, []string{"If-Match", fmt.Sprintf(`"%d"`, created)}},
		{"weak If-Match", `{"weights":{"blue":50,"canary":50}}`, []string{"If-Match", fmt.Sprintf(`W/"%d"`, created)}},
		{"if_version", fmt.Sprintf(`{"weights":{"blue":50,"canary":50},"if_version":%d}`, created), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := api.call(t, "", "PUT", "/v1/services/shop/weights", tc.body, tc.header...)
			if a.status != 409 || a.body["code"] != "version_mismatch" || a.version(t) != current {
				t.Fatalf("stale version: %d %v, want 409 version_mismatch with version %d", a.status, a.body, current)
			}
		})
	}
	// A refusal on the state is a log entry that changed nothing.
	if s := api.node.View().Services["shop"]; s.Version != current || s.Weights["canary"] != 1000 {
		t.Fatalf("a stale write changed the service: version %d, weights %v", s.Version, s.Weights)
	}
	if n := api.node.proposals.Load() - proposed; n != 3 {
		t.Fatalf("%d proposals for 3 stale writes: the version check belongs to the state machine", n)
	}
	// If-Match and if_version that disagree never reach it.
	a := api.call(t, "", "PUT", "/v1/services/shop/weights", fmt.Sprintf(`{"weights":{"blue":50,"canary":50},"if_version":%d}`, current), "If-Match", strconv.FormatUint(created, 10))
	if a.status != 400 || a.body["code"] != "invalid" || !strings.Contains(a.body["error"].(string), "disagree") {
		t.Fatalf("If-Match and if_version disagreeing: %d %v", a.status, a.body)
	}
}

func TestHealthGate(t *testing.T) {
	api := serveTestAPI(t)
	api.putShop(t, "")
	const probeError = "GET http://127.0.0.1:9003/health/ready answered 503 Service Unavailable"
	api.health.set("shop", "canary", "127.0.0.1:9003", healthcheck.Backend{Status: healthcheck.StatusUnhealthy, LastError: probeError})
	proposed := api.node.proposals.Load()

	for _, tc := range []struct{ name, method, path, body string }{
		{"weights raising canary", "PUT", "/v1/services/shop/weights", `{"weights":{"blue":99,"canary":1}}`},
		{"switch to canary", "POST", "/v1/services/shop/switch", `{"to":"canary"}`},
		{"rollout to canary", "POST", "/v1/services/shop/rollout", `{"to":"canary","steps":[{"weight":10}]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := api.call(t, "", tc.method, tc.path, tc.body)
			if a.status != 412 || a.body["code"] != "gate_refused" || !strings.Contains(a.body["error"].(string), probeError) {
				t.Fatalf("unhealthy canary: %d %v, want 412 gate_refused naming the probe's error", a.status, a.body)
			}
			failing, _ := a.body["failing"].([]any)
			if len(failing) != 1 {
				t.Fatalf("failing = %v, want the canary backend", a.body["failing"])
			}
			if f := failing[0].(map[string]any); f["pool"] != "canary" || f["address"] != "127.0.0.1:9003" || f["health"] != "unhealthy" || f["error"] != probeError {
				t.Fatalf("failing backend = %v", f)
			}
		})
	}
	// What reaches the state machine is the record of the refusals, one for
	// the three (at most one per service every 10 s), in the background:
	// never a change of the service.
	deadline := time.Now().Add(10 * time.Second)
	for api.node.proposals.Load()-proposed < 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	if n := api.node.proposals.Load() - proposed; n != 1 {
		t.Fatalf("the gate let %d calls reach the state machine, want only the one gate_refused record", n)
	}
	events := api.node.machine.Events("shop", 0, 1)
	if ev := events[len(events)-1]; ev.Action != state.ActionGateRefused || ev.Figures["refused_by"] == nil || ev.Figures["failing"] == nil {
		t.Fatalf("last event %+v, want the gate refusal", ev)
	}
	// Bad input is bad input first: a body that no force can make valid is
	// a 400, not a 412 that sends the operator to fix backends and then
	// fails anyway.
	for _, body := range []string{`{"weights":{"blue":98,"canary":1}}`, `{"weights":{"blue":99.999,"canary":0.001}}`} {
		if a := api.call(t, "", "PUT", "/v1/services/shop/weights", body); a.status != 400 {
			t.Fatalf("invalid weights %s raising the unhealthy canary: %d %v, want 400", body, a.status, a.body)
		}
	}

	// force passes the gate.
	a := api.call(t, "", "PUT", "/v1/services/shop/weights", `{"weights":{"blue":99,"canary":1},"force":true}`)
	if a.status != 200 || a.weights()["canary"] != 1.0 {
		t.Fatalf("forced weights: %d %v", a.status, a.body)
	}
	// A pool that already has a share is not gated.
	if a := api.call(t, "", "PUT", "/v1/services/shop/weights", `{"weights":{"blue":50,"canary":50}}`); a.status != 200 {
		t.Fatalf("weights of a pool already served: %d %v", a.status, a.body)
	}
	// A switch always checks its target; a drained healthy backend is not fit.
	api.health.set("shop", "canary", "127.0.0.1:9003", healthcheck.Backend{Status: healthcheck.StatusHealthy})
	if a := api.call(t, "", "POST", "/v1/services/shop/pools/canary/backends/127.0.0.1:9003/drain", ""); a.status != 200 {
		t.Fatalf("drain: %d %v", a.status, a.body)
	}
	a = api.call(t, "", "POST", "/v1/services/shop/switch", `{"to":"canary"}`)
	if failing, _ := a.body["failing"].([]any); a.status != 412 || len(failing) != 1 || failing[0].(map[string]any)["draining"] != true {
		t.Fatalf("switch to a drained pool: %d %v", a.status, a.body)
	}
	if a := api.call(t, "", "POST", "/v1/services/shop/switch", `{"to":"canary","force":true}`); a.status != 200 || a.weights()["canary"] != 100.0 {
		t.Fatalf("forced switch: %d %v", a.status, a.body)
	}
}

func TestBadInputIsRefusedBeforeProposing(t *testing.T) {
	api := serveTestAPI(t)
	version := api.putShop(t, "")
	proposed := api.node.proposals.Load()

	for _, tc := range []struct{ name, method, path, body, mentions string }{
		{"invalid JSON", "PUT", "/v1/services/shop/weights", `{"weights":{"blue":100`, "malformed JSON"},
		{"sum over 100", "PUT", "/v1/services/shop/weights", `{"weights":{"blue":100,"canary":1}}`, "sum to 101, not 100"},
		{"sum under 100", "PUT", "/v1/services/shop/weights", `{"weights":{"blue":99,"canary":0.5}}`, "sum to 99.5, not 100"},
		{"three decimals", "PUT", "/v1/services/shop/weights", `{"weights":{"blue":99.995,"canary":0.005}}`, "decimals"},
		{"weight as a string", "PUT", "/v1/services/shop/weights", `{"weights":{"blue":"100"}}`, ""},
		{"unknown field", "PUT", "/v1/services/shop/weights", `{"weigths":{"blue":100}}`, "weigths"},
		{"no weights", "PUT", "/v1/services/shop/weights", `{}`, `"weights" is missing`},
		{"empty body", "PUT", "/v1/services/shop/weights", ``, "empty"},
		{"trailing data", "PUT", "/v1/services/shop/weights", `{"weights":{"blue":100}} {}`, "after the JSON object"},
		{"bad If-Match", "PUT", "/v1/services/shop/weights", `{"weights":{"blue":100}}`, "If-Match"},
		{"switch without to", "POST", "/v1/services/shop/switch", `{}`, `"to" is missing`},
		{"service without pools", "PUT", "/v1/services/other", `{"weights":{}}`, "pool"},
		{"backend without port", "PUT", "/v1/services/other", `{"pools":{"a":{"backends":["127.0.0.1"]}}}`, "127.0.0.1"},
		{"body names another service", "PUT", "/v1/services/other", `{"name":"shop","pools":{"a":{"backends":["127.0.0.1:1"]}}}`, "path names"},
		{"event limit", "GET", "/v1/events?limit=0", ``, "limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var header []string
			if tc.name == "bad If-Match" {
				header = []string{"If-Match", "yesterday"}
			}
			a := api.call(t, "", tc.method, tc.path, tc.body, header...)
			msg, _ := a.body["error"].(string)
			if a.status != 400 || a.body["code"] != "invalid" || msg == "" || !strings.Contains(msg, tc.mentions) {
				t.Fatalf("got %d %v, want 400 invalid mentioning %q", a.status, a.body, tc.mentions)
			}
		})
	}
	if n := api.node.proposals.Load() - proposed; n != 0 {
		t.Fatalf("%d malformed requests reached the state machine", n)
	}
	if s := api.node.View().Services["shop"]; s.Version != version {
		t.Fatalf("bad input changed the service: version %d, want %d", s.Version, version)
	}
	// The state machine's own refusals answer too: a pool the service lacks.
	a := api.call(t, "", "PUT", "/v1/services/shop/weights", `{"weights":{"blue":99,"purple":1}}`)
	if a.status != 400 || a.body["code"] != "invalid" || !strings.Contains(a.body["error"].(string), "purple") {
		t.Fatalf("unknown pool: %d %v", a.status, a.body)
	}
	if a := api.call(t, "", "PUT", "/v1/services/nope/weights", `{"weights":{"blue":100}}`); a.status != 404 || a.body["code"] != "not_found" {
		t.Fatalf("unknown service: %d %v", a.status, a.body)
	}
}

func TestRolesOfTokens(t *testing.T) {
	api := serveTestAPI(t,
		Token{Name: "viewer", Secret: "read-secret", Role: RoleRead},
		Token{Name: "ops", Secret: "operate-secret", Role: RoleOperate},
		Token{Name: "root", Secret: "admin-secret", Role: RoleAdmin})

	if a := api.call(t, "", "GET", "/v1/services", ""); a.status != 401 || a.body["code"] != "unauthorized" || a.header.Get("WWW-Authenticate") != `Bearer realm="cbproxy"` {
		t.Fatalf("no token: %d %v %v", a.status, a.body, a.header)
	}
	if a := api.call(t, "guess", "GET", "/v1/services", ""); a.status != 401 || !strings.Contains(a.header.Get("WWW-Authenticate"), "invalid_token") {
		t.Fatalf("unknown token: %d %v %v", a.status, a.body, a.header)
	}
	api.putShop(t, "admin-secret")
	proposed := api.node.proposals.Load()

	if a := api.call(t, "read-secret", "GET", "/v1/services/shop", ""); a.status != 200 {
		t.Fatalf("read token reading: %d %v", a.status, a.body)
	}
	for _, tc := range []struct{ token, method, path, body, need string }{
		{"read-secret", "PUT", "/v1/services/shop/weights", `{"weights":{"blue":50,"canary":50}}`, "operate"},
		{"read-secret", "POST", "/v1/services/shop/switch", `{"to":"canary"}`, "operate"},
		{"read-secret", "PUT", "/v1/services/shop", shopService, "admin"},
		{"operate-secret", "PUT", "/v1/services/shop", shopService, "admin"},
		{"operate-secret", "DELETE", "/v1/services/shop", ``, "admin"},
	} {
		a := api.call(t, tc.token, tc.method, tc.path, tc.body)
		if a.status != 403 || a.body["code"] != "forbidden" || !strings.Contains(a.body["error"].(string), "needs "+tc.need) {
			t.Fatalf("%s %s with %s: %d %v, want 403 forbidden naming %s", tc.method, tc.path, tc.token, a.status, a.body, tc.need)
		}
	}
	if n := api.node.proposals.Load() - proposed; n != 0 {
		t.Fatalf("%d refused callers reached the state machine", n)
	}

	// The bearer word is case-insensitive; the token's name is the actor.
	a := api.call(t, "", "PUT", "/v1/services/shop/weights", `{"weights":{"blue":50,"canary":50}}`, "Authorization", "bearer operate-secret")
	if a.status != 200 {
		t.Fatalf("operate token writing weights: %d %v", a.status, a.body)
	}
	if events, _ := api.node.QueryEvents(state.EventQuery{Service: "shop"}); events[len(events)-1].Actor != "ops" {
		t.Fatalf("weights event actor = %q, want the token's name", events[len(events)-1].Actor)
	}
	// Health needs no token.
	for _, path := range []string{"/health/live", "/health/ready", "/health/deps"} {
		if a := api.call(t, "", "GET", path, ""); a.status != 200 {
			t.Fatalf("%s without a token: %d %v", path, a.status, a.body)
		}
	}
	// Tokens change live.
	api.server.SetTokens([]Token{{Name: "viewer", Secret: "read-secret", Role: RoleOperate}})
	if a := api.call(t, "read-secret", "PUT", "/v1/services/shop/weights", `{"weights":{"blue":100}}`); a.status != 200 {
		t.Fatalf("token given operate live: %d %v", a.status, a.body)
	}
	if a := api.call(t, "admin-secret", "GET", "/v1/services", ""); a.status != 401 {
		t.Fatalf("token removed live: %d %v", a.status, a.body)
	}
}

func TestReadyFollowsReadiness(t *testing.T) {
	api := serveTestAPI(t)
	api.putShop(t, "")
	const waiting = "service shop: the proxy has no routing table for it yet"
	api.readiness.set(false, waiting)

	a := api.call(t, "", "GET", "/health/ready", "")
	if w, _ := a.body["waiting_for"].([]any); a.status != 503 || a.body["status"] != "starting" || len(w) != 1 || w[0] != waiting {
		t.Fatalf("not ready: %d %v, want 503 starting waiting for %q", a.status, a.body, waiting)
	}
	if _, ok := a.body["dependencies"].(map[string]any)["shop/blue/127.0.0.1:9001"]; !ok {
		t.Fatalf("a 503 still lists the dependencies: %v", a.body)
	}
	api.readiness.set(true)
	a = api.call(t, "", "GET", "/health/ready", "")
	if _, has := a.body["waiting_for"]; a.status != 200 || a.body["status"] != "ok" || has {
		t.Fatalf("ready: %d %v, want 200 ok", a.status, a.body)
	}
	// An unhealthy backend degrades a ready node; it stays 200.
	api.health.set("shop", "canary", "127.0.0.1:9003", healthcheck.Backend{Status: healthcheck.StatusUnhealthy})
	if a := api.call(t, "", "GET", "/health/ready", ""); a.status != 200 || a.body["status"] != "degraded" {
		t.Fatalf("ready with an unhealthy backend: %d %v, want 200 degraded", a.status, a.body)
	}
}

func TestDepsListLoads(t *testing.T) {
	api := serveTestAPI(t)
	api.putShop(t, "")
	api.loads.mu.Lock()
	api.loads.inFlight["shop/blue/127.0.0.1:9001"] = 7
	api.loads.longLived["shop/blue/127.0.0.1:9001"] = 3
	api.loads.mu.Unlock()
	checked := time.Now()
	api.health.set("shop", "blue", "127.0.0.1:9001", healthcheck.Backend{Status: healthcheck.StatusHealthy, LatencyMs: 1.5, Checked: checked})

	a := api.call(t, "", "GET", "/health/deps", "")
	if a.status != 200 || a.body["status"] != "healthy" {
		t.Fatalf("deps: %d %v", a.status, a.body)
	}
	deps := a.body["dependencies"].(map[string]any)
	blue, _ := deps["shop/blue/127.0.0.1:9001"].(map[string]any)
	if blue["status"] != "healthy" || blue["in_flight"] != 7.0 || blue["long_lived"] != 3.0 || blue["latency_ms"] != 1.5 {
		t.Fatalf("blue backend = %v, want healthy, in_flight 7, long_lived 3, latency_ms 1.5", blue)
	}
	// Counts are listed at 0 too; no latency before a first check.
	canary, _ := deps["shop/canary/127.0.0.1:9003"].(map[string]any)
	if _, has := canary["latency_ms"]; canary["in_flight"] != 0.0 || canary["long_lived"] != 0.0 || has {
		t.Fatalf("canary backend = %v, want in_flight 0, long_lived 0 and no latency", canary)
	}
	raft, _ := deps["raft"].(map[string]any)
	if raft["status"] != "healthy" || raft["state"] != "leader" || raft["leader"] != "solo" || raft["applied_index"] != float64(api.node.View().Index) {
		t.Fatalf("raft dependency = %v", raft)
	}
	// The service body shows the same counts.
	g := api.call(t, "", "GET", "/v1/services/shop", "")
	be := g.body["pools"].(map[string]any)["blue"].(map[string]any)["backends"].([]any)[0].(map[string]any)
	if be["in_flight"] != 7.0 || be["long_lived"] != 3.0 || be["health"] != "healthy" {
		t.Fatalf("blue backend in the service body = %v", be)
	}
}

func TestEventStreamDeliversWeightsChange(t *testing.T) {
	api := serveTestAPI(t)
	api.putShop(t, "")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+api.server.Addr()+"/v1/events/stream?service=shop", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	// The header is sent once the stream has subscribed, so the write below
	// comes after the subscription: without since, only new events come.
	w := api.call(t, "", "PUT", "/v1/services/shop/weights", `{"weights":{"blue":90,"canary":10}}`)
	if w.status != 200 {
		t.Fatalf("weights: %d %v", w.status, w.body)
	}

	var id, event, data string
	lines := bufio.NewScanner(resp.Body)
	for lines.Scan() && lines.Text() != "" {
		line := lines.Text()
		if v, ok := strings.CutPrefix(line, "id: "); ok {
			id = v
		} else if v, ok := strings.CutPrefix(line, "event: "); ok {
			event = v
		} else if v, ok := strings.CutPrefix(line, "data: "); ok {
			data = v
		}
	}
	if id != strconv.FormatUint(w.version(t), 10) || event != string(state.ActionWeights) {
		t.Fatalf("first streamed event: id %q event %q data %s (read error %v), want the weights change at %d", id, event, data, lines.Err(), w.version(t))
	}
	var e state.Event
	if err := json.Unmarshal([]byte(data), &e); err != nil {
		t.Fatalf("event data %q: %v", data, err)
	}
	if e.Service != "shop" || e.Actor != "local" || e.Before["canary"] != 0 || e.After["canary"] != 1000 || e.After["blue"] != 9000 {
		t.Fatalf("streamed event = %+v", e)
	}
}

// TestServiceJSONMatchesRender: GET /v1/services writes, from the encoded
// replicated parts it keeps per service, exactly the bytes json.Marshal
// writes of the rendered bodies: pools in name order, a draining backend,
// per-backend health and loads of the moment, a health check, characters
// JSON escapes, an active rollout; and follows a change of the service.
func TestServiceJSONMatchesRender(t *testing.T) {
	api := serveTestAPI(t)
	api.putShop(t, "")
	if a := api.call(t, "", "PUT", "/v1/services/odd", `{"pools":{"zeta":{"version":"v<1>&\"2\"","backends":["127.0.0.1:9101","127.0.0.1:9102"]},"alpha":{"backends":[]}},`+
		`"weights":{"zeta":100},"health":{"path":"/ready","interval":"2s"}}`); a.status != 200 {
		t.Fatalf("PUT odd: %d %v", a.status, a.body)
	}
	if a := api.call(t, "", "POST", "/v1/services/odd/pools/zeta/backends/127.0.0.1:9101/drain", ""); a.status != 200 && a.status != 202 {
		t.Logf("drain: %d %v (the list is compared whatever the drain answered)", a.status, a.body)
	}
	api.health.set("odd", "zeta", "127.0.0.1:9102", healthcheck.Backend{Status: healthcheck.StatusDegraded})
	api.loads.mu.Lock()
	api.loads.inFlight["shop/blue/127.0.0.1:9001"], api.loads.longLived["odd/zeta/127.0.0.1:9101"] = 7, 2
	api.loads.mu.Unlock()

	compare := func(step string) {
		t.Helper()
		resp, err := http.Get("http://" + api.server.Addr() + "/v1/services")
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		v := api.node.View()
		want := struct {
			Services []serviceBody `json:"services"`
		}{}
		for _, name := range slices.Sorted(maps.Keys(v.Services)) {
			want.Services = append(want.Services, api.server.render(context.Background(), v.Services[name]))
		}
		raw, err := json.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(raw)+"\n" {
			t.Fatalf("%s: GET /v1/services\n got %s\nwant %s", step, got, raw)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s: Content-Type %q", step, ct)
		}
		if resp.ContentLength != int64(len(got)) {
			t.Errorf("%s: Content-Length %d for a body of %d bytes", step, resp.ContentLength, len(got))
		}
	}
	compare("two services")
	if a := api.call(t, "", "POST", "/v1/services/shop/rollout", `{"to":"canary","steps":[{"weight":10}]}`); a.status != 200 && a.status != 201 && a.status != 202 {
		t.Fatalf("rollout: %d %v", a.status, a.body)
	}
	compare("a rollout running")
	api.health.set("shop", "canary", "127.0.0.1:9003", healthcheck.Backend{Status: healthcheck.StatusUnhealthy})
	compare("health changed")
	// The answers' buffers are reused: a shorter list must not carry the
	// tail of the longer one before it.
	if a := api.call(t, "", "DELETE", "/v1/services/odd", ""); a.status != 200 && a.status != 204 {
		t.Fatalf("DELETE odd: %d %v", a.status, a.body)
	}
	compare("a service deleted")
}
