package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestGrowSingleNode follows the runbook of docs/caddyfile.md ("Growing a
// single node into a cluster") with the real binary: a node started without
// cluster_secret generates one in its data dir; a second node given the
// file's content (through a {file.…} placeholder) joins it and serves its
// service.
func TestGrowSingleNode(t *testing.T) {
	first := newNode(t)
	first.start(t)
	generated := filepath.Join(first.dir, "data", "cluster-secret")
	fi, err := os.Stat(generated)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("generated secret %s: %v %v", generated, fi, err)
	}
	secret, err := os.ReadFile(generated)
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	copied := filepath.Join(dir, "cluster-secret")
	if err := os.WriteFile(copied, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	second := &node{t: t, dir: dir, httpPort: freePort(t), adminPort: freePort(t), clusterPort: freePort(t), caddyAdmin: freePort(t)}
	second.caddyfile = filepath.Join(dir, "Caddyfile")
	text := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	cbproxy {
		node_id        node2
		data_dir       %s
		cluster_listen 127.0.0.1:%d
		admin_listen   127.0.0.1:%d
		join           127.0.0.1:%d
		cluster_secret {file.%s}
	}
}

http://127.0.0.1:%d {
	cbproxy codingbrain
}
`, second.caddyAdmin, filepath.Join(dir, "data"), second.clusterPort, second.adminPort, first.adminPort, copied, second.httpPort)
	if err := os.WriteFile(second.caddyfile, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	second.start(t)
	if _, err := os.Stat(filepath.Join(dir, "data", "cluster-secret")); !os.IsNotExist(err) {
		t.Errorf("a node with cluster_secret wrote a cluster-secret file: %v", err)
	}
	waitFor(t, "both nodes in the cluster", 30*time.Second, func() bool {
		code, body := apiQuietJSON(first.admin() + "/v1/cluster")
		if code != 200 {
			return false
		}
		voters := 0
		for _, x := range body["nodes"].([]any) {
			if x.(map[string]any)["voter"] == true {
				voters++
			}
		}
		return voters == 2
	})
}
