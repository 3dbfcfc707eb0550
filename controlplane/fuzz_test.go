package controlplane

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/internal/seams"
	"go.uber.org/zap"
)

var fuzzNode struct {
	once sync.Once
	n    *Node
	err  error
}

// FuzzAdminAPI sends arbitrary bodies, paths and headers through the real admin
// API of a real single-node cluster (Raft on disk). Whatever comes in, the
// answer is never a 500, errors have the contract's JSON shape, and the
// replicated state stays valid: every service's weights list every pool and sum
// to 100.
func FuzzAdminAPI(f *testing.F) {
	seeds := []struct {
		method, path, body, ifMatch, key string
	}{
		{"PUT", "/v1/services/svc", demoService, "", ""},
		{"PUT", "/v1/services/svc/weights", `{"weights":{"blue":99,"canary":1}}`, "", "k"},
		{"PUT", "/v1/services/svc/weights", `{"weights":{"blue":99.5,"canary":0.5},"force":true,"if_version":3}`, `"3"`, ""},
		{"POST", "/v1/services/svc/switch", `{"to":"canary"}`, "", ""},
		{"PUT", "/v1/services/svc/pools/green", `{"backends":["[::1]:8080","https://a.example:443"],"version":"v1"}`, "", ""},
		{"PUT", "/v1/services/svc2", `{"pools":{"a":{"backends":[{"address":"127.0.0.1:1"}]}},"health":{"path":"/h","interval":"2s"},"slo":{"window":"30s"},"guard":"1m"}`, "", ""},
		{"PUT", "/v1/services/svc3", `{"pools":{"a":{"backends":[{"address":"127.0.0.1:1","health":"healthy","draining":false,"in_flight":0,"long_lived":2}]}}}`, "", ""},
		{"DELETE", "/v1/services/svc2", ``, "", "d"},
		{"GET", "/v1/events?since=1&limit=10&service=svc", ``, "", ""},
		{"GET", "/v1/events?since=0&limit=1000&keep=oldest", ``, "", ""},
		{"GET", "/v1/events?keep=newest&limit=1", ``, "", ""},
		{"PUT", "/v1/services/svc/weights", `{"weights":{"blue":1e2}}`, "W/\"x\"", ""},
		{"POST", "/v1/services/svc/rollout", `{"to":"canary","steps":[{"weight":1,"hold":"5m"},{"weight":100}],"force":true}`, "", ""},
		{"POST", "/v1/services/svc/rollout", `{"strategy":"blue-green","to":"green","bake":"1s","gate":"manual"}`, "", ""},
		{"POST", "/v1/services/svc/rollout/pause", ``, "", ""},
		{"POST", "/v1/services/svc/rollout/promote", ``, "", "p"},
		{"POST", "/v1/services/svc/rollback", ``, "", ""},
		{"POST", "/v1/services/svc/pools/blue/backends/127.0.0.1%3A9001/drain", ``, "", ""},
		{"PUT", "/v1/services/svc4", `{"pools":{"a":{"backends":["127.0.0.1:1"]}},"health":{"path":"/h","interval":"1ns","timeout":"1h","fails":1000}}`, "", ""},
		{"PUT", "/v1/services/svc4", `{"pools":{"a":{"backends":["127.0.0.1:1"]}},"slo":{"window":"10m"}}`, "", ""},
		{"POST", "/v1/services/svc/rollout/abort", `{"if_version":2}`, "", "a"},
		{"POST", "/v1/services/svc/rollout/resume", `{"if_version":2}`, `"2"`, ""},
		{"POST", "/v1/services/svc/rollback", `{"if_version":1,"force":true}`, "", ""},
		{"DELETE", "/v1/services/svc", `{"if_version":0}`, "", "d"},
		{"PUT", "/v1/notifiers/ops", `{"url":"http://127.0.0.1:1/h?t=1","events":["rollout_started","guard_breach"],"secret":"s","format":"slack","timeout":"1s","service":"svc"}`, "", "n"},
		{"PUT", "/v1/notifiers/ops", `{"url":"https://127.0.0.1:1/","if_version":0}`, `"7"`, ""},
		{"GET", "/v1/notifiers", ``, "", ""},
		{"DELETE", "/v1/notifiers/ops", `{"if_version":3}`, "", ""},
	}
	for _, s := range seeds {
		f.Add(s.method, s.path, []byte(s.body), s.ifMatch, s.key)
	}
	f.Fuzz(func(t *testing.T, method, path string, body []byte, ifMatch, key string) {
		fuzzNode.once.Do(func() {
			dir, err := os.MkdirTemp("", "cbproxy-fuzz")
			if err != nil {
				fuzzNode.err = err
				return
			}
			fuzzNode.n, fuzzNode.err = Start(Config{
				NodeID: "fuzz", DataDir: dir, ClusterListen: "127.0.0.1:0", AdminListen: "127.0.0.1:0",
				Logger: zap.NewNop(), raft: seams.Raft{HeartbeatTimeout: 50 * time.Millisecond, ElectionTimeout: 50 * time.Millisecond, LeaderLease: 50 * time.Millisecond},
			})
			for fuzzNode.err == nil && !fuzzNode.n.Ready() {
				time.Sleep(5 * time.Millisecond)
			}
		})
		if fuzzNode.err != nil {
			t.Fatal(fuzzNode.err)
		}
		n := fuzzNode.n
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \r\n\t#") || len(path) > 512 {
			return // not a request line net/http would accept
		}
		if _, err := url.ParseRequestURI(path); err != nil {
			return
		}
		switch method {
		case "GET", "PUT", "POST", "DELETE", "PATCH":
		default:
			return
		}
		if strings.HasPrefix(path, "/v1/events/stream") || strings.HasPrefix(path, "/v1/cluster/") {
			// The stream never ends by itself; membership calls dial the
			// addresses they are given.
			return
		}
		req := httptest.NewRequest(method, "http://admin"+path, bytes.NewReader(body))
		req.RemoteAddr = "127.0.0.1:4242"
		if ifMatch != "" && !strings.ContainsAny(ifMatch, "\r\n") {
			req.Header.Set("If-Match", ifMatch)
		}
		if key != "" && !strings.ContainsAny(key, "\r\n") {
			req.Header.Set("Idempotency-Key", key)
		}
		rec := httptest.NewRecorder()
		n.admin.Handler().ServeHTTP(rec, req)
		if rec.Code >= 500 && rec.Code != 503 {
			t.Fatalf("%s %s %q: status %d %s", method, path, body, rec.Code, rec.Body)
		}
		if rec.Code >= 400 {
			var e struct{ Error, Code string }
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error == "" || e.Code == "" {
				t.Fatalf("%s %s: error body %q is not {error, code}", method, path, rec.Body)
			}
		}
		for name, s := range n.View().Services {
			var sum int
			for pool := range s.Pools {
				w, ok := s.Weights[pool]
				if !ok {
					t.Fatalf("service %s: pool %s has no weight", name, pool)
				}
				sum += int(w)
			}
			if sum != 10000 || len(s.Weights) != len(s.Pools) {
				t.Fatalf("service %s: weights %v do not sum to 100 over its pools", name, s.Weights)
			}
		}
	})
}
