package e2e

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

// node is one cbproxy process started from its own Caddyfile.
type node struct {
	t                       *testing.T // the scenario: owns the process
	dir, caddyfile          string
	httpPort, adminPort     int
	clusterPort, caddyAdmin int
	backends                map[string]string // pool -> address
	proc                    *proc
}

func (n *node) admin() string { return fmt.Sprintf("http://127.0.0.1:%d", n.adminPort) }
func (n *node) proxy() string { return fmt.Sprintf("http://127.0.0.1:%d", n.httpPort) }

// globalOptions is the Caddyfile's global block of a single node.
func (n *node) globalOptions(adminPort int) string {
	return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	cbproxy {
		node_id        node1
		data_dir       %s
		cluster_listen 127.0.0.1:%d
		admin_listen   127.0.0.1:%d
		bootstrap
	}
}
`, n.caddyAdmin, filepath.Join(n.dir, "data"), n.clusterPort, adminPort)
}

// caddyfileText is written from the user docs alone (docs/caddyfile.md).
func (n *node) caddyfileText(seedWeights string, adminPort int) string {
	return n.globalOptions(adminPort) + fmt.Sprintf(`
http://127.0.0.1:%d {
	cbproxy codingbrain {
		pool blue   %s
		pool green  %s
		pool canary %s
		weights %s
		lb_policy round_robin
		latency_histogram
		guard 10m
		slo {
			advance  error_rate<0.1%% p95<500ms
			rollback error_rate>1%%   p95>2s
			window       30s
			min_requests 100
			consecutive  3
		}
	}
}
`, n.httpPort, n.backends["blue"], n.backends["green"], n.backends["canary"], seedWeights)
}

func newNode(t *testing.T) *node {
	n := &node{t: t, dir: t.TempDir(), httpPort: freePort(t), adminPort: freePort(t), clusterPort: freePort(t), caddyAdmin: freePort(t)}
	n.backends = map[string]string{}
	var spec []string
	for _, pool := range []string{"blue", "green", "canary"} {
		n.backends[pool] = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		spec = append(spec, pool+"="+n.backends[pool])
	}
	start(t, bins.backend, "-backends", strings.Join(spec, ","))
	n.caddyfile = filepath.Join(n.dir, "Caddyfile")
	n.write(t, "blue=100", n.adminPort)
	return n
}

func (n *node) write(t *testing.T, seedWeights string, adminPort int) {
	t.Helper()
	if err := os.WriteFile(n.caddyfile, []byte(n.caddyfileText(seedWeights, adminPort)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// start runs the node for the rest of the scenario and waits, failing t,
// until it is ready and proxies.
func (n *node) start(t *testing.T) {
	t.Helper()
	n.proc = start(n.t, bins.cbproxy, "run", "--config", n.caddyfile, "--adapter", "caddyfile")
	waitServing(t, "node", n.admin(), n.proxy())
}

// waitServing waits until a node's /health/ready answers 200, then its
// proxy (its seeded service).
func waitServing(t *testing.T, name, admin, proxy string) {
	t.Helper()
	waitFor(t, name+" ready", 60*time.Second, func() bool {
		code, _ := apiQuiet(admin + "/health/ready")
		return code == 200
	})
	waitFor(t, name+" proxying", 30*time.Second, func() bool {
		code, _ := apiQuiet(proxy + "/")
		return code == 200
	})
}

func weightsOf(body map[string]any) map[string]float64 {
	out := map[string]float64{}
	for k, v := range body["weights"].(map[string]any) {
		out[k] = v.(float64)
	}
	return out
}

// TestSingleNode drives one node through the CLI and the admin API: a
// split, refused inputs, pool set and switch, reloads, validate and adapt,
// a SIGKILL restart, status, events and metrics.
func TestSingleNode(t *testing.T) {
	n := newNode(t)
	n.start(t)
	reload := func(t *testing.T) (string, int) {
		t.Helper()
		_, errOut, code := cli(t, n.admin(), "reload", "--config", n.caddyfile, "--adapter", "caddyfile", "--address", fmt.Sprintf("127.0.0.1:%d", n.caddyAdmin))
		return errOut, code
	}
	var before, beforeEvents map[string]any // the state a reload and a restart keep

	step(t, "the CLI splits 99 to 1", func(t *testing.T) {
		// 10,000 requests at 99/1 give 100 ± 1 to canary.
		if out, errOut, code := cli(t, n.admin(), "weights", "codingbrain", "blue=99", "canary=1"); code != 0 {
			t.Fatalf("weights: exit %d %s %s", code, out, errOut)
		}
		counts := countBackends(t, n.proxy()+"/", 10000, 8)
		if c := counts["canary"]; c < 99 || c > 101 || counts["blue"]+c != 10000 {
			t.Fatalf("99/1 split over 10,000 requests: %v", counts)
		}
	})

	step(t, "bad inputs get their exit codes and change nothing", func(t *testing.T) {
		_, errOut, code := cli(t, n.admin(), "weights", "codingbrain", "blue=99", "canary=0.5")
		if code != 1 || !strings.Contains(errOut, "100") {
			t.Fatalf("weights not summing to 100: exit %d, %q", code, errOut)
		}
		if _, _, code = cli(t, n.admin(), "weights", "codingbrain", "blue"); code != 2 {
			t.Fatalf("usage error: exit %d", code)
		}
		if _, _, code = cli(t, n.admin(), "weights", "codingbrain", "blue=100", "--if-version", "1"); code != 3 {
			t.Fatalf("stale version: exit %d", code)
		}
		if _, _, code = cli(t, n.admin(), "switch", "nosuch", "green"); code != 1 {
			t.Fatalf("unknown service: exit %d", code)
		}
		status, body := api(t, "PUT", n.admin()+"/v1/services/codingbrain/weights", `{"weights":{"blue":99.999,"canary":0.001}}`)
		if status != 400 || body["code"] != "invalid" {
			t.Fatalf("three decimals: %d %v", status, body)
		}
		_, svc := api(t, "GET", n.admin()+"/v1/services/codingbrain", "")
		if w := weightsOf(svc); w["blue"] != 99 || w["canary"] != 1 || w["green"] != 0 {
			t.Fatalf("weights after bad inputs: %v", w)
		}
	})

	step(t, "pool set and switch through the CLI", func(t *testing.T) {
		if _, errOut, code := cli(t, n.admin(), "pool", "set", "codingbrain", "green", n.backends["green"], "--version", "v2.0.0"); code != 0 {
			t.Fatalf("pool set: exit %d %s", code, errOut)
		}
		if _, errOut, code := cli(t, n.admin(), "switch", "codingbrain", "green"); code != 0 {
			t.Fatalf("switch: exit %d %s", code, errOut)
		}
		if counts := countBackends(t, n.proxy()+"/", 200, 4); counts["green"] != 200 {
			t.Fatalf("after switch: %v", counts)
		}
		if _, _, code := cli(t, n.admin(), "weights", "codingbrain", "green=90", "canary=10"); code != 0 {
			t.Fatalf("weights 90/10: exit %d", code)
		}
		_, before = api(t, "GET", n.admin()+"/v1/services/codingbrain", "")
		_, beforeEvents = api(t, "GET", n.admin()+"/v1/events?limit=1000", "")
	})

	step(t, "a reload keeps the live weights and Raft", func(t *testing.T) {
		n.write(t, "blue=50 canary=50", n.adminPort)
		if errOut, code := reload(t); code != 0 {
			t.Fatalf("reload: exit %d %s", code, errOut)
		}
		_, after := api(t, "GET", n.admin()+"/v1/services/codingbrain", "")
		if fmt.Sprint(weightsOf(after)) != fmt.Sprint(weightsOf(before)) || after["version"] != before["version"] {
			t.Fatalf("reload changed live state: %v -> %v", before["weights"], after["weights"])
		}
	})

	step(t, "a reload that moves admin_listen is refused", func(t *testing.T) {
		// The running config stays.
		n.write(t, "blue=100", freePort(t))
		errOut, code := reload(t)
		if code == 0 || !strings.Contains(errOut, "restart required") {
			t.Fatalf("reload with new admin_listen: exit %d %q", code, errOut)
		}
		if status, _ := api(t, "GET", n.admin()+"/v1/services/codingbrain", ""); status != 200 {
			t.Fatalf("admin API after refused reload: %d", status)
		}
		n.write(t, "blue=100", n.adminPort)
	})

	step(t, "validate and adapt start nothing", func(t *testing.T) {
		// They succeed while the node holds every port, and leave a fresh
		// data dir empty.
		if _, errOut, code := cli(t, n.admin(), "validate", "--config", n.caddyfile, "--adapter", "caddyfile"); code != 0 {
			t.Fatalf("validate: exit %d %s", code, errOut)
		}
		if _, errOut, code := cli(t, n.admin(), "adapt", "--config", n.caddyfile, "--adapter", "caddyfile"); code != 0 {
			t.Fatalf("adapt: exit %d %s", code, errOut)
		}
	})

	step(t, "a SIGKILL restart keeps every committed weight and event", func(t *testing.T) {
		n.proc.stop(syscall.SIGKILL)
		n.start(t)
		_, restarted := api(t, "GET", n.admin()+"/v1/services/codingbrain", "")
		if fmt.Sprint(weightsOf(restarted)) != fmt.Sprint(weightsOf(before)) || restarted["version"] != before["version"] {
			t.Fatalf("restart lost state: %v -> %v", before, restarted)
		}
		// Every event committed before is still there, the same; the only
		// newer one allowed is the node recording its own addresses, which
		// it commits shortly after its first start (once before was read,
		// sometimes).
		_, afterEvents := api(t, "GET", n.admin()+"/v1/events?limit=1000", "")
		kept := map[float64]string{}
		for _, e := range afterEvents["events"].([]any) {
			ev := e.(map[string]any)
			kept[ev["index"].(float64)] = fmt.Sprint(ev["action"], " ", ev["service"])
		}
		for _, e := range beforeEvents["events"].([]any) {
			ev := e.(map[string]any)
			if want := fmt.Sprint(ev["action"], " ", ev["service"]); kept[ev["index"].(float64)] != want {
				t.Fatalf("event %v (%s) after restart: %q", ev["index"], want, kept[ev["index"].(float64)])
			}
			delete(kept, ev["index"].(float64))
		}
		for index, what := range kept {
			if !strings.HasPrefix(what, "node_join ") {
				t.Fatalf("a new event %v after the restart: %s", index, what)
			}
		}
		counts := countBackends(t, n.proxy()+"/", 1000, 4)
		if math.Abs(float64(counts["canary"])-100) > 1 || counts["green"]+counts["canary"] != 1000 {
			t.Fatalf("90/10 after restart: %v", counts)
		}
	})

	step(t, "status, events and metrics", func(t *testing.T) {
		out, _, code := cli(t, n.admin(), "status")
		if code != 0 || !strings.Contains(out, "codingbrain") || !strings.Contains(out, "green") {
			t.Fatalf("status: exit %d\n%s", code, out)
		}
		out, _, code = cli(t, n.admin(), "events", "codingbrain")
		if code != 0 || !strings.Contains(out, "switch") {
			t.Fatalf("events: exit %d\n%s", code, out)
		}
		checkMetrics(t, n.admin()+"/metrics")
	})
}

// checkMetrics lints /metrics as promtool check metrics does and checks that
// the series of docs/api.md "Metrics" that exist at this stage are there.
func checkMetrics(t *testing.T, url string) {
	t.Helper()
	raw := lintedMetrics(t, url)
	for _, want := range []string{
		`cbproxy_requests_total{code="2xx",pool="canary",service="codingbrain"}`,
		`cbproxy_request_duration_seconds_bucket{pool="green",service="codingbrain",le=`,
		`cbproxy_pool_weight_percent{pool="green",service="codingbrain"} 90`,
		`cbproxy_pool_effective_percent{pool="canary",service="codingbrain"} 10`,
		`cbproxy_raft_is_leader 1`,
		`cbproxy_raft_applied_index`,
		`cbproxy_raft_apply_seconds_bucket`,
	} {
		if !strings.Contains(raw, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// lintedMetrics returns the text of /metrics after linting it as promtool
// check metrics does.
func lintedMetrics(t *testing.T, url string) string {
	t.Helper()
	resp, err := httpClient.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	problems, err := promlint.New(bytes.NewReader(raw)).Lint()
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	if len(problems) > 0 {
		t.Fatalf("promlint: %v", problems)
	}
	return string(raw)
}

// apiQuiet is a GET that reports failure as status 0 instead of failing the
// test (for polling).
func apiQuiet(url string) (int, error) {
	resp, err := httpClient.Get(url)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
