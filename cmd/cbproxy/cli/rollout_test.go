package cli

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// Rollout bodies shaped as docs/api.md "Rollout body" documents them.
const (
	rolloutJSON = `{"id":"codingbrain-57","service":"codingbrain","strategy":"canary","state":"running",
  "from":"blue","to":"canary","gate":"auto","step":2,
  "steps":[{"weight":1,"hold":"5m"},{"weight":5,"hold":"10m"},{"weight":25,"hold":"15m"},{"weight":50,"hold":"15m"},{"weight":100}],
  "started":"2026-03-01T09:55:00Z","step_started":"2026-03-01T10:00:00Z",
  "verdict":{"result":"hold","reason":"hold: canary has 40 requests in the window,\nfewer than 100","pools":{
    "canary":{"requests":40,"errors":0,"error_rate":0,"error_rate_low":0,"error_rate_high":0.0876,"p95_ms":31.25,"nodes_reporting":3},
    "blue":{"requests":81200,"errors":12,"error_rate":0.000148,"error_rate_low":0.0000845,"error_rate_high":0.000258,"p95_ms":29,"nodes_reporting":3},
    "green":{"requests":0,"errors":0,"error_rate":0,"error_rate_low":0,"error_rate_high":0,"p95_ms":0,"nodes_reporting":0}}},
  "some_future_field":1}`
	blueGreenJSON = `{"id":"codingbrain-60","service":"codingbrain","strategy":"blue-green","state":"rolled_back",
  "from":"blue","to":"green","gate":"auto","step":1,"steps":[{"weight":100,"hold":"5m"}],
  "step_started":"2026-03-01T10:00:00Z","ended":"2026-03-01T10:01:30Z","reason":"green error rate 4.1% > 1%","verdict":null}`
)

// withState is rolloutJSON in another state.
func withState(s string) string {
	return strings.Replace(rolloutJSON, `"state":"running"`, `"state":"`+s+`"`, 1)
}

