package e2e

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// hookReceiver is a webhook receiver on 127.0.0.1 that holds every request
// until released, and records them.
type hookReceiver struct {
	url     string
	release chan struct{}
	mu      sync.Mutex
	got     []hookRequest
}

type hookRequest struct {
	header http.Header
	body   []byte
	msg    map[string]any
}

func newHookReceiver(t *testing.T) *hookReceiver {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &hookReceiver{url: "http://" + ln.Addr().String() + "/hook", release: make(chan struct{})}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var msg map[string]any
		_ = json.Unmarshal(body, &msg)
		h.mu.Lock()
		h.got = append(h.got, hookRequest{header: r.Header.Clone(), body: body, msg: msg})
		h.mu.Unlock()
		select {
		case <-h.release:
		case <-r.Context().Done():
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return h
}

func (h *hookReceiver) requests() []hookRequest {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]hookRequest(nil), h.got...)
}

// TestNotifyGuardBreach: the real binary, with a Caddyfile `notify` in the
// app block (its secret a placeholder) and one in the service's block.
// While the receiver hangs on every request, the guard's rollback commits
// and the data plane stops sending to the failing pool; once the receiver
// answers, it gets the guard breach, signed, with the figures that decided
// it.
func TestNotifyGuardBreach(t *testing.T) {
	hook := newHookReceiver(t)
	t.Setenv("CBPROXY_E2E_HOOK_SECRET", "e2e-s3cret")
	n := &node{t: t, dir: t.TempDir(), httpPort: freePort(t), adminPort: freePort(t), clusterPort: freePort(t), caddyAdmin: freePort(t),
		backends: map[string]string{}}
	var spec []string
	for _, pool := range []string{"blue", "canary"} {
		n.backends[pool] = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		spec = append(spec, pool+"="+n.backends[pool])
	}
	start(t, bins.backend, "-backends", strings.Join(spec, ","))
	global := strings.Replace(n.globalOptions(n.adminPort), "\t\tbootstrap\n", fmt.Sprintf(`		bootstrap
		notify ops %s {
			secret {env.CBPROXY_E2E_HOOK_SECRET}
			events guard_breach node_lost
		}
`, hook.url), 1)
	text := global + fmt.Sprintf(`
http://127.0.0.1:%d {
	cbproxy codingbrain {
		pool blue   %s
		pool canary %s
		weights blue=100
		slo {
			min_requests 20
			consecutive  2
		}
		notify codingbrain-chat http://127.0.0.1:9/never {
			format slack
			events rollout_started
		}
	}
}
`, n.httpPort, n.backends["blue"], n.backends["canary"])
	n.caddyfile = filepath.Join(n.dir, "Caddyfile")
	if err := os.WriteFile(n.caddyfile, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	n.start(t)

	var list map[string]any
	waitFor(t, "the seeded notifiers", 30*time.Second, func() bool {
		_, list = api(t, "GET", n.admin()+"/v1/notifiers", "")
		ns, _ := list["notifiers"].([]any)
		return len(ns) == 2
	})
	raw, _ := json.Marshal(list)
	if strings.Contains(string(raw), "e2e-s3cret") || !strings.Contains(string(raw), `"secret_set":true`) || !strings.Contains(string(raw), `"service":"codingbrain"`) {
		t.Fatalf("notifiers: %s", raw)
	}

	setBackend(t, n.backends["canary"], `{"error_rate":1}`)
	if code, body := api(t, "PUT", n.admin()+"/v1/services/codingbrain/weights", `{"weights":{"blue":70,"canary":30},"force":true}`); code != 200 {
		t.Fatalf("weights: %d %v", code, body)
	}
	waitFor(t, "the guard's rollback", 60*time.Second, func() bool {
		countBackends(t, n.proxy(), 100, 4)
		_, svc := api(t, "GET", n.admin()+"/v1/services/codingbrain", "")
		return svc["weights"].(map[string]any)["canary"] == 0.0
	})
	// The data plane follows while the receiver still hangs.
	if got := countBackends(t, n.proxy(), 200, 4); got["blue"] != 200 {
		t.Fatalf("after the rollback: %v", got)
	}
	// It has held the guard breach (retried after each 5 s timeout, with the
	// same id) and nothing else.
	got := hook.requests()
	if len(got) == 0 {
		t.Fatal("the receiver got nothing")
	}
	for _, r := range got {
		if r.msg["kind"] != "guard_breach" || r.msg["id"] != got[0].msg["id"] {
			t.Fatalf("the receiver holds %s, want only the guard breach", r.body)
		}
	}
	close(hook.release)
	breach := hook.requests()[0]
	sig := breach.header.Get("X-Cbproxy-Signature")
	ts, v1, _ := strings.Cut(strings.TrimPrefix(sig, "t="), ",v1=")
	mac := hmac.New(sha256.New, []byte("e2e-s3cret"))
	mac.Write([]byte(ts + "."))
	mac.Write(breach.body)
	if !hmac.Equal([]byte(v1), []byte(hex.EncodeToString(mac.Sum(nil)))) {
		t.Fatalf("signature %q does not verify", sig)
	}
	f, _ := breach.msg["figures"].(map[string]any)
	pools, _ := f["pools"].(map[string]any)
	canary, _ := pools["canary"].(map[string]any)
	if canary["error_rate"] != 1.0 || breach.msg["bounds"] == nil || breach.header.Get("X-Cbproxy-Event-Id") != breach.msg["id"] {
		t.Fatalf("guard breach: %s", breach.body)
	}
	// The committed delivery record reaches GET.
	waitFor(t, "the delivery record", 30*time.Second, func() bool {
		_, ops := api(t, "GET", n.admin()+"/v1/notifiers/ops", "")
		d, _ := ops["delivery"].(map[string]any)
		return d["sent"] == 1.0
	})
}
