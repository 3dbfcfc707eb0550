package cli

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane"
)

// TestClusterRecover runs the command on the data dir of a real stopped
// node, named by its Caddyfile: a dry run changes nothing, the recovery
// keeps the state; on a running node and a missing data dir it fails
// (exit 1) with the reason.
func TestClusterRecover(t *testing.T) {
	dir := t.TempDir()
	cfg := controlplane.Config{NodeID: "node1", DataDir: filepath.Join(dir, "data"), ClusterListen: "127.0.0.1:0", AdminListen: "127.0.0.1:0"}
	n, err := controlplane.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Shutdown()
	for deadline := time.Now().Add(30 * time.Second); !n.Ready(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("node not ready")
		}
	}
	req, _ := http.NewRequest("PUT", "http://"+n.AdminAddr()+"/v1/services/svc", strings.NewReader(`{"pools":{"blue":{"backends":["127.0.0.1:9001"]}}}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("put: %v %v", resp, err)
	}
	resp.Body.Close()
	caddyfile := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(caddyfile, []byte(fmt.Sprintf("{\n\tcbproxy {\n\t\tnode_id node1\n\t\tdata_dir %s\n\t}\n}\n", cfg.DataDir)), 0o600); err != nil {
		t.Fatal(err)
	}

	code, out, errOut := runAgainst(t, "http://127.0.0.1:1", nil, "cluster", "recover", "--config", caddyfile)
	if code != exitFailed || !strings.Contains(errOut, "cbproxy cluster recover: the data dir "+cfg.DataDir+" is in use") {
		t.Fatalf("recover of a running node: %d %q %q", code, out, errOut)
	}
	if err := n.Shutdown(); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = runAgainst(t, "http://127.0.0.1:1", nil, "cluster", "recover", "--config", caddyfile, "--dry-run")
	if code != exitOK || !strings.Contains(out, "node node1, state at index") || !strings.Contains(out, "1 services") || !strings.Contains(out, "dry run: nothing changed") {
		t.Fatalf("dry run: %d %q %q", code, out, errOut)
	}
	code, out, errOut = runAgainst(t, "http://127.0.0.1:1", nil, "cluster", "recover", "--config", caddyfile, "--dry-run", "--json")
	var report controlplane.RecoverReport
	if err := json.Unmarshal([]byte(out), &report); code != exitOK || err != nil || errOut != "" {
		t.Fatalf("dry run --json: %d %v %q %q", code, err, out, errOut)
	}
	if report.NodeID != "node1" || report.DataDir != cfg.DataDir || !report.DryRun || report.Recovered || report.After != nil ||
		report.Before.Services != 1 || !report.RaftLog || len(report.Members) != 1 || !report.Members[0].Self {
		t.Fatalf("dry run --json: %+v", report)
	}
	code, out, errOut = runAgainst(t, "http://127.0.0.1:1", nil, "cluster", "recover", "--config", caddyfile)
	if code != exitOK || !strings.Contains(out, "done: node1 is a one-node cluster") {
		t.Fatalf("recover: %d %q %q", code, out, errOut)
	}
	n, err = controlplane.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Shutdown()
	if n.View().Services["svc"] == nil {
		t.Fatal("the service is gone after recovery")
	}

	code, _, errOut = runAgainst(t, "http://127.0.0.1:1", nil, "cluster", "recover", "--data-dir", filepath.Join(dir, "nope"), "--node-id", "node1")
	if code != exitFailed || !strings.Contains(errOut, "data dir") || strings.Count(errOut, "\n") != 1 {
		t.Fatalf("recover of a missing data dir: %d %q", code, errOut)
	}
}
