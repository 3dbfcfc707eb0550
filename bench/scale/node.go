package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cbproxy/cbproxy/bench/internal/benchrun"
)

// node is the cbproxy process under test and the backend process.
type node struct {
	s        settings
	dir      string
	backend  *benchrun.Proc
	cbproxy  *benchrun.Proc
	started  time.Time // just before the cbproxy process started
	services []string
	client   *http.Client
}

func clusterPort(base int) int       { return base + 1 }
func adminPort(base int) int         { return base + 2 }
func proxyPort(base int) int         { return base + 3 }
func caddyPort(base int) int         { return base + 4 }
func backendPort(base, i int) int    { return base + 11 + i }
func serviceName(i int) string       { return fmt.Sprintf("s%04d", i) }
func servicePath(name string) string { return "/" + name + "/" }

// poolNames are the three pools of every service, two backends each.
var poolNames = [3]string{"blue", "canary", "green"}

// caddyfile is the generated config: one site, one path matcher and one
// seeded service per service.
func caddyfile(s settings, dataDir string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `{
	admin 127.0.0.1:%d
	persist_config off
	cbproxy {
		node_id        scale1
		data_dir       %s
		cluster_listen 127.0.0.1:%d
		admin_listen   127.0.0.1:%d
	}
}

http://:%d {
	bind 127.0.0.1
`, caddyPort(s.portBase), dataDir, clusterPort(s.portBase), adminPort(s.portBase), proxyPort(s.portBase))
	k := 0
	for i := range s.services {
		name := serviceName(i)
		fmt.Fprintf(&b, "\tcbproxy %s* %s {\n", servicePath(name), name)
		for _, pool := range poolNames {
			fmt.Fprintf(&b, "\t\tpool %s", pool)
			for range 2 {
				fmt.Fprintf(&b, " 127.0.0.1:%d", backendPort(s.portBase, k%s.addresses))
				k++
			}
			b.WriteString("\n")
		}
		b.WriteString("\t\tweights blue=50 canary=25 green=25\n\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// startNode checks the ports, starts the backend process, waits until it
// answers, then starts cbproxy. The node it returns, also with an error,
// must be stopped.
func startNode(ctx context.Context, s settings) (*node, error) {
	ports := []int{clusterPort(s.portBase), adminPort(s.portBase), proxyPort(s.portBase), caddyPort(s.portBase)}
	for i := range s.addresses {
		ports = append(ports, backendPort(s.portBase, i))
	}
	if err := benchrun.Preflight(ports, s.cbproxy, s.backend); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "cbproxy-scale-")
	if err != nil {
		return nil, err
	}
	n := &node{s: s, dir: dir, client: &http.Client{Timeout: 10 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 16}}}
	for i := range s.services {
		n.services = append(n.services, serviceName(i))
	}
	env := append(os.Environ(),
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"), // Caddy keeps nothing of the run in $HOME
		"XDG_DATA_HOME="+filepath.Join(dir, "data"))

	var backends []string
	for i := range s.addresses {
		backends = append(backends, fmt.Sprintf("b%d=127.0.0.1:%d", i, backendPort(s.portBase, i)))
	}
	if n.backend, err = benchrun.Start(n.dir, "backend", env, s.backend, "-backends", strings.Join(backends, ",")); err != nil {
		return n, err
	}
	for i := range s.addresses {
		url := fmt.Sprintf("http://127.0.0.1:%d/health/ready", backendPort(s.portBase, i))
		if err := n.poll(ctx, 10*time.Second, func() bool { return n.status(ctx, url) == http.StatusOK }); err != nil {
			return n, fmt.Errorf("backend %s does not answer: %w", url, err)
		}
	}

	file := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(file, []byte(caddyfile(s, filepath.Join(dir, "node"))), 0o600); err != nil {
		return n, err
	}
	n.started = time.Now()
	n.cbproxy, err = benchrun.Start(n.dir, "cbproxy", env, s.cbproxy, "run", "--adapter", "caddyfile", "--config", file)
	return n, err
}

// procs are the processes started so far.
func (n *node) procs() []*benchrun.Proc {
	var ps []*benchrun.Proc
	for _, p := range []*benchrun.Proc{n.cbproxy, n.backend} {
		if p != nil {
			ps = append(ps, p)
		}
	}
	return ps
}

// stop ends both processes politely, after 5 s for sure, then removes the
// temporary directory.
func (n *node) stop() {
	benchrun.Stop(n.procs()...)
	os.RemoveAll(n.dir)
}

// alive fails, with the end of its log, if a process has exited.
func (n *node) alive() error { return benchrun.Alive(n.procs()...) }

// poll calls ok every 10 ms until it is true, a process dies, limit passes
// or ctx ends.
func (n *node) poll(ctx context.Context, limit time.Duration, ok func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for !ok() {
		if err := n.alive(); err != nil {
			return err
		}
		sleep(ctx, 10*time.Millisecond)
		if ctx.Err() != nil {
			return fmt.Errorf("not within %s", limit)
		}
	}
	return nil
}

