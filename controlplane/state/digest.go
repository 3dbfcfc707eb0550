package state

import (
	"crypto/sha256"
	"encoding/hex"
)

// Digest is a short hex SHA-256 of a request or an encoded command: what
// idempotency keys and hashes are made of (Command.IdemKey, IdemHash), so
// that every node, and every build, derives the same one from the same
// input.
func Digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:16])
}
