package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cbproxy/cbproxy/bench/internal/benchrun"
)

// service is the cbproxy service every node proxies; its pools blue and
// canary are the two backends.
const service = "demo"

// target is one side of the alternating change: all traffic to pool.
type target struct {
	pool string
	body string
}

// targets alternate, starting from the seeded blue=100: a full switch, so the
// pool of every proxied answer shows which weights the node applied.
var targets = [2]target{
	{"canary", `{"weights":{"blue":0,"canary":100}}`},
	{"blue", `{"weights":{"blue":100,"canary":0}}`},
}

type node struct {
	*benchrun.Proc
	id    string
	admin string // host:port of its admin API
	proxy string // host:port of its cbproxy site
}

type cluster struct {
	dir     string
	backend *benchrun.Proc
	nodes   []*node
	leader  string
	client  *http.Client // admin calls and probes
}

// ports of the run, from -port-base.
func clusterPort(base, i int) int { return base + 1 + i }
func adminPort(base, i int) int   { return base + 11 + i }
func proxyPort(base, i int) int   { return base + 21 + i }
func caddyPort(base, i int) int   { return base + 31 + i }
func bluePort(base int) int       { return base + 41 }
func canaryPort(base int) int     { return base + 42 }

// nodeCaddyfile is one node's config: the cluster global option (its %s is
// how the node forms its cluster) and the demo service with both pools,
// 100 % blue, answering with X-Cbproxy-Pool.
const nodeCaddyfile = `{
	admin 127.0.0.1:%d
	persist_config off
	cbproxy {
		node_id          %s
		data_dir         %s
		cluster_listen   127.0.0.1:%d
		admin_listen     127.0.0.1:%d
		%s
		cluster_secret   {env.CBPROXY_CLUSTER_SECRET}
	}
}

http://:%d {
	bind 127.0.0.1
	cbproxy ` + service + ` {
		pool blue   127.0.0.1:%d
		pool canary 127.0.0.1:%d
		weights blue=100
		expose_pool
	}
}
`

// startCluster checks the ports, then starts the backends and s.nodes nodes
// in a new temporary directory. The cluster it returns, also with an error,
// must be stopped.
func startCluster(s settings) (*cluster, error) {
	base := s.portBase
	var ports []int
	for i := range s.nodes {
		ports = append(ports, clusterPort(base, i), adminPort(base, i), proxyPort(base, i), caddyPort(base, i))
	}
	ports = append(ports, bluePort(base), canaryPort(base))
	if err := benchrun.Preflight(ports, s.cbproxy, s.backend); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "cbproxy-propagation-")
	if err != nil {
		return nil, err
	}
	c := &cluster{
		dir:    dir,
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}},
	}
	secret := make([]byte, 16)
	rand.Read(secret)
	env := append(os.Environ(),
		"CBPROXY_CLUSTER_SECRET="+hex.EncodeToString(secret),
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"), // Caddy keeps nothing of the run in $HOME
		"XDG_DATA_HOME="+filepath.Join(dir, "data"))

	c.backend, err = benchrun.Start(c.dir, "backend", env, s.backend,
		"-backends", fmt.Sprintf("blue=127.0.0.1:%d,canary=127.0.0.1:%d", bluePort(base), canaryPort(base)),
		"-version", "blue=stable,canary=candidate")
	if err != nil {
		return c, err
	}
	for i := range s.nodes {
		id := fmt.Sprintf("node%d", i+1)
		forming := "bootstrap"
		if s.nodes > 1 {
			var join []string
			for j := range s.nodes {
				if j != i {
					join = append(join, fmt.Sprintf("127.0.0.1:%d", adminPort(base, j)))
				}
			}
			forming = fmt.Sprintf("bootstrap_expect %d\n\t\tjoin %s", s.nodes, strings.Join(join, " "))
		}
		conf := fmt.Sprintf(nodeCaddyfile, caddyPort(base, i), id, filepath.Join(dir, id),
			clusterPort(base, i), adminPort(base, i), forming,
			proxyPort(base, i), bluePort(base), canaryPort(base))
		file := filepath.Join(dir, id+".Caddyfile")
		if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
			return c, err
		}
		p, err := benchrun.Start(c.dir, id, env, s.cbproxy, "run", "--adapter", "caddyfile", "--config", file)
		if err != nil {
			return c, err
		}
		c.nodes = append(c.nodes, &node{Proc: p, id: id,
			admin: fmt.Sprintf("127.0.0.1:%d", adminPort(base, i)),
			proxy: fmt.Sprintf("127.0.0.1:%d", proxyPort(base, i))})
	}
	return c, nil
}

func (c *cluster) procs() []*benchrun.Proc {
	var ps []*benchrun.Proc
	for _, n := range c.nodes {
		ps = append(ps, n.Proc)
	}
	if c.backend != nil {
		ps = append(ps, c.backend)
	}
	return ps
}

