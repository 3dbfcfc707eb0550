package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// followProc is `cbproxy rollout status SERVICE --follow` running as its own
// process, as a deploy script runs it.
type followProc struct {
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
	done           chan struct{}
}

func startFollowProc(t *testing.T, admin string, args ...string) *followProc {
	t.Helper()
	f := &followProc{done: make(chan struct{})}
	f.cmd = exec.Command(bins.cbproxy, append([]string{"rollout", "status", "codingbrain", "--follow"}, args...)...)
	f.cmd.Env = append(os.Environ(), "CBPROXY_ADMIN="+admin)
	f.cmd.Stdout, f.cmd.Stderr = &f.stdout, &f.stderr
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = f.cmd.Wait(); close(f.done) }()
	t.Cleanup(func() {
		_ = f.cmd.Process.Kill()
		<-f.done
	})
	return f
}

// exit waits for the process (bounded) and returns its exit code.
func (f *followProc) exit(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-f.done:
	case <-time.After(within):
		t.Fatalf("rollout status --follow still runs after %s; stdout:\n%s", within, tail(f.stdout.String(), 2000))
	}
	return f.cmd.ProcessState.ExitCode() // set once Wait returned
}

// TestRolloutFollowExitCodes follows rollouts that the SLO watcher ends, with
// the real binary: a healthy canary is promoted (exit 0), a failing one is
// rolled back (exit 5, the reason on stderr).
func TestRolloutFollowExitCodes(t *testing.T) {
	n := newNode(t)
	n.start(t)
	// min_requests 20 so that a few seconds of load judge a step.
	body := fmt.Sprintf(`{"pools":{"blue":{"backends":[%q]},"canary":{"backends":[%q]}},"weights":{"blue":100},"slo":{"min_requests":20}}`,
		n.backends["blue"], n.backends["canary"])
	if code, b := api(t, "PUT", n.admin()+"/v1/services/codingbrain", body); code != 200 {
		t.Fatalf("put service: %d %v", code, b)
	}

	step(t, "a healthy canary is promoted: exit 0", func(t *testing.T) {
		l := startSteadyLoad([]string{n.proxy()}, 200, 2*time.Minute)
		defer l.finish()
		if _, errOut, code := cli(t, n.admin(), "rollout", "start", "codingbrain", "--to", "canary", "--steps", "50:2s,100"); code != 0 {
			t.Fatalf("rollout start: exit %d %s", code, errOut)
		}
		f := startFollowProc(t, n.admin(), "--json")
		if code := f.exit(t, 90*time.Second); code != 0 {
			t.Fatalf("exit %d; stderr %s", code, f.stderr.String())
		}
		lines := strings.Split(strings.TrimSpace(f.stdout.String()), "\n")
		var last struct{ State string }
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || last.State != "promoted" {
			t.Fatalf("last line %q: %v", lines[len(lines)-1], err)
		}
	})

	step(t, "a failing canary is rolled back: exit 5", func(t *testing.T) {
		if code, b := api(t, "PUT", n.admin()+"/v1/services/codingbrain/weights", `{"weights":{"blue":100}}`); code != 200 {
			t.Fatalf("reset weights: %d %v", code, b)
		}
		setBackend(t, n.backends["canary"], `{"error_rate":1}`)
		defer setBackend(t, n.backends["canary"], `{"error_rate":0}`)
		l := startSteadyLoad([]string{n.proxy()}, 200, 2*time.Minute)
		defer l.finish()
		if _, errOut, code := cli(t, n.admin(), "rollout", "start", "codingbrain", "--to", "canary", "--steps", "50:1h,100"); code != 0 {
			t.Fatalf("rollout start: exit %d %s", code, errOut)
		}
		f := startFollowProc(t, n.admin())
		code := f.exit(t, 90*time.Second)
		if code != 5 || !strings.Contains(f.stderr.String(), "ended rolled_back: breach: canary error rate") {
			t.Fatalf("exit %d; stderr %s", code, f.stderr.String())
		}
		if !strings.Contains(f.stdout.String(), "state     rolled_back") {
			t.Fatalf("stdout:\n%s", tail(f.stdout.String(), 2000))
		}
	})
}
