package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// healthNode is one cbproxy node whose service has an active health check,
// with one backend process per backend so that each can be killed alone.
type healthNode struct {
	node
	procs map[string]*proc // backend name -> process
	addrs map[string]string
}

const healthInterval = 300 * time.Millisecond

func newHealthNode(t *testing.T) *healthNode {
	h := &healthNode{node: node{t: t, dir: t.TempDir(), httpPort: freePort(t), adminPort: freePort(t), clusterPort: freePort(t), caddyAdmin: freePort(t)},
		procs: map[string]*proc{}, addrs: map[string]string{}}
	for _, name := range []string{"blue1", "blue2", "green", "canary"} {
		h.addrs[name] = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		h.procs[name] = start(t, bins.backend, "-backends", name+"="+h.addrs[name])
	}
	h.caddyfile = filepath.Join(h.dir, "Caddyfile")
	text := h.globalOptions(h.adminPort) + fmt.Sprintf(`
http://127.0.0.1:%d {
	cbproxy codingbrain {
		pool blue   %s %s
		pool green  %s
		pool canary %s
		weights blue=50 canary=50
		health /health/ready %s timeout 250ms fails 2 passes 2
	}
}
`, h.httpPort,
		h.addrs["blue1"], h.addrs["blue2"], h.addrs["green"], h.addrs["canary"], healthInterval)
	if err := os.WriteFile(h.caddyfile, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	h.start(t)
	return h
}

// setBackend changes a backend's behaviour through its control endpoint.
func (h *healthNode) setBackend(t *testing.T, name, settings string) {
	t.Helper()
	setBackend(t, h.addrs[name], settings)
}

// servedBy returns how many requests a backend has served so far.
func (h *healthNode) servedBy(t *testing.T, name string) int {
	t.Helper()
	resp, err := http.Get("http://" + h.addrs[name] + "/_backend/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		Requests int `json:"requests"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&st)
	return st.Requests
}

// health returns each backend's health and in-flight count from the admin API.
func (h *healthNode) health(t *testing.T) map[string]map[string]any {
	t.Helper()
	_, body := api(t, "GET", h.admin()+"/v1/services/codingbrain", "")
	out := map[string]map[string]any{}
	for _, p := range body["pools"].(map[string]any) {
		for _, b := range p.(map[string]any)["backends"].([]any) {
			be := b.(map[string]any)
			for name, addr := range h.addrs {
				if be["address"] == addr {
					out[name] = be
				}
			}
		}
	}
	return out
}

func (h *healthNode) waitHealth(t *testing.T, name, want string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	waitFor(t, name+" "+want, within, func() bool { return h.health(t)[name]["health"] == want })
	return time.Since(start)
}

// load sends GETs over keep-alive connections until stop, counting failures.
type load struct {
	sent, failed atomic.Int64
	stop         atomic.Bool
	wg           sync.WaitGroup
}

func startLoad(url string, conns int) *load {
	l := &load{}
	tr := &http.Transport{MaxIdleConnsPerHost: conns}
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for i := 0; i < conns; i++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for n := 0; n < 200000 && !l.stop.Load(); n++ {
				l.sent.Add(1)
				if !getOK(c, url) {
					l.failed.Add(1)
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	return l
}

func (l *load) finish() (sent, failed int64) {
	l.stop.Store(true)
	l.wg.Wait()
	return l.sent.Load(), l.failed.Load()
}

// TestHealth: active and passive checks take backends out of rotation and
// back, a pool without a healthy backend gives its share away, the gate
// refuses a dead pool, and a drain lets in-flight requests finish.
func TestHealth(t *testing.T) {
	h := newHealthNode(t)

	step(t, "every backend healthy", func(t *testing.T) {
		for _, name := range []string{"blue1", "blue2", "green", "canary"} {
			h.waitHealth(t, name, "healthy", 10*time.Second)
		}
	})

	step(t, "a backend killed under load leaves rotation", func(t *testing.T) {
		// Failed requests are counted (Caddy retries a refused connection on
		// the pool's other backend).
		l := startLoad(h.proxy()+"/", 8)
		time.Sleep(500 * time.Millisecond)
		h.procs["blue2"].stop(syscall.SIGKILL)
		left := h.waitHealth(t, "blue2", "unhealthy", 10*time.Second)
		time.Sleep(500 * time.Millisecond)
		sent, failed := l.finish()
		t.Logf("blue2 killed under load: unhealthy after %s (check interval %s); %d requests, %d failed", left, healthInterval, sent, failed)
		if left > 2*healthInterval+time.Second {
			t.Errorf("blue2 left rotation after %s, want within two intervals", left)
		}
		if failed > 8 { // at most the requests in flight at the kill (8 connections)
			t.Errorf("%d requests failed after the kill", failed)
		}
		before := h.servedBy(t, "blue1")
		counts := countBackends(t, h.proxy()+"/", 400, 4)
		if counts["blue2"] != 0 || counts["blue1"] != 200 || h.servedBy(t, "blue1")-before != 200 {
			t.Fatalf("after blue2's death: %v", counts)
		}
	})

	step(t, "a pool without a healthy backend gives its share away", func(t *testing.T) {
		// A backend answering 500 to its health path is skipped; its pool,
		// with no healthy backend left, gives its share to canary.
		h.setBackend(t, "blue1", `{"health":"unhealthy"}`)
		h.waitHealth(t, "blue1", "unhealthy", 10*time.Second)
		if counts := countBackends(t, h.proxy()+"/", 200, 4); counts["canary"] != 200 {
			t.Fatalf("blue without healthy backends: %v", counts)
		}
		code, body := apiQuietJSON(h.admin() + "/health/ready")
		if code != 200 || body["status"] != "degraded" {
			t.Fatalf("/health/ready with unhealthy backends: %d %v", code, body)
		}
	})

	step(t, "a degraded backend keeps serving", func(t *testing.T) {
		h.setBackend(t, "canary", `{"health":"degraded"}`)
		h.waitHealth(t, "canary", "degraded", 10*time.Second)
		if counts := countBackends(t, h.proxy()+"/", 100, 2); counts["canary"] != 100 {
			t.Fatalf("degraded canary: %v", counts)
		}
	})

	step(t, "health deps lists the failing backends", func(t *testing.T) {
		// The shape a jq script checks.
		code, deps := apiQuietJSON(h.admin() + "/health/deps")
		if code != 200 || deps["status"] != "degraded" {
			t.Fatalf("/health/deps: %d %v", code, deps)
		}
		notHealthy := map[string]string{}
		for name, d := range deps["dependencies"].(map[string]any) {
			if s := d.(map[string]any)["status"].(string); s != "healthy" {
				notHealthy[name] = s
			}
		}
		want := map[string]string{
			"codingbrain/blue/" + h.addrs["blue1"]:    "unhealthy",
			"codingbrain/blue/" + h.addrs["blue2"]:    "unhealthy",
			"codingbrain/canary/" + h.addrs["canary"]: "degraded",
		}
		if fmt.Sprint(notHealthy) != fmt.Sprint(want) {
			t.Fatalf("not healthy dependencies %v, want %v", notHealthy, want)
		}
	})

	step(t, "the gate refuses a dead pool", func(t *testing.T) {
		// A switch to a dead pool is refused with 412 and exit code 4, naming
		// the failing backend; to a healthy one it goes through.
		h.setBackend(t, "green", `{"health":"unhealthy"}`)
		h.waitHealth(t, "green", "unhealthy", 10*time.Second)
		_, errOut, exit := cli(t, h.admin(), "switch", "codingbrain", "green")
		if exit != 4 || !strings.Contains(errOut, h.addrs["green"]) {
			t.Fatalf("switch to a dead pool: exit %d, %q", exit, errOut)
		}
		status, gate := api(t, "PUT", h.admin()+"/v1/services/codingbrain/weights", `{"weights":{"green":10,"canary":90}}`)
		if status != 412 || gate["code"] != "gate_refused" || len(gate["failing"].([]any)) != 1 {
			t.Fatalf("weights raising a dead pool: %d %v", status, gate)
		}
		h.setBackend(t, "green", `{"health":"ok"}`)
		h.setBackend(t, "blue1", `{"health":"ok"}`)
		h.waitHealth(t, "green", "healthy", 10*time.Second)
		h.waitHealth(t, "blue1", "healthy", 10*time.Second)
		if _, errOut, exit = cli(t, h.admin(), "switch", "codingbrain", "blue"); exit != 0 {
			t.Fatalf("switch to a healthy pool: exit %d %s", exit, errOut)
		}
	})

	step(t, "a restarted backend comes back into rotation", func(t *testing.T) {
		// After its passes. The process serves the later steps too.
		h.procs["blue2"] = start(h.t, bins.backend, "-backends", "blue2="+h.addrs["blue2"])
		back := h.waitHealth(t, "blue2", "healthy", 10*time.Second)
		t.Logf("blue2 restarted: healthy again after %s", back)
	})

	step(t, "a drained backend lets its in-flight requests finish", func(t *testing.T) {
		// It gets no new requests. Two slow requests, so that round robin
		// puts one on each blue backend.
		h.setBackend(t, "blue1", `{"latency_ms":1500}`)
		h.setBackend(t, "blue2", `{"latency_ms":1500}`)
		slow := make(chan int, 2)
		for i := 0; i < 2; i++ {
			go func() {
				resp, err := http.Get(h.proxy() + "/slow")
				if err != nil {
					slow <- 0
					return
				}
				resp.Body.Close()
				slow <- resp.StatusCode
			}()
		}
		waitFor(t, "a request in flight to blue1", 5*time.Second, func() bool {
			in, _ := h.health(t)["blue1"]["in_flight"].(float64)
			return in == 1
		})
		if _, errOut, exit := cli(t, h.admin(), "backend", "drain", "codingbrain", "blue", h.addrs["blue1"]); exit != 0 {
			t.Fatalf("drain: exit %d %s", exit, errOut)
		}
		if b := h.health(t)["blue1"]; b["draining"] != true || b["in_flight"].(float64) != 1 {
			t.Fatalf("blue1 while draining: %v", b)
		}
		h.setBackend(t, "blue1", `{"latency_ms":0}`)
		h.setBackend(t, "blue2", `{"latency_ms":0}`)
		before := h.servedBy(t, "blue1")
		counts := countBackends(t, h.proxy()+"/", 100, 2)
		for i := 0; i < 2; i++ {
			if code := <-slow; code != 200 {
				t.Fatalf("a request in flight while draining ended with %d", code)
			}
		}
		// The slow request itself finishes after the drain; nothing else arrives.
		if got := h.servedBy(t, "blue1") - before; got > 1 || counts["blue1"] != 0 {
			t.Fatalf("drained blue1 got %d new requests (%v)", got, counts)
		}
		if counts["blue2"] != 100 {
			t.Fatalf("with blue1 drained: %v", counts)
		}
	})

	step(t, "an undrained backend is back in rotation", func(t *testing.T) {
		if _, errOut, exit := cli(t, h.admin(), "backend", "undrain", "codingbrain", "blue", h.addrs["blue1"]); exit != 0 {
			t.Fatalf("undrain: exit %d %s", exit, errOut)
		}
		if counts := countBackends(t, h.proxy()+"/", 50, 2); counts["blue1"] != 25 || counts["blue2"] != 25 {
			t.Fatalf("after undrain: %v", counts)
		}
	})
}
