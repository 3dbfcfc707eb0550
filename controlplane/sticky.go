package controlplane

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// stickyKeyLen is the length of the key that seals sticky cookies (AES-128).
const stickyKeyLen = 16

// StickyKey is the key the data plane seals sticky cookies with, so that a
// client cannot write itself a cookie for the pool of its choice. Every node
// of a cluster derives the same key from the cluster secret, so a cookie one
// node gave is honoured by all; a node without a secret (a single node)
// keeps a random one in its data dir, so its cookies survive restarts.
func (n *Node) StickyKey() []byte { return n.stickyKey }

// loadStickyKey derives or loads the sticky cookie key at start.
func loadStickyKey(cfg Config) ([]byte, error) {
	secret := []byte(cfg.ClusterSecret)
	if len(secret) == 0 {
		var err error
		if secret, err = persistedSecret(filepath.Join(cfg.DataDir, "sticky-key")); err != nil {
			return nil, err
		}
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte("cbproxy sticky cookie key v1"))
	return mac.Sum(nil)[:stickyKeyLen], nil
}

// persistedSecret returns 32 random bytes kept in path, creating them on
// first use.
func persistedSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	switch {
	case err == nil && len(b) == 32:
		return b, nil
	case err == nil:
		return nil, fmt.Errorf("%s holds %d bytes, not 32: delete it to make a new key (clients then get new sticky cookies)", path, len(b))
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("reading the sticky cookie key: %w", err)
	}
	b = make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(path, b); err != nil {
		return nil, fmt.Errorf("writing the sticky cookie key: %w", err)
	}
	return b, nil
}
