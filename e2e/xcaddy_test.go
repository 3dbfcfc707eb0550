package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// xcaddyVersion is the xcaddy the build test installs (from the Go module
// proxy) and builds with.
const xcaddyVersion = "v0.4.5"

// xcaddyMain is the main.go xcaddy writes for `xcaddy build --with
// github.com/cbproxy/cbproxy/proxymod --with
// github.com/cbproxy/cbproxy/cmd/cbproxy/cli`: Caddy's own main, its standard
// modules and the plugins' packages, imported for their registrations.
const xcaddyMain = `package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// plug in Caddy modules here
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/cbproxy/cbproxy/proxymod"
	_ "github.com/cbproxy/cbproxy/cmd/cbproxy/cli"
)

func main() {
	caddycmd.Main()
}
`

// caddyVersionOf is the Caddy version cbproxy's go.mod requires.
func caddyVersionOf(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", "github.com/caddyserver/caddy/v2").Output()
	if err != nil {
		t.Fatalf("go list -m caddy: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// goCommand runs go (or another tool) in dir with env added, bounded.
func goCommand(t *testing.T, dir string, env []string, within time.Duration, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	began := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v (after %s)\n%s", name, strings.Join(args, " "), err, time.Since(began).Round(time.Second), tail(string(out), 4000))
	}
	t.Logf("%s %s: %s", filepath.Base(name), args[0], time.Since(began).Round(time.Second))
}

// TestBuildIntoCaddy builds cbproxy's modules into a stock Caddy, as a user
// of Caddy would: once the way xcaddy does it (a main.go importing Caddy's
// command and the modules, a go.mod replacing cbproxy's module with this
// checkout, go build), once with xcaddy itself. Each build must list the
// cbproxy modules, proxy through the cbproxy directive, answer on the admin
// API and run the client commands.
func TestBuildIntoCaddy(t *testing.T) {
	root := repoRoot()
	caddyVersion := caddyVersionOf(t)
	builds := map[string]string{}
	scenario := t // the builds outlive their steps

	step(t, "go build of an xcaddy main", func(t *testing.T) {
		dir := scenario.TempDir()
		goMod := fmt.Sprintf(`module caddy

go 1.26

require (
	github.com/caddyserver/caddy/v2 %s
	github.com/cbproxy/cbproxy v0.0.0-00010101000000-000000000000
)

replace github.com/cbproxy/cbproxy => %s
`, caddyVersion, root)
		sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
		if err != nil {
			t.Fatal(err)
		}
		for name, body := range map[string]string{"main.go": xcaddyMain, "go.mod": goMod, "go.sum": string(sum)} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		// -mod=mod lets go complete go.mod from the module cache (or the
		// module proxy) as xcaddy's go get does.
		goCommand(t, dir, []string{"GOFLAGS=-mod=mod -buildvcs=false"}, 10*time.Minute, "go", "build", "-o", "caddy", ".")
		builds["go build"] = filepath.Join(dir, "caddy")
	})

	step(t, "xcaddy build", func(t *testing.T) {
		dir := scenario.TempDir()
		gobin := filepath.Join(dir, "bin")
		goCommand(t, dir, []string{"GOBIN=" + gobin}, 5*time.Minute, "go", "install", "github.com/caddyserver/xcaddy/cmd/xcaddy@"+xcaddyVersion)
		out := filepath.Join(dir, "caddy")
		modcache, err := exec.Command("go", "env", "GOMODCACHE").Output()
		if err != nil {
			t.Fatal(err)
		}
		goCommand(t, dir, []string{
			// The modules come from the local module cache, served as a
			// module proxy: no download, and cbproxy's module, which no
			// proxy holds, resolves to its replacement. They were checked
			// against cbproxy's go.sum when they were downloaded, so no
			// checksum database is asked.
			"GOPROXY=file://" + filepath.Join(strings.TrimSpace(string(modcache)), "cache", "download"),
			"GOSUMDB=off",
			// xcaddy's default flags (-trimpath, -ldflags -w -s) would
			// compile every package again; these reuse the build cache.
			"XCADDY_GO_BUILD_FLAGS=-buildvcs=false",
		}, 10*time.Minute, filepath.Join(gobin, "xcaddy"), "build", caddyVersion, "--output", out,
			"--with", "github.com/cbproxy/cbproxy/proxymod",
			"--with", "github.com/cbproxy/cbproxy/cmd/cbproxy/cli",
			"--replace", "github.com/cbproxy/cbproxy="+root)
		builds["xcaddy"] = out
	})

	for _, name := range []string{"go build", "xcaddy"} {
		bin := builds[name]
		t.Run(name+" runs cbproxy", func(t *testing.T) {
			modules, err := exec.Command(bin, "list-modules").Output()
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range []string{"cbproxy", "http.handlers.cbproxy", "http.handlers.reverse_proxy"} {
				if !strings.Contains("\n"+string(modules), "\n"+m+"\n") {
					t.Fatalf("list-modules lacks %s:\n%s", m, modules)
				}
			}
			n := &node{t: t, dir: t.TempDir(), httpPort: freePort(t), adminPort: freePort(t), clusterPort: freePort(t), caddyAdmin: freePort(t)}
			n.backends = map[string]string{}
			for _, pool := range []string{"blue", "green", "canary"} {
				n.backends[pool] = fmt.Sprintf("127.0.0.1:%d", freePort(t))
			}
			start(t, bins.backend, "-backends", "blue="+n.backends["blue"])
			n.caddyfile = filepath.Join(n.dir, "Caddyfile")
			n.write(t, "blue=100", n.adminPort)
			start(t, bin, "run", "--config", n.caddyfile, "--adapter", "caddyfile")
			waitServing(t, name, n.admin(), n.proxy())

			resp, err := httpClient.Get(n.proxy() + "/")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Backend") != "blue" {
				t.Fatalf("through the proxy: %s, X-Backend %q", resp.Status, resp.Header.Get("X-Backend"))
			}
			if code, body := api(t, "GET", n.admin()+"/v1/services/codingbrain", ""); code != 200 || body["name"] != "codingbrain" {
				t.Fatalf("admin API: %d %v", code, body)
			}
			cmd := exec.Command(bin, "weights", "codingbrain", "blue=100", "--admin", n.admin())
			if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "codingbrain version") {
				t.Fatalf("the weights command of this build: %v: %s", err, out)
			}
		})
	}
}
