package controlplane

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/healthcheck"
)

// healthBackend is a real HTTP backend on loopback whose health path answers
// 200 or 503 as the test says.
type healthBackend struct {
	srv  *httptest.Server
	down atomic.Bool
}

func newHealthBackend(t *testing.T) *healthBackend {
	b := &healthBackend{}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if b.down.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	}))
	t.Cleanup(b.srv.Close)
	return b
}

func (b *healthBackend) addr() string { return strings.TrimPrefix(b.srv.URL, "http://") }

// waitHealth waits until the node sees the backend in the given state.
func waitHealth(t *testing.T, n *Node, service, pool, addr string, want healthcheck.Status) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for n.health.Get(service, pool, addr).Status != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s/%s/%s never became %s: %+v", service, pool, addr, want, n.health.Get(service, pool, addr))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestIdempotentReplaySkipsGate: a switch whose first attempt succeeded is
// retried with its Idempotency-Key after the pool failed its checks; the
// retry answers the first result (200, the first version), not a 412, and
// applies nothing. A new request is still gated.
func TestIdempotentReplaySkipsGate(t *testing.T) {
	n := startNode(t, t.TempDir())
	c := newClient(t, n)
	blue, green := newHealthBackend(t), newHealthBackend(t)
	spec := fmt.Sprintf(`{"pools":{"blue":{"backends":[%q]},"green":{"backends":[%q]}},"weights":{"blue":100},
		"health":{"path":"/h","interval":"100ms","timeout":"100ms","fails":1,"passes":1}}`, blue.addr(), green.addr())
	if code, _, body := c.do("PUT", "/v1/services/svc", spec); code != 200 {
		t.Fatalf("put: %d %v", code, body)
	}
	waitHealth(t, n, "svc", "green", green.addr(), healthcheck.StatusHealthy)

	code, _, first := c.do("POST", "/v1/services/svc/switch", `{"to":"green"}`, "Idempotency-Key", "switch-1")
	if code != 200 {
		t.Fatalf("switch: %d %v", code, first)
	}
	green.down.Store(true)
	waitHealth(t, n, "svc", "green", green.addr(), healthcheck.StatusUnhealthy)
	index := n.View().Index

	code, hdr, again := c.do("POST", "/v1/services/svc/switch", `{"to":"green"}`, "Idempotency-Key", "switch-1")
	if code != 200 || again["version"] != first["version"] || hdr.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retried switch: %d %v (Idempotent-Replayed %q); first %v", code, again, hdr.Get("Idempotent-Replayed"), first)
	}
	if w := n.View().Services["svc"]; w.Version != uint64(first["version"].(float64)) || len(trail(n, "svc", index, 10)) != 0 {
		t.Fatalf("the retry applied something: %+v", w)
	}
	// The same key for another request is a conflict, decided by the state
	// machine, not by the gate.
	if code, _, body := c.do("POST", "/v1/services/svc/switch", `{"to":"green","force":false}`, "Idempotency-Key", "switch-1"); code != 409 || body["code"] != "idempotency_key_reused" {
		t.Fatalf("same key, other request: %d %v", code, body)
	}
	// A new request is gated as ever.
	c.do("POST", "/v1/services/svc/switch", `{"to":"blue"}`)
	if code, _, body := c.do("POST", "/v1/services/svc/switch", `{"to":"green"}`, "Idempotency-Key", "switch-2"); code != 412 || body["code"] != "gate_refused" {
		t.Fatalf("new switch to a dead pool: %d %v", code, body)
	}
}

