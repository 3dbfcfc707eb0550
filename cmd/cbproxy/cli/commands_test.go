package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// Answers shaped as docs/api.md documents them ("Service body", "Events",
// "Cluster").
const (
	serviceJSON = `{
  "name": "codingbrain", "version": 42,
  "weights": {"blue": 99, "green": 0, "canary": 1},
  "lkg": {"blue": 100, "green": 0, "canary": 0},
  "pools": {
    "blue": {"version": "v1.4.1", "backends": [
      {"address": "10.0.0.11:8765", "health": "healthy", "draining": false, "in_flight": 3, "long_lived": 12},
      {"address": "10.0.0.12:8765", "health": "unhealthy", "draining": true, "in_flight": 0}]},
    "green": {"version": "", "backends": []},
    "canary": {"version": "v1.5.0-rc1", "backends": [
      {"address": "10.0.0.31:8765", "health": "degraded", "draining": false, "in_flight": 0}]}
  },
  "health": {"path": "/health/ready", "interval": "2s", "timeout": "2s", "fails": 2, "passes": 2},
  "slo": {"advance": {"error_rate": 0.001, "p95_ms": 500}, "rollback": {"error_rate": 0.01, "p95_ms": 2000},
          "window": "30s", "min_requests": 100, "consecutive": 3},
  "guard": "10m",
  "rollout": null,
  "some_future_field": {"x": 1}
}`
	clusterJSON = `{"leader":"node1","term":3,"commit_index":120,"failure_tolerance":1,"nodes":[
  {"id":"node1","cluster_addr":"127.0.0.1:7001","admin_addr":"127.0.0.1:7101","state":"leader","voter":true,"last_contact_ms":0,"applied_index":120},
  {"id":"node2","cluster_addr":"127.0.0.1:7002","admin_addr":"127.0.0.1:7102","state":"follower","voter":true,"last_contact_ms":12,"applied_index":119}]}`
	eventsJSON = `{"events":[
  {"index":57,"time":"2026-03-01T10:00:00Z","actor":"ops","action":"weights","service":"codingbrain",
   "before":{"blue":100,"canary":0},"after":{"blue":99.5,"canary":0.5},"reason":""},
  {"index":58,"time":"2026-03-01T10:05:00Z","actor":"watcher","action":"rollback","service":"codingbrain",
   "before":{"blue":99.5,"canary":0.5},"after":{"blue":100,"canary":0},"reason":"canary error rate 4.1% > 1%","figures":{"canary":{"requests":812}}},
  {"index":59,"time":"2026-03-01T10:06:00Z","actor":"local","action":"node_join","reason":"node3"}]}`
)

// answer is one scripted answer of the fake admin API.
type answer struct {
	status int
	header map[string]string
	body   string
}

// seen is one request the fake admin API received.
type seen struct {
	method, path, query string
	header              http.Header
	body                string
}

// fakeAPI is an admin API that answers by script and records what it gets.
// Each "METHOD /path" route has answers in order; its last one repeats.
type fakeAPI struct {
	t      *testing.T
	routes map[string][]answer
	mu     sync.Mutex
	reqs   []seen
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	route := r.Method + " " + r.URL.EscapedPath()
	f.mu.Lock()
	n := 0
	for _, s := range f.reqs {
		if s.method+" "+s.path == route {
			n++
		}
	}
	f.reqs = append(f.reqs, seen{r.Method, r.URL.EscapedPath(), r.URL.RawQuery, r.Header.Clone(), string(body)})
	answers := f.routes[route]
	f.mu.Unlock()
	if len(answers) == 0 {
		f.t.Errorf("unexpected request %s", route)
		http.NotFound(w, r)
		return
	}
	a := answers[min(n, len(answers)-1)]
	for k, v := range a.header {
		w.Header().Set(k, v)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(a.status)
	io.WriteString(w, a.body)
}

func (f *fakeAPI) requests() []seen {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seen(nil), f.reqs...)
}

// runAgainst runs a command line against url and returns its exit code and
// output.
func runAgainst(t *testing.T, url string, env map[string]string, top string, argv ...string) (int, string, string) {
	t.Helper()
	if env == nil {
		env = map[string]string{}
	}
	env["CBPROXY_ADMIN"] = url
	var stdout, stderr strings.Builder
	r := &runner{stdout: &stdout, stderr: &stderr, getenv: envOf(env), retryFor: 3 * time.Second}
	code := r.run(context.Background(), top, argv)
	return code, stdout.String(), stderr.String()
}

