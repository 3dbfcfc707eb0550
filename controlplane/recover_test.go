package controlplane

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
	"go.uber.org/zap/zaptest"
)

// stateOf is what recovery must keep: the services (weights, versions,
// pools) and the event trail, as JSON for comparison.
func stateOf(t *testing.T, n *Node) (services, events string) {
	t.Helper()
	s, err := json.Marshal(n.View().Services)
	if err != nil {
		t.Fatal(err)
	}
	e, err := json.Marshal(trail(n, "", 0, 100000))
	if err != nil {
		t.Fatal(err)
	}
	return string(s), string(e)
}

// keptTrail reports whether the trail after holds every event of before, in
// order, with nothing after them but nodes registering themselves: a node
// restarted on a new admin address records it (node_join by the cluster)
// as soon as it leads, which may come before the test reads the trail.
func keptTrail(after, before string) bool {
	if after == before {
		return true
	}
	if !strings.HasPrefix(after, strings.TrimSuffix(before, "]")+",") {
		return false
	}
	var all, old []state.Event
	if json.Unmarshal([]byte(after), &all) != nil || json.Unmarshal([]byte(before), &old) != nil {
		return false
	}
	for _, e := range all[len(old):] {
		if e.Action != state.ActionNodeJoin || e.Actor != state.ActorCluster {
			return false
		}
	}
	return true
}

// TestRecoverFromQuorumLoss: two of three nodes are gone for good (killed,
// data dirs wiped); the survivor, recovered offline, is a one-node cluster
// with every weight, version and event, takes writes, and grows back with
// fresh nodes that get the whole state.
func TestRecoverFromQuorumLoss(t *testing.T) {
	c := newCluster(t, 3, nil)
	cl := c.client(0)
	if code, _, b := cl.do("PUT", "/v1/services/svc?wait=all", demoService); code != 200 {
		t.Fatalf("put: %d %v", code, b)
	}
	for i := 1; i <= 5; i++ {
		if code, _, b := cl.do("PUT", "/v1/services/svc/weights?wait=all", fmt.Sprintf(`{"weights":{"blue":%d,"canary":%d}}`, 100-i, i)); code != 200 {
			t.Fatalf("weights %d: %d %v", i, code, b)
		}
	}
	c.converged(30 * time.Second)
	survivor := 2
	services, events := stateOf(t, c.nodes[survivor])
	for _, i := range []int{0, 1} {
		dir := c.cfgs[i].DataDir
		c.kill(i)
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
	}
	scfg := c.cfgs[survivor]
	if err := c.nodes[survivor].Shutdown(); err != nil {
		t.Fatal(err)
	}
	c.nodes[survivor] = nil

	var out bytes.Buffer
	if err := Recover(context.Background(), Config{DataDir: scfg.DataDir, NodeID: scfg.NodeID, ClusterSecret: scfg.ClusterSecret, Logger: scfg.Logger}, RecoverOptions{Out: &out}); err != nil {
		t.Fatalf("recover: %v\n%s", err, out.String())
	}
	t.Logf("recover said:\n%s", out.String())
	for _, want := range []string{"node1", "node2", "no answer", "done: node3 is a one-node cluster"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("recover output lacks %q:\n%s", want, out.String())
		}
	}

	// The survivor starts with its unchanged config (bootstrap_expect 3, join
	// the dead peers): it is the one member and leads alone.
	c.start(survivor)
	c.waitReady(60 * time.Second)
	if s, e := stateOf(t, c.nodes[survivor]); s != services || !keptTrail(e, events) {
		t.Fatalf("recovery changed the state:\nservices %s\nwant     %s\nevents %s\nwant   %s", s, services, e, events)
	}
	scl := c.client(survivor)
	if code, _, b := scl.do("PUT", "/v1/services/svc/weights", `{"weights":{"blue":30,"canary":70}}`); code != 200 {
		t.Fatalf("write after recovery: %d %v", code, b)
	}

	// Two fresh nodes join it and get the whole state.
	for _, id := range []string{"node4", "node5"} {
		cfg := Config{NodeID: id, DataDir: t.TempDir(), ClusterListen: freeAddr(t), AdminListen: freeAddr(t),
			Join: []string{c.nodes[survivor].AdminAddr()}, ClusterSecret: scfg.ClusterSecret, Logger: zaptest.NewLogger(t).Named(id),
			raft: clusterRaft}
		c.cfgs = append(c.cfgs, cfg)
		c.nodes = append(c.nodes, nil)
		c.start(len(c.nodes) - 1)
	}
	c.waitReady(60 * time.Second)
	c.converged(30 * time.Second)
	if v := c.voters(); len(v) != 3 || v["node3"] == "" || v["node4"] == "" || v["node5"] == "" {
		t.Fatalf("voters after growing back: %v", v)
	}
	code, _, b := scl.do("PUT", "/v1/services/svc/weights?wait=all", `{"weights":{"blue":20,"canary":80}}`)
	if code != 200 || len(b["applied_on"].([]any)) != 3 {
		t.Fatalf("write on the grown cluster: %d %v", code, b)
	}
	_, wantEvents := stateOf(t, c.nodes[survivor])
	for _, i := range []int{3, 4} {
		if _, e := stateOf(t, c.nodes[i]); e != wantEvents {
			t.Fatalf("%s events differ from the recovered node's:\n%s\nwant\n%s", c.nodes[i].ID(), e, wantEvents)
		}
	}
	if !strings.HasPrefix(wantEvents, strings.TrimSuffix(events, "]")) {
		t.Fatalf("the events from before recovery are not all kept:\n%s\nbefore\n%s", wantEvents, events)
	}
}

