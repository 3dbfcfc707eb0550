// Package e2e drives the real cbproxy binary and real backends over loopback,
// only through the Caddyfile, the CLI and the admin API (docs/caddyfile.md,
// docs/cli.md, docs/api.md).
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// bins holds the binaries built once for the whole package.
var bins struct {
	cbproxy, backend string
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cbproxy-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins.cbproxy = filepath.Join(dir, "cbproxy")
	bins.backend = filepath.Join(dir, "cbproxy-backend")
	root := repoRoot()
	for out, pkg := range map[string]string{bins.cbproxy: "./cmd/cbproxy", bins.backend: "./cmd/cbproxy-backend"} {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Dir = root
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building", pkg, err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// freePort returns a loopback port nobody listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	for range 1000 {
		port := portsBelowEphemeral.next()
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // taken by another process
		}
		ln.Close()
		return port
	}
	t.Fatal("no free port below the ephemeral range")
	return 0
}

// portsBelowEphemeral hands out ports under the kernel's ephemeral range
// (32768 and up on Linux), each once per test binary. A port the kernel
// picked for a listener on :0 comes from that range, which is also where
// every outgoing connection takes its source port: a node restarted on its
// old ports (it must keep its addresses) could find one of them taken by a
// client's connection in the meantime, "address already in use" (seen in
// TestCluster's restart on a busy machine). Below the range only other
// listeners compete, and a port is checked free before it is handed out.
var portsBelowEphemeral = &portSequence{nextPort: 20000 + uint32(os.Getpid()%5000)}

type portSequence struct {
	mu       sync.Mutex
	nextPort uint32
}

func (p *portSequence) next() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	port := p.nextPort
	p.nextPort++
	if p.nextPort >= 32000 {
		p.nextPort = 20000
	}
	return int(port)
}

// proc is a child process whose output is kept for failure messages.
type proc struct {
	cmd *exec.Cmd
	out *bytes.Buffer
}

// start runs a child process until the end of t, the test that owns it:
// inside a step, the scenario's t for a process later steps use.
func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	return startCmd(t, exec.Command(name, args...))
}

// startCmd is start for a command made ready by the caller (its
// environment, its directory).
func startCmd(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, out: &out}
	t.Cleanup(func() {
		p.stop(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("output of %s:\n%s", filepath.Base(cmd.Path), tail(out.String(), 4000))
		}
	})
	return p
}

// stop signals the process and waits for it (bounded).
func (p *proc) stop(sig syscall.Signal) {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, sig)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// step runs one named step of a scenario as a subtest of t, so that a
// failure names its step. A scenario's steps share its processes and state,
// each building on what the steps before it did, so a failed step ends the
// scenario rather than run the rest on a state they do not expect. (A
// step that only looks, and leaves nothing the later ones need, may be a
// plain t.Run.)
//
// Inside a step, failures go to the step's t; what later steps use (a
// process, a stream) belongs to the scenario's t, which the helpers that
// keep one (node.t, testCluster.t) use for that.
func step(t *testing.T, name string, f func(t *testing.T)) {
	t.Helper()
	if !t.Run(name, f) {
		t.FailNow()
	}
}

// waitFor polls cond every 50 ms until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cli runs a cbproxy client command and returns its stdout, stderr and exit code.
func cli(t *testing.T, admin string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.cbproxy, args...)
	cmd.Env = append(os.Environ(), "CBPROXY_ADMIN="+admin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running cbproxy %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), code
}

// api sends one admin API request and decodes the JSON answer.
func api(t *testing.T, method, url, body string, hdr ...string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

// countBackends sends n requests through the proxy on keep-alive connections
// and counts the X-Backend header of the answers.
func countBackends(t *testing.T, url string, n, conns int) map[string]int {
	t.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: conns}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	type res struct {
		counts map[string]int
		err    error
	}
	ch := make(chan res, conns)
	per := n / conns
	for w := 0; w < conns; w++ {
		k := per
		if w == conns-1 {
			k = n - per*(conns-1)
		}
		go func(k int) {
			counts := map[string]int{}
			for i := 0; i < k; i++ {
				resp, err := c.Get(url)
				if err != nil {
					ch <- res{err: err}
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					counts[fmt.Sprintf("status %d", resp.StatusCode)]++
					continue
				}
				counts[resp.Header.Get("X-Backend")]++
			}
			ch <- res{counts: counts}
		}(k)
	}
	total := map[string]int{}
	for w := 0; w < conns; w++ {
		r := <-ch
		if r.err != nil {
			t.Fatalf("request failed: %v", r.err)
		}
		for k, v := range r.counts {
			total[k] += v
		}
	}
	return total
}

// httpClient is for polling: short timeouts, no shared state with the load.
var httpClient = &http.Client{Timeout: 2 * time.Second}

// getOK sends one GET and reports whether it got a 200 (the body is read so
// the connection is reused).
func getOK(c *http.Client, url string) bool {
	resp, err := c.Get(url)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == 200
}