// status GETs url and answers its status, 0 on a transport error.
func (n *node) status(ctx context.Context, url string) int {
	code, _, _ := n.get(ctx, url)
	return code
}

// get GETs url and answers the status, the body and the backend's name.
func (n *node) get(ctx context.Context, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := n.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK && resp.Header.Get("X-Backend") == "" && strings.HasPrefix(url, n.proxyURL("")) {
		return 0, body, fmt.Errorf("%s: 200 without X-Backend: not from a backend", url)
	}
	return resp.StatusCode, body, err
}

// discard GETs url and reads its body to the end without keeping it.
func (n *node) discard(ctx context.Context, url string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := n.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, err
}

// checkList verifies that GET /v1/services lists every service.
func (n *node) checkList(ctx context.Context) error {
	code, body, err := n.get(ctx, n.adminURL("/v1/services"))
	if err != nil || code != http.StatusOK {
		return fmt.Errorf("GET /v1/services: status %d, %v", code, err)
	}
	var list struct {
		Services []struct {
			Name string `json:"name"`
		} `json:"services"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return fmt.Errorf("GET /v1/services: %w", err)
	}
	if len(list.Services) != len(n.services) {
		return fmt.Errorf("GET /v1/services listed %d services, want %d", len(list.Services), len(n.services))
	}
	return nil
}

func (n *node) proxyURL(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", proxyPort(n.s.portBase), path)
}

func (n *node) adminURL(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", adminPort(n.s.portBase), path)
}

// measure fills the report: start, memory, /metrics, GET /v1/services.
func (n *node) measure(ctx context.Context, rep *report) error {
	// Ready: /health/ready turns 200 once every declared service is seeded
	// and routed.
	if err := n.poll(ctx, 60*time.Second, func() bool { return n.status(ctx, n.adminURL("/health/ready")) == http.StatusOK }); err != nil {
		return fmt.Errorf("/health/ready never answered 200: %w", err)
	}
	rep.ready = time.Since(n.started)
	// Serving: one request per service answered 200 by a backend. Rounds
	// over the services not served yet, 8 at a time.
	pending := n.services
	err := n.poll(ctx, 60*time.Second, func() bool {
		pending = n.unserved(ctx, pending)
		return len(pending) == 0
	})
	if err != nil {
		return fmt.Errorf("%d services never answered 200 (first %s): %w", len(pending), pending[0], err)
	}
	rep.serving = time.Since(n.started)

	// Settle, then memory after the start.
	sleep(ctx, 2*time.Second)
	if rep.rssStart, err = rss(n.cbproxy.Cmd.Process.Pid); err != nil {
		return err
	}
	for i := range n.s.scrapes {
		t0 := time.Now()
		code, body, err := n.get(ctx, n.adminURL("/metrics"))
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("scrape %d of /metrics: status %d, %v", i+1, code, err)
		}
		rep.scrapeTimes = append(rep.scrapeTimes, time.Since(t0))
		rep.metricsBytes = len(body)
		rep.series = countSeries(body)
		r, err := rss(n.cbproxy.Cmd.Process.Pid)
		if err != nil {
			return err
		}
		rep.rssScrapes = append(rep.rssScrapes, r)
	}
	// The list must hold every service; then each call is timed to its
	// last byte, the body read and thrown away like curl -o /dev/null does,
	// so the figure is the node's and not this client's buffer growth.
	if err := n.checkList(ctx); err != nil {
		return err
	}
	for i := range n.s.calls {
		t0 := time.Now()
		code, err := n.discard(ctx, n.adminURL("/v1/services"))
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("call %d of GET /v1/services: status %d, %v", i+1, code, err)
		}
		rep.listTimes = append(rep.listTimes, time.Since(t0))
	}
	// Steady: after the calls, the scrapes' garbage had time to go.
	sleep(ctx, 2*time.Second)
	rep.rssEnd, err = rss(n.cbproxy.Cmd.Process.Pid)
	return err
}

// unserved requests every service of names once, 8 at a time, and returns
// those that did not answer 200 from a backend, in order.
func (n *node) unserved(ctx context.Context, names []string) []string {
	var mu sync.Mutex
	var left []string
	work := make(chan string)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for name := range work {
				if code, _, err := n.get(ctx, n.proxyURL(servicePath(name)+"x")); err != nil || code != http.StatusOK {
					mu.Lock()
					left = append(left, name)
					mu.Unlock()
				}
			}
		})
	}
	for _, name := range names {
		work <- name
	}
	close(work)
	wg.Wait()
	slices.Sort(left)
	return left
}

// rss reads the resident set size of a process, in bytes.
func rss(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// countSeries counts the samples of a Prometheus text exposition: its lines
// that are neither comments nor empty.
func countSeries(body []byte) int {
	n := 0
	for line := range strings.Lines(string(body)) {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			n++
		}
	}
	return n
}