func TestParseSteps(t *testing.T) {
	tests := []struct {
		in      string
		want    []rolloutStep
		wantErr string
	}{
		{in: "1:5m,5:10m,25:15m,50:15m,100", want: []rolloutStep{{"1", "5m"}, {"5", "10m"}, {"25", "15m"}, {"50", "15m"}, {"100", ""}}},
		{in: "0.5:1m30s, 2.25 : 90s,100.00", want: []rolloutStep{{"0.5", "1m30s"}, {"2.25", "90s"}, {"100.00", ""}}},
		{in: "10:1h,100:0s", want: []rolloutStep{{"10", "1h"}, {"100", "0s"}}},
		{in: "100", want: []rolloutStep{{"100", ""}}},
		{in: "50,100", wantErr: `step 1 ("50") needs a hold, like 50:10m`},
		{in: "1:5m,5,100", wantErr: `step 2 ("5") needs a hold`},
		{in: "", wantErr: `step 1 (""): weight is empty`},
		{in: "1:5m,,100", wantErr: `step 2 (""): weight is empty`},
		{in: "1:5m,", wantErr: `step 2 (""): weight is empty`},
		{in: "1.234:5m", wantErr: "more than two decimals"},
		{in: "101", wantErr: "more than 100"},
		{in: "-1:5m", wantErr: "negative"},
		{in: "1e1:5m", wantErr: "exponent"},
		{in: "05:5m", wantErr: "leading zero"},
		{in: "five:5m", wantErr: "not a number"},
		{in: "1:5x", wantErr: `step 1 ("1:5x"): hold duration "5x" is not valid`},
		{in: "1:", wantErr: `hold duration "" is not valid`},
		{in: "1:-5m,100", wantErr: "negative"},
		{in: "1:5m:3", wantErr: `duration "5m:3" is not valid`},
	}
	for _, tt := range tests {
		got, err := parseSteps(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q: err = %v, want one with %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%q: got %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

// TestRolloutUsage runs whole command lines: every usage error exits 2 with
// one line naming the problem and the usage, and sends nothing.
func TestRolloutUsage(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("a usage error sent %s %s", r.Method, r.URL)
	}))
	defer srv.Close()
	start := func(argv ...string) []string { return append([]string{"start", "svc"}, argv...) }
	tests := []struct {
		top     string
		argv    []string
		code    int
		wantOut string // substring of stderr (usage errors) or stdout (help)
	}{
		{top: "rollout", code: exitUsage, wantOut: "cbproxy rollout: missing subcommand (usage: cbproxy rollout start SERVICE [--to POOL]"},
		{top: "rollout", argv: []string{"begin", "svc"}, code: exitUsage, wantOut: `unknown subcommand "begin"`},
		{top: "rollout", argv: []string{"start"}, code: exitUsage, wantOut: "cbproxy rollout start: missing SERVICE (usage: cbproxy rollout start SERVICE [--to POOL] [--from POOL] [--strategy S] [--steps PCT:HOLD,...] [--bake DURATION] [--manual] [--force])"},
		{top: "rollout", argv: start(), code: exitUsage, wantOut: "missing --to POOL, the pool to move traffic to"},
		{top: "rollout", argv: start("--to"), code: exitUsage, wantOut: "flag --to needs a value (POOL)"},
		{top: "rollout", argv: start("--to="), code: exitUsage, wantOut: "flag --to: needs a pool name"},
		{top: "rollout", argv: start("--to", "c", "--from", ""), code: exitUsage, wantOut: "flag --from: needs a pool name"},
		{top: "rollout", argv: start("--to", "c", "--strategy", "linear"), code: exitUsage, wantOut: `flag --strategy: want canary or blue-green, not "linear"`},
		{top: "rollout", argv: start("--to", "c", "--strategy", "canary", "--bake", "5m"), code: exitUsage, wantOut: "--bake is for blue-green rollouts"},
		{top: "rollout", argv: start("--to", "c", "--bake", "5"), code: exitUsage, wantOut: `flag --bake: duration "5" is not valid`},
		{top: "rollout", argv: start("--to", "c", "--bake=-5m"), code: exitUsage, wantOut: "negative"},
		{top: "rollout", argv: start("--to", "g", "--strategy", "blue-green", "--steps", "100"), code: exitUsage, wantOut: "--steps is for canary rollouts"},
		{top: "rollout", argv: start("--to", "g", "--bake", "1m", "--steps", "100"), code: exitUsage, wantOut: "--steps is for canary rollouts"},
		{top: "rollout", argv: start("--to", "c", "--steps", "1:5m,5,100"), code: exitUsage, wantOut: `flag --steps: step 2 ("5") needs a hold, like 5:10m`},
		{top: "rollout", argv: start("--to", "c", "--steps", "1.005:5m"), code: exitUsage, wantOut: "more than two decimals"},
		{top: "rollout", argv: start("--to", "c", "--steps="), code: exitUsage, wantOut: "weight is empty"},
		{top: "rollout", argv: start("--to", "c", "--manual=maybe"), code: exitUsage, wantOut: "flag --manual takes no value"},
		{top: "rollout", argv: start("extra", "--to", "c"), code: exitUsage, wantOut: `unexpected argument "extra"`},
		{top: "rollout", argv: start("--to", "c", "--follow"), code: exitUsage, wantOut: `unknown flag "--follow"`},
		{top: "rollout", argv: []string{"status"}, code: exitUsage, wantOut: "cbproxy rollout status: missing SERVICE (usage: cbproxy rollout status SERVICE [--follow] [--timeout DURATION])"},
		{top: "rollout", argv: []string{"status", "svc", "--steps", "1"}, code: exitUsage, wantOut: `unknown flag "--steps"`},
		{top: "rollout", argv: []string{"status", "svc", "--follow=x"}, code: exitUsage, wantOut: "takes no value"},
		{top: "rollout", argv: []string{"status", "svc", "--timeout", "5m"}, code: exitUsage, wantOut: "--timeout is for --follow"},
		{top: "rollout", argv: []string{"status", "svc", "--follow", "--timeout", "5"}, code: exitUsage, wantOut: `flag --timeout: duration "5" is not valid`},
		{top: "rollout", argv: []string{"status", "svc", "--follow", "--timeout=-1s"}, code: exitUsage, wantOut: "negative"},
		{top: "rollout", argv: []string{"pause"}, code: exitUsage, wantOut: "cbproxy rollout pause: missing SERVICE"},
		{top: "rollout", argv: []string{"resume", "a", "b"}, code: exitUsage, wantOut: `unexpected argument "b"`},
		{top: "rollout", argv: []string{"promote", "svc", "--force"}, code: exitUsage, wantOut: `unknown flag "--force"`},
		{top: "rollout", argv: []string{"abort", "svc", "--follow"}, code: exitUsage, wantOut: `unknown flag "--follow"`},
		{top: "rollback", code: exitUsage, wantOut: "cbproxy rollback: missing SERVICE (usage: cbproxy rollback SERVICE)"},
		{top: "rollback", argv: []string{"svc", "--force"}, code: exitUsage, wantOut: `unknown flag "--force"`},

		{top: "rollout", argv: []string{"-h"}, code: exitOK, wantOut: "cbproxy rollout status SERVICE [--follow]"},
		{top: "rollout", argv: []string{"start", "--help"}, code: exitOK, wantOut: "--steps PCT:HOLD,..."},
		{top: "rollout", argv: []string{"abort", "-h"}, code: exitOK, wantOut: "restores the last known good weights"},
		{top: "rollback", argv: []string{"-h"}, code: exitOK, wantOut: "Usage: cbproxy rollback SERVICE\n"},
	}
	for _, tt := range tests {
		t.Run(tt.top+" "+strings.Join(tt.argv, " "), func(t *testing.T) {
			var stdout, stderr strings.Builder
			r := &runner{stdout: &stdout, stderr: &stderr, getenv: envOf(map[string]string{"CBPROXY_ADMIN": srv.URL})}
			code := r.run(context.Background(), tt.top, tt.argv)
			if code != tt.code {
				t.Errorf("exit code %d, want %d (stderr %q)", code, tt.code, stderr.String())
			}
			out, other := stderr.String(), stdout.String()
			if tt.code == exitOK {
				out, other = other, out
			} else if strings.Count(out, "\n") != 1 {
				t.Errorf("stderr is not one line: %q", out)
			}
			if !strings.Contains(out, tt.wantOut) || other != "" {
				t.Errorf("output %q (and %q), want %q", out, other, tt.wantOut)
			}
		})
	}
}

