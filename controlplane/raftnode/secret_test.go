package raftnode

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/zap"
)

// TestClusterSecretFile: a node without cluster_secret generates one on
// first start, keeps it (0600) across restarts; a configured secret wins
// and writes no file; a damaged file is an error, not a new secret.
func TestClusterSecretFile(t *testing.T) {
	dir := t.TempDir()
	first, err := effectiveClusterSecret(Config{DataDir: dir}, zap.NewNop())
	if err != nil || len(first) < 32 {
		t.Fatalf("generated secret %q: %v", first, err)
	}
	fi, err := os.Stat(filepath.Join(dir, "cluster-secret"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("cluster-secret file: %v %v", fi, err)
	}
	again, _ := effectiveClusterSecret(Config{DataDir: dir}, zap.NewNop())
	elsewhere, _ := effectiveClusterSecret(Config{DataDir: t.TempDir()}, zap.NewNop())
	if again != first || elsewhere == first {
		t.Fatalf("secrets: first %q, again %q, elsewhere %q", first, again, elsewhere)
	}
	configuredDir := t.TempDir()
	if s, _ := effectiveClusterSecret(Config{DataDir: configuredDir, ClusterSecret: "configured"}, zap.NewNop()); s != "configured" {
		t.Fatalf("configured secret lost: %q", s)
	}
	if s, _ := effectiveClusterSecret(Config{DataDir: dir, ClusterSecret: "configured"}, zap.NewNop()); s != "configured" {
		t.Fatalf("the file won over the configured secret: %q", s)
	}
	if _, err := os.Stat(filepath.Join(configuredDir, "cluster-secret")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a configured secret was written to disk: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cluster-secret"), []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := effectiveClusterSecret(Config{DataDir: dir}, zap.NewNop()); err == nil {
		t.Fatal("an empty cluster-secret file must be an error, not a new secret")
	}
}

// TestStickyKey: nodes of one cluster derive the same key from its secret, so
// a cookie one node gave is honoured by all; a node without a configured
// secret derives it from the one it generated, so it survives restarts, and
// writes no other key file.
func TestStickyKey(t *testing.T) {
	a, b, c := stickyKeyFrom("s3cret"), stickyKeyFrom("s3cret"), stickyKeyFrom("other")
	if len(a) != stickyKeyLen || !bytes.Equal(a, b) || bytes.Equal(a, c) {
		t.Fatalf("keys from secrets: %x %x %x", a, b, c)
	}
	dir := t.TempDir()
	n := startNode(t, dir)
	secret, err := os.ReadFile(filepath.Join(dir, ClusterSecretFile))
	if err != nil {
		t.Fatal(err)
	}
	if want := stickyKeyFrom(string(bytes.TrimSpace(secret))); !bytes.Equal(n.StickyKey(), want) {
		t.Fatalf("sticky key %x, want %x (from the generated cluster secret)", n.StickyKey(), want)
	}
	if _, err := os.Stat(filepath.Join(dir, "sticky-key")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a sticky-key file was written: %v", err)
	}
}