// stop ends every process politely, after 5 s for sure, then removes the
// temporary directory.
func (c *cluster) stop() {
	benchrun.Stop(c.procs()...)
	os.RemoveAll(c.dir)
}

// alive fails, with the end of its log, if a process has exited.
func (c *cluster) alive() error { return benchrun.Alive(c.procs()...) }

// waitReady waits until every node is ready (GET /health/ready is 200), its
// proxy answers 200 from blue, and the cluster has a leader and all its
// nodes.
func (c *cluster) waitReady(ctx context.Context, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var why string
	for {
		if err := c.alive(); err != nil {
			return err
		}
		why = c.notReady(ctx)
		if why == "" {
			return nil
		}
		sleep(ctx, 100*time.Millisecond)
		if ctx.Err() != nil {
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("the cluster was not ready within %s: %s", limit, why)
			}
			return ctx.Err()
		}
	}
}

// notReady says what is not ready yet, or "".
func (c *cluster) notReady(ctx context.Context) string {
	for _, n := range c.nodes {
		status, _, err := c.get(ctx, "http://"+n.admin+"/health/ready")
		if err != nil || status != http.StatusOK {
			return fmt.Sprintf("%s: GET /health/ready: %s; %s", n.id, statusOrErr(status, err), n.Tail())
		}
		status, pool, err := c.get(ctx, "http://"+n.proxy+"/ready")
		if err != nil || status != http.StatusOK || pool != "blue" {
			return fmt.Sprintf("%s: GET / on its proxy: %s, pool %q (want 200 from blue); %s", n.id, statusOrErr(status, err), pool, n.Tail())
		}
	}
	cl, err := c.clusterBody(ctx)
	if err != nil {
		return err.Error()
	}
	if cl.Leader == "" || len(cl.Nodes) != len(c.nodes) {
		return fmt.Sprintf("GET /v1/cluster: leader %q and %d nodes, want a leader and %d", cl.Leader, len(cl.Nodes), len(c.nodes))
	}
	return ""
}

func statusOrErr(status int, err error) string {
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("status %d", status)
}

// get fetches url and answers its status and X-Cbproxy-Pool.
func (c *cluster) get(ctx context.Context, url string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Cbproxy-Pool"), nil
}

type clusterBody struct {
	Leader string `json:"leader"`
	Nodes  []struct {
		ID        string `json:"id"`
		AdminAddr string `json:"admin_addr"`
		State     string `json:"state"`
	} `json:"nodes"`
}

func (c *cluster) clusterBody(ctx context.Context) (clusterBody, error) {
	var cl clusterBody
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.nodes[0].admin+"/v1/cluster", nil)
	if err != nil {
		return cl, err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return cl, fmt.Errorf("GET /v1/cluster: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return cl, fmt.Errorf("GET /v1/cluster: status %d", resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&cl); err != nil {
		return cl, fmt.Errorf("GET /v1/cluster: %w", err)
	}
	return cl, nil
}

// follower picks a node the cluster lists as a follower; a single node is
// its own leader, and the one the changes go to.
func (c *cluster) follower(ctx context.Context) (*node, error) {
	cl, err := c.clusterBody(ctx)
	if err != nil {
		return nil, err
	}
	c.leader = cl.Leader
	if len(c.nodes) == 1 {
		return c.nodes[0], nil
	}
	for _, m := range cl.Nodes {
		if m.State != "follower" {
			continue
		}
		for _, n := range c.nodes {
			if n.id == m.ID {
				return n, nil
			}
		}
	}
	return nil, fmt.Errorf("GET /v1/cluster lists no follower among %v", cl.Nodes)
}

func (c *cluster) proxyURLs() []string {
	var urls []string
	for _, n := range c.nodes {
		urls = append(urls, "http://"+n.proxy+"/load")
	}
	return urls
}

// change is one weight change sent with ?wait=all.
type change struct {
	target     string    // the pool that gets all traffic
	start, end time.Time // of the call
	err        string    // why the call is not a confirmed change, or ""
	stale      []string  // nodes whose proxy answered another pool just after the call
}

// problem says why the change was not confirmed on every node, or "".
func (ch change) problem() string {
	if ch.err != "" {
		return ch.err
	}
	if len(ch.stale) > 0 {
		return "the call returned but the proxy of " + strings.Join(ch.stale, ", ") + " still answered from another pool"
	}
	return ""
}