func ok(body string) []answer { return []answer{{status: 200, body: body}} }

// TestCommandRequests checks what each command sends and how it reads the
// answer.
func TestCommandRequests(t *testing.T) {
	tests := []struct {
		name   string
		top    string
		argv   []string
		env    map[string]string
		routes map[string][]answer
		// want is the first request: "METHOD path?query", its body (exactly)
		// and headers that must be set ("" means absent).
		want       string
		wantBody   string
		wantHeader map[string]string
		code       int
		stdout     []string // substrings of stdout
		stderr     string   // substring of stderr
	}{
		{
			name: "weights sends the exact text of each PCT", top: "weights",
			argv:     []string{"codingbrain", "blue=99.50", "canary=0.5", "--if-version", "41", "--token", "tok"},
			routes:   map[string][]answer{"PUT /v1/services/codingbrain/weights": ok(serviceJSON)},
			want:     "PUT /v1/services/codingbrain/weights",
			wantBody: `{"weights":{"blue":99.50,"canary":0.5},"force":false}`,
			wantHeader: map[string]string{
				"If-Match": "41", "Authorization": "Bearer tok", "Content-Type": "application/json",
			},
			stdout: []string{"codingbrain version 42: blue=99 canary=1 green=0\nlast known good: blue=100 canary=0 green=0\n"},
		},
		{
			name: "weights with force and no If-Match", top: "weights",
			argv:       []string{"svc", "--force", "blue=100"},
			env:        map[string]string{"CBPROXY_TOKEN": "envtok"},
			routes:     map[string][]answer{"PUT /v1/services/svc/weights": ok(serviceJSON)},
			want:       "PUT /v1/services/svc/weights",
			wantBody:   `{"weights":{"blue":100},"force":true}`,
			wantHeader: map[string]string{"If-Match": "", "Authorization": "Bearer envtok"},
		},
		{
			name: "switch", top: "switch", argv: []string{"codingbrain", "green", "--json"},
			routes:     map[string][]answer{"POST /v1/services/codingbrain/switch": ok(serviceJSON)},
			want:       "POST /v1/services/codingbrain/switch",
			wantBody:   `{"to":"green","force":false}`,
			wantHeader: map[string]string{"Authorization": ""},
			stdout:     []string{"{\n  \"name\": \"codingbrain\",\n  \"version\": 42,", `"some_future_field": {`},
		},
		{
			name: "pool set with version label", top: "pool",
			argv:     []string{"set", "codingbrain", "canary", "10.0.0.31:8765", "[::1]:8765", "--version", "v1.5.0"},
			routes:   map[string][]answer{"PUT /v1/services/codingbrain/pools/canary": ok(serviceJSON)},
			want:     "PUT /v1/services/codingbrain/pools/canary",
			wantBody: `{"backends":["10.0.0.31:8765","[::1]:8765"],"version":"v1.5.0"}`,
			stdout:   []string{"codingbrain version 42: blue=99 canary=1 green=0\npool canary (v1.5.0-rc1): 10.0.0.31:8765\n"},
		},
		{
			name: "pool set keeps the label without --version", top: "pool",
			argv:     []string{"set", "codingbrain", "green", "https://g:443"},
			routes:   map[string][]answer{"PUT /v1/services/codingbrain/pools/green": ok(serviceJSON)},
			want:     "PUT /v1/services/codingbrain/pools/green",
			wantBody: `{"backends":["https://g:443"]}`,
			stdout:   []string{"pool green: no backends"},
		},
		{
			name: "path segments are escaped", top: "switch", argv: []string{"a/b c", "x?y"},
			routes:   map[string][]answer{"POST /v1/services/a%2Fb%20c/switch": ok(serviceJSON)},
			want:     "POST /v1/services/a%2Fb%20c/switch",
			wantBody: `{"to":"x?y","force":false}`,
		},
		{
			name: "status of one service", top: "status", argv: []string{"codingbrain"},
			routes: map[string][]answer{
				"GET /v1/services/codingbrain": ok(serviceJSON),
				"GET /v1/cluster":              ok(clusterJSON),
			},
			want:       "GET /v1/services/codingbrain",
			wantHeader: map[string]string{"Idempotency-Key": ""},
			stdout: []string{
				"codingbrain  version 42  guard 10m\n  POOL    WEIGHT  LKG   VERSION     BACKEND         HEALTH     DRAINING  IN FLIGHT  LONG-LIVED\n",
				"blue    99%     100%  v1.4.1      10.0.0.11:8765  healthy    no        3          12\n",
				"                                  10.0.0.12:8765  unhealthy  yes       0          0\n",
				"canary  1%      0%    v1.5.0-rc1  10.0.0.31:8765  degraded   no        0          0\n",
				"green   0%      0%    -           -\n",
				"rollout: none",
				"cluster: leader node1, term 3; nodes: node1 leader, node2 follower\n",
			},
		},
		{
			name: "status of all services", top: "status",
			routes: map[string][]answer{
				"GET /v1/services": ok(`{"services":[` + serviceJSON + `,` + strings.Replace(serviceJSON, `"codingbrain"`, `"other"`, 1) + `]}`),
				"GET /v1/cluster":  ok(`{"leader":"","term":4,"nodes":[]}`),
			},
			want:   "GET /v1/services",
			stdout: []string{"codingbrain  version 42", "\nother  version 42  guard 10m\n", "cluster: no leader, term 4; nodes: -\n"},
		},
		{
			name: "status --json prints the service as is", top: "status", argv: []string{"--json", "codingbrain"},
			routes: map[string][]answer{"GET /v1/services/codingbrain": ok(serviceJSON)},
			want:   "GET /v1/services/codingbrain",
			stdout: []string{`"some_future_field": {`},
		},
		{
			name: "events", top: "events", argv: []string{"codingbrain", "--limit", "3"},
			routes: map[string][]answer{"GET /v1/events": ok(eventsJSON)},
			want:   "GET /v1/events?limit=3&service=codingbrain",
			stdout: []string{
				"2026-03-01T10:00:00Z  #57  ops      weights    codingbrain  blue=100 canary=0 → blue=99.5 canary=0.5  \n",
				"2026-03-01T10:05:00Z  #58  watcher  rollback   codingbrain  blue=99.5 canary=0.5 → blue=100 canary=0  canary error rate 4.1% > 1%\n",
				"2026-03-01T10:06:00Z  #59  local    node_join  -            -                                         node3\n",
			},
		},
		{
			name: "cluster status", top: "cluster", argv: []string{"status"},
			routes: map[string][]answer{"GET /v1/cluster": ok(clusterJSON)},
			want:   "GET /v1/cluster",
			stdout: []string{
				"leader node1, term 3, commit index 120, failure tolerance 1\n",
				"NODE   STATE     VOTER  CLUSTER ADDR    ADMIN ADDR      LAST CONTACT  APPLIED\n",
				"node2  follower  yes    127.0.0.1:7002  127.0.0.1:7102  12ms          119\n",
			},
		},

		{
			name: "409 exits 3 with the server's message", top: "weights", argv: []string{"svc", "blue=100", "--if-version=3"},
			routes: map[string][]answer{"PUT /v1/services/svc/weights": {{status: 409,
				body: `{"error":"service svc is at version 7, not 3","code":"version_mismatch","version":7}`}}},
			want: "PUT /v1/services/svc/weights", code: exitConflict,
			stderr: "cbproxy weights: service svc is at version 7, not 3 (HTTP 409 version_mismatch); the service is at version 7 now: check it with 'cbproxy status' and retry with --if-version 7\n",
		},
		{
			name: "rollout running exits 3", top: "switch", argv: []string{"svc", "green"},
			routes: map[string][]answer{"POST /v1/services/svc/switch": {{status: 409,
				body: `{"error":"a rollout is running","code":"rollout_running"}`}}},
			want: "POST /v1/services/svc/switch", code: exitConflict,
			stderr: "a rollout is running (HTTP 409 rollout_running); wait for the rollout to end or abort it",
		},
		{
			name: "412 exits 4", top: "switch", argv: []string{"svc", "green"},
			routes: map[string][]answer{"POST /v1/services/svc/switch": {{status: 412,
				body: `{"error":"pool green has no healthy backend: 10.0.0.21:8765 unhealthy","code":"unhealthy_target"}`}}},
			want: "POST /v1/services/svc/switch", code: exitRefused,
			stderr: "pool green has no healthy backend: 10.0.0.21:8765 unhealthy (HTTP 412 unhealthy_target); make the pool healthy first, or pass --force",
		},
		{
			name: "401 exits 1 with a hint", top: "status",
			routes: map[string][]answer{"GET /v1/services": {{status: 401, body: `{"error":"missing bearer token","code":"unauthorized"}`}}},
			want:   "GET /v1/services", code: exitFailed,
			stderr: "cbproxy status: missing bearer token (HTTP 401 unauthorized); pass --token or set CBPROXY_TOKEN\n",
		},
		{
			name: "400 exits 1", top: "weights", argv: []string{"svc", "blue=99.999"},
			routes: map[string][]answer{"PUT /v1/services/svc/weights": {{status: 400,
				body: "{\"error\":\"weight of blue has more than two decimals:\\n99.999\",\"code\":\"bad_weights\"}"}}},
			want: "PUT /v1/services/svc/weights", wantBody: `{"weights":{"blue":99.999},"force":false}`, code: exitFailed,
			stderr: "cbproxy weights: weight of blue has more than two decimals: 99.999 (HTTP 400 bad_weights)\n",
		},
		{
			name: "error answer that is not ours", top: "cluster", argv: []string{"status"},
			routes: map[string][]answer{"GET /v1/cluster": {{status: 502, body: "<html>bad gateway</html>"}}},
			want:   "GET /v1/cluster", code: exitFailed,
			stderr: "<html>bad gateway</html> (HTTP 502)",
		},
		{
			name: "503 without Retry-After is not retried", top: "weights", argv: []string{"svc", "blue=100"},
			routes: map[string][]answer{"PUT /v1/services/svc/weights": {{status: 503, body: `{"error":"no quorum","code":"no_leader"}`}, {status: 200, body: serviceJSON}}},
			want:   "PUT /v1/services/svc/weights", code: exitFailed,
			stderr: "no quorum (HTTP 503 no_leader); the cluster has no leader",
		},
		{
			name: "a bad answer body fails", top: "cluster", argv: []string{"status"},
			routes: map[string][]answer{"GET /v1/cluster": ok(`{"leader":7}`)},
			want:   "GET /v1/cluster", code: exitFailed,
			stderr: "unexpected answer from the admin API",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			api := &fakeAPI{t: t, routes: tt.routes}
			srv := httptest.NewServer(api)
			defer srv.Close()
			code, stdout, stderr := runAgainst(t, srv.URL, tt.env, tt.top, tt.argv...)
			if code != tt.code {
				t.Errorf("exit code %d, want %d; stderr %q", code, tt.code, stderr)
			}
			for _, s := range tt.stdout {
				if !strings.Contains(stdout, s) {
					t.Errorf("stdout lacks %q:\n%s", s, stdout)
				}
			}
			if tt.stderr == "" && stderr != "" || !strings.Contains(stderr, tt.stderr) {
				t.Errorf("stderr %q, want %q", stderr, tt.stderr)
			}
			if tt.code != exitOK && strings.Count(stderr, "\n") != 1 {
				t.Errorf("stderr is not one line: %q", stderr)
			}
			reqs := api.requests()
			if len(reqs) == 0 {
				t.Fatal("no request")
			}
			first := reqs[0]
			got := first.method + " " + first.path
			if first.query != "" {
				got += "?" + first.query
			}
			if got != tt.want {
				t.Errorf("request %q, want %q", got, tt.want)
			}
			if tt.wantBody != "" && first.body != tt.wantBody {
				t.Errorf("body %s, want %s", first.body, tt.wantBody)
			}
			for k, v := range tt.wantHeader {
				if got := first.header.Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
			write := first.method != http.MethodGet
			if key := first.header.Get("Idempotency-Key"); write != (key != "") {
				t.Errorf("Idempotency-Key %q on a %s", key, first.method)
			}
			if len(reqs) != len(tt.routes) {
				t.Errorf("%d requests, want one per route (%d): %v", len(reqs), len(tt.routes), reqs)
			}
		})
	}
}

