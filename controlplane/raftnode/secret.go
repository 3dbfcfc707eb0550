package raftnode

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"go.uber.org/zap"
)

// ClusterSecretFile is the file in the data dir where a node started without
// cluster_secret keeps the secret it generated. Its content, as it is, is the
// cluster_secret other nodes need to join this one.
const ClusterSecretFile = "cluster-secret"

// effectiveClusterSecret returns the secret this node and its peers prove
// to each other on the cluster port and in signed admin calls: the
// configured cluster_secret, or else the one kept in the data dir, made on
// first start. There is no configuration without one: a single node with an
// empty secret would let anyone who reaches its cluster port write.
func effectiveClusterSecret(cfg Config, log *zap.Logger) (string, error) {
	if cfg.ClusterSecret != "" {
		return cfg.ClusterSecret, nil
	}
	path := filepath.Join(cfg.DataDir, ClusterSecretFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		secret := strings.TrimSpace(string(b))
		if secret == "" {
			// A new secret would cut this node off from its peers: say so
			// instead.
			return "", fmt.Errorf("%s is empty: put back the cluster's secret (the cluster_secret of the other nodes), or delete the file to generate a new one, which no other node knows", path)
		}
		return secret, nil
	case !errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("reading the cluster secret: %w", err)
	}
	var r [32]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", err
	}
	secret := hex.EncodeToString(r[:])
	if err := writeFileAtomic(path, []byte(secret+"\n")); err != nil {
		return "", fmt.Errorf("writing the cluster secret: %w", err)
	}
	log.Info("generated the cluster secret: nodes that join this one need it as their cluster_secret",
		zap.String("file", path))
	return secret, nil
}

// storedClusterSecret is the cluster secret as a stopped node's
// configuration and data dir hold it, or "" (never made up: an offline tool
// must not write a secret nobody else knows).
func storedClusterSecret(cfg Config) string {
	if cfg.ClusterSecret != "" {
		return cfg.ClusterSecret
	}
	b, err := os.ReadFile(filepath.Join(cfg.DataDir, ClusterSecretFile))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// stickyKeyLen is the length of the key that seals sticky cookies (AES-128).
const stickyKeyLen = 16

// StickyKey is the key the data plane seals sticky cookies with, so that a
// client cannot write itself a cookie for the pool of its choice. Every node
// of a cluster derives the same key from the cluster secret (configured or
// generated), so a cookie one node gave is honoured by all, and a single node
// keeps its key across restarts.
func (n *Node) StickyKey() []byte { return stickyKeyFrom(n.clusterSecret) }

// stickyKeyFrom derives the sticky cookie key from the cluster secret.
func stickyKeyFrom(clusterSecret string) []byte {
	mac := hmac.New(sha256.New, []byte(clusterSecret))
	mac.Write([]byte("cbproxy sticky cookie key v1"))
	return mac.Sum(nil)[:stickyKeyLen]
}
