package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// readyClient polls with short timeouts and no keep-alive, so every poll
// sees the process as a new client would.
var readyClient = &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// status sends one GET and returns its status and body (0 on a failed request).
func status(url string) (int, string) {
	resp, err := readyClient.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(body)
}

// readyMeansServing polls admin's /health/ready every 5 ms from the process's
// start; at the first 200 it asks, at once, the admin API for service and
// the proxy for a request. Both must answer 200: ready means the node's
// declared services exist and are served. It returns what went wrong, or "".
func readyMeansServing(admin, proxy, service string, within time.Duration) string {
	deadline := time.Now().Add(within)
	for {
		if time.Now().After(deadline) {
			return fmt.Sprintf("not ready within %s", within)
		}
		if code, _ := status(admin + "/health/ready"); code != 200 {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		apiCode, apiBody := status(admin + "/v1/services/" + service)
		proxyCode, proxyBody := status(proxy + "/")
		if apiCode != 200 || proxyCode != 200 {
			return fmt.Sprintf("ready, but GET /v1/services/%s answered %d %.120q and the proxy %d %.120q", service, apiCode, apiBody, proxyCode, proxyBody)
		}
		return ""
	}
}

// TestColdStartReady cold-starts the real binary with a fresh data dir, one
// node ten times and a three-node cluster twice, and checks on every node
// that the first 200 of /health/ready comes only once the Caddyfile's service
// exists in the admin API and the proxy routes to it.
func TestColdStartReady(t *testing.T) {
	backend := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	start(t, bins.backend, "-backends", "blue="+backend)
	waitFor(t, "backend", 10*time.Second, func() bool { return getOK(httpClient, "http://"+backend+"/") })

	const singleStarts = 10
	var failures []string
	for i := range singleStarts {
		n := &node{t: t, dir: t.TempDir(), httpPort: freePort(t), adminPort: freePort(t), clusterPort: freePort(t), caddyAdmin: freePort(t)}
		n.caddyfile = filepath.Join(n.dir, "Caddyfile")
		text := n.globalOptions(n.adminPort) + fmt.Sprintf(`
http://127.0.0.1:%d {
	cbproxy codingbrain {
		pool blue %s
	}
}
`, n.httpPort, backend)
		if err := os.WriteFile(n.caddyfile, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		p := start(t, bins.cbproxy, "run", "--config", n.caddyfile, "--adapter", "caddyfile")
		if msg := readyMeansServing(n.admin(), n.proxy(), "codingbrain", 30*time.Second); msg != "" {
			failures = append(failures, fmt.Sprintf("single node, start %d: %s", i+1, msg))
		}
		p.stop(syscall.SIGKILL)
	}

	for round := range 2 {
		c := prepareTestCluster(t)
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, n := range c.nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if msg := readyMeansServing(n.admin(), n.proxy(), "codingbrain", 60*time.Second); msg != "" {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("cluster %d, %s: %s", round+1, n.id, msg))
					mu.Unlock()
				}
			}()
		}
		for i := len(c.nodes) - 1; i >= 0; i-- {
			c.start(c.nodes[i])
		}
		wg.Wait()
		for _, n := range c.nodes {
			n.proc.stop(syscall.SIGKILL)
		}
	}
	if len(failures) > 0 {
		t.Fatalf("%d of %d cold-started nodes were ready before they served their service:\n%s",
			len(failures), singleStarts+6, joinLines(failures))
	}
}

func joinLines(lines []string) string {
	out := ""
	for _, l := range lines {
		out += "  " + l + "\n"
	}
	return out
}
