package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

func commandNamed(t testing.TB, name string) *command {
	t.Helper()
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	t.Fatalf("no command %q", name)
	return nil
}

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestParseArgs(t *testing.T) {
	tests := []struct {
		name    string
		cmd     string
		argv    []string
		env     map[string]string
		args    []string
		flags   map[string]string
		admin   string
		token   string
		json    bool
		wantErr string // substring of the usage error; "" for success
	}{
		{name: "defaults", cmd: "status", args: nil, admin: defaultAdmin},
		{name: "optional service", cmd: "status", argv: []string{"svc"}, args: []string{"svc"}, admin: defaultAdmin},
		{
			name: "flags before and after positionals", cmd: "weights",
			argv:  []string{"--force", "svc", "blue=95", "--if-version", "42", "canary=5", "--json"},
			args:  []string{"svc", "blue=95", "canary=5"},
			flags: map[string]string{"force": "true", "if-version": "42", "json": "true"},
			admin: defaultAdmin, json: true,
		},
		{
			name: "equals form and one dash", cmd: "weights",
			argv:  []string{"-if-version=7", "--force=false", "svc", "blue=100"},
			args:  []string{"svc", "blue=100"},
			flags: map[string]string{"force": "false", "if-version": "7"},
			admin: defaultAdmin,
		},
		{
			name: "environment", cmd: "status",
			env:   map[string]string{"CBPROXY_ADMIN": "https://n1:7101/", "CBPROXY_TOKEN": "s3cret"},
			admin: "https://n1:7101/", token: "s3cret",
		},
		{
			name: "flags win over environment", cmd: "status",
			argv:  []string{"--admin", "127.0.0.1:9", "--token=t2"},
			env:   map[string]string{"CBPROXY_ADMIN": "http://n1:7101", "CBPROXY_TOKEN": "s3cret"},
			flags: map[string]string{"admin": "127.0.0.1:9", "token": "t2"},
			admin: "http://127.0.0.1:9", token: "t2",
		},
		{
			name: "double dash ends flags", cmd: "pool set",
			argv:  []string{"svc", "--version", "v1", "--", "blue", "-weird:1"},
			args:  []string{"svc", "blue", "-weird:1"},
			flags: map[string]string{"version": "v1"},
			admin: defaultAdmin,
		},
		{
			name: "lone dash is an argument", cmd: "switch",
			argv: []string{"svc", "-"}, args: []string{"svc", "-"}, admin: defaultAdmin,
		},
		{
			name: "events", cmd: "events",
			argv:  []string{"--follow", "--limit", "5", "svc"},
			args:  []string{"svc"},
			flags: map[string]string{"follow": "true", "limit": "5"},
			admin: defaultAdmin,
		},

		{name: "missing service", cmd: "weights", wantErr: "missing SERVICE"},
		{name: "missing weights", cmd: "weights", argv: []string{"svc"}, wantErr: "missing POOL=PCT"},
		{name: "missing pool", cmd: "switch", argv: []string{"svc"}, wantErr: "missing POOL"},
		{name: "missing address", cmd: "pool set", argv: []string{"svc", "blue"}, wantErr: "missing ADDR"},
		{name: "extra argument", cmd: "switch", argv: []string{"svc", "blue", "green"}, wantErr: `unexpected argument "green"`},
		{name: "extra status argument", cmd: "status", argv: []string{"a", "b"}, wantErr: `unexpected argument "b"`},
		{name: "cluster status takes none", cmd: "cluster status", argv: []string{"x"}, wantErr: `unexpected argument "x"`},
		{name: "unknown flag", cmd: "weights", argv: []string{"--bogus"}, wantErr: `unknown flag "--bogus"`},
		{name: "flag of another command", cmd: "switch", argv: []string{"svc", "blue", "--if-version", "3"}, wantErr: `unknown flag "--if-version"`},
		{name: "empty flag name", cmd: "status", argv: []string{"--=x"}, wantErr: "unknown flag"},
		{name: "value missing", cmd: "weights", argv: []string{"svc", "blue=1", "--if-version"}, wantErr: "flag --if-version needs a value (N)"},
		{name: "negative version", cmd: "weights", argv: []string{"svc", "blue=1", "--if-version", "-1"}, wantErr: "non-negative integer"},
		{name: "decimal version", cmd: "weights", argv: []string{"svc", "blue=1", "--if-version=1.5"}, wantErr: "non-negative integer"},
		{name: "bad limit", cmd: "events", argv: []string{"--limit", "ten"}, wantErr: "from 1 to 1000"},
		{name: "boolean with bad value", cmd: "switch", argv: []string{"svc", "blue", "--force=maybe"}, wantErr: "takes no value"},
		{name: "bad admin scheme", cmd: "status", argv: []string{"--admin", "ftp://h:1"}, wantErr: "--admin"},
		{name: "bad admin query", cmd: "status", argv: []string{"--admin", "http://h:1/?x=1"}, wantErr: "not an admin API address"},
		{name: "bad admin from env", cmd: "status", env: map[string]string{"CBPROXY_ADMIN": "http://"}, wantErr: "CBPROXY_ADMIN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inv, err := parseArgs(commandNamed(t, tt.cmd), tt.argv, envOf(tt.env))
			if tt.wantErr != "" {
				var ue *usageError
				if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want a usage error with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(inv.args, tt.args) {
				t.Errorf("args = %q, want %q", inv.args, tt.args)
			}
			if tt.flags == nil {
				tt.flags = map[string]string{}
			}
			if !maps.Equal(inv.flags, tt.flags) {
				t.Errorf("flags = %v, want %v", inv.flags, tt.flags)
			}
			if inv.admin.String() != tt.admin || inv.token != tt.token || inv.json != tt.json {
				t.Errorf("admin, token, json = %s, %q, %v; want %s, %q, %v", inv.admin, inv.token, inv.json, tt.admin, tt.token, tt.json)
			}
		})
	}
}