// TestRolloutRequests checks what each rollout command sends, exactly, and
// how it reads the answer.
func TestRolloutRequests(t *testing.T) {
	const rolloutPath = "/v1/services/codingbrain/rollout"
	tests := []struct {
		name     string
		top      string
		argv     []string
		routes   map[string][]answer
		want     []string // every request, "METHOD path", in order
		wantBody string   // the first request's body, exactly
		code     int
		stdout   []string // substrings of stdout
		stderr   string   // substring of stderr
	}{
		{
			name: "canary with the server's defaults", top: "rollout", argv: []string{"start", "codingbrain", "--to", "canary"},
			routes:   map[string][]answer{"POST " + rolloutPath: ok(rolloutJSON)},
			want:     []string{"POST " + rolloutPath},
			wantBody: `{"strategy":"canary","to":"canary","gate":"auto"}`,
			stdout:   []string{"codingbrain rollout: canary blue → canary, step 2 of 5, running, verdict hold: canary has 40 requests in the window, fewer than 100\n"},
		},
		{
			name: "canary with every flag", top: "rollout",
			argv:     []string{"start", "codingbrain", "--from", "blue", "--to=canary", "--strategy", "canary", "--steps", "1:5m,5:10m,25:15m,50:15m,100", "--manual", "--force"},
			routes:   map[string][]answer{"POST " + rolloutPath: ok(rolloutJSON)},
			want:     []string{"POST " + rolloutPath},
			wantBody: `{"strategy":"canary","from":"blue","to":"canary","steps":[{"weight":1,"hold":"5m"},{"weight":5,"hold":"10m"},{"weight":25,"hold":"15m"},{"weight":50,"hold":"15m"},{"weight":100}],"gate":"manual","force":true}`,
		},
		{
			name: "step weights keep their exact text", top: "rollout",
			argv:     []string{"start", "codingbrain", "--to", "canary", "--steps", "0.50:1m30s,2.25:90s,100.00:1m", "--manual=false"},
			routes:   map[string][]answer{"POST " + rolloutPath: ok(rolloutJSON)},
			want:     []string{"POST " + rolloutPath},
			wantBody: `{"strategy":"canary","to":"canary","steps":[{"weight":0.50,"hold":"1m30s"},{"weight":2.25,"hold":"90s"},{"weight":100.00,"hold":"1m"}],"gate":"auto"}`,
		},
		{
			name: "flags before the subcommand, --json", top: "rollout",
			argv:     []string{"--to", "canary", "--json", "start", "codingbrain"},
			routes:   map[string][]answer{"POST " + rolloutPath: ok(rolloutJSON)},
			want:     []string{"POST " + rolloutPath},
			wantBody: `{"strategy":"canary","to":"canary","gate":"auto"}`,
			stdout:   []string{"{\n  \"id\": \"codingbrain-57\",", `"some_future_field": 1`},
		},
		{
			name: "--bake implies blue-green", top: "rollout", argv: []string{"start", "codingbrain", "--to", "green", "--bake", "5m"},
			routes:   map[string][]answer{"POST " + rolloutPath: ok(blueGreenJSON)},
			want:     []string{"POST " + rolloutPath},
			wantBody: `{"strategy":"blue-green","to":"green","bake":"5m"}`,
			stdout:   []string{"codingbrain rollout: blue-green blue → green, step 1 of 1, rolled_back\n"},
		},
		{
			name: "blue-green with the server's bake", top: "rollout",
			argv:     []string{"start", "codingbrain", "--strategy", "blue-green", "--from", "blue", "--to", "green"},
			routes:   map[string][]answer{"POST " + rolloutPath: ok(blueGreenJSON)},
			want:     []string{"POST " + rolloutPath},
			wantBody: `{"strategy":"blue-green","from":"blue","to":"green"}`,
		},
		{
			name: "blue-green with a manual gate", top: "rollout",
			argv:     []string{"start", "codingbrain", "--bake=10m", "--strategy=blue-green", "--to", "green", "--manual", "--force"},
			routes:   map[string][]answer{"POST " + rolloutPath: ok(blueGreenJSON)},
			want:     []string{"POST " + rolloutPath},
			wantBody: `{"strategy":"blue-green","to":"green","gate":"manual","bake":"10m","force":true}`,
		},
		{
			name: "a running rollout exits 3", top: "rollout", argv: []string{"start", "codingbrain", "--to", "canary"},
			routes: map[string][]answer{"POST " + rolloutPath: {{status: 409,
				body: `{"error":"rollout codingbrain-57 of service \"codingbrain\" is running; promote, abort or roll it back first","code":"rollout_running"}`}}},
			want: []string{"POST " + rolloutPath}, wantBody: `{"strategy":"canary","to":"canary","gate":"auto"}`, code: exitConflict,
			stderr: "cbproxy rollout start: rollout codingbrain-57 of service \"codingbrain\" is running; promote, abort or roll it back first (HTTP 409 rollout_running); wait for the rollout to end or abort it\n",
		},
		{
			name: "an unhealthy target exits 4", top: "rollout", argv: []string{"start", "codingbrain", "--to", "canary"},
			routes: map[string][]answer{"POST " + rolloutPath: {{status: 412,
				body: `{"error":"pool canary has no healthy backend: 10.0.0.31:8765 unhealthy","code":"gate_refused"}`}}},
			want: []string{"POST " + rolloutPath}, wantBody: `{"strategy":"canary","to":"canary","gate":"auto"}`, code: exitRefused,
			stderr: "(HTTP 412 gate_refused); make the pool healthy first, or pass --force\n",
		},
		{
			name: "bad steps judged by the server exit 1", top: "rollout", argv: []string{"start", "codingbrain", "--to", "canary", "--steps", "5:1m,1"},
			routes: map[string][]answer{"POST " + rolloutPath: {{status: 400,
				body: `{"error":"step 2: weight 1 must be above the previous step's and at most 100","code":"invalid"}`}}},
			want: []string{"POST " + rolloutPath}, code: exitFailed,
			wantBody: `{"strategy":"canary","to":"canary","steps":[{"weight":5,"hold":"1m"},{"weight":1}],"gate":"auto"}`,
			stderr:   "step 2: weight 1 must be above the previous step's and at most 100 (HTTP 400 invalid)",
		},
		{
			name: "pause", top: "rollout", argv: []string{"pause", "codingbrain"},
			routes: map[string][]answer{"POST " + rolloutPath + "/pause": ok(withState("paused"))},
			want:   []string{"POST " + rolloutPath + "/pause"},
			stdout: []string{"codingbrain rollout: canary blue → canary, step 2 of 5, paused, verdict hold"},
		},
		{
			name: "resume", top: "rollout", argv: []string{"resume", "codingbrain"},
			routes: map[string][]answer{"POST " + rolloutPath + "/resume": ok(rolloutJSON)},
			want:   []string{"POST " + rolloutPath + "/resume"},
			stdout: []string{"step 2 of 5, running"},
		},
		{
			name: "promote", top: "rollout", argv: []string{"promote", "codingbrain", "--json"},
			routes: map[string][]answer{"POST " + rolloutPath + "/promote": ok(withState("promoted"))},
			want:   []string{"POST " + rolloutPath + "/promote"},
			stdout: []string{`"state": "promoted"`},
		},
		{
			name: "abort", top: "rollout", argv: []string{"abort", "codingbrain"},
			routes: map[string][]answer{"POST " + rolloutPath + "/abort": ok(withState("aborted"))},
			want:   []string{"POST " + rolloutPath + "/abort"},
			stdout: []string{"step 2 of 5, aborted"},
		},
		{
			name: "abort without a running rollout", top: "rollout", argv: []string{"abort", "codingbrain"},
			routes: map[string][]answer{"POST " + rolloutPath + "/abort": {{status: 404,
				body: `{"error":"service \"codingbrain\" has no running rollout to abort","code":"not_found"}`}}},
			want: []string{"POST " + rolloutPath + "/abort"}, code: exitFailed,
			stderr: "cbproxy rollout abort: service \"codingbrain\" has no running rollout to abort (HTTP 404 not_found)\n",
		},
		{
			name: "path segments are escaped", top: "rollout", argv: []string{"pause", "a/b c"},
			routes: map[string][]answer{"POST /v1/services/a%2Fb%20c/rollout/pause": ok(rolloutJSON)},
			want:   []string{"POST /v1/services/a%2Fb%20c/rollout/pause"},
		},
		{
			name: "rollback prints the weights", top: "rollback", argv: []string{"codingbrain"},
			routes: map[string][]answer{"POST /v1/services/codingbrain/rollback": ok(serviceJSON)},
			want:   []string{"POST /v1/services/codingbrain/rollback"},
			stdout: []string{"codingbrain version 42: blue=99 canary=1 green=0\nlast known good: blue=100 canary=0 green=0\n"},
		},
		{
			name: "status", top: "rollout", argv: []string{"status", "codingbrain"},
			routes: map[string][]answer{"GET " + rolloutPath: ok(rolloutJSON)},
			want:   []string{"GET " + rolloutPath},
			stdout: []string{
				"rollout   codingbrain-57 of codingbrain\n",
				"step      2 of 5 (5%), hold 10m, started 2026-03-01T10:00:00Z (",
				"canary  40        0       0.00%       0.00–8.76%    31.3ms  3\n",
			},
		},
		{
			name: "status --json", top: "rollout", argv: []string{"status", "--json", "codingbrain"},
			routes: map[string][]answer{"GET " + rolloutPath: ok(rolloutJSON)},
			want:   []string{"GET " + rolloutPath},
			stdout: []string{"{\n  \"id\": \"codingbrain-57\",", `"some_future_field": 1`},
		},
		{
			name: "status when no rollout has run", top: "rollout", argv: []string{"status", "codingbrain"},
			routes: map[string][]answer{
				"GET " + rolloutPath:           {{status: 404, body: `{"error":"service \"codingbrain\" has never had a rollout","code":"not_found"}`}},
				"GET /v1/services/codingbrain": ok(serviceJSON),
			},
			want: []string{"GET " + rolloutPath, "GET /v1/services/codingbrain"}, code: exitFailed,
			stderr: "cbproxy rollout status: no rollout has run for codingbrain; start one with 'cbproxy rollout start codingbrain --to POOL'\n",
		},
		{
			name: "status of an unknown service", top: "rollout", argv: []string{"status", "codingbrian", "--follow"},
			routes: map[string][]answer{
				"GET /v1/events":                       ok(`{"events":[]}`),
				"GET /v1/services/codingbrian/rollout": {{status: 404, body: `{"error":"service \"codingbrian\" does not exist; GET /v1/services lists them","code":"not_found"}`}},
				"GET /v1/services/codingbrian":         {{status: 404, body: `{"error":"service \"codingbrian\" does not exist; GET /v1/services lists them","code":"not_found"}`}},
			},
			want: []string{"GET /v1/events", "GET /v1/services/codingbrian/rollout", "GET /v1/services/codingbrian"}, code: exitFailed,
			stderr: "cbproxy rollout status: service \"codingbrian\" does not exist; GET /v1/services lists them (HTTP 404 not_found)\n",
		},
		{
			name: "status with another error asks nothing more", top: "rollout", argv: []string{"status", "codingbrain"},
			routes: map[string][]answer{"GET " + rolloutPath: {{status: 403, body: `{"error":"no role","code":"forbidden"}`}}},
			want:   []string{"GET " + rolloutPath}, code: exitFailed,
			stderr: "no role (HTTP 403 forbidden); use a token whose role allows this",
		},
		{
			name: "a bad answer fails", top: "rollout", argv: []string{"status", "codingbrain"},
			routes: map[string][]answer{"GET " + rolloutPath: ok(`{"step":"two"}`)},
			want:   []string{"GET " + rolloutPath}, code: exitFailed,
			stderr: "unexpected answer from the admin API",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			api := &fakeAPI{t: t, routes: tt.routes}
			srv := httptest.NewServer(api)
			defer srv.Close()
			code, stdout, stderr := runAgainst(t, srv.URL, nil, tt.top, tt.argv...)
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
			var got []string
			for _, r := range reqs {
				got = append(got, r.method+" "+r.path)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("requests %q, want %q", got, tt.want)
			}
			if reqs[0].body != tt.wantBody {
				t.Errorf("body %s, want %s", reqs[0].body, tt.wantBody)
			}
			write := reqs[0].method != http.MethodGet
			if key := reqs[0].header.Get("Idempotency-Key"); write != (key != "") {
				t.Errorf("Idempotency-Key %q on a %s", key, reqs[0].method)
			}
		})
	}
}