// change sets the weights of target through n with ?wait=all, checks that
// the answer names every node in applied_on, then asks each node's proxy once
// which pool it serves. A single node gets a plain PUT, which answers once
// its data plane switched.
func (c *cluster) change(ctx context.Context, n *node, t target) change {
	ch := change{target: t.pool}
	url, ids := "http://"+n.admin+"/v1/services/"+service+"/weights?wait=all", c.ids()
	if len(c.nodes) == 1 {
		url, ids = strings.TrimSuffix(url, "?wait=all"), nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, url, strings.NewReader(t.body))
	if err != nil {
		ch.err = err.Error()
		return ch
	}
	req.Header.Set("Content-Type", "application/json")
	ch.start = time.Now()
	resp, err := c.client.Do(req)
	var raw []byte
	if err == nil {
		raw, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	ch.end = time.Now()
	if err != nil {
		ch.err = err.Error()
		return ch
	}
	ch.err = checkAnswer(resp.StatusCode, raw, t.pool, ids)
	if ch.err != "" {
		return ch
	}
	for _, m := range c.nodes {
		status, pool, err := c.get(ctx, "http://"+m.proxy+"/probe")
		if err != nil || status != http.StatusOK || pool != t.pool {
			ch.stale = append(ch.stale, m.id)
		}
	}
	return ch
}

func (c *cluster) ids() []string {
	var ids []string
	for _, n := range c.nodes {
		ids = append(ids, n.id)
	}
	return ids
}

// checkAnswer says what is wrong with the answer to a weight change with
// ?wait=all that gave pool all traffic, or "". With no ids (a plain PUT)
// there is no applied_on to check.
func checkAnswer(status int, raw []byte, pool string, ids []string) string {
	var body struct {
		Weights    map[string]float64 `json:"weights"`
		AppliedOn  []string           `json:"applied_on"`
		NotApplied []string           `json:"not_applied"`
		Error      string             `json:"error"`
	}
	err := json.Unmarshal(raw, &body)
	switch {
	case status != http.StatusOK && body.Error != "":
		return fmt.Sprintf("status %d: %s", status, body.Error)
	case status != http.StatusOK:
		return fmt.Sprintf("status %d: %s", status, bytes.TrimSpace(raw))
	case err != nil:
		return "the answer is not JSON: " + err.Error()
	case body.Weights[pool] != 100:
		return fmt.Sprintf("the answer's weights are %v, want %s at 100", body.Weights, pool)
	}
	if ids == nil {
		return ""
	}
	on := slices.Sorted(slices.Values(body.AppliedOn))
	if !slices.Equal(on, ids) || len(body.NotApplied) > 0 {
		return fmt.Sprintf("applied_on %v, not_applied %v: want every node of %v applied", body.AppliedOn, body.NotApplied, ids)
	}
	return ""
}

// idleCPU is the CPU time the nodes used while nothing was asked of them.
type idleCPU struct {
	cpu, wall time.Duration
}

func (ic *idleCPU) perSecond() time.Duration {
	return time.Duration(float64(ic.cpu) / ic.wall.Seconds())
}

func (ic *idleCPU) percent() float64 { return 100 * ic.cpu.Seconds() / ic.wall.Seconds() }

// measureIdle sums the CPU time (user and system) the node processes use
// over d with no load and no change: what keeping the cluster alive costs
// (heartbeats, Raft's commit ticks, health checks, readiness polls).
func (c *cluster) measureIdle(ctx context.Context, d time.Duration) (*idleCPU, error) {
	before, err := c.nodesCPU()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	sleep(ctx, d)
	after, err := c.nodesCPU()
	if err != nil {
		return nil, err
	}
	return &idleCPU{cpu: after - before, wall: time.Since(start)}, ctx.Err()
}

// nodesCPU is the CPU time the node processes have used so far, from
// /proc/<pid>/stat.
func (c *cluster) nodesCPU() (time.Duration, error) {
	var total time.Duration
	for _, n := range c.nodes {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", n.Cmd.Process.Pid))
		if err != nil {
			return 0, fmt.Errorf("reading %s's CPU time (-idle 0 skips it): %w", n.id, err)
		}
		cpu, err := procCPU(string(b))
		if err != nil {
			return 0, fmt.Errorf("%s: %w", n.id, err)
		}
		total += cpu
	}
	return total, nil
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on
// every Linux architecture Go runs on.
const clockTicks = 100

// procCPU reads utime+stime from the content of /proc/<pid>/stat. The
// command name (field 2) may hold spaces and parentheses, so the fields are
// counted after its last ')'.
func procCPU(stat string) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("/proc stat without a command name")
	}
	fields := strings.Fields(stat[i+1:])
	// After the name: state(3) ... utime(14) stime(15), so indexes 11, 12.
	if len(fields) < 13 {
		return 0, fmt.Errorf("/proc stat with %d fields after the name, want at least 13", len(fields))
	}
	var ticks uint64
	for _, f := range fields[11:13] {
		var v uint64
		if _, err := fmt.Sscan(f, &v); err != nil {
			return 0, fmt.Errorf("/proc stat time %q: %w", f, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}