func TestParseArgsHelp(t *testing.T) {
	for _, argv := range [][]string{{"-h"}, {"--help"}, {"svc", "-help"}, {"svc", "blue=1", "--force", "-h"}} {
		if _, err := parseArgs(commandNamed(t, "weights"), argv, envOf(nil)); !errors.Is(err, errHelp) {
			t.Errorf("%q: err = %v, want errHelp", argv, err)
		}
	}
}

func TestParseWeights(t *testing.T) {
	tests := []struct {
		args    []string
		want    map[string]json.Number
		wantErr string
	}{
		{args: []string{"blue=95", "canary=5"}, want: map[string]json.Number{"blue": "95", "canary": "5"}},
		{args: []string{"blue=33.333", "green=66.667"}, want: map[string]json.Number{"blue": "33.333", "green": "66.667"}},
		{args: []string{"blue=0.10"}, want: map[string]json.Number{"blue": "0.10"}},
		{args: []string{"blue=007.5", "g=00", "c=-05"}, want: map[string]json.Number{"blue": "7.5", "g": "0", "c": "-5"}},
		{args: []string{"blue=-0.5"}, want: map[string]json.Number{"blue": "-0.5"}}, // the server judges the range
		{args: []string{"my-pool=a=b"}, wantErr: `weight "a=b"`},
		{args: []string{"blue"}, wantErr: `"blue" is not POOL=PCT`},
		{args: []string{"=5"}, wantErr: `"=5" is not POOL=PCT`},
		{args: []string{"blue="}, wantErr: "not a decimal number"},
		{args: []string{"blue=5%"}, wantErr: "not a decimal number"},
		{args: []string{"blue=1e2"}, wantErr: "not a decimal number"},
		{args: []string{"blue=.5"}, wantErr: "not a decimal number"},
		{args: []string{"blue=5."}, wantErr: "not a decimal number"},
		{args: []string{"blue=+5"}, wantErr: "not a decimal number"},
		{args: []string{"blue=NaN"}, wantErr: "not a decimal number"},
		{args: []string{"blue=٥"}, wantErr: "not a decimal number"},
		{args: []string{"blue=50", "blue=50"}, wantErr: `pool "blue" given twice`},
	}
	for _, tt := range tests {
		got, err := parseWeights(tt.args)
		if tt.wantErr != "" {
			var ue *usageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q: err = %v, want a usage error with %q", tt.args, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !maps.Equal(got, tt.want) {
			t.Errorf("%q: got %v, %v; want %v", tt.args, got, err, tt.want)
		}
	}
}