// TestWriteRetries checks that a write is sent again, with the same
// Idempotency-Key, while the node has no leader, honouring Retry-After.
func TestWriteRetries(t *testing.T) {
	unavailable := answer{status: 503, header: map[string]string{"Retry-After": "1"}, body: `{"error":"no leader","code":"no_leader"}`}
	api := &fakeAPI{t: t, routes: map[string][]answer{
		"PUT /v1/services/svc/weights": {unavailable, unavailable, {status: 200, body: serviceJSON}},
	}}
	srv := httptest.NewServer(api)
	defer srv.Close()

	start := time.Now()
	code, stdout, stderr := runAgainst(t, srv.URL, nil, "weights", "svc", "blue=100")
	elapsed := time.Since(start)
	if code != exitOK {
		t.Fatalf("exit code %d; stderr %q", code, stderr)
	}
	if !strings.Contains(stdout, "codingbrain version 42") {
		t.Errorf("stdout %q", stdout)
	}
	if elapsed < 2*time.Second {
		t.Errorf("took %v: Retry-After: 1 was not honoured twice", elapsed)
	}
	reqs := api.requests()
	if len(reqs) != 3 {
		t.Fatalf("%d requests, want 3", len(reqs))
	}
	key := reqs[0].header.Get("Idempotency-Key")
	for i, r := range reqs {
		if r.header.Get("Idempotency-Key") != key || r.body != reqs[0].body {
			t.Errorf("attempt %d: key %q body %s; want the first's: %q %s", i, r.header.Get("Idempotency-Key"), r.body, key, reqs[0].body)
		}
	}

	// A second invocation is a new change: it has a key of its own.
	runAgainst(t, srv.URL, nil, "weights", "svc", "blue=100")
	if next := api.requests()[3].header.Get("Idempotency-Key"); next == key {
		t.Errorf("two invocations share the key %q", key)
	}
}

