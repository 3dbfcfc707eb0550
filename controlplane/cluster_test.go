package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/cbproxy/cbproxy/controlplane/internal/partition"
	"github.com/cbproxy/cbproxy/controlplane/state"
	"go.uber.org/zap/zaptest"
)

// testCluster is N real nodes in this process: raft-wal on disk, Raft and RPC
// over TCP on loopback through the authenticated cluster port, admin APIs on
// loopback. Timings are short so elections take tens of milliseconds.
type testCluster struct {
	t     *testing.T
	cfgs  []Config
	nodes []*Node
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func newCluster(t *testing.T, size int, tune func(*Config)) *testCluster {
	t.Helper()
	c := startCluster(t, size, tune)
	c.waitReady(60 * time.Second)
	return c
}

// startCluster starts the nodes without waiting for them to be ready.
func startCluster(t *testing.T, size int, tune func(*Config)) *testCluster {
	t.Helper()
	// The addresses are chosen before the nodes start (each joins the
	// others'), and a test of another package may take one in between:
	// then the cluster is set up again on new ones.
	for attempt := 1; ; attempt++ {
		c, err := tryCluster(t, size, tune)
		if err == nil {
			return c
		}
		if !errors.Is(err, syscall.EADDRINUSE) || attempt == 3 {
			t.Fatal(err)
		}
		t.Logf("setting the cluster up again: %v", err)
	}
}

func tryCluster(t *testing.T, size int, tune func(*Config)) (*testCluster, error) {
	c := &testCluster{t: t, nodes: make([]*Node, size)}
	admins := make([]string, size)
	for i := range admins {
		admins[i] = freeAddr(t)
	}
	for i := 0; i < size; i++ {
		var peers []string
		for j, a := range admins {
			if j != i {
				peers = append(peers, a)
			}
		}
		cfg := Config{
			NodeID: fmt.Sprintf("node%d", i+1), DataDir: t.TempDir(),
			ClusterListen: freeAddr(t), AdminListen: admins[i],
			BootstrapExpect: size, Join: peers, ClusterSecret: "test-secret",
			Logger: zaptest.NewLogger(t).Named(fmt.Sprintf("node%d", i+1)),
			raft:   clusterRaft,
		}
		if tune != nil {
			tune(&cfg)
		}
		c.cfgs = append(c.cfgs, cfg)
	}
	shutdown := func() {
		for _, n := range c.nodes {
			if n != nil {
				_ = n.shutdown(false)
			}
		}
	}
	// Start in reverse order: any order must form the cluster.
	for i := size - 1; i >= 0; i-- {
		n, err := Start(c.cfgs[i])
		if err != nil {
			shutdown()
			return nil, fmt.Errorf("start node%d: %w", i+1, err)
		}
		c.nodes[i] = n
	}
	t.Cleanup(shutdown)
	return c, nil
}

func (c *testCluster) start(i int) {
	c.t.Helper()
	n, err := Start(c.cfgs[i])
	if err != nil {
		c.t.Fatalf("start node%d: %v", i+1, err)
	}
	c.nodes[i] = n
}

// kill stops a node as abruptly as in-process allows: no leadership hand-over.
func (c *testCluster) kill(i int) {
	_ = c.nodes[i].shutdown(false)
	c.nodes[i] = nil
}

func (c *testCluster) waitReady(d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for _, n := range c.nodes {
		for n != nil && !n.Ready() {
			if time.Now().After(deadline) {
				c.t.Fatalf("%s not ready after %s", n.ID(), d)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// leader waits for a leader among the running nodes and returns its index.
func (c *testCluster) leader(d time.Duration) int {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		for i, n := range c.nodes {
			if n != nil && n.raft.IsLeader() {
				return i
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatalf("no leader within %s", d)
	return -1
}

func (c *testCluster) follower() int {
	l := c.leader(30 * time.Second)
	for i, n := range c.nodes {
		if n != nil && i != l {
			return i
		}
	}
	c.t.Fatal("no follower")
	return -1
}

func (c *testCluster) client(i int) *client {
	return &client{t: c.t, base: "http://" + c.nodes[i].AdminAddr()}
}

// converged waits until every running node holds the same services.
func (c *testCluster) converged(d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		var first string
		same := true
		for _, n := range c.nodes {
			if n == nil {
				continue
			}
			b, _ := json.Marshal(n.View().Services)
			if first == "" {
				first = string(b)
			} else if string(b) != first {
				same = false
			}
		}
		if same {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("nodes did not converge within %s", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestClusterFormsAndForwards(t *testing.T) {
	c := newCluster(t, 3, nil)
	f := c.follower()
	cl := c.client(f)
	code, hdr, body := cl.do("PUT", "/v1/services/svc?wait=all", demoService)
	if code != 200 {
		t.Fatalf("put via follower: %d %v", code, body)
	}
	if hdr.Get("X-Cbproxy-Node") != c.nodes[f].ID() {
		t.Fatalf("answered by %s, not the follower asked", hdr.Get("X-Cbproxy-Node"))
	}
	if on := body["applied_on"].([]any); len(on) != 3 || len(body["not_applied"].([]any)) != 0 {
		t.Fatalf("wait=all: applied_on %v not_applied %v", body["applied_on"], body["not_applied"])
	}
	v := uint64(body["version"].(float64))
	for _, n := range c.nodes {
		if s := n.View().Services["svc"]; s == nil || s.Version != v {
			t.Fatalf("%s lacks the write right after wait=all", n.ID())
		}
	}
	// Idempotency keys survive forwarding: the repeat to another node replays.
	other := (f + 1) % 3
	_, _, first := c.client(f).do("PUT", "/v1/services/svc/weights", `{"weights":{"blue":90,"canary":10}}`, "Idempotency-Key", "fw")
	_, _, again := c.client(other).do("PUT", "/v1/services/svc/weights", `{"weights":{"blue":90,"canary":10}}`, "Idempotency-Key", "fw")
	if first["version"] != again["version"] {
		t.Fatalf("replay through another node: %v vs %v", first["version"], again["version"])
	}

	// The cluster body lists every node with its state and applied index.
	code, _, cb := cl.do("GET", "/v1/cluster", "")
	if code != 200 || cb["failure_tolerance"] != 1.0 || cb["leader"] == "" {
		t.Fatalf("cluster: %d %v", code, cb)
	}
	nodes := cb["nodes"].([]any)
	states := map[string]int{}
	for _, x := range nodes {
		nd := x.(map[string]any)
		states[nd["state"].(string)]++
		if nd["admin_addr"] == "" || nd["applied_index"].(float64) < float64(v) {
			t.Fatalf("node entry %v", nd)
		}
	}
	if len(nodes) != 3 || states["leader"] != 1 || states["follower"] != 2 {
		t.Fatalf("cluster nodes %v", nodes)
	}
	// A consistent read on a follower sees the last write.
	code, hdr, sb := cl.do("GET", "/v1/services/svc?consistent", "")
	if code != 200 || sb["weights"].(map[string]any)["canary"] != 10.0 {
		t.Fatalf("consistent read: %d %v", code, sb)
	}
	if idx, _ := strconv.ParseUint(hdr.Get("X-Cbproxy-Index"), 10, 64); idx < uint64(again["version"].(float64)) {
		t.Fatalf("consistent read index %d", idx)
	}
}

// TestClusterFollowersApplyWithoutTick: followers apply a committed write at
// once, not when the leader's next CommitTimeout tick tells them of the
// commit. The tick is an hour here, so a ?wait=all write can only find every
// node applied within its 5 s if the write itself made the leader announce
// the commit (raftnode's announceCommits).
func TestClusterFollowersApplyWithoutTick(t *testing.T) {
	c := startCluster(t, 3, func(cfg *Config) { cfg.raft.CommitTimeout = time.Hour })
	// Readiness compares a follower's applied index with the leader's commit
	// index, which a follower learns late with such a tick: wait instead
	// for every node to see the three registrations, after which no node
	// writes by itself (a registration not yet seen is proposed again, and
	// its entry would tell the followers of the commits before it).
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; i < len(c.nodes); {
		if len(c.nodes[i].View().Nodes) == 3 {
			i++
			continue
		}
		if time.Now().After(deadline) {
			t.Fatalf("node%d's view lists %d nodes after 60 s, want 3", i+1, len(c.nodes[i].View().Nodes))
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, i := range []int{c.leader(30 * time.Second), c.follower()} {
		code, _, body := c.client(i).do("PUT", fmt.Sprintf("/v1/services/svc%d?wait=all", i), demoService)
		if code != 200 {
			t.Fatalf("put via node%d: %d %v", i+1, code, body)
		}
		if on, _ := body["applied_on"].([]any); len(on) != 3 {
			t.Fatalf("put via node%d: applied_on %v, not_applied %v: followers did not learn of the commit without the leader's tick",
				i+1, body["applied_on"], body["not_applied"])
		}
	}
}

func TestClusterLeaderKillAndRestart(t *testing.T) {
	c := newCluster(t, 3, nil)
	c.client(0).do("PUT", "/v1/services/svc", demoService)
	l := c.leader(30 * time.Second)
	lcfg := c.cfgs[l]
	c.kill(l)
	start := time.Now()
	f := c.leader(30 * time.Second)
	t.Logf("new leader %s after %s", c.nodes[f].ID(), time.Since(start))
	// A consistent read right after the election, before any write: the new
	// leader's commit index is its no-op entry, which the state machine never
	// sees; the read must still complete.
	if code, _, b := c.client(f).do("GET", "/v1/services/svc?consistent", ""); code != 200 {
		t.Fatalf("consistent read after failover: %d %v", code, b)
	}
	code, _, body := c.client(f).do("PUT", "/v1/services/svc/weights", `{"weights":{"blue":50,"canary":50}}`)
	if code != 200 {
		t.Fatalf("write after failover: %d %v", code, body)
	}
	// The killed node restarts from its disk and converges.
	n, err := Start(lcfg)
	if err != nil {
		t.Fatal(err)
	}
	c.nodes[l] = n
	c.waitReady(30 * time.Second)
	c.converged(30 * time.Second)
	if w := n.View().Services["svc"].Weights; w["canary"] != 5000 {
		t.Fatalf("restarted node weights %v", w)
	}
}

func TestClusterNoQuorum(t *testing.T) {
	c := newCluster(t, 3, nil)
	c.client(0).do("PUT", "/v1/services/svc?wait=all", demoService)
	before := c.nodes[2].View().Services["svc"]
	c.kill(0)
	c.kill(1)
	start := time.Now()
	code, hdr, body := c.client(2).do("PUT", "/v1/services/svc/weights", `{"weights":{"blue":1,"canary":99}}`)
	if code != 503 || hdr.Get("Retry-After") == "" || body["code"] != "no_quorum" {
		t.Fatalf("write without quorum: %d %v %v", code, hdr, body)
	}
	if d := time.Since(start); d < 4*time.Second || d > 20*time.Second {
		t.Fatalf("503 after %s, want after holding ~5 s", d)
	}
	if after := c.nodes[2].View().Services["svc"]; after != before {
		t.Fatal("the survivor's state changed without quorum")
	}
	// Reads still work (stale), consistent reads say there is no quorum.
	if code, _, _ = c.client(2).do("GET", "/v1/services/svc", ""); code != 200 {
		t.Fatalf("stale read: %d", code)
	}
}

func TestClusterPartitionedLeader(t *testing.T) {
	c := newCluster(t, 3, nil)
	c.client(0).do("PUT", "/v1/services/svc?wait=all", demoService)
	l := c.leader(30 * time.Second)
	old := c.nodes[l]
	for i, n := range c.nodes {
		if i != l {
			partition.Of(old.raft.Transport()).Block(n.raft.ClusterAddr())
			partition.Of(n.raft.Transport()).Block(old.raft.ClusterAddr())
		}
	}
	// The isolated leader steps down; its side applies nothing.
	deadline := time.Now().Add(30 * time.Second)
	for old.raft.IsLeader() {
		if time.Now().After(deadline) {
			t.Fatal("isolated leader did not step down")
		}
		time.Sleep(10 * time.Millisecond)
	}
	code, _, _ := c.client(l).do("PUT", "/v1/services/svc/weights", `{"weights":{"blue":1,"canary":99}}`)
	if code == 200 {
		t.Fatal("the minority side accepted a write")
	}
	var majority int
	for i := range c.nodes {
		if i != l {
			majority = i
			break
		}
	}
	if code, _, body := c.client(majority).do("PUT", "/v1/services/svc/weights", `{"weights":{"blue":70,"canary":30}}`); code != 200 {
		t.Fatalf("majority write: %d %v", code, body)
	}
	for _, n := range c.nodes {
		partition.Of(n.raft.Transport()).UnblockAll()
	}
	c.converged(30 * time.Second)
	if w := old.View().Services["svc"].Weights; w["canary"] != 3000 {
		t.Fatalf("after heal the old leader has %v", w)
	}
}

func TestClusterJoinRemoveAndSecret(t *testing.T) {
	c := newCluster(t, 3, nil)
	// A fourth node with the wrong secret cannot join.
	bad := Config{NodeID: "intruder", DataDir: t.TempDir(), ClusterListen: freeAddr(t), AdminListen: freeAddr(t),
		Join: []string{c.nodes[0].AdminAddr()}, ClusterSecret: "wrong", Logger: zaptest.NewLogger(t)}
	bn, err := Start(bad)
	if err != nil {
		t.Fatal(err)
	}
	defer bn.shutdown(false)
	// A fourth node with the right secret joins through any member.
	good := Config{NodeID: "node4", DataDir: t.TempDir(), ClusterListen: freeAddr(t), AdminListen: freeAddr(t),
		Join: []string{c.nodes[1].AdminAddr()}, ClusterSecret: "test-secret", Logger: zaptest.NewLogger(t),
		raft: clusterRaft}
	gn, err := Start(good)
	if err != nil {
		t.Fatal(err)
	}
	defer gn.shutdown(false)
	deadline := time.Now().Add(30 * time.Second)
	for !gn.Ready() || c.nodes[0].View().Nodes["node4"].AdminAddr == "" {
		if time.Now().After(deadline) {
			t.Fatal("node4 did not join")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if inCluster(bn) || c.nodes[0].View().Nodes["intruder"].ID != "" {
		t.Fatal("the node with the wrong secret joined")
	}
	// Join by hand is idempotent.
	body := fmt.Sprintf(`{"node_id":"node4","cluster_addr":%q,"admin_addr":%q}`, gn.raft.ClusterAddr(), gn.AdminAddr())
	for i := 0; i < 3; i++ {
		if code, _, b := c.client(i).do("POST", "/v1/cluster/join", body); code != 200 || len(b["nodes"].([]any)) != 4 {
			t.Fatalf("join #%d: %d %v", i, code, b)
		}
	}
	if code, _, b := c.client(2).do("DELETE", "/v1/cluster/nodes/node4", ""); code != 200 || len(b["nodes"].([]any)) != 3 {
		t.Fatalf("remove: %d %v", code, b)
	}
	// Joining again after a removal records the node again.
	if code, _, b := c.client(0).do("POST", "/v1/cluster/join", body); code != 200 || len(b["nodes"].([]any)) != 4 {
		t.Fatalf("rejoin: %d %v", code, b)
	}
	if l := c.nodes[c.leader(10*time.Second)]; l.View().Nodes["node4"].AdminAddr == "" {
		t.Fatalf("node4 missing from the node list after rejoining: %v", l.View().Nodes)
	}
	if code, _, _ := c.client(2).do("DELETE", "/v1/cluster/nodes/nobody", ""); code != 404 {
		t.Fatalf("remove unknown: %d", code)
	}
	_, _, ev := c.client(0).do("GET", "/v1/events?limit=1000&consistent", "")
	var actions []string
	for _, e := range ev["events"].([]any) {
		actions = append(actions, e.(map[string]any)["action"].(string))
	}
	if got := strings.Join(actions, ","); !strings.Contains(got, "node_join") || !strings.Contains(got, "node_remove") {
		t.Fatalf("events %s: %v", got, ev["events"])
	}
}

func TestClusterCatchUpBySnapshot(t *testing.T) {
	c := newCluster(t, 3, func(cfg *Config) { cfg.raft.SnapshotThreshold, cfg.raft.TrailingLogs = 16, 8 })
	c.client(0).do("PUT", "/v1/services/svc?wait=all", demoService)
	l := c.leader(30 * time.Second)
	victim := (l + 1) % 3
	vcfg := c.cfgs[victim]
	c.kill(victim)
	cl := c.client(l)
	for i := 1; i <= 100; i++ {
		if code, _, b := cl.do("PUT", "/v1/services/svc/weights", fmt.Sprintf(`{"weights":{"blue":%d,"canary":%d}}`, 100-i%100, i%100)); code != 200 {
			t.Fatalf("write %d: %d %v", i, code, b)
		}
	}
	n, err := Start(vcfg)
	if err != nil {
		t.Fatal(err)
	}
	c.nodes[victim] = n
	c.waitReady(30 * time.Second)
	c.converged(30 * time.Second)
}

// casInput and casOutput are one operation of the linearizability check: a
// write of blue's weight that expects a version, or a consistent read.
type casInput struct {
	read     bool
	expected uint64
	blue     int
}

type casOutput struct {
	ok      bool
	version uint64
	blue    int
}

type casState struct {
	version uint64
	blue    int
}

var casModel = porcupine.Model{
	Init: func() any { return casState{} },
	Step: func(st, in, out any) (bool, any) {
		s, i, o := st.(casState), in.(casInput), out.(casOutput)
		switch {
		case i.read:
			return o.version == s.version && o.blue == s.blue, s
		case o.ok && i.blue == s.blue:
			// Writing the weights in force changes nothing, not even the version.
			return s.version == i.expected && o.version == s.version, s
		case o.ok:
			return s.version == i.expected && o.version > s.version, casState{version: o.version, blue: i.blue}
		default: // version mismatch, reporting the current version
			return s.version != i.expected && o.version == s.version, s
		}
	},
}

// TestClusterLinearizable has several clients on every node racing
// version-checked writes and consistent reads on one service; porcupine checks
// the history is linearizable.
func TestClusterLinearizable(t *testing.T) {
	c := newCluster(t, 3, nil)
	_, _, body := c.client(0).do("PUT", "/v1/services/svc?wait=all", demoService)
	initial := casState{version: uint64(body["version"].(float64)), blue: 100}
	model := casModel
	model.Init = func() any { return initial }

	var mu sync.Mutex
	var history []porcupine.Operation
	epoch := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			base := "http://" + c.nodes[w%3].AdminAddr()
			hc := &http.Client{Timeout: 20 * time.Second}
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			known := initial.version
			for k := 0; k < 25; k++ {
				var in casInput
				var req *http.Request
				if rng.IntN(3) == 0 {
					in = casInput{read: true}
					req, _ = http.NewRequestWithContext(context.Background(), "GET", base+"/v1/services/svc?consistent", nil)
				} else {
					in = casInput{expected: known, blue: rng.IntN(101)}
					req, _ = http.NewRequestWithContext(context.Background(), "PUT", base+"/v1/services/svc/weights",
						strings.NewReader(fmt.Sprintf(`{"weights":{"blue":%d,"canary":%d}}`, in.blue, 100-in.blue)))
					req.Header.Set("If-Match", strconv.FormatUint(in.expected, 10))
				}
				call := time.Since(epoch).Nanoseconds()
				resp, err := hc.Do(req)
				if err != nil {
					t.Errorf("client %d: %v", w, err)
					return
				}
				var b struct {
					Version uint64                  `json:"version"`
					Weights map[string]state.Weight `json:"weights"`
				}
				_ = json.NewDecoder(resp.Body).Decode(&b)
				resp.Body.Close()
				ret := time.Since(epoch).Nanoseconds()
				var out casOutput
				switch resp.StatusCode {
				case 200:
					out = casOutput{ok: true, version: b.Version, blue: int(b.Weights["blue"] / 100)}
				case 409:
					out = casOutput{version: b.Version}
				default:
					t.Errorf("client %d: status %d", w, resp.StatusCode)
					return
				}
				known = out.version
				mu.Lock()
				history = append(history, porcupine.Operation{ClientId: w, Input: in, Call: call, Output: out, Return: ret})
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	if res := porcupine.CheckOperationsTimeout(model, history, 60*time.Second); res != porcupine.Ok {
		t.Fatalf("history of %d operations is not linearizable (%v)", len(history), res)
	}
	t.Logf("%d operations, linearizable", len(history))
}