func TestWriteRollout(t *testing.T) {
	now := time.Date(2026, 3, 1, 10, 3, 12, 400e6, time.UTC)
	tests := []struct {
		name string
		body string
		want string
	}{
		{
			name: "canary with a verdict", body: rolloutJSON,
			want: "" +
				"rollout   codingbrain-57 of codingbrain\n" +
				"strategy  canary blue → canary, gate auto\n" +
				"state     running\n" +
				"step      2 of 5 (5%), hold 10m, started 2026-03-01T10:00:00Z (3m12s ago)\n" +
				"verdict   hold: canary has 40 requests in the window, fewer than 100\n" +
				"\n" +
				"POOL    REQUESTS  ERRORS  ERROR RATE  95% INTERVAL  P95     NODES\n" +
				"canary  40        0       0.00%       0.00–8.76%    31.3ms  3\n" +
				"blue    81200     12      0.01%       0.01–0.03%    29ms    3\n" +
				"green   0         0       -           -             -       0\n",
		},
		{
			name: "blue-green rolled back", body: blueGreenJSON,
			want: "" +
				"rollout   codingbrain-60 of codingbrain\n" +
				"strategy  blue-green blue → green, gate auto\n" +
				"state     rolled_back\n" +
				"step      1 of 1 (100%), bake 5m, started 2026-03-01T10:00:00Z (3m12s ago)\n" +
				"ended     2026-03-01T10:01:30Z (1m42s ago)\n" +
				"reason    green error rate 4.1% > 1%\n" +
				"verdict   none\n",
		},
		{
			name: "waiting at the last step, no verdict yet",
			body: `{"id":"r1","service":"svc","strategy":"canary","state":"waiting","from":"blue","to":"canary","gate":"manual",
				"step":2,"steps":[{"weight":50,"hold":"1m"},{"weight":100}],"step_started":"2026-03-01T11:03:12.9+01:00",
				"verdict":{"result":"pass","reason":"","pools":{}}}`,
			want: "" +
				"rollout   r1 of svc\n" +
				"strategy  canary blue → canary, gate manual\n" +
				"state     waiting: run 'cbproxy rollout promote svc' to go on\n" +
				"step      2 of 2 (100%), started 2026-03-01T11:03:12+01:00 (0s ago)\n" +
				"verdict   pass\n",
		},
		{
			name: "paused, an odd body",
			body: `{"service":"svc","strategy":"canary","state":"paused","step":0,"steps":[],"step_started":"yesterday","verdict":{"result":""}}`,
			want: "" +
				"rollout   - of svc\n" +
				"strategy  canary  → , gate -\n" +
				"state     paused: run 'cbproxy rollout resume svc' to go on\n" +
				"step      0 of 0\n" +
				"verdict   none yet\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r rolloutDetail
			if err := json.Unmarshal([]byte(tt.body), &r); err != nil {
				t.Fatal(err)
			}
			var b strings.Builder
			if err := writeRollout(&b, r, now); err != nil {
				t.Fatal(err)
			}
			if b.String() != tt.want {
				t.Errorf("got:\n%s\nwant:\n%s", b.String(), tt.want)
			}
		})
	}
}