// TestRunUsage runs whole command lines: every usage error exits 2 with one
// line naming the problem and the usage, and sends nothing; -h exits 0.
func TestRunUsage(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("a usage error sent %s %s", r.Method, r.URL)
	}))
	defer srv.Close()
	tests := []struct {
		top     string
		argv    []string
		code    int
		wantOut string // substring of stderr (usage errors) or stdout (help)
	}{
		{top: "weights", code: exitUsage, wantOut: "cbproxy weights: missing SERVICE (usage: cbproxy weights SERVICE POOL=PCT... [--if-version N] [--force])"},
		{top: "weights", argv: []string{"svc", "blue"}, code: exitUsage, wantOut: `"blue" is not POOL=PCT`},
		{top: "weights", argv: []string{"svc", "blue=ten"}, code: exitUsage, wantOut: "not a decimal number"},
		{top: "weights", argv: []string{"svc", "blue=1", "--if-version", "x"}, code: exitUsage, wantOut: "non-negative integer"},
		{top: "switch", argv: []string{"svc"}, code: exitUsage, wantOut: "missing POOL"},
		{top: "switch", argv: []string{"svc", "blue", "--nope"}, code: exitUsage, wantOut: `unknown flag "--nope"`},
		{top: "status", argv: []string{"a", "b"}, code: exitUsage, wantOut: "unexpected argument"},
		{top: "events", argv: []string{"--limit=-3"}, code: exitUsage, wantOut: "from 1 to 1000"},
		{top: "events", argv: []string{"--limit", "0"}, code: exitUsage, wantOut: "from 1 to 1000"},
		{top: "events", argv: []string{"--follow=2"}, code: exitUsage, wantOut: "takes no value"},
		{top: "pool", code: exitUsage, wantOut: "cbproxy pool: missing subcommand (usage: cbproxy pool set SERVICE POOL ADDR... [--version LABEL])"},
		{top: "pool", argv: []string{"add"}, code: exitUsage, wantOut: `unknown subcommand "add"`},
		{top: "pool", argv: []string{"set", "svc", "blue"}, code: exitUsage, wantOut: "cbproxy pool set: missing ADDR"},
		{top: "cluster", argv: []string{"status", "extra"}, code: exitUsage, wantOut: `cbproxy cluster status: unexpected argument "extra"`},
		{top: "cluster", code: exitUsage, wantOut: "missing subcommand"},
		{top: "cluster", argv: []string{"recover"}, code: exitUsage, wantOut: "cbproxy cluster recover: name the stopped node with --config (its Caddyfile) or --data-dir"},
		{top: "cluster", argv: []string{"recover", "--data-dir"}, code: exitUsage, wantOut: "flag --data-dir needs a value (DIR)"},
		{top: "cluster", argv: []string{"recover", "--data-dir", "/x", "--node-id", "bad id"}, code: exitUsage, wantOut: "may hold only letters"},
		{top: "cluster", argv: []string{"recover", "/x"}, code: exitUsage, wantOut: `unexpected argument "/x"`},
		{top: "cluster", argv: []string{"recover", "--data-dir=/x", "--dry-run=maybe"}, code: exitUsage, wantOut: "takes no value"},

		{top: "weights", argv: []string{"-h"}, code: exitOK, wantOut: "Usage: cbproxy weights SERVICE POOL=PCT... [--if-version N] [--force]"},
		{top: "pool", argv: []string{"--help"}, code: exitOK, wantOut: "cbproxy pool set SERVICE POOL ADDR... [--version LABEL]"},
		{top: "pool", argv: []string{"set", "-h"}, code: exitOK, wantOut: "--version LABEL"},
		{top: "cluster", argv: []string{"status", "--help"}, code: exitOK, wantOut: "--admin URL"},
		{top: "cluster", argv: []string{"recover", "-h"}, code: exitOK, wantOut: "[--config FILE] [--data-dir DIR] [--node-id ID] [--force] [--dry-run]"},
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

// FuzzParseArgs parses arbitrary argument vectors for every command: no
// panic, errors are usage errors or help, and every accepted POOL=PCT carries
// a PCT that is a valid JSON number.
func FuzzParseArgs(f *testing.F) {
	for _, seed := range []string{
		"svc\x00blue=95\x00canary=5",
		"--if-version\x0042\x00svc\x00blue=100",
		"svc\x00blue=33.33\x00green=66.67\x00--force=true",
		"svc\x00blue=007\x00-\x00--",
		"--admin=http://[::1]:7101\x00--token\x00t\x00svc",
		"--limit=0\x00--follow\x00--json",
		"set\x00svc\x00blue\x0010.0.0.1:80\x00--version=v1",
		"svc\x00=\x00==\x00blue=-0",
		"svc\x00--to\x00canary\x00--steps\x001:5m,5:10m,25:15m,50:15m,100\x00--manual",
		"--to=green\x00svc\x00--bake\x005m\x00--strategy=blue-green\x00--force\x00--from\x00blue",
		"svc\x00--follow\x00--json\x00--steps=1,2:x",
		"--config\x00/etc/caddy/Caddyfile\x00--dry-run",
		"--data-dir=/var/lib/cbproxy\x00--node-id\x00node1\x00--force",
		"--node-id=bad id\x00--data-dir\x00",
		"svc\x00--follow\x00--timeout\x0030m\x00--json=true",
		"svc\x00--timeout=1h2m3s\x00--follow=false\x00--json=false\x00--json",
		"svc\x00--timeout\x00-1s\x00--json=maybe\x00--\x00--json",
		"-json\x00svc\x00--token=--json\x00--timeout=0s",
	} {
		for i := range commands {
			f.Add(uint8(i), seed)
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, line string) {
		cmd := commands[int(which)%len(commands)]
		argv := strings.Split(line, "\x00")
		inv, err := parseArgs(cmd, argv, envOf(nil))
		if err != nil {
			var ue *usageError
			if !errors.Is(err, errHelp) && !errors.As(err, &ue) {
				t.Fatalf("%q: error %v is neither help nor a usage error", argv, err)
			}
			return
		}
		// The error object's choice reads --json apart from the parse:
		// both must agree on every line the parse accepts.
		if wantsJSON(argv) != inv.json {
			t.Fatalf("%q: --json parsed as %v, wantsJSON says %v", argv, inv.json, wantsJSON(argv))
		}
		if v, ok := inv.flags["timeout"]; ok {
			if d, err := state.ParseDuration(v); err != nil || d < 0 {
				t.Fatalf("accepted --timeout %q", v)
			}
		}
		if v, ok := inv.flags["if-version"]; ok {
			if _, err := strconv.ParseUint(v, 10, 64); err != nil {
				t.Fatalf("accepted --if-version %q", v)
			}
		}
		if cmd.name != "weights" {
			return
		}
		weights, err := parseWeights(inv.args[1:])
		if err != nil {
			return
		}
		for pool, pct := range weights {
			if _, err := strconv.ParseFloat(pct.String(), 64); err != nil || !json.Valid([]byte(pct)) {
				t.Fatalf("accepted %s=%q, which is not a number", pool, pct)
			}
		}
		if _, err := json.Marshal(weights); err != nil {
			t.Fatalf("accepted weights do not encode: %v", err)
		}
	})
}

func TestPickSubcommandAfterFlags(t *testing.T) {
	for _, tc := range []struct {
		top  string
		argv []string
		want string
		rest []string
	}{
		{"cluster", []string{"--admin", "http://x", "status"}, "cluster status", []string{"--admin", "http://x"}},
		{"cluster", []string{"--json", "join", "n4", "a:1", "b:2"}, "cluster join", []string{"--json", "n4", "a:1", "b:2"}},
		{"pool", []string{"--version=v2", "set", "svc", "blue", "a:1"}, "pool set", []string{"--version=v2", "svc", "blue", "a:1"}},
		{"pool", []string{"--version", "v2", "set", "svc"}, "pool set", []string{"--version", "v2", "svc"}},
	} {
		cmd, rest, err := pick(tc.top, tc.argv)
		if err != nil || cmd.name != tc.want || fmt.Sprint(rest) != fmt.Sprint(tc.rest) {
			t.Errorf("pick(%q, %q) = %v, %q, %v; want %s %q", tc.top, tc.argv, cmd, rest, err, tc.want, tc.rest)
		}
	}
	if _, _, err := pick("cluster", []string{"--admin", "status"}); err == nil {
		t.Error("the value of --admin was taken for the subcommand")
	}
}
