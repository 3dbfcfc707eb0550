package cli

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestEveryCommandJSON runs every command with --json against a real node:
// stdout is one JSON document (or, for the streams, one JSON object per
// line), and errors are one JSON object on stderr with the same exit code as
// without --json. A command added without a case here fails the test.
func TestEveryCommandJSON(t *testing.T) {
	admin, _ := startNode(t)
	var cluster clusterBody
	code, stdout, stderr := runAgainst(t, admin, nil, "cluster", "status", "--json")
	if code != exitOK || json.Unmarshal([]byte(stdout), &cluster) != nil || len(cluster.Nodes) != 1 {
		t.Fatalf("cluster status --json: exit %d %q %q", code, stdout, stderr)
	}
	self := cluster.Nodes[0]

	// cluster recover: TestClusterRecover; cluster remove of a member would
	// need a second node: its answer is the cluster body, as for join (one
	// function prints both), and TestErrorJSON has its error.
	covered := map[string]bool{"cluster recover": true, "cluster remove": true}
	// A receiver for the notifier's test notification.
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	defer receiver.Close()
	for _, tc := range []struct {
		command string // the command's name, for the coverage check
		argv    []string
	}{
		{"status", []string{"status"}},
		{"status", []string{"status", "demo"}},
		{"weights", []string{"weights", "demo", "blue=90", "canary=10", "--if-version", "3"}},
		{"switch", []string{"switch", "demo", "blue", "--force"}},
		{"pool set", []string{"pool", "set", "demo", "canary", "127.0.0.1:9", "--version", "v2"}},
		{"backend drain", []string{"backend", "drain", "demo", "blue", "127.0.0.1:9"}},
		{"backend undrain", []string{"backend", "undrain", "demo", "blue", "127.0.0.1:9"}},
		{"rollout start", []string{"rollout", "start", "demo", "--to", "canary", "--steps", "50:1h,100", "--force"}},
		{"rollout status", []string{"rollout", "status", "demo"}},
		{"rollout pause", []string{"rollout", "pause", "demo"}},
		{"rollout resume", []string{"rollout", "resume", "demo"}},
		{"rollout promote", []string{"rollout", "promote", "demo"}},
		{"rollout abort", []string{"rollout", "abort", "demo"}},
		{"rollback", []string{"rollback", "demo"}},
		{"events", []string{"events", "demo", "--limit", "5"}},
		{"cluster status", []string{"cluster", "status"}},
		{"cluster join", []string{"cluster", "join", self.ID, self.ClusterAddr, self.AdminAddr}},
		{"notifier set", []string{"notifier", "set", "hook", receiver.URL + "/hook", "--events", "rollback,test"}},
		{"notifier list", []string{"notifier", "list"}},
		{"notifier list", []string{"notifier", "list", "hook"}},
		{"notifier test", []string{"notifier", "test", "hook"}},
		{"notifier delete", []string{"notifier", "delete", "hook"}},
	} {
		t.Run(strings.Join(tc.argv, " "), func(t *testing.T) {
			covered[tc.command] = true
			code, stdout, stderr := runAgainst(t, admin, nil, tc.argv[0], append(tc.argv[1:], "--json")...)
			if code != exitOK || stderr != "" {
				t.Fatalf("exit %d, stderr %q", code, stderr)
			}
			var doc map[string]any
			if err := json.Unmarshal([]byte(stdout), &doc); err != nil || len(doc) == 0 {
				t.Fatalf("stdout is not one JSON object (%v):\n%s", err, stdout)
			}
		})
	}

	// The streams print one JSON object per line until Ctrl-C.
	t.Run("events --follow", func(t *testing.T) {
		covered["events"] = true
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var out, errOut syncBuffer
		r := &runner{stdout: &out, stderr: &errOut, getenv: envOf(map[string]string{"CBPROXY_ADMIN": admin}), retryFor: 3 * time.Second}
		done := make(chan int, 1)
		go func() { done <- r.run(ctx, "events", []string{"demo", "--follow", "--limit", "2", "--json"}) }()
		deadline := time.Now().Add(10 * time.Second)
		for strings.Count(out.String(), "\n") < 2 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		cliOK(t, admin, "weights", "demo", "blue=70", "canary=30") // a new event on the stream
		for strings.Count(out.String(), "\n") < 3 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
		if code := <-done; code != exitOK || errOut.String() != "" {
			t.Fatalf("exit %d, stderr %q", code, errOut.String())
		}
		lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
		if len(lines) != 3 {
			t.Fatalf("want 3 lines, got:\n%s\nstderr %q", out.String(), errOut.String())
		}
		for _, line := range lines {
			var e eventBody
			if err := json.Unmarshal([]byte(line), &e); err != nil || e.Index == 0 {
				t.Fatalf("line %q: %v", line, err)
			}
		}
	})

	for _, c := range commands {
		if !covered[c.name] {
			t.Errorf("no --json case for %q", c.name)
		}
	}
}