// TestWriteRetryGivesUp bounds the retries of a node that keeps answering 503.
func TestWriteRetryGivesUp(t *testing.T) {
	api := &fakeAPI{t: t, routes: map[string][]answer{
		"POST /v1/services/svc/switch": {{status: 503, header: map[string]string{"Retry-After": "0"}, body: `{"error":"no leader","code":"no_leader"}`}},
	}}
	srv := httptest.NewServer(api)
	defer srv.Close()
	start := time.Now()
	code, _, stderr := runAgainst(t, srv.URL, nil, "switch", "svc", "green")
	if elapsed := time.Since(start); elapsed < 3*time.Second || elapsed > 6*time.Second {
		t.Errorf("gave up after %v, want about the 3 s retry bound", elapsed)
	}
	if code != exitFailed || !strings.Contains(stderr, "no leader (HTTP 503 no_leader)") {
		t.Errorf("exit code %d, stderr %q", code, stderr)
	}
	if n := len(api.requests()); n < 4 {
		t.Errorf("only %d attempts in 3 s", n)
	}
}

// droppingListener resets the first n connections it accepts, as a node that
// is restarting does.
type droppingListener struct {
	net.Listener
	mu sync.Mutex
	n  int
}

func (l *droppingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		drop := l.n > 0
		l.n--
		l.mu.Unlock()
		if !drop {
			return c, nil
		}
		// Read the request first, so the client has sent it: then only the
		// Idempotency-Key makes sending it again safe.
		c.SetReadDeadline(time.Now().Add(time.Second))
		c.Read(make([]byte, 4096))
		c.(*net.TCPConn).SetLinger(0) // close with RST
		c.Close()
	}
}

