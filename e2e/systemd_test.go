package e2e

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// unitFile is a systemd unit as key → values, by section ("Service.ExecStart").
type unitFile map[string][]string

func readUnit(t *testing.T, path string) unitFile {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: not KEY=VALUE: %q", path, line)
			}
			u[section+"."+k] = append(u[section+"."+k], v)
		}
	}
	return u
}

func (u unitFile) one(t *testing.T, key string) string {
	t.Helper()
	if len(u[key]) != 1 {
		t.Fatalf("unit: %s is %q, want one value", key, u[key])
	}
	return u[key][0]
}

// readEnvFile reads NAME=value lines, as systemd's EnvironmentFile= does for
// these simple ones.
func readEnvFile(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var env []string
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !strings.Contains(line, "=") || strings.HasPrefix(line, "export ") {
			t.Fatalf("%s: %q is not NAME=value", path, line)
		}
		env = append(env, line)
	}
	return env
}

// TestSystemdUnit checks configs/systemd/cbproxy.service: its hardening, that
// systemd-analyze verify finds nothing to say, and that its commands work as
// systemd would run them (paths moved to a temp dir): ExecStart serves and
// says READY=1 on the notify socket, ExecReload reloads, the tokens of
// cbproxy.env work, KillSignal stops the node within TimeoutStopSec.
func TestSystemdUnit(t *testing.T) {
	unitPath := filepath.Join(repoRoot(), "configs/systemd/cbproxy.service")
	envPath := filepath.Join(repoRoot(), "configs/systemd/cbproxy.env")
	u := readUnit(t, unitPath)

	t.Run("hardening", func(t *testing.T) {
		for key, want := range map[string]string{
			"Service.Type":                  "notify",
			"Service.DynamicUser":           "yes",
			"Service.StateDirectory":        "cbproxy",
			"Service.ProtectSystem":         "strict",
			"Service.NoNewPrivileges":       "yes",
			"Service.CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
			"Service.AmbientCapabilities":   "CAP_NET_BIND_SERVICE",
			"Service.Restart":               "on-failure",
			"Service.KillSignal":            "SIGTERM",
			"Service.EnvironmentFile":       "-/etc/cbproxy/cbproxy.env",
			"Install.WantedBy":              "multi-user.target",
		} {
			if got := u.one(t, key); got != want {
				t.Errorf("%s=%s, want %s", key, got, want)
			}
		}
		if n := u.one(t, "Service.LimitNOFILE"); n == "" || n == "infinity" {
			t.Errorf("LimitNOFILE=%q: want a bound", n)
		}
	})

	// The commands as systemd runs them, with the binary and the paths of
	// a test.
	dir := t.TempDir()
	caddyfile := filepath.Join(dir, "Caddyfile")
	local := func(s string) string {
		return strings.NewReplacer("/usr/bin/cbproxy", bins.cbproxy, "/etc/cbproxy/Caddyfile", caddyfile, "/var/lib/cbproxy", dir).Replace(s)
	}
	t.Run("systemd-analyze verify", func(t *testing.T) {
		analyze, err := exec.LookPath("systemd-analyze")
		if err != nil {
			t.Skip("systemd-analyze is not installed (make tools installs it; make test runs it)")
		}
		b, err := os.ReadFile(unitPath)
		if err != nil {
			t.Fatal(err)
		}
		// verify wants the commands to exist: the test binary stands in.
		copyPath := filepath.Join(dir, "cbproxy.service")
		if err := os.WriteFile(copyPath, []byte(strings.ReplaceAll(string(b), "/usr/bin/cbproxy", bins.cbproxy)), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(analyze, "verify", copyPath).CombinedOutput()
		if err != nil || len(out) > 0 {
			t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
		}
	})

	env := readEnvFile(t, envPath)
	for _, e := range u["Service.Environment"] {
		env = append(env, strings.Fields(local(e))...)
	}
	envValue := func(name string) string {
		for _, e := range slices.Backward(env) {
			if v, ok := strings.CutPrefix(e, name+"="); ok {
				return v
			}
		}
		t.Fatalf("%s is not in the environment", name)
		return ""
	}
	adminPort, caddyAdmin, httpPort := freePort(t), freePort(t), freePort(t)
	backend := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	start(t, bins.backend, "-backends", "blue="+backend)
	config := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	grace_period 20s
	cbproxy {
		node_id        node1
		data_dir       %s/node
		cluster_listen 127.0.0.1:%d
		admin_listen   127.0.0.1:%d
		bootstrap
		cluster_secret {env.CBPROXY_CLUSTER_SECRET}
		token root   {env.CBPROXY_ADMIN_TOKEN} admin
		token ops    {env.CBPROXY_OPS_TOKEN}   operate
		token viewer {env.CBPROXY_VIEW_TOKEN}  read
	}
}

http://127.0.0.1:%d {
	cbproxy demo {
		pool blue %s
	}
}
`, caddyAdmin, dir, freePort(t), adminPort, httpPort, backend)
	if err := os.WriteFile(caddyfile, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}

	// systemd's side of Type=notify: a datagram socket in NOTIFY_SOCKET.
	notifyPath := filepath.Join(dir, "notify")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	notified := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := notify.Read(buf)
			if err != nil {
				return
			}
			notified <- string(buf[:n])
		}
	}()
	waitNotify := func(t *testing.T, want string) {
		t.Helper()
		deadline := time.After(60 * time.Second)
		for {
			select {
			case msg := <-notified:
				if strings.Contains(msg, want) {
					return
				}
			case <-deadline:
				t.Fatalf("no %s on the notify socket within 60 s", want)
			}
		}
	}

	run := func(line string) *exec.Cmd {
		args := strings.Fields(local(line))
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = append(append(os.Environ(), env...), "NOTIFY_SOCKET="+notifyPath)
		return cmd
	}
	var node *proc
	scenario := t // owns the node
	step(t, "ExecStart serves and says READY=1", func(t *testing.T) {
		node = startCmd(scenario, run(u.one(t, "Service.ExecStart")))
		waitNotify(t, "READY=1")
		waitServing(t, "node", fmt.Sprintf("http://127.0.0.1:%d", adminPort), fmt.Sprintf("http://127.0.0.1:%d", httpPort))
	})
	admin := fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	step(t, "the tokens of cbproxy.env work", func(t *testing.T) {
		if _, errOut, code := cli(t, admin, "status", "demo"); code != 1 || !strings.Contains(errOut, "HTTP 401") {
			t.Fatalf("without a token: exit %d %s", code, errOut)
		}
		if out, errOut, code := cli(t, admin, "status", "demo", "--token", envValue("CBPROXY_VIEW_TOKEN")); code != 0 {
			t.Fatalf("with the read token: exit %d %s %s", code, out, errOut)
		}
	})
	step(t, "ExecReload reloads", func(t *testing.T) {
		out, err := run(u.one(t, "Service.ExecReload")).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		waitNotify(t, "RELOADING=1")
		waitNotify(t, "READY=1")
	})
	step(t, "KillSignal stops it within TimeoutStopSec", func(t *testing.T) {
		limit, err := time.ParseDuration(u.one(t, "Service.TimeoutStopSec"))
		if err != nil {
			t.Fatal(err)
		}
		sig := map[string]syscall.Signal{"SIGTERM": syscall.SIGTERM, "SIGINT": syscall.SIGINT}[u.one(t, "Service.KillSignal")]
		began := time.Now()
		done := make(chan error, 1)
		go func() { done <- node.cmd.Wait() }()
		if err := node.cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("the node exited with %v after %s", err, time.Since(began))
			}
		case <-time.After(limit):
			t.Fatalf("the node still runs %s after %s", limit, u.one(t, "Service.KillSignal"))
		}
		waitNotify(t, "STOPPING=1")
	})
}