// TestRolloutStatusFollowInterrupt stops following (as Ctrl-C does) with exit
// 0, both while waiting between polls and while a poll is in flight.
func TestRolloutStatusFollowInterrupt(t *testing.T) {
	for _, during := range []string{"wait", "poll"} {
		t.Run(during, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var polls atomic.Int32
			answered := make(chan struct{})
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch r.URL.Path {
				case "/v1/events":
					w.Write([]byte(`{"events":[]}`))
					return
				case "/v1/events/stream": // open, no events, until the client goes
					w.Header().Set("Content-Type", "text/event-stream")
					w.(http.Flusher).Flush()
					<-r.Context().Done()
					return
				}
				if polls.Add(1) == 2 && during == "poll" {
					cancel()
					<-r.Context().Done()
					return
				}
				w.Write([]byte(rolloutJSON))
				if polls.Load() == 1 {
					close(answered)
				}
			}))
			defer srv.Close()
			if during == "wait" {
				go func() {
					<-answered
					time.Sleep(300 * time.Millisecond) // well inside the second between polls
					cancel()
				}()
			}

			var stdout, stderr strings.Builder
			r := &runner{stdout: &stdout, stderr: &stderr, getenv: envOf(map[string]string{"CBPROXY_ADMIN": srv.URL})}
			done := make(chan int)
			start := time.Now()
			go func() { done <- r.run(ctx, "rollout", []string{"status", "codingbrain", "--follow"}) }()
			select {
			case code := <-done:
				if code != exitOK || stderr.Len() != 0 || strings.Count(stdout.String(), "codingbrain-57 of") != 1 {
					t.Errorf("exit code %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
				}
				if during == "wait" && time.Since(start) > 900*time.Millisecond {
					t.Errorf("stopped after %v, not during the wait", time.Since(start))
				}
			case <-time.After(5 * time.Second):
				t.Fatal("--follow did not stop on interrupt")
			}
		})
	}
}