// TestErrorJSON checks the error object of --json: on stderr, one line, with
// the API's code or the CLI's, and the exit code docs/cli.md gives.
func TestErrorJSON(t *testing.T) {
	admin, _ := startNode(t)
	cliOK(t, admin, "rollout", "start", "demo", "--to", "canary", "--steps", "50:1h,100", "--force")
	for _, tc := range []struct {
		admin   string
		top     string
		argv    []string
		code    int
		want    errorJSON // the fields compared: Code, Status, Command, ExitCode
		message string    // a substring of Error
	}{
		{admin, "weights", []string{"demo", "blue=100"}, exitConflict,
			errorJSON{Command: "weights", Code: "rollout_running", Status: 409, ExitCode: exitConflict}, "is running"},
		{admin, "weights", []string{"demo", "blue=100", "--if-version", "1"}, exitConflict,
			errorJSON{Command: "weights", Code: "version_mismatch", Status: 409, ExitCode: exitConflict}, "not 1"},
		{admin, "status", []string{"nope"}, exitFailed,
			errorJSON{Command: "status", Code: "not_found", Status: 404, ExitCode: exitFailed}, `"nope" does not exist`},
		{admin, "weights", []string{"demo"}, exitUsage,
			errorJSON{Command: "weights", Code: "usage", ExitCode: exitUsage}, "missing POOL=PCT"},
		{admin, "rollout", []string{"bogus"}, exitUsage,
			errorJSON{Command: "rollout", Code: "usage", ExitCode: exitUsage}, `unknown subcommand "bogus"`},
		{admin, "cluster", []string{"remove", "gone"}, exitFailed,
			errorJSON{Command: "cluster remove", Code: "not_found", Status: 404, ExitCode: exitFailed}, "is not a member"},
		{"http://127.0.0.1:1", "cluster", []string{"status"}, exitFailed,
			errorJSON{Command: "cluster status", Code: "unreachable", ExitCode: exitFailed}, "cannot reach the admin API"},
	} {
		t.Run(tc.top+" "+strings.Join(tc.argv, " "), func(t *testing.T) {
			code, stdout, stderr := runAgainst(t, tc.admin, nil, tc.top, append(tc.argv, "--json")...)
			if code != tc.code || stdout != "" || strings.Count(stderr, "\n") != 1 {
				t.Fatalf("exit %d (want %d), stdout %q, stderr %q", code, tc.code, stdout, stderr)
			}
			var got errorJSON
			if err := json.Unmarshal([]byte(stderr), &got); err != nil {
				t.Fatalf("stderr is not JSON: %v: %q", err, stderr)
			}
			if got.Command != tc.want.Command || got.Code != tc.want.Code || got.Status != tc.want.Status ||
				got.ExitCode != tc.want.ExitCode || !strings.Contains(got.Error, tc.message) {
				t.Fatalf("got %+v, want %+v with %q", got, tc.want, tc.message)
			}
			if tc.code == exitUsage && got.Usage == "" {
				t.Fatalf("a usage error without the usage: %+v", got)
			}
			// Without --json the same error is one line of text, same code.
			if code, _, stderr := runAgainst(t, tc.admin, nil, tc.top, tc.argv...); code != tc.code || strings.HasPrefix(stderr, "{") {
				t.Fatalf("without --json: exit %d, stderr %q", code, stderr)
			}
		})
	}
}

// TestWantsJSON reads --json apart from the parse.
func TestWantsJSON(t *testing.T) {
	for argv, want := range map[string]bool{
		"":                        false,
		"--json":                  true,
		"-json":                   true,
		"--json=true":             true,
		"--json=1":                true,
		"--json=false":            false,
		"--json=maybe":            false,
		"--json --json=false":     false,
		"svc -- --json":           false,
		"--admin x --json svc":    true,
		"--jsonx":                 false,
		"json":                    false,
		"--json=false --json":     true,
		"status --token=--json":   false,
		"--follow --json --limit": true,
	} {
		if got := wantsJSON(strings.Fields(argv)); got != want {
			t.Errorf("wantsJSON(%q) = %v, want %v", argv, got, want)
		}
	}
}
