package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// metricsCaddyfile is the single node of TestMetrics: the node of
// TestSingleNode with per-backend metrics on.
func (n *node) metricsCaddyfile() string {
	return n.globalOptions(n.adminPort) + fmt.Sprintf(`
http://127.0.0.1:%d {
	cbproxy codingbrain {
		pool blue   %s
		pool green  %s
		pool canary %s
		weights blue=100
		lb_policy round_robin
		latency_histogram
		backend_metrics
	}
}
`, n.httpPort, n.backends["blue"], n.backends["green"], n.backends["canary"])
}

// scrape parses one /metrics answer into its families (linted first).
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	raw := lintedMetrics(t, url)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(raw))
	if err != nil {
		t.Fatalf("parsing %s: %v", url, err)
	}
	return families
}

// sample is the value of the family's series whose labels include want
// (name=value pairs), and whether there is one.
func sample(families map[string]*dto.MetricFamily, name string, want ...string) (float64, bool) {
	f := families[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(want); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == want[i] && lp.GetValue() == want[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

// abortBeforeHeader sends one HTTP/1.1 request on its own connection and
// closes the connection after wait, before the (slow) backend answered.
func abortBeforeHeader(t *testing.T, addr, path string, wait time.Duration) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, addr)
	time.Sleep(wait)
	c.Close()
}

// abortMidResponse reads the response header of a never-ending event stream
// over HTTP/1.1 and closes the connection in the middle of its body.
func abortMidResponse(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET /_backend/events HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 {
		t.Fatalf("event stream: %d", res.StatusCode)
	}
	line, err := bufio.NewReader(res.Body).ReadString('\n')
	if err != nil || line == "" {
		t.Fatalf("event stream body: %q %v", line, err)
	}
}

// TestMetrics drives one node's two /metrics endpoints: cbproxy's
// (admin_listen) and Caddy's (its admin endpoint). No family is on both but
// the process's go_ and process_ ones; client aborts are client_abort, never
// 4xx, per pool and per backend; the per-backend series are there with
// backend_metrics; and every metric name the alert rules and the Grafana
// dashboard use exists on cbproxy's /metrics.
func TestMetrics(t *testing.T) {
	n := newNode(t)
	if err := os.WriteFile(n.caddyfile, []byte(n.metricsCaddyfile()), 0o600); err != nil {
		t.Fatal(err)
	}
	n.start(t)
	proxyAddr := fmt.Sprintf("127.0.0.1:%d", n.httpPort)
	for range 50 {
		if code, _ := apiQuiet(n.proxy() + "/"); code != 200 {
			t.Fatalf("GET /: %d", code)
		}
	}
	cbproxyMetrics := n.admin() + "/metrics"
	caddyMetrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", n.caddyAdmin)

	step(t, "no family on both endpoints but go_ and process_", func(t *testing.T) {
		ours, caddys := scrape(t, cbproxyMetrics), scrape(t, caddyMetrics)
		for name := range ours {
			if _, both := caddys[name]; both && !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") {
				t.Errorf("%s is on both /metrics endpoints: a Prometheus scraping both counts it twice", name)
			}
		}
		for name := range caddys {
			if strings.HasPrefix(name, "cbproxy_") {
				t.Errorf("Caddy's /metrics has %s", name)
			}
		}
		for _, want := range []string{"go_goroutines", "go_memstats_alloc_bytes", "process_cpu_seconds_total", "process_resident_memory_bytes"} {
			if ours[want] == nil {
				t.Errorf("cbproxy's /metrics lacks %s", want)
			}
		}
		if v, ok := sample(ours, "cbproxy_ready"); !ok || v != 1 {
			t.Errorf("cbproxy_ready = %v (present %v), want 1 on a ready node", v, ok)
		}
	})

	step(t, "client aborts are client_abort, not 4xx, per pool and per backend", func(t *testing.T) {
		before := scrape(t, cbproxyMetrics)
		ok2xx, _ := sample(before, "cbproxy_requests_total", "pool", "blue", "code", "2xx")
		backend2xx, _ := sample(before, "cbproxy_backend_requests_total", "backend", n.backends["blue"], "code", "2xx")
		// Before the header: the backend takes 1.5 s, the client leaves
		// after 200 ms.
		setBackend(t, n.backends["blue"], `{"latency_ms":1500}`)
		const aborts = 3
		for range aborts {
			abortBeforeHeader(t, proxyAddr, "/", 200*time.Millisecond)
		}
		setBackend(t, n.backends["blue"], `{"latency_ms":0}`)
		// In the middle of the body: the response started, 2xx.
		abortMidResponse(t, proxyAddr)
		var after map[string]*dto.MetricFamily
		waitFor(t, "the aborts counted", 20*time.Second, func() bool {
			after = scrape(t, cbproxyMetrics)
			v, _ := sample(after, "cbproxy_requests_total", "pool", "blue", "code", "client_abort")
			w, _ := sample(after, "cbproxy_requests_total", "pool", "blue", "code", "2xx")
			return v == aborts && w == ok2xx+1
		})
		for _, code := range []string{"4xx", "5xx", "proxy_error"} {
			if v, ok := sample(after, "cbproxy_requests_total", "pool", "blue", "code", code); ok {
				t.Errorf("cbproxy_requests_total{pool=blue,code=%s} = %v: a client that went away is not the backend's error", code, v)
			}
			if v, ok := sample(after, "cbproxy_backend_requests_total", "backend", n.backends["blue"], "code", code); ok {
				t.Errorf("cbproxy_backend_requests_total{backend=blue,code=%s} = %v", code, v)
			}
		}
		if v, _ := sample(after, "cbproxy_backend_requests_total", "backend", n.backends["blue"], "code", "client_abort"); v != aborts {
			t.Errorf("cbproxy_backend_requests_total{backend=blue,code=client_abort} = %v, want %d", v, aborts)
		}
		if v, _ := sample(after, "cbproxy_backend_requests_total", "backend", n.backends["blue"], "code", "2xx"); v != backend2xx+1 {
			t.Errorf("cbproxy_backend_requests_total{backend=blue,code=2xx} = %v, want %v", v, backend2xx+1)
		}
		// Quick aborts say nothing of the backend's latency.
		if v, _ := sample(after, "cbproxy_backend_request_duration_seconds", "backend", n.backends["blue"]); v != backend2xx+1 {
			t.Errorf("per-backend latency observations = %v, want %v (the answered requests only)", v, backend2xx+1)
		}
	})

	step(t, "every metric the alerts and the dashboard use exists", func(t *testing.T) {
		// A rollout started and aborted: the rollout step and the
		// rollbacks counter have their series.
		if code, body := api(t, "POST", n.admin()+"/v1/services/codingbrain/rollout", `{"to":"canary","steps":[{"weight":5,"hold":"1h"},{"weight":100}]}`); code != 200 {
			t.Fatalf("rollout: %d %v", code, body)
		}
		if code, body := api(t, "POST", n.admin()+"/v1/services/codingbrain/rollout/abort", ``); code != 200 {
			t.Fatalf("abort: %d %v", code, body)
		}
		// Canary's share with its only backend drained: displaced
		// requests.
		if code, body := api(t, "PUT", n.admin()+"/v1/services/codingbrain/weights", `{"weights":{"blue":50,"canary":50}}`); code != 200 {
			t.Fatalf("weights: %d %v", code, body)
		}
		if code, body := api(t, "POST", n.admin()+"/v1/services/codingbrain/pools/canary/backends/"+n.backends["canary"]+"/drain", ``); code != 200 {
			t.Fatalf("drain: %d %v", code, body)
		}
		waitFor(t, "displaced requests counted", 20*time.Second, func() bool {
			apiQuiet(n.proxy() + "/")
			_, ok := sample(scrape(t, cbproxyMetrics), "cbproxy_requests_displaced_total", "pool", "canary")
			return ok
		})
		var ours map[string]*dto.MetricFamily
		waitFor(t, "the rollback counted", 20*time.Second, func() bool {
			ours = scrape(t, cbproxyMetrics)
			_, ok := sample(ours, "cbproxy_rollbacks_total", "trigger", "abort")
			return ok
		})
		for _, file := range []string{"configs/prometheus/alerts.yml", "configs/grafana/cbproxy.json"} {
			used := metricNames(t, filepath.Join(repoRoot(), file))
			if len(used) == 0 {
				t.Errorf("%s uses no cbproxy metric", file)
			}
			for _, name := range used {
				if ours[name] == nil {
					t.Errorf("%s uses %s, which cbproxy's /metrics does not have", file, name)
				}
			}
		}
	})
}