// FuzzParseSteps parses arbitrary --steps values: no panic, and what is
// accepted is sent as valid JSON with the weights' exact text.
func FuzzParseSteps(f *testing.F) {
	for _, seed := range []string{
		"1:5m,5:10m,25:15m,50:15m,100", "0.5:1m30s,2.25:90s,100.00", "100", "", ",", "1:5m,,100",
		"50,100", "1:", ":5m", "1:5m:3", "1e2", "-1:5m", "05", "1.005:1m", " 1 : 5m ", "1:-1s", "1:1h1m1s1ms1us1ns",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		steps, err := parseSteps(s)
		if err != nil {
			return
		}
		if len(steps) != strings.Count(s, ",")+1 {
			t.Fatalf("%q: %d steps", s, len(steps))
		}
		for i, st := range steps {
			if _, err := state.ParseWeight(st.Weight.String()); err != nil {
				t.Fatalf("%q: accepted weight %q: %v", s, st.Weight, err)
			}
			if st.Hold == "" && i < len(steps)-1 {
				t.Fatalf("%q: step %d has no hold", s, i+1)
			}
		}
		raw, err := json.Marshal(steps)
		if err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		// The server's own types read what the CLI sends.
		var back []state.Step
		if err := json.Unmarshal(raw, &back); err != nil || len(back) != len(steps) {
			t.Fatalf("%q: the server cannot read %s: %v", s, raw, err)
		}
	})
}

