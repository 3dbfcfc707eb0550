package proxymod

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	_ "github.com/caddyserver/caddy/v2/modules/logging" // the file log writer
)

// TestLiteralSecretsWarned: a secret written into the config as it is (not
// as a placeholder) is readable on Caddy's admin endpoint, which serves the
// loaded config; provisioning warns about each one by name, never with its
// value, and keeps quiet about placeholders.
func TestLiteralSecretsWarned(t *testing.T) {
	t.Setenv("CBPROXY_TEST_CLUSTER_SECRET", "cluster-from-env")
	t.Setenv("CBPROXY_TEST_VIEWER", "viewer-from-env")
	app := map[string]any{
		"data_dir":       t.TempDir(),
		"cluster_secret": "{env.CBPROXY_TEST_CLUSTER_SECRET}",
		"tokens": []any{
			map[string]any{"name": "ops", "secret": "ops-literal-secret", "role": "operate"},
			map[string]any{"name": "viewer", "secret": "{env.CBPROXY_TEST_VIEWER}", "role": "read"},
		},
	}
	handler := map[string]any{
		"service":         "lit",
		"pools":           map[string]any{"blue": map[string]any{"backends": []string{"10.0.0.1:80"}}},
		"weights":         map[string]any{"blue": 100},
		"override_header": map[string]any{"name": "X-Pool", "secret": "override-literal-secret"},
	}
	raw, _ := caddyConfig(t, app, handler)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["logging"] = map[string]any{"logs": map[string]any{"default": map[string]any{
		"level": "WARN", "writer": map[string]any{"output": "file", "filename": logFile},
	}}}
	raw, _ = json.Marshal(cfg)
	var caddyCfg caddy.Config
	if err := json.Unmarshal(raw, &caddyCfg); err != nil {
		t.Fatal(err)
	}
	if err := caddy.Validate(&caddyCfg); err != nil {
		t.Fatal(err)
	}

	f, err := os.Open(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var warned []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		for _, secret := range []string{"ops-literal-secret", "override-literal-secret", "cluster-from-env", "viewer-from-env"} {
			if strings.Contains(line, secret) {
				t.Errorf("the log shows a secret: %s", line)
			}
		}
		var entry struct {
			Msg     string   `json:"msg"`
			Secrets []string `json:"secrets"`
		}
		if json.Unmarshal([]byte(line), &entry) == nil && strings.Contains(entry.Msg, "admin endpoint") {
			warned = append(warned, entry.Secrets...)
		}
	}
	slices.Sort(warned)
	if want := []string{"override_header secret of service lit", "token ops"}; !slices.Equal(warned, want) {
		t.Fatalf("warned about %q, want %q", warned, want)
	}
}