func TestWriteRetriesAfterReset(t *testing.T) {
	api := &fakeAPI{t: t, routes: map[string][]answer{"PUT /v1/services/svc/pools/blue": ok(serviceJSON)}}
	srv := httptest.NewUnstartedServer(api)
	dropping := &droppingListener{Listener: srv.Listener, n: 2}
	srv.Listener = dropping
	srv.Start()
	defer srv.Close()
	code, _, stderr := runAgainst(t, srv.URL, nil, "pool", "set", "svc", "blue", "10.0.0.1:80")
	if code != exitOK {
		t.Fatalf("exit code %d; stderr %q", code, stderr)
	}
	dropping.mu.Lock()
	defer dropping.mu.Unlock()
	if dropping.n != -1 {
		t.Errorf("%d connections left to drop, want all 2 dropped and one served", dropping.n+1)
	}
	if reqs := api.requests(); len(reqs) != 1 || reqs[0].header.Get("Idempotency-Key") == "" {
		t.Errorf("requests that reached the API: %v", reqs)
	}
}

func TestUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := "http://" + l.Addr().String()
	l.Close() // nothing listens there now: connections are refused

	// A read fails at once; a write retries for the bound, then fails.
	for _, argv := range [][]string{{"status"}, {"weights", "svc", "blue=100"}} {
		start := time.Now()
		code, _, stderr := runAgainst(t, addr, nil, argv[0], argv[1:]...)
		elapsed := time.Since(start)
		if code != exitFailed || !strings.Contains(stderr, "cannot reach the admin API at "+addr) ||
			!strings.Contains(stderr, "is cbproxy running? check --admin") {
			t.Errorf("%q: exit code %d, stderr %q", argv, code, stderr)
		}
		write := argv[0] != "status"
		if retried := elapsed > 2*time.Second; retried != write {
			t.Errorf("%q took %v", argv, elapsed)
		}
	}
}