// FuzzRolloutStart parses arbitrary rollout start command lines: errors are
// usage errors, and an accepted line makes a body the server's spec reads,
// with the flags' combination rules kept.
func FuzzRolloutStart(f *testing.F) {
	for _, seed := range []string{
		"svc\x00--to\x00canary",
		"svc\x00--to=canary\x00--from\x00blue\x00--steps\x001:5m,5:10m,100\x00--manual",
		"svc\x00--to\x00green\x00--bake\x005m\x00--force",
		"--strategy\x00blue-green\x00svc\x00--to\x00green",
		"svc\x00--to\x00g\x00--strategy=canary\x00--bake=1m",
		"svc\x00--to\x00g\x00--bake=1m\x00--steps=100",
		"svc\x00--to\x00c\x00--steps\x0050,100\x00--manual=false",
	} {
		f.Add(seed)
	}
	cmd := commandNamed(f, "rollout start")
	f.Fuzz(func(t *testing.T, line string) {
		inv, err := parseArgs(cmd, strings.Split(line, "\x00"), envOf(nil))
		if err == nil {
			var body rolloutStart
			body, err = startBody(inv)
			if err == nil {
				raw, err := json.Marshal(body)
				if err != nil {
					t.Fatalf("%q: %v", line, err)
				}
				var spec state.RolloutSpec
				if err := json.Unmarshal(raw, &spec); err != nil {
					t.Fatalf("%q: the server cannot read %s: %v", line, raw, err)
				}
				bg := spec.Strategy == blueGreen
				if spec.To == "" || !bg && spec.Strategy != canary || bg && len(spec.Steps) > 0 || spec.Bake != 0 && !bg {
					t.Fatalf("%q: sent %s", line, raw)
				}
				return
			}
		}
		var ue *usageError
		if !errors.Is(err, errHelp) && !errors.As(err, &ue) {
			t.Fatalf("%q: error %v is neither help nor a usage error", line, err)
		}
	})
}
