package controlplane

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/adminapi"
	"github.com/cbproxy/cbproxy/controlplane/internal/seams"
	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"go.uber.org/zap/zaptest"
)

// startNode starts a real single-node cluster: raft-wal on disk in dir, TCP on
// loopback, the admin API on a free port.
// Raft timings of the tests: a leader within a few hundred milliseconds of a
// start or a failover, not Raft's default seconds. A cluster's nodes get a
// little more slack, as several of them share the machine.
var (
	singleNodeRaft = seams.Raft{HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, LeaderLease: 50 * time.Millisecond}
	clusterRaft    = seams.Raft{HeartbeatTimeout: 150 * time.Millisecond, ElectionTimeout: 150 * time.Millisecond, LeaderLease: 100 * time.Millisecond}
)

func startNode(t *testing.T, dir string, tokens ...adminapi.Token) *Node {
	t.Helper()
	return startNodeTuned(t, dir, func(c *Config) { c.Tokens = tokens })
}

// startNodeTuned is startNode with the config edited by tune first.
func startNodeTuned(t *testing.T, dir string, tune func(*Config)) *Node {
	t.Helper()
	cfg := Config{
		NodeID:        "node1",
		DataDir:       dir,
		ClusterListen: "127.0.0.1:0",
		AdminListen:   "127.0.0.1:0",
		Logger:        zaptest.NewLogger(t),
		raft:          singleNodeRaft,
	}
	tune(&cfg)
	n, err := Start(cfg)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() { _ = n.Shutdown() })
	deadline := time.Now().Add(30 * time.Second)
	for !n.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("node not ready within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The node records its own addresses (a node_join event) a moment after
	// it is ready; a test that counts events must not see it arrive late.
	for n.View().Nodes[cfg.NodeID] == (state.NodeInfo{}) {
		if time.Now().After(deadline) {
			t.Fatalf("node %s never recorded its addresses", cfg.NodeID)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return n
}

type client struct {
	t     *testing.T
	base  string
	token string
}

func newClient(t *testing.T, n *Node) *client {
	return &client{t: t, base: "http://" + n.AdminAddr()}
}

// do sends a request and returns status, headers and the decoded JSON body.
func (c *client) do(method, path, body string, hdr ...string) (int, http.Header, map[string]any) {
	c.t.Helper()
	req, err := http.NewRequest(method, c.base+path, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if len(raw) > 0 && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &out); err != nil {
			c.t.Fatalf("%s %s: bad JSON %q: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode, resp.Header, out
}

const demoService = `{"pools":{"blue":{"backends":["127.0.0.1:9001"]},"canary":{"backends":[{"address":"127.0.0.1:9003"}],"version":"v2"}},"weights":{"blue":100}}`

func TestServiceLifecycle(t *testing.T) {
	n := startNode(t, t.TempDir())
	c := newClient(t, n)

	code, hdr, body := c.do("PUT", "/v1/services/codingbrain", demoService)
	if code != 200 {
		t.Fatalf("put service: %d %v", code, body)
	}
	if hdr.Get("X-Cbproxy-Node") != "node1" || hdr.Get("X-Cbproxy-Index") == "" {
		t.Fatalf("missing node/index headers: %v", hdr)
	}
	v1 := uint64(body["version"].(float64))

	code, _, body = c.do("PUT", "/v1/services/codingbrain/weights", `{"weights":{"blue":99,"canary":1}}`)
	if code != 200 {
		t.Fatalf("weights: %d %v", code, body)
	}
	w := body["weights"].(map[string]any)
	if w["blue"] != 99.0 || w["canary"] != 1.0 {
		t.Fatalf("weights = %v", w)
	}
	lkg := body["lkg"].(map[string]any)
	if lkg["blue"] != 100.0 || lkg["canary"] != 0.0 {
		t.Fatalf("lkg = %v", lkg)
	}
	v2 := uint64(body["version"].(float64))
	if v2 <= v1 {
		t.Fatalf("version did not grow: %d -> %d", v1, v2)
	}

	// A stale expected version is refused with the current version.
	code, _, body = c.do("PUT", "/v1/services/codingbrain/weights", `{"weights":{"blue":50,"canary":50}}`, "If-Match", fmt.Sprintf(`"%d"`, v1))
	if code != 409 || body["code"] != "version_mismatch" || uint64(body["version"].(float64)) != v2 {
		t.Fatalf("stale If-Match: %d %v", code, body)
	}

	code, _, body = c.do("POST", "/v1/services/codingbrain/switch?wait=all", `{"to":"canary"}`, "If-Match", fmt.Sprint(v2))
	if code != 200 || body["weights"].(map[string]any)["canary"] != 100.0 {
		t.Fatalf("switch: %d %v", code, body)
	}
	if on := body["applied_on"].([]any); len(on) != 1 || on[0] != "node1" {
		t.Fatalf("applied_on = %v", body["applied_on"])
	}

	code, _, body = c.do("PUT", "/v1/services/codingbrain/pools/green", `{"backends":["127.0.0.1:9002"],"version":"v3"}`)
	if code != 200 {
		t.Fatalf("pool set: %d %v", code, body)
	}
	pools := body["pools"].(map[string]any)
	if g := pools["green"].(map[string]any); g["version"] != "v3" || body["weights"].(map[string]any)["green"] != 0.0 {
		t.Fatalf("green pool = %v, weights %v", g, body["weights"])
	}
	// Without "version" the label stays.
	code, _, body = c.do("PUT", "/v1/services/codingbrain/pools/green", `{"backends":["127.0.0.1:9002","127.0.0.1:9004"]}`)
	if code != 200 || body["pools"].(map[string]any)["green"].(map[string]any)["version"] != "v3" {
		t.Fatalf("pool set keeps version: %d %v", code, body)
	}

	code, _, body = c.do("GET", "/v1/events?service=codingbrain", "")
	if code != 200 {
		t.Fatalf("events: %d", code)
	}
	var actions []string
	for _, e := range body["events"].([]any) {
		actions = append(actions, e.(map[string]any)["action"].(string))
	}
	if got := strings.Join(actions, ","); got != "service_put,weights,switch,pool,pool" {
		t.Fatalf("event actions = %s", got)
	}
	if e := body["events"].([]any)[1].(map[string]any); e["actor"] != "local" || e["before"].(map[string]any)["blue"] != 100.0 {
		t.Fatalf("weights event = %v", e)
	}

	code, _, _ = c.do("DELETE", "/v1/services/codingbrain", "")
	if code != 200 {
		t.Fatalf("delete: %d", code)
	}
	if code, _, _ = c.do("GET", "/v1/services/codingbrain", ""); code != 404 {
		t.Fatalf("get after delete: %d", code)
	}
	// A seed never brings a deleted service back.
	n.Seed("codingbrain", state.ServiceSpec{Pools: map[string]state.PoolSpec{"blue": {Backends: []string{"127.0.0.1:9001"}}}})
	time.Sleep(200 * time.Millisecond)
	if n.View().Services["codingbrain"] != nil {
		t.Fatal("seed re-created a deleted service")
	}
}

func TestBadInput(t *testing.T) {
	n := startNode(t, t.TempDir())
	c := newClient(t, n)
	if code, _, body := c.do("PUT", "/v1/services/svc", demoService); code != 200 {
		t.Fatalf("put: %d %v", code, body)
	}
	before := n.View().Services["svc"]
	cases := []struct {
		name, method, path, body string
		code                     int
		errCode, mentions        string
	}{
		{"sum", "PUT", "/v1/services/svc/weights", `{"weights":{"blue":99,"canary":0.5}}`, 400, "invalid", "99.5"},
		{"decimals", "PUT", "/v1/services/svc/weights", `{"weights":{"blue":99.123,"canary":0.877}}`, 400, "invalid", "decimals"},
		{"unknown pool", "PUT", "/v1/services/svc/weights", `{"weights":{"blue":99,"purple":1}}`, 400, "invalid", "purple"},
		{"negative", "PUT", "/v1/services/svc/weights", `{"weights":{"blue":101,"canary":-1}}`, 400, "invalid", ""},
		{"non-numeric", "PUT", "/v1/services/svc/weights", `{"weights":{"blue":"100"}}`, 400, "invalid", ""},
		{"malformed", "PUT", "/v1/services/svc/weights", `{"weights":`, 400, "invalid", ""},
		{"unknown field", "PUT", "/v1/services/svc/weights", `{"wieghts":{"blue":100}}`, 400, "invalid", "wieghts"},
		{"empty", "PUT", "/v1/services/svc/weights", ``, 400, "invalid", ""},
		{"trailing", "PUT", "/v1/services/svc/weights", `{"weights":{"blue":100}} x`, 400, "invalid", ""},
		{"switch unknown", "POST", "/v1/services/svc/switch", `{"to":"purple"}`, 400, "invalid", "purple"},
		{"bad duration", "PUT", "/v1/services/svc2", `{"pools":{"a":{"backends":["127.0.0.1:1"]}},"guard":"ten minutes"}`, 400, "invalid", ""},
		{"bad backend", "PUT", "/v1/services/svc2", `{"pools":{"a":{"backends":["127.0.0.1"]}}}`, 400, "invalid", "127.0.0.1"},
		{"bad name", "PUT", "/v1/services/Bad_Name", `{"pools":{"a":{"backends":["127.0.0.1:1"]}}}`, 400, "invalid", ""},
		{"unknown service", "PUT", "/v1/services/nope/weights", `{"weights":{"blue":100}}`, 404, "not_found", "nope"},
		{"bad if-match", "PUT", "/v1/services/svc/weights", `{"weights":{"blue":100},"if_version":1}`, 409, "version_mismatch", ""},
		{"method", "PATCH", "/v1/services/svc", `{}`, 405, "method_not_allowed", ""},
		{"no endpoint", "GET", "/v1/nothing", ``, 404, "not_found", ""},
		{"limit", "GET", "/v1/events?limit=5000", ``, 400, "invalid", "limit"},
		{"too large", "PUT", "/v1/services/svc/weights", `{"weights":{"blue":100},"x":"` + strings.Repeat("a", (1<<20)) + `"}`, 413, "body_too_large", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, _, body := c.do(tc.method, tc.path, tc.body)
			if code != tc.code || body["code"] != tc.errCode {
				t.Fatalf("got %d %v, want %d %s", code, body, tc.code, tc.errCode)
			}
			if msg, _ := body["error"].(string); msg == "" || !strings.Contains(msg, tc.mentions) {
				t.Fatalf("error %q should mention %q", msg, tc.mentions)
			}
		})
	}
	if after := n.View().Services["svc"]; after.Version != before.Version {
		t.Fatalf("bad input changed the service: version %d -> %d", before.Version, after.Version)
	}
}

func TestIdempotencyKey(t *testing.T) {
	n := startNode(t, t.TempDir())
	c := newClient(t, n)
	c.do("PUT", "/v1/services/svc", demoService)
	body := `{"weights":{"blue":95,"canary":5}}`
	code, _, first := c.do("PUT", "/v1/services/svc/weights", body, "Idempotency-Key", "k1")
	if code != 200 {
		t.Fatalf("first: %d %v", code, first)
	}
	// Someone else changes the weights in between.
	c.do("PUT", "/v1/services/svc/weights", `{"weights":{"blue":100}}`)
	code, _, again := c.do("PUT", "/v1/services/svc/weights", body, "Idempotency-Key", "k1")
	if code != 200 || again["version"] != first["version"] {
		t.Fatalf("replay: %d %v, first %v", code, again, first)
	}
	if w := n.View().Services["svc"].Weights; w["blue"] != 10000 {
		t.Fatalf("replay applied again: %v", w)
	}
	code, _, reused := c.do("PUT", "/v1/services/svc/weights", `{"weights":{"blue":90,"canary":10}}`, "Idempotency-Key", "k1")
	if code != 409 || reused["code"] != "idempotency_key_reused" {
		t.Fatalf("reuse: %d %v", code, reused)
	}
	// A delete repeated with its key returns its first result, not a 404.
	if code, _, _ = c.do("DELETE", "/v1/services/svc", "", "Idempotency-Key", "del"); code != 200 {
		t.Fatalf("delete: %d", code)
	}
	if code, _, _ = c.do("DELETE", "/v1/services/svc", "", "Idempotency-Key", "del"); code != 200 {
		t.Fatalf("repeated delete: %d", code)
	}
}

func TestTokensAndRoles(t *testing.T) {
	n := startNode(t, t.TempDir(),
		adminapi.Token{Name: "ops", Secret: "ops-secret", Role: adminapi.RoleOperate},
		adminapi.Token{Name: "viewer", Secret: "view-secret", Role: adminapi.RoleRead},
		adminapi.Token{Name: "root", Secret: "root-secret", Role: adminapi.RoleAdmin})
	c := newClient(t, n)
	if code, _, body := c.do("GET", "/v1/services", ""); code != 401 || body["code"] != "unauthorized" {
		t.Fatalf("no token: %d %v", code, body)
	}
	c.token = "wrong"
	if code, _, _ := c.do("GET", "/v1/services", ""); code != 401 {
		t.Fatalf("bad token: %d", code)
	}
	c.token = "view-secret"
	if code, _, _ := c.do("GET", "/v1/services", ""); code != 200 {
		t.Fatalf("viewer read: %d", code)
	}
	if code, _, body := c.do("PUT", "/v1/services/svc", demoService); code != 403 || !strings.Contains(body["error"].(string), "admin") {
		t.Fatalf("viewer put: %d %v", code, body)
	}
	c.token = "root-secret"
	if code, _, _ := c.do("PUT", "/v1/services/svc", demoService); code != 200 {
		t.Fatalf("admin put: %d", code)
	}
	c.token = "ops-secret"
	if code, _, _ := c.do("PUT", "/v1/services/svc/weights", `{"weights":{"blue":50,"canary":50}}`); code != 200 {
		t.Fatalf("operate weights: %d", code)
	}
	if code, _, _ := c.do("DELETE", "/v1/services/svc", ""); code != 403 {
		t.Fatalf("operate delete: %d", code)
	}
	_, _, ev := c.do("GET", "/v1/events", "")
	evs := ev["events"].([]any)
	if last := evs[len(evs)-1].(map[string]any); last["actor"] != "ops" {
		t.Fatalf("actor = %v", last["actor"])
	}
	// Health and metrics need no token.
	c.token = ""
	for _, p := range []string{"/health/live", "/health/ready", "/health/deps", "/metrics"} {
		if code, _, _ := c.do("GET", p, ""); code != 200 {
			t.Fatalf("%s: %d", p, code)
		}
	}
	// Tokens change live.
	n.SetTokens([]adminapi.Token{{Name: "new", Secret: "new-secret", Role: adminapi.RoleRead}})
	c.token = "view-secret"
	if code, _, _ := c.do("GET", "/v1/services", ""); code != 401 {
		t.Fatalf("old token after reload: %d", code)
	}
}

func TestRestartKeepsState(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, dir)
	c := newClient(t, n)
	c.do("PUT", "/v1/services/svc", demoService)
	for i := 1; i <= 30; i++ {
		body := fmt.Sprintf(`{"weights":{"blue":%d,"canary":%d}}`, 100-i, i)
		if code, _, b := c.do("PUT", "/v1/services/svc/weights", body); code != 200 {
			t.Fatalf("weights %d: %d %v", i, code, b)
		}
		if i == 10 {
			if err := seams.RaftOf(n.raft).Snapshot().Error(); err != nil {
				t.Fatalf("snapshot: %v", err)
			}
		}
	}
	want := n.View().Services["svc"]
	wantEvents := trail(n, "", 0, 1000)
	if err := n.Shutdown(); err != nil {
		t.Fatal(err)
	}

	// Right after Start, before any leader, the node already serves what it
	// last applied (raftnode/DESIGN.md, "Restart without going back in time").
	n2, err := Start(Config{NodeID: "node1", DataDir: dir, ClusterListen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer n2.Shutdown()
	got := n2.View().Services["svc"]
	if got == nil || got.Version != want.Version || !got.Weights.Equal(want.Weights) {
		t.Fatalf("after restart: %+v, want %+v", got, want)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !n2.Ready() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !n2.Ready() {
		t.Fatal("restarted node never ready")
	}
	// Every event is still there, in order. The restarted node may have
	// added one since: it listens on a new port (127.0.0.1:0) and records
	// its new address (node_join) once it leads.
	events := trail(n2, "", 0, 1000)
	if len(events) < len(wantEvents) {
		t.Fatalf("events after restart: %d, want at least the %d from before", len(events), len(wantEvents))
	}
	for i, e := range wantEvents {
		if events[i].Index != e.Index || events[i].Action != e.Action {
			t.Fatalf("event %d after restart: %d %s, want %d %s", i, events[i].Index, events[i].Action, e.Index, e.Action)
		}
	}
	for _, e := range events[len(wantEvents):] {
		if e.Action != state.ActionNodeJoin {
			t.Fatalf("event after restart that is not the node's new address: %+v", e)
		}
	}
	c2 := newClient(t, n2)
	if code, _, b := c2.do("PUT", "/v1/services/svc/weights", `{"weights":{"blue":100}}`); code != 200 {
		t.Fatalf("write after restart: %d %v", code, b)
	}
}

func TestEventStream(t *testing.T) {
	n := startNode(t, t.TempDir())
	c := newClient(t, n)
	c.do("PUT", "/v1/services/svc", demoService)
	req, _ := http.NewRequest("GET", c.base+"/v1/events/stream?service=svc", nil)
	req.Header.Set("Last-Event-ID", "0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	go func() {
		time.Sleep(100 * time.Millisecond)
		c.do("PUT", "/v1/services/svc/weights", `{"weights":{"blue":50,"canary":50}}`)
	}()
	sc := bufio.NewScanner(resp.Body)
	var events []string
	timeout := time.AfterFunc(10*time.Second, func() { resp.Body.Close() })
	defer timeout.Stop()
	for sc.Scan() && len(events) < 2 {
		if after, ok := strings.CutPrefix(sc.Text(), "event: "); ok {
			events = append(events, after)
		}
	}
	if strings.Join(events, ",") != "service_put,weights" {
		t.Fatalf("streamed events = %v", events)
	}
}

func TestMetricsLint(t *testing.T) {
	n := startNode(t, t.TempDir())
	c := newClient(t, n)
	c.do("PUT", "/v1/services/svc", demoService)
	resp, err := http.Get(c.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	for _, name := range []string{"cbproxy_raft_is_leader 1", "cbproxy_raft_applied_index", "cbproxy_raft_apply_seconds_bucket"} {
		if !strings.Contains(string(raw), name) {
			t.Fatalf("metrics lack %q:\n%s", name, raw)
		}
	}
	problems, err := promlint.New(strings.NewReader(string(raw))).Lint()
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) > 0 {
		t.Fatalf("promlint: %v", problems)
	}
}

func TestRefusesOpenAdminWithoutTokens(t *testing.T) {
	_, err := Start(Config{DataDir: t.TempDir(), AdminListen: "0.0.0.0:0", ClusterListen: "127.0.0.1:0"})
	if err == nil || !strings.Contains(err.Error(), "token") {
		t.Fatalf("err = %v", err)
	}
}

// trail reads the node's replicated event trail: up to limit of the newest
// events after since, oldest first.
func trail(n *Node, service string, since uint64, limit int) []state.Event {
	events, _ := n.raft.QueryEvents(state.EventQuery{Service: service, Since: since, Limit: limit})
	return events
}

// inCluster reports whether Raft's configuration holds the node.
func inCluster(n *Node) bool {
	for _, m := range n.raft.Members() {
		if m.ID == n.ID() {
			return true
		}
	}
	return false
}
