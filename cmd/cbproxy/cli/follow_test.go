package cli

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/cbproxy/cbproxy/controlplane"
)

// startNode runs a real single-node control plane (Raft on disk in a temp
// dir, the admin API on loopback) with the service demo: pools blue and
// canary, all traffic on blue. It returns the admin API's URL and the node.
func startNode(t *testing.T) (string, *controlplane.Node) {
	t.Helper()
	n, err := controlplane.Start(controlplane.Config{
		NodeID: "node1", DataDir: t.TempDir(), Bootstrap: true,
		ClusterListen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", Logger: zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Shutdown() })
	deadline := time.Now().Add(30 * time.Second)
	for !n.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("node not ready within 30 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	admin := "http://" + n.AdminAddr()
	req, _ := http.NewRequest(http.MethodPut, admin+"/v1/services/demo",
		strings.NewReader(`{"pools":{"blue":{"backends":["127.0.0.1:9"]},"canary":{"backends":["127.0.0.1:9"]}},"weights":{"blue":100}}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("creating the service: %s", resp.Status)
	}
	return admin, n
}

// syncBuffer is a strings.Builder a command writes to while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// follower is a `rollout status --follow` running in the background.
type follower struct {
	stdout, stderr syncBuffer
	code           chan int
	cancel         context.CancelFunc
}

func startFollow(t *testing.T, admin string, argv ...string) *follower {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &follower{code: make(chan int, 1), cancel: cancel}
	t.Cleanup(cancel)
	r := &runner{stdout: &f.stdout, stderr: &f.stderr, getenv: envOf(map[string]string{"CBPROXY_ADMIN": admin}), retryFor: 3 * time.Second}
	go func() { f.code <- r.run(ctx, "rollout", append([]string{"status", "demo", "--follow"}, argv...)) }()
	// Wait for the first print, so what the test does next happens while
	// the command follows the stream.
	deadline := time.Now().Add(10 * time.Second)
	for f.stdout.String() == "" {
		select {
		case code := <-f.code:
			t.Fatalf("--follow ended at once with %d: %s%s", code, f.stdout.String(), f.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("--follow printed nothing within 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return f
}

// wait returns the exit code, failing t if the command has not ended within d.
func (f *follower) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case code := <-f.code:
		return code
	case <-time.After(d):
		t.Fatalf("--follow still runs after %s; stdout:\n%s", d, f.stdout.String())
		return 0
	}
}

// cliOK runs a command against admin and fails t unless it exits 0.
func cliOK(t *testing.T, admin, top string, argv ...string) {
	t.Helper()
	if code, stdout, stderr := runAgainst(t, admin, nil, top, argv...); code != exitOK {
		t.Fatalf("cbproxy %s %v: exit %d: %s%s", top, argv, code, stdout, stderr)
	}
}

// TestRolloutStatusFollowEnds follows real rollouts on a real node to their
// end: the exit code says how it ended.
func TestRolloutStatusFollowEnds(t *testing.T) {
	admin, node := startNode(t)
	start := func(t *testing.T) {
		t.Helper()
		cliOK(t, admin, "weights", "demo", "blue=100")
		// An hour's hold: the rollout only moves when told.
		cliOK(t, admin, "rollout", "start", "demo", "--to", "canary", "--steps", "50:1h,100", "--force")
	}

	t.Run("promoted: exit 0", func(t *testing.T) {
		start(t)
		f := startFollow(t, admin)
		cliOK(t, admin, "rollout", "promote", "demo")
		cliOK(t, admin, "rollout", "promote", "demo")
		if code := f.wait(t, 10*time.Second); code != exitOK || f.stderr.String() != "" {
			t.Fatalf("exit %d, stderr %q", code, f.stderr.String())
		}
		out := f.stdout.String()
		if !strings.Contains(out, "state     running") || !strings.Contains(out, "state     promoted\n") {
			t.Fatalf("stdout:\n%s", out)
		}
	})

	t.Run("rolled back: exit 5", func(t *testing.T) {
		start(t)
		f := startFollow(t, admin)
		cliOK(t, admin, "rollback", "demo")
		code := f.wait(t, 10*time.Second)
		if code != exitRolledBack || !strings.Contains(f.stderr.String(), "ended rolled_back: rolled back by local") {
			t.Fatalf("exit %d, stderr %q", code, f.stderr.String())
		}
		if !strings.Contains(f.stdout.String(), "state     rolled_back") {
			t.Fatalf("stdout:\n%s", f.stdout.String())
		}
	})

	t.Run("aborted: exit 6, JSON lines", func(t *testing.T) {
		start(t)
		f := startFollow(t, admin, "--json")
		cliOK(t, admin, "rollout", "pause", "demo")
		cliOK(t, admin, "rollout", "abort", "demo")
		code := f.wait(t, 10*time.Second)
		if code != exitAborted {
			t.Fatalf("exit %d, stderr %q", code, f.stderr.String())
		}
		var states []string
		for line := range strings.Lines(f.stdout.String()) {
			var r rolloutDetail
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("line %q: %v", line, err)
			}
			states = append(states, r.State)
		}
		if len(states) < 2 || states[0] != "running" || states[len(states)-1] != "aborted" {
			t.Fatalf("states %v", states)
		}
		var e errorJSON
		if err := json.Unmarshal([]byte(f.stderr.String()), &e); err != nil || e.Code != "aborted" || e.ExitCode != exitAborted {
			t.Fatalf("stderr %q: %+v %v", f.stderr.String(), e, err)
		}
	})

	t.Run("an ended rollout: its end at once", func(t *testing.T) {
		code, stdout, stderr := runAgainst(t, admin, nil, "rollout", "status", "demo", "--follow")
		if code != exitAborted || strings.Count(stdout, "state     ") != 1 || !strings.Contains(stderr, "ended aborted") {
			t.Fatalf("exit %d, stdout:\n%s\nstderr %q", code, stdout, stderr)
		}
		// Without --follow the state is only printed.
		if code, _, _ := runAgainst(t, admin, nil, "rollout", "status", "demo"); code != exitOK {
			t.Fatalf("status without --follow: exit %d", code)
		}
	})

	t.Run("--timeout: exit 7", func(t *testing.T) {
		start(t)
		began := time.Now()
		code, _, stderr := runAgainst(t, admin, nil, "rollout", "status", "demo", "--follow", "--timeout", "1s")
		if code != exitTimeout || !strings.Contains(stderr, "still running after --timeout") {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
		if took := time.Since(began); took < time.Second || took > 10*time.Second {
			t.Fatalf("--timeout 1s took %s", took)
		}
	})

	t.Run("the node goes away: exit 1", func(t *testing.T) {
		f := startFollow(t, admin) // the rollout of the step before still runs
		if err := node.Shutdown(); err != nil {
			t.Fatal(err)
		}
		code := f.wait(t, 20*time.Second)
		if code != exitFailed || !strings.Contains(f.stderr.String(), "while it was running") {
			t.Fatalf("exit %d, stderr %q", code, f.stderr.String())
		}
	})
}