// TestRecoverRefusesHealthyCluster: recover is refused while the node runs,
// and on a stopped node whose cluster answers; the data dir is left as it
// was, and the node rejoins its cluster.
func TestRecoverRefusesHealthyCluster(t *testing.T) {
	c := newCluster(t, 3, nil)
	if code, _, b := c.client(0).do("PUT", "/v1/services/svc?wait=all", demoService); code != 200 {
		t.Fatalf("put: %d %v", code, b)
	}
	f := c.follower()
	cfg := c.cfgs[f]
	rcfg := Config{DataDir: cfg.DataDir, NodeID: cfg.NodeID, ClusterSecret: cfg.ClusterSecret, Logger: cfg.Logger}

	// While the node runs.
	var out bytes.Buffer
	err := Recover(context.Background(), rcfg, RecoverOptions{Out: &out})
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("recover of a running node: %v\n%s", err, out.String())
	}

	// Stopped, with the two others alive: refused, even as a dry run.
	if err := c.nodes[f].Shutdown(); err != nil {
		t.Fatal(err)
	}
	c.nodes[f] = nil
	// The files and their content (raft-wal's meta database is opened, so
	// its bytes may move; its size and the log's content may not).
	listing := func() string {
		var names []string
		_ = filepath.WalkDir(cfg.DataDir, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				info, _ := d.Info()
				sum := "-"
				if d.Name() != "wal-meta.db" {
					b, _ := os.ReadFile(p)
					sum = fmt.Sprintf("%x", sha256.Sum256(b))
				}
				names = append(names, fmt.Sprintf("%s %d %s", p, info.Size(), sum))
			}
			return nil
		})
		return strings.Join(names, "\n")
	}
	before := listing()
	for _, o := range []RecoverOptions{{}, {DryRun: true}} {
		out.Reset()
		o.Out = &out
		err = Recover(context.Background(), rcfg, o)
		if err == nil || !strings.Contains(err.Error(), "refused") || !strings.Contains(err.Error(), "split") || !strings.Contains(out.String(), "runs as") {
			t.Fatalf("recover of a healthy cluster's node (%+v): %v\n%s", o, err, out.String())
		}
	}
	if after := listing(); after != before {
		t.Fatalf("a refused recover changed the data dir:\n%s\nbefore\n%s", after, before)
	}
	// Without the secret it cannot ask who answers, and still refuses.
	rcfg.ClusterSecret = ""
	if err := Recover(context.Background(), rcfg, RecoverOptions{}); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("recover without the secret: %v", err)
	}
	c.start(f)
	c.waitReady(60 * time.Second)
	c.converged(30 * time.Second)
	if v := c.voters(); len(v) != 3 {
		t.Fatalf("voters after the refused recover: %v", v)
	}
}