// TestReplayAnswersFirstVersion: a replay answers the first result's status
// and version, with the service as it is now (the first body is not kept),
// and says it is a replay. A delete's replay answers the first delete's index.
func TestReplayAnswersFirstVersion(t *testing.T) {
	n := startNode(t, t.TempDir())
	c := newClient(t, n)
	c.do("PUT", "/v1/services/svc", demoService)
	code, hdr, first := c.do("PUT", "/v1/services/svc/weights", `{"weights":{"blue":95,"canary":5}}`, "Idempotency-Key", "k1")
	if code != 200 || hdr.Get("Idempotent-Replayed") != "" {
		t.Fatalf("first: %d %v %v", code, first, hdr)
	}
	c.do("PUT", "/v1/services/svc/weights", `{"weights":{"blue":90,"canary":10}}`)
	code, hdr, again := c.do("PUT", "/v1/services/svc/weights", `{"weights":{"blue":95,"canary":5}}`, "Idempotency-Key", "k1")
	if code != 200 || again["version"] != first["version"] || hdr.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("replay: %d %v %v; first %v", code, again, hdr, first)
	}
	if w := again["weights"].(map[string]any); w["blue"] != 90.0 || w["canary"] != 10.0 {
		t.Errorf("replay body weights %v; want the service as it is now (90/10)", w)
	}
	// The same request formatted otherwise is the same request.
	code, hdr, _ = c.do("PUT", "/v1/services/svc/weights", "{ \"weights\" : {\"canary\":5,\n \"blue\":95} }", "Idempotency-Key", "k1")
	if code != 200 || hdr.Get("Idempotent-Replayed") != "true" {
		t.Errorf("replay with other whitespace and key order: %d %v", code, hdr)
	}

	code, _, del := c.do("DELETE", "/v1/services/svc", "", "Idempotency-Key", "del")
	if code != 200 || del["deleted"] != true {
		t.Fatalf("delete: %d %v", code, del)
	}
	c.do("PUT", "/v1/services/other", demoService) // the index moves on
	code, hdr, delAgain := c.do("DELETE", "/v1/services/svc", "", "Idempotency-Key", "del")
	if code != 200 || delAgain["deleted"] != true || delAgain["version"] != del["version"] || hdr.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("replayed delete: %d %v; first %v", code, delAgain, del)
	}
	// The weights write replayed now that its service is gone: the first
	// status, and the deletion as the body.
	code, _, gone := c.do("PUT", "/v1/services/svc/weights", `{"weights":{"blue":95,"canary":5}}`, "Idempotency-Key", "k1")
	if code != 200 || gone["deleted"] != true || gone["version"] != del["version"] {
		t.Fatalf("replay after the delete: %d %v", code, gone)
	}
}

// TestVersionBodyOnActions: "if_version" in the body of delete, rollback and
// the rollout actions is checked like If-Match; a misspelt field is a 400.
func TestVersionBodyOnActions(t *testing.T) {
	n := startNode(t, t.TempDir())
	c := newClient(t, n)
	version := func() uint64 { return n.View().Services["svc"].Version }
	c.do("PUT", "/v1/services/svc", demoService)
	c.do("PUT", "/v1/services/svc/weights", `{"weights":{"blue":90,"canary":10}}`)
	start := `{"to":"canary","steps":[{"weight":20},{"weight":50},{"weight":100}],"gate":"manual","force":true}`
	if code, _, body := c.do("POST", "/v1/services/svc/rollout", start); code != 200 {
		t.Fatalf("rollout start: %d %v", code, body)
	}
	for _, path := range []string{"rollout/pause", "rollout/resume", "rollout/promote", "rollout/abort", "rollback"} {
		stale := version() - 1
		index := n.View().Index
		code, _, body := c.do("POST", "/v1/services/svc/"+path, fmt.Sprintf(`{"if_version":%d}`, stale))
		if code != 409 || body["code"] != "version_mismatch" || body["version"] != float64(version()) {
			t.Errorf("%s with a stale if_version: %d %v", path, code, body)
		}
		if code, _, body := c.do("POST", "/v1/services/svc/"+path, fmt.Sprintf(`{"if_versoin":%d}`, version())); code != 400 {
			t.Errorf("%s with a misspelt field: %d %v", path, code, body)
		}
		if len(trail(n, "svc", index, 10)) != 0 {
			t.Fatalf("%s: a refused request changed the service", path)
		}
		if code, _, body := c.do("POST", "/v1/services/svc/"+path, fmt.Sprintf(`{"if_version":%d}`, version())); code != 200 {
			t.Errorf("%s with the current if_version: %d %v", path, code, body)
		}
	}
	if code, _, body := c.do("DELETE", "/v1/services/svc", fmt.Sprintf(`{"if_version":%d}`, version()-1)); code != 409 || body["code"] != "version_mismatch" {
		t.Errorf("delete with a stale if_version: %d %v", code, body)
	}
	if n.View().Services["svc"] == nil {
		t.Fatal("a delete with a stale if_version deleted the service")
	}
	if code, _, body := c.do("DELETE", "/v1/services/svc", fmt.Sprintf(`{"if_version":%d}`, version())); code != 200 || body["deleted"] != true {
		t.Errorf("delete with the current if_version: %d %v", code, body)
	}
}