// metricName is a metric name of cbproxy or of the Go runtime and process in
// a PromQL expression.
var metricName = regexp.MustCompile(`\b(?:cbproxy|go|process)_[a-z0-9_]*[a-z0-9]`)

// metricNames are the families whose series file's expressions read: a
// histogram's _bucket, _sum and _count are its family.
func metricNames(t *testing.T, file string) []string {
	t.Helper()
	text, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, at := range metricName.FindAllIndex(text, -1) {
		// service_pool:cbproxy_errors:rate5m is a recording rule's name.
		if at[0] > 0 && text[at[0]-1] == ':' || at[1] < len(text) && text[at[1]] == ':' {
			continue
		}
		name := string(text[at[0]:at[1]])
		if strings.HasPrefix(name, "cbproxy_request_duration_seconds") || strings.HasPrefix(name, "cbproxy_backend_request_duration_seconds") || strings.HasPrefix(name, "cbproxy_raft_apply_seconds") {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				name = strings.TrimSuffix(name, suffix)
			}
		}
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names
}

// TestDashboardQueries: every query of the Grafana dashboard (panels,
// variables, annotations) is PromQL that promtool accepts once Grafana's
// variables are replaced by values, so a typo shows here, not on a board.
// make test installs promtool (make promtool).
func TestDashboardQueries(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool is not installed: make promtool installs it")
	}
	raw, err := os.ReadFile(filepath.Join(repoRoot(), "configs/grafana/cbproxy.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
		Templating struct {
			List []struct {
				Name       string
				Definition string
			}
		}
		Annotations struct {
			List []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	var exprs []string
	for _, p := range dash.Panels {
		for _, target := range p.Targets {
			exprs = append(exprs, target.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		// label_values(selector, label) is Grafana's: its selector is PromQL.
		if inner, ok := strings.CutPrefix(v.Definition, "label_values("); ok {
			exprs = append(exprs, inner[:strings.LastIndex(inner, ",")])
		}
	}
	for _, a := range dash.Annotations.List {
		exprs = append(exprs, a.Expr)
	}
	grafanaVariables := strings.NewReplacer("$__rate_interval", "1m", "$service", ".*", "$pool", ".*", "$node", ".*")
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range exprs {
		if e == "" {
			t.Errorf("an empty query in the dashboard")
			continue
		}
		q, _ := json.Marshal(grafanaVariables.Replace(e))
		fmt.Fprintf(&rules, "      - record: dashboard_query_%d\n        expr: %s\n", i, q)
	}
	file := filepath.Join(t.TempDir(), "dashboard.yml")
	if err := os.WriteFile(file, []byte(rules.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", file).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules of the dashboard's %d queries: %v\n%s", len(exprs), err, out)
	}
}