// TestStartRefusesAppliedStateWithoutLog: a data dir whose raft/ was
// deleted but whose applied.json remains no longer starts a node that fails
// every write with "entry already applied"; recover makes it a one-node
// cluster with that state.
func TestStartRefusesAppliedStateWithoutLog(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, dir)
	cl := newClient(t, n)
	if code, _, b := cl.do("PUT", "/v1/services/svc", demoService); code != 200 {
		t.Fatalf("put: %d %v", code, b)
	}
	for i := 1; i <= 3; i++ {
		if code, _, b := cl.do("PUT", "/v1/services/svc/weights", fmt.Sprintf(`{"weights":{"blue":%d,"canary":%d}}`, 100-i, i)); code != 200 {
			t.Fatalf("weights: %d %v", code, b)
		}
	}
	services, events := stateOf(t, n)
	if err := n.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "raft")); err != nil {
		t.Fatal(err)
	}
	cfg := Config{NodeID: "node1", DataDir: dir, ClusterListen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", Logger: zaptest.NewLogger(t)}
	if bad, err := Start(cfg); err == nil {
		_ = bad.Shutdown()
		t.Fatal("a node started over applied.json without its Raft log")
	} else if !strings.Contains(err.Error(), "cbproxy cluster recover") {
		t.Fatalf("start error does not point to recover: %v", err)
	}
	var out bytes.Buffer
	if err := Recover(context.Background(), Config{NodeID: "node1", DataDir: dir, Logger: cfg.Logger}, RecoverOptions{Out: &out}); err != nil {
		t.Fatalf("recover: %v\n%s", err, out.String())
	}
	t.Logf("recover said:\n%s", out.String())
	n = startNode(t, dir)
	if s, e := stateOf(t, n); s != services || !keptTrail(e, events) {
		t.Fatalf("state after recovery:\n%s %s\nwant\n%s %s", s, e, services, events)
	}
	cl = newClient(t, n)
	code, _, b := cl.do("PUT", "/v1/services/svc/weights", `{"weights":{"blue":10,"canary":90}}`)
	if code != 200 || b["version"].(float64) <= float64(n.View().Services["svc"].Version)-1 {
		t.Fatalf("write after recovery: %d %v", code, b)
	}
	if w := n.View().Services["svc"].Weights; w["canary"] != 9000 {
		t.Fatalf("weights after the write: %v", w)
	}
}

// TestBootstrapOverClusterStateSaysSo: `bootstrap` on the data dir of a
// member of a three-node cluster does not make a one-node cluster (the
// state on disk wins); the node says so in readiness instead of waiting
// silently.
func TestBootstrapOverClusterStateSaysSo(t *testing.T) {
	c := newCluster(t, 3, nil)
	cfg := c.cfgs[2]
	for i := range c.nodes {
		c.kill(i)
	}
	cfg.Bootstrap, cfg.BootstrapExpect, cfg.Join = true, 0, nil
	n, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Shutdown()
	why := strings.Join(n.WaitingFor(), "\n")
	if !strings.Contains(why, "bootstrap is ignored") || !strings.Contains(why, "cbproxy cluster recover") || !strings.Contains(why, "node1, node2, node3") {
		t.Fatalf("readiness of a bootstrap over cluster state: %q", why)
	}
}
