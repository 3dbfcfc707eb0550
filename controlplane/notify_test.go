package controlplane

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/notify"
	"github.com/cbproxy/cbproxy/controlplane/state"
)

// receiver is a webhook receiver on 127.0.0.1 that records every request
// and answers as answer says (nil: 200).
type receiver struct {
	t   *testing.T
	url string
	srv *http.Server

	mu     sync.Mutex
	got    []received
	answer func(n int, r *http.Request, w http.ResponseWriter) // n counts requests from 1
}

type received struct {
	header http.Header
	body   []byte
	msg    map[string]any
	at     time.Time
}

func newReceiver(t *testing.T, answer func(n int, r *http.Request, w http.ResponseWriter)) *receiver {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rc := &receiver{t: t, url: "http://" + ln.Addr().String() + "/hook/token123?k=v", answer: answer}
	rc.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var msg map[string]any
		_ = json.Unmarshal(body, &msg)
		rc.mu.Lock()
		rc.got = append(rc.got, received{header: r.Header.Clone(), body: body, msg: msg, at: time.Now()})
		n, answer := len(rc.got), rc.answer
		rc.mu.Unlock()
		if answer != nil {
			answer(n, r, w)
		}
	})}
	go func() { _ = rc.srv.Serve(ln) }()
	t.Cleanup(func() { _ = rc.srv.Close() })
	return rc
}

func (rc *receiver) requests() []received {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]received(nil), rc.got...)
}