// TestEventsFollow streams events over SSE: with --limit the newest events
// first, then the stream from after the last of them.
func TestEventsFollow(t *testing.T) {
	var mu sync.Mutex
	var lastEventID, streamQuery string
	asked := func() (string, string) {
		mu.Lock()
		defer mu.Unlock()
		return lastEventID, streamQuery
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/events":
			io.WriteString(w, `{"events":[{"index":57,"time":"t1","actor":"ops","action":"weights","service":"svc","before":{"blue":100},"after":{"blue":99,"canary":1}}]}`)
		case "/v1/events/stream":
			mu.Lock()
			lastEventID, streamQuery = r.Header.Get("Last-Event-ID"), r.URL.RawQuery
			mu.Unlock()
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, ": keep-alive\n\n")
			fmt.Fprint(w, "id: 58\nevent: switch\ndata: {\"index\":58,\"time\":\"t2\",\"actor\":\"ops\",\"action\":\"switch\",\n")
			fmt.Fprint(w, "data: \"service\":\"svc\",\"after\":{\"green\":100}}\n\n")
			fmt.Fprint(w, "id: 59\r\nevent: rollback\r\ndata: {\"index\":59,\"time\":\"t3\",\"actor\":\"watcher\",\"action\":\"rollback\",\"service\":\"svc\",\"reason\":\"slo\"}\r\n\r\n")
		default:
			t.Errorf("unexpected %s", r.URL)
		}
	}))
	defer srv.Close()

	code, stdout, stderr := runAgainst(t, srv.URL, nil, "events", "svc", "--follow", "--limit=1")
	if code != exitOK {
		t.Fatalf("exit code %d; stderr %q", code, stderr)
	}
	want := "t1  #57  ops  weights  svc  blue=100 → blue=99 canary=1  \n" +
		"t2  #58  ops  switch  svc  (none) → green=100  \n" +
		"t3  #59  watcher  rollback  svc  -  slo\n"
	if stdout != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", stdout, want)
	}
	if id, query := asked(); id != "57" || query != "service=svc" {
		t.Errorf("stream asked with Last-Event-ID %q, query %q", id, query)
	}

	code, stdout, _ = runAgainst(t, srv.URL, nil, "events", "--follow", "--json")
	if id, query := asked(); code != exitOK || id != "" || query != "" {
		t.Errorf("exit code %d, Last-Event-ID %q, query %q", code, id, query)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], `{"index":58,`) || !strings.HasPrefix(lines[1], `{"index":59,`) {
		t.Errorf("--json lines: %q", lines)
	}
}

// TestEventsFollowGap prints the stream's gap marker (events the trail
// dropped before they could be sent) as a line of its own, then goes on.
func TestEventsFollowGap(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "id: 150\nevent: gap\ndata: {\"action\":\"gap\",\"from\":11,\"to\":150,\"reason\":\"the trail no longer holds the events from index 11 to 150\"}\n\n")
		fmt.Fprint(w, "id: 151\nevent: drain\ndata: {\"index\":151,\"time\":\"t1\",\"actor\":\"ops\",\"action\":\"drain\",\"service\":\"svc\",\"reason\":\"drain\"}\n\n")
	}))
	defer srv.Close()

	code, stdout, stderr := runAgainst(t, srv.URL, nil, "events", "--follow")
	want := "-  #11-#150  -  gap  -  -  the trail no longer holds the events from index 11 to 150\n" +
		"t1  #151  ops  drain  svc  -  drain\n"
	if code != exitOK || stdout != want {
		t.Errorf("exit code %d, stderr %q, stdout:\n%s\nwant:\n%s", code, stderr, stdout, want)
	}
	code, stdout, _ = runAgainst(t, srv.URL, nil, "events", "--follow", "--json")
	if code != exitOK || !strings.HasPrefix(stdout, `{"action":"gap","from":11,"to":150,`) {
		t.Errorf("exit code %d, --json stdout %q", code, stdout)
	}
}

