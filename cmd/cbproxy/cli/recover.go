package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/cbproxy/cbproxy/controlplane"
	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/cbproxy/cbproxy/proxymod"
)

var recoverFlags = []flagSpec{
	{name: "config", value: "FILE", usage: "the stopped node's Caddyfile (a .json file is read as Caddy JSON): its data_dir, node_id, cluster_secret, cluster_tls"},
	{name: "data-dir", value: "DIR", usage: "the stopped node's data_dir (wins over the config's)"},
	{name: "node-id", value: "ID", usage: "the node's ID (wins over the config's node_id; default DIR/node-id)", check: state.ValidateNodeID},
	{name: "force", usage: "recover even though another member answers on its cluster address"},
	{name: "dry-run", usage: "say what it finds and would do, change nothing"},
}

// runClusterRecover runs controlplane.Recover on a stopped node's data dir.
// It is the one command that does not talk to the admin API: without a
// quorum there is nobody to talk to.
func runClusterRecover(ctx context.Context, inv *invocation) error {
	var cfg controlplane.Config
	if path := inv.flags["config"]; path != "" {
		var err error
		if cfg, err = nodeConfigFromFile(path); err != nil {
			return err
		}
	}
	if dir := inv.flags["data-dir"]; dir != "" {
		cfg.DataDir = dir
	}
	if id := inv.flags["node-id"]; id != "" {
		cfg.NodeID = id
	}
	if cfg.DataDir == "" {
		return usagef("name the stopped node with --config (its Caddyfile) or --data-dir")
	}
	// The text comes line by line while members are asked (up to 2 s each):
	// each line is flushed as it comes.
	opts := controlplane.RecoverOptions{Force: inv.flag("force"), DryRun: inv.flag("dry-run"), Out: flushing{inv.out}}
	if !inv.json {
		return controlplane.Recover(ctx, cfg, opts)
	}
	// With --json the report is printed as one document once it is done; a
	// refusal or failure is the error object alone.
	var report controlplane.RecoverReport
	opts.Out, opts.Report = io.Discard, &report
	if err := controlplane.Recover(ctx, cfg, opts); err != nil {
		return err
	}
	body, err := json.Marshal(report)
	if err != nil {
		return err
	}
	return writeJSON(inv.out, body)
}

// nodeConfigFromFile reads the node's settings from its Caddyfile, or from
// a Caddy JSON config (a .json file), as the node has them.
func nodeConfigFromFile(path string) (controlplane.Config, error) {
	body, err := os.ReadFile(path)
	if err != nil {
		return controlplane.Config{}, fmt.Errorf("reading the config: %w", err)
	}
	if !strings.EqualFold(filepath.Ext(path), ".json") {
		if body, _, err = caddyconfig.GetAdapter("caddyfile").Adapt(body, map[string]any{"filename": path}); err != nil {
			return controlplane.Config{}, fmt.Errorf("adapting %s: %w", path, err)
		}
	}
	return proxymod.NodeConfig(body)
}

// flushing writes through a buffered writer at once.
type flushing struct{ w *bufio.Writer }

func (f flushing) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil {
		err = f.w.Flush()
	}
	return n, err
}