// waitFor waits until cond holds on the requests so far.
func (rc *receiver) waitFor(d time.Duration, what string, cond func([]received) bool) []received {
	rc.t.Helper()
	deadline := time.Now().Add(d)
	for {
		got := rc.requests()
		if cond(got) {
			return got
		}
		if time.Now().After(deadline) {
			rc.t.Fatalf("receiver: %s not seen within %s; got %d requests", what, d, len(got))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func kinds(got []received) []string {
	var out []string
	for _, r := range got {
		if k, ok := r.msg["kind"].(string); ok {
			out = append(out, k)
		}
	}
	return out
}

func hasKind(kind string) func([]received) bool {
	return func(got []received) bool {
		for _, k := range kinds(got) {
			if k == kind {
				return true
			}
		}
		return false
	}
}

// verifySignature checks a request's X-Cbproxy-Signature as docs/api.md
// tells a receiver to, without the package's own Sign.
func verifySignature(t *testing.T, r received, secret string) {
	t.Helper()
	h := r.header.Get("X-Cbproxy-Signature")
	var ts, sig string
	for _, part := range strings.Split(h, ",") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sig = v
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || time.Since(time.Unix(sec, 0)).Abs() > 5*time.Minute {
		t.Fatalf("signature timestamp %q", h)
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts + "."))
	mac.Write(r.body)
	want := hex.EncodeToString(mac.Sum(nil))
	if !hmac.Equal([]byte(sig), []byte(want)) {
		t.Fatalf("signature %q does not verify (want v1=%s)", h, want)
	}
}

var fastRetry = notify.Retry{Attempts: 5, Base: 50 * time.Millisecond, Max: time.Second}

// TestNotifySignedRetriedAndRecorded: a notifier set through the API gets
// the rollout's events, signed, after the receiver's 500 and 429 (whose
// Retry-After it honours); a 404 receiver is not retried and its error is
// shown by GET; the secret is never shown; a gate refusal is an event and a
// notification.
func TestNotifySignedRetriedAndRecorded(t *testing.T) {
	good := newReceiver(t, func(n int, _ *http.Request, w http.ResponseWriter) {
		switch n {
		case 1:
			w.WriteHeader(http.StatusInternalServerError)
		case 2:
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
		}
	})
	gone := newReceiver(t, func(_ int, _ *http.Request, w http.ResponseWriter) { w.WriteHeader(http.StatusNotFound) })
	n := startNodeTuned(t, t.TempDir(), func(c *Config) { c.notify.Retry = fastRetry })
	cl := newClient(t, n)
	if code, _, b := cl.do("PUT", "/v1/services/svc", demoService); code != 200 {
		t.Fatalf("put service: %d %v", code, b)
	}
	// Bad definitions are 400s.
	for _, bad := range []string{`{"url":"ftp://x/"}`, `{"url":"http://x/","events":["nope"]}`, `{"url":"http://x/","format":"xml"}`, `{"url":"http://x/","extra":1}`, `{}`} {
		if code, _, b := cl.do("PUT", "/v1/notifiers/ops", bad); code != 400 {
			t.Fatalf("PUT %s: %d %v", bad, code, b)
		}
	}
	if code, _, b := cl.do("PUT", "/v1/notifiers/Bad%20Name", `{"url":"http://x/"}`); code != 400 {
		t.Fatalf("bad name: %d %v", code, b)
	}
	code, _, b := cl.do("PUT", "/v1/notifiers/ops", `{"url":"`+good.url+`","secret":"s3cret","if_version":0}`)
	if code != 200 || b["secret_set"] != true || b["url"] != "http://"+strings.TrimPrefix(strings.Split(good.url, "/hook")[0], "http://")+"/…" {
		t.Fatalf("put notifier: %d %v", code, b)
	}
	version := b["version"].(float64)
	// A stale version is a 409; the same key replays.
	if code, _, b := cl.do("PUT", "/v1/notifiers/ops", `{"url":"http://x/"}`, "If-Match", "1"); code != 409 {
		t.Fatalf("stale put: %d %v", code, b)
	}
	if code, _, b := cl.do("PUT", "/v1/notifiers/gone", `{"url":"`+gone.url+`","events":["rollout_started"]}`); code != 200 {
		t.Fatalf("put gone: %d %v", code, b)
	}
	if code, _, b := cl.do("POST", "/v1/services/svc/rollout", `{"to":"canary","steps":[{"weight":10,"hold":"1h"},{"weight":100}],"force":true}`); code != 200 {
		t.Fatalf("rollout: %d %v", code, b)
	}
	if code, _, b := cl.do("POST", "/v1/services/svc/rollback", ``); code != 200 {
		t.Fatalf("rollback: %d %v", code, b)
	}
	// The health gate refuses a switch to a pool whose backends all drain.
	if code, _, b := cl.do("POST", "/v1/services/svc/pools/canary/backends/127.0.0.1:9003/drain", ``); code != 200 {
		t.Fatalf("drain: %d %v", code, b)
	}
	if code, _, b := cl.do("POST", "/v1/services/svc/switch", `{"to":"canary"}`); code != 412 {
		t.Fatalf("switch: %d %v", code, b)
	}
	got := good.waitFor(30*time.Second, "gate_refused", hasKind("gate_refused"))
	if len(got) < 5 || got[0].header.Get("X-Cbproxy-Event-Id") != got[2].header.Get("X-Cbproxy-Event-Id") {
		t.Fatalf("the first event was not retried after 500 and 429: %v", kinds(got))
	}
	if gap := got[2].at.Sub(got[1].at); gap < 900*time.Millisecond {
		t.Fatalf("Retry-After 1 not honoured: retried after %s", gap)
	}
	want := []string{"rollout_started", "rollout_started", "rollout_started", "rollout_rolled_back", "gate_refused"}
	if k := kinds(got); strings.Join(k, " ") != strings.Join(want, " ") {
		t.Fatalf("kinds %v, want %v", k, want)
	}
	for _, r := range got {
		verifySignature(t, r, "s3cret")
		if r.header.Get("X-Cbproxy-Event-Id") != r.msg["id"] || r.msg["node"] != "node1" || r.msg["summary"] == "" || r.msg["service"] != "svc" {
			t.Fatalf("notification %s: headers %v", r.body, r.header)
		}
	}
	gate := got[len(got)-1].msg
	if f, _ := gate["figures"].(map[string]any); f["refused_by"] != "node1" || f["failing"] == nil {
		t.Fatalf("gate_refused figures: %s", got[len(got)-1].body)
	}
	// The 404 receiver got its one event once, and GET shows why.
	time.Sleep(500 * time.Millisecond)
	if g := gone.requests(); len(g) != 1 || g[0].header.Get("X-Cbproxy-Signature") != "" {
		t.Fatalf("404 receiver: %d requests", len(g))
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, _, b = cl.do("GET", "/v1/notifiers/gone", "")
		d, _ := b["delivery"].(map[string]any)
		if strings.Contains(d["last_error"].(string)+"", "404") && d["failed"] == 1.0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the 404 is not shown: %v", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// GET never shows the secret, nor the URL's path and query.
	_, _, list := cl.do("GET", "/v1/notifiers", "")
	raw, _ := json.Marshal(list)
	if strings.Contains(string(raw), "s3cret") || strings.Contains(string(raw), "token123") || len(list["notifiers"].([]any)) != 2 {
		t.Fatalf("list: %s", raw)
	}
	// A PUT without "secret" keeps it.
	if code, _, b := cl.do("PUT", "/v1/notifiers/ops", `{"url":"`+good.url+`","format":"slack"}`, "If-Match", strconv.FormatFloat(version, 'f', 0, 64)); code != 200 || b["secret_set"] != true || b["format"] != "slack" {
		t.Fatalf("redefine: %d %v", code, b)
	}
	// The test notification, in Slack's format, signed.
	before := len(good.requests())
	if code, _, b := cl.do("POST", "/v1/notifiers/ops/test", ""); code != 200 || b["delivered"] != true {
		t.Fatalf("test: %d %v", code, b)
	}
	got = good.requests()
	last := got[len(got)-1]
	if len(got) != before+1 || last.msg["text"] == nil || last.msg["blocks"] == nil {
		t.Fatalf("test notification: %s", last.body)
	}
	verifySignature(t, last, "s3cret")
	// The metrics.
	resp, err := http.Get("http://" + n.AdminAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, line := range []string{
		`cbproxy_notifications_total{notifier="ops",outcome="retried"} 2`,
		`cbproxy_notifications_total{notifier="gone",outcome="failed"} 1`,
	} {
		if !strings.Contains(string(metrics), line) {
			t.Errorf("metrics lack %s", line)
		}
	}
	if code, _, b := cl.do("DELETE", "/v1/notifiers/gone", ""); code != 200 || b["deleted"] != true {
		t.Fatalf("delete: %d %v", code, b)
	}
	if code, _, _ := cl.do("GET", "/v1/notifiers/gone", ""); code != 404 {
		t.Fatalf("deleted notifier: %d", code)
	}
}

// TestNotifyHungReceiverDoesNotDelayRollback: while the only receiver hangs
// on every request, the watcher's guard still rolls back at once on every
// node, and the breach is notified with the figures that decided it once
// the receiver answers again.
func TestNotifyHungReceiverDoesNotDelayRollback(t *testing.T) {
	release := make(chan struct{})
	hung := newReceiver(t, func(_ int, r *http.Request, _ http.ResponseWriter) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	c, tp := rolloutCluster(t)
	cl := c.client(0)
	if code, _, b := cl.do("PUT", "/v1/notifiers/pager", `{"url":"`+hung.url+`","timeout":"1m","service":"svc"}`); code != 200 {
		t.Fatalf("put notifier: %d %v", code, b)
	}
	// Something to hang on first: a rollout started and aborted.
	if code, _, b := cl.do("POST", "/v1/services/svc/rollout", `{"to":"canary","steps":[{"weight":10,"hold":"1h"},{"weight":100}],"force":true}`); code != 200 {
		t.Fatalf("rollout: %d %v", code, b)
	}
	if code, _, b := cl.do("POST", "/v1/services/svc/rollout/abort", ``); code != 200 {
		t.Fatalf("abort: %d %v", code, b)
	}
	hung.waitFor(30*time.Second, "the first notification", func(got []received) bool { return len(got) > 0 })
	if code, _, b := cl.do("PUT", "/v1/services/svc/weights", `{"weights":{"blue":90,"canary":10},"force":true}`); code != 200 {
		t.Fatalf("weights: %d %v", code, b)
	}
	tp.set("canary", 100, 60, 10*time.Millisecond)
	start := time.Now()
	deadline := start.Add(30 * time.Second)
	for {
		rolledBack := true
		for _, n := range c.nodes {
			if n.View().Services["svc"].Weights["canary"] != 0 {
				rolledBack = false
			}
		}
		if rolledBack {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the guard did not roll back while the receiver hung")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("rolled back on every node %s after the breach, with the receiver hung", time.Since(start).Round(time.Millisecond))
	// Deliveries are in order: while the first hangs, nothing else is sent
	// (the same event again only if leadership moved under load).
	for _, r := range hung.requests() {
		if r.header.Get("X-Cbproxy-Event-Id") != hung.requests()[0].header.Get("X-Cbproxy-Event-Id") {
			t.Fatalf("%s sent while the first notification hangs", r.body)
		}
	}
	close(release)
	got := hung.waitFor(60*time.Second, "guard_breach", hasKind("guard_breach"))
	breach := got[len(got)-1]
	f, _ := breach.msg["figures"].(map[string]any)
	pools, _ := f["pools"].(map[string]any)
	canary, _ := pools["canary"].(map[string]any)
	if canary["error_rate"] != 0.6 || breach.msg["bounds"] == nil || !strings.Contains(breach.msg["summary"].(string), "canary: error rate 60.00%") {
		t.Fatalf("guard_breach notification lacks its figures: %s", breach.body)
	}
	var distinct []string
	seen := map[string]bool{}
	for _, r := range got {
		if id := r.header.Get("X-Cbproxy-Event-Id"); !seen[id] {
			seen[id] = true
			distinct = append(distinct, r.msg["kind"].(string))
		}
	}
	if strings.Join(distinct, " ") != "rollout_started rollout_aborted guard_breach" {
		t.Fatalf("kinds %v", kinds(got))
	}
}

// TestNotifyFailoverDeliversEveryEvent: three nodes; the leader is killed
// while deliveries are in flight (the receiver is slow); the new leader
// delivers the rest from the committed cursor. Every committed event is
// delivered at least once, a duplicate has the id of the first delivery,
// and only the leaders ever sent.
func TestNotifyFailoverDeliversEveryEvent(t *testing.T) {
	slow := newReceiver(t, func(_ int, r *http.Request, _ http.ResponseWriter) {
		select {
		case <-time.After(300 * time.Millisecond):
		case <-r.Context().Done():
		}
	})
	c := newCluster(t, 3, func(cfg *Config) {
		cfg.notify.Retry = fastRetry
		cfg.notify.NodeLostAfter = 2 * time.Second
	})
	// Every node learns what the others apply within a few seconds of
	// the cluster forming (raftnode learnCapabilities): a new leader must
	// know the dead one's, or it could not commit a cursor while it is down.
	time.Sleep(3 * time.Second)
	cl := c.client(c.follower())
	if code, _, b := cl.do("PUT", "/v1/services/svc", demoService); code != 200 {
		t.Fatalf("put: %d %v", code, b)
	}
	code, _, b := cl.do("PUT", "/v1/notifiers/all", `{"url":"`+slow.url+`","secret":"k"}`)
	if code != 200 {
		t.Fatalf("put notifier: %d %v", code, b)
	}
	created := b["version"].(float64)
	cycle := func(cl *client) {
		t.Helper()
		for _, step := range [][2]string{
			{"/v1/services/svc/rollout", `{"to":"canary","steps":[{"weight":10,"hold":"1h"},{"weight":100}],"force":true}`},
			{"/v1/services/svc/rollout/pause", ``},
			{"/v1/services/svc/rollout/resume", ``},
			{"/v1/services/svc/rollout/abort", ``},
		} {
			if code, _, b := cl.do("POST", step[0], step[1]); code != 200 {
				t.Fatalf("POST %s: %d %v", step[0], code, b)
			}
		}
	}
	for range 5 {
		cycle(cl)
	}
	first := c.leader(10 * time.Second)
	firstID := c.nodes[first].ID()
	// Kill the leader while it delivers (20 events at 300 ms each).
	slow.waitFor(30*time.Second, "a few deliveries", func(got []received) bool { return len(got) >= 4 })
	c.kill(first)
	second := c.leader(30 * time.Second)
	secondID := c.nodes[second].ID()
	cl = c.client(second)
	for range 3 {
		cycle(cl)
	}
	// The new leader reports the old one lost.
	slow.waitFor(60*time.Second, "node_lost", hasKind("node_lost"))
	// Every notification event of the trail since the notifier, by id.
	wanted := map[string]string{}
	events, _ := c.nodes[second].raft.QueryEvents(state.EventQuery{Since: uint64(created), Limit: 1000, Oldest: true})
	for _, ev := range events {
		if k := notify.Kind(ev, c.nodes[second].View()); k != "" {
			wanted[strconv.FormatUint(ev.Index, 10)] = k
			if k == "node_lost" && ev.Figures["lost_node"] != firstID {
				t.Fatalf("node_lost event %+v", ev)
			}
		}
	}
	if len(wanted) != 33 {
		t.Fatalf("%d notification events in the trail, want 32 of the rollouts and one node_lost: %v", len(wanted), wanted)
	}
	slow.waitFor(90*time.Second, "every event", func(got []received) bool {
		seen := map[string]bool{}
		for _, r := range got {
			seen[r.header.Get("X-Cbproxy-Event-Id")] = true
		}
		for id := range wanted {
			if !seen[id] {
				return false
			}
		}
		return true
	})
	time.Sleep(2 * time.Second) // anything sent late would arrive by now
	got := slow.requests()
	dups := 0
	seen := map[string]string{}
	for _, r := range got {
		verifySignature(t, r, "k")
		id := r.header.Get("X-Cbproxy-Event-Id")
		kind, ok := wanted[id]
		if !ok || r.msg["id"] != id || r.msg["kind"] != kind {
			t.Fatalf("notification %s (id %s) is not one of the trail's events", r.body, id)
		}
		if node := r.msg["node"]; node != firstID && node != secondID {
			t.Fatalf("notification sent by %v, which never led", node)
		}
		if prev, dup := seen[id]; dup {
			dups++
			if prev != kind {
				t.Fatalf("duplicate id %s with another kind", id)
			}
		}
		seen[id] = kind
	}
	t.Logf("%d events, %d deliveries, %d duplicates after the failover", len(wanted), len(got), dups)
	senders := map[any]bool{}
	for _, r := range got {
		senders[r.msg["node"]] = true
	}
	if !senders[firstID] || !senders[secondID] {
		t.Fatalf("senders %v: the leader was not killed mid-delivery", senders)
	}
	// The follower that never led sent nothing.
	for i, n := range c.nodes {
		if n == nil || i == second {
			continue
		}
		resp, err := http.Get("http://" + n.AdminAddr() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		m, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(m), `cbproxy_notifications_total{notifier="all",outcome="delivered"}`) {
			t.Fatalf("follower %s sent notifications", n.ID())
		}
	}
	// The cursor was committed: every node knows how far delivery went.
	deadline := time.Now().Add(20 * time.Second)
	for {
		maxID := uint64(0)
		for id := range wanted {
			v, _ := strconv.ParseUint(id, 10, 64)
			maxID = max(maxID, v)
		}
		if nt := c.nodes[c.follower()].View().Notifiers["all"]; nt != nil && nt.Delivery.Through >= maxID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the delivery cursor was not committed")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSeedNotifier: a Caddyfile notify creates the notifier once; after a
// delete through the API, a seed (a restart, a reload) never brings it back.
func TestSeedNotifier(t *testing.T) {
	n := startNode(t, t.TempDir())
	spec := state.NotifierSpec{URL: "http://127.0.0.1:9/hook", Secret: "k", Events: []string{"node_lost"}}
	n.SeedNotifier("ops", spec)
	deadline := time.Now().Add(20 * time.Second)
	for n.View().Notifiers["ops"] == nil {
		if time.Now().After(deadline) {
			t.Fatal("the seed was not committed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := n.View().Notifiers["ops"]; got.URL != spec.URL || got.Secret != "k" || got.Format != state.FormatJSON {
		t.Fatalf("seeded %+v", got)
	}
	cl := newClient(t, n)
	if code, _, b := cl.do("DELETE", "/v1/notifiers/ops", ""); code != 200 {
		t.Fatalf("delete: %d %v", code, b)
	}
	index := n.View().Index
	n.SeedNotifier("ops", spec)
	time.Sleep(time.Second)
	if n.View().Notifiers["ops"] != nil || n.View().NotifiersDeleted["ops"] == 0 {
		t.Fatalf("a seed brought a deleted notifier back (index %d → %d)", index, n.View().Index)
	}
}