// TestEventsFollowResumes: a server that cuts a slow reader off ends the
// stream with `event: reconnect`; the CLI resumes after the last event it
// got, prints nothing twice and loses nothing.
func TestEventsFollowResumes(t *testing.T) {
	var mu sync.Mutex
	var asked []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked = append(asked, r.Header.Get("Last-Event-ID"))
		n := len(asked)
		mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		switch n {
		case 1:
			fmt.Fprint(w, "id: 7\nevent: drain\ndata: {\"index\":7,\"time\":\"t1\",\"actor\":\"ops\",\"action\":\"drain\",\"service\":\"svc\"}\n\n")
			fmt.Fprint(w, "id: 7\nevent: reconnect\ndata: {\"action\":\"reconnect\",\"after\":7,\"reason\":\"fell behind\"}\n\n")
		case 2:
			fmt.Fprint(w, "id: 8\nevent: undrain\ndata: {\"index\":8,\"time\":\"t2\",\"actor\":\"ops\",\"action\":\"undrain\",\"service\":\"svc\"}\n\n")
		default:
			t.Errorf("connection %d: the stream ended without reconnect, the CLI must stop", n)
		}
	}))
	defer srv.Close()

	code, stdout, stderr := runAgainst(t, srv.URL, nil, "events", "--follow")
	want := "t1  #7  ops  drain  svc  -  \nt2  #8  ops  undrain  svc  -  \n"
	if code != exitOK || stdout != want {
		t.Errorf("exit code %d, stderr %q, stdout:\n%q\nwant:\n%q", code, stderr, stdout, want)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(asked) != 2 || asked[0] != "" || asked[1] != "7" {
		t.Errorf("Last-Event-ID of each connection: %q, want [\"\" \"7\"]", asked)
	}
}

// TestEventsFollowInterrupt stops following (as Ctrl-C does) with exit 0.
func TestEventsFollowInterrupt(t *testing.T) {
	sent := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "id: 1\ndata: {\"index\":1,\"action\":\"pool\"}\n\n")
		w.(http.Flusher).Flush()
		close(sent)
		<-r.Context().Done() // an open stream with nothing new
	}))
	defer srv.Close()

	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-sent
		time.Sleep(100 * time.Millisecond)
		cancel()
	}()
	var stdout, stderr strings.Builder
	r := &runner{stdout: &stdout, stderr: &stderr, getenv: envOf(map[string]string{"CBPROXY_ADMIN": srv.URL})}
	done := make(chan int)
	go func() { done <- r.run(ctx, "events", []string{"--follow"}) }()
	select {
	case code := <-done:
		if code != exitOK || !strings.Contains(stdout.String(), "#1") {
			t.Errorf("exit code %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("--follow did not stop on interrupt")
	}
}

func TestEventsStreamError(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, `{"error":"token viewer may not read events","code":"forbidden"}`)
	}))
	defer srv.Close()
	code, _, stderr := runAgainst(t, srv.URL, nil, "events", "--follow")
	if code != exitFailed || !strings.Contains(stderr, "token viewer may not read events (HTTP 403 forbidden); use a token") {
		t.Errorf("exit code %d, stderr %q", code, stderr)
	}
}

func TestExitCode(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{newAPIError(409, nil), exitConflict},
		{fmt.Errorf("wrapped: %w", newAPIError(412, nil)), exitRefused},
		{newAPIError(404, nil), exitFailed},
		{newAPIError(503, nil), exitFailed},
		{errors.New("cannot reach"), exitFailed},
	}
	for _, tt := range tests {
		if got := exitCode(tt.err); got != tt.want {
			t.Errorf("exitCode(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}
