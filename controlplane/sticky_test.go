package controlplane

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestStickyKey: nodes of one cluster derive the same key from its secret, so
// a cookie one node gave is honoured by all; a node without a secret keeps a
// random key across restarts, and two such nodes have different keys.
func TestStickyKey(t *testing.T) {
	a, err := loadStickyKey(Config{ClusterSecret: "s3cret", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := loadStickyKey(Config{ClusterSecret: "s3cret", DataDir: t.TempDir()})
	c, _ := loadStickyKey(Config{ClusterSecret: "other", DataDir: t.TempDir()})
	if len(a) != stickyKeyLen || !bytes.Equal(a, b) || bytes.Equal(a, c) {
		t.Fatalf("keys from secrets: %x %x %x", a, b, c)
	}

	dir := t.TempDir()
	first, err := loadStickyKey(Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	again, _ := loadStickyKey(Config{DataDir: dir})
	elsewhere, _ := loadStickyKey(Config{DataDir: t.TempDir()})
	if !bytes.Equal(first, again) || bytes.Equal(first, elsewhere) || bytes.Equal(first, a) {
		t.Fatalf("keys without a secret: %x %x %x", first, again, elsewhere)
	}
	if fi, err := os.Stat(filepath.Join(dir, "sticky-key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("sticky-key file: %v %v", fi, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sticky-key"), []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadStickyKey(Config{DataDir: dir}); err == nil {
		t.Fatal("a damaged key file must be an error, not a new key")
	}
}
