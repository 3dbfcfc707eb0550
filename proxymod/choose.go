package proxymod

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
)

// choice is how a request's pool was chosen.
type choice uint8

const (
	bySplit    choice = iota // the exact weighted split
	byNewKey                 // the split, for a client that gets a sticky cookie now
	byKey                    // the client's sticky key
	byOverride               // the override header: a test, not the pool's share
)

// choosePool picks the pool of a request (docs/caddyfile.md "How a request
// finds its pool"): the override header, then the sticky key, then the exact
// split. This is the hot path: no locks, no allocations.
func (h *Handler) choosePool(t *RoutingTable, r *http.Request) (pool int, how choice) {
	if h.overrideKey != "" {
		if values, ok := r.Header[h.overrideKey]; ok {
			// Never pass the header on, valid or not.
			delete(r.Header, h.overrideKey)
			if len(values) > 0 {
				if i := h.overridePool(t, values[0]); i >= 0 {
					return i, byOverride
				}
			}
		}
	}
	switch h.stickyMode {
	case stickyCookie:
		if token, ok := stickyToken(r.Header["Cookie"], h.cookieName, routes.seal.Load()); ok {
			return t.stickyPool(tokenBucket(token)), byKey
		}
		return t.nextFromSplit(), byNewKey
	case stickyHeader:
		if values := r.Header[h.stickyKey]; len(values) > 0 && values[0] != "" {
			return t.stickyPool(keyBucket(values[0])), byKey
		}
	}
	return t.nextFromSplit(), bySplit
}

// stickyPool returns the pool of a client's bucket and, while a pool with a
// share is down, counts the request against the pool that owed it.
func (t *RoutingTable) stickyPool(bucket int) int {
	if t.owners != nil {
		t.owedBucket(bucket)
	}
	return t.poolForBucket(bucket)
}

// overridePool returns the pool an override header value names, or -1 when
// the value is not honoured: unknown pool, wrong or missing secret, or a
// pool with no available backend.
func (h *Handler) overridePool(t *RoutingTable, value string) int {
	name := value
	if h.overrideSecret != nil {
		var secret string
		var ok bool
		name, secret, ok = strings.Cut(value, ";")
		if !ok || !secretMatches(secret, h.overrideSecret) {
			return -1
		}
	}
	i := t.pool(name)
	if i < 0 || len(t.pools[i].available) == 0 {
		return -1
	}
	return i
}

// secretMatches compares in constant time. It reads the string in place:
// converting it to []byte for subtle.ConstantTimeCompare could allocate.
func secretMatches(got string, want []byte) bool {
	if len(got) != len(want) {
		return false
	}
	var diff byte
	for i := range want {
		diff |= got[i] ^ want[i]
	}
	return subtle.ConstantTimeByteEq(diff, 0) == 1
}

// The sticky scheme. A client's key maps to one of slotCount buckets, and
// each pool owns a range of buckets (RoutingTable). A cookie holds a random
// 64-bit token, sealed (cookieSeal) so that a client cannot write itself a
// cookie for the bucket, and so the pool, of its choice; its bucket is
// mix(token) modulo slotCount. mix is invertible, so a token for a chosen
// bucket is made in O(1): pick a random multiple of slotCount plus the
// bucket, unmix it.

// tokenBucket returns the bucket of a cookie token.
func tokenBucket(token uint64) int { return int(mix(token) % uint64(slotCount)) }

// tokenFor returns a random token whose bucket is bucket.
func tokenFor(bucket int) uint64 {
	// q < MaxUint64/slotCount keeps q*slotCount+bucket from overflowing.
	q := rand.Uint64N(math.MaxUint64 / uint64(slotCount))
	return unmix(q*uint64(slotCount) + uint64(bucket))
}

// keyBucket returns the bucket of a key a client sends in a header: FNV-1a,
// then mix for the low digits. Every node computes the same bucket.
func keyBucket(key string) int {
	hash := uint64(14695981039346656037)
	for i := 0; i < len(key); i++ {
		hash ^= uint64(key[i])
		hash *= 1099511628211
	}
	return tokenBucket(hash)
}

// mix is splitmix64's finalizer: a bijection on uint64 that spreads any
// difference in its input over all bits of its output.
func mix(x uint64) uint64 {
	x = (x ^ x>>30) * mixMul1
	x = (x ^ x>>27) * mixMul2
	return x ^ x>>31
}

// unmix is the inverse of mix.
func unmix(x uint64) uint64 {
	x = unshift(x, 31) * mixInv2
	x = unshift(x, 27) * mixInv1
	return unshift(x, 30)
}

// unshift inverts x ^= x>>s: each round recovers s more top bits.
func unshift(y uint64, s uint) uint64 {
	x := y
	for recovered := s; recovered < 64; recovered += s {
		x = y ^ x>>s
	}
	return x
}

const (
	mixMul1 = 0xbf58476d1ce4e5b9
	mixMul2 = 0x94d049bb133111eb
)

var (
	mixInv1 = inverse(mixMul1)
	mixInv2 = inverse(mixMul2)
)

// inverse returns the multiplicative inverse of an odd number modulo 2^64
// (Newton's iteration; each round doubles the correct low bits, from 3).
func inverse(a uint64) uint64 {
	x := a
	for range 5 {
		x *= 2 - a*x
	}
	return x
}

// stickyToken finds the sticky cookie in a request's Cookie header lines and
// opens its token. It parses by hand because r.Cookie allocates. A cookie
// whose value is not a token the cluster sealed counts as absent: the client
// gets a new one (without a seal, every cookie does).
func stickyToken(lines []string, name string, seal *cookieSeal) (uint64, bool) {
	if seal == nil {
		return 0, false
	}
	for _, line := range lines {
		for line != "" {
			var part string
			part, line, _ = strings.Cut(line, ";")
			key, value, ok := strings.Cut(strings.TrimSpace(part), "=")
			if !ok || strings.TrimSpace(key) != name {
				continue
			}
			value = strings.TrimSpace(value)
			if len(value) >= 2 && value[0] == '"' && value[len(value)-1] == '"' {
				value = value[1 : len(value)-1]
			}
			if token, ok := seal.open(value); ok {
				return token, true
			}
		}
	}
	return 0, false
}

// tokenDigits is the length of a cookie value: one AES block in hex.
const tokenDigits = 2 * aes.BlockSize

// cookieSeal seals sticky tokens with the cluster's sticky key: a cookie
// value is the AES encryption of the token followed by eight zero bytes.
// Opening decrypts and checks the zeros, so a value the cluster did not make
// is refused but for a 2^-64 chance; AES is a permutation, so the values it
// gave away teach nothing about the others. Every node derives the same key,
// so any node honours any node's cookie.
type cookieSeal struct {
	block cipher.Block
	// scratch holds the two blocks of an open: cipher.Block is an
	// interface, so buffers passed to it escape, and a pool keeps the hot
	// path free of allocations.
	scratch sync.Pool
}

func newCookieSeal(key []byte) (*cookieSeal, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("sticky cookie key: %w", err)
	}
	return &cookieSeal{block: block, scratch: sync.Pool{New: func() any { return new([2 * aes.BlockSize]byte) }}}, nil
}

// seal returns the cookie value of a token.
func (cs *cookieSeal) seal(token uint64) string {
	var plain, sealed [aes.BlockSize]byte
	binary.BigEndian.PutUint64(plain[:8], token)
	cs.block.Encrypt(sealed[:], plain[:])
	return hex.EncodeToString(sealed[:])
}

// open returns the token of a cookie value, if the cluster sealed it.
func (cs *cookieSeal) open(value string) (uint64, bool) {
	if len(value) != tokenDigits {
		return 0, false
	}
	buf := cs.scratch.Get().(*[2 * aes.BlockSize]byte)
	defer cs.scratch.Put(buf)
	sealed, plain := buf[:aes.BlockSize], buf[aes.BlockSize:]
	for i := range sealed {
		hi, ok1 := hexDigit(value[2*i])
		lo, ok2 := hexDigit(value[2*i+1])
		if !ok1 || !ok2 {
			return 0, false
		}
		sealed[i] = hi<<4 | lo
	}
	cs.block.Decrypt(plain, sealed)
	if binary.BigEndian.Uint64(plain[8:]) != 0 {
		return 0, false
	}
	return binary.BigEndian.Uint64(plain[:8]), true
}

func hexDigit(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// setStickyCookie gives a new client a cookie whose bucket lies in the range
// of the pool the split chose for it, so that its later requests stay there.
// Before the node gave the data plane its sticky key there is nothing to
// seal with: the client gets its cookie with a later request.
func (h *Handler) setStickyCookie(w http.ResponseWriter, r *http.Request, p *poolRoute) {
	seal := routes.seal.Load()
	if seal == nil {
		return
	}
	bucket := p.lo + rand.IntN(p.hi-p.lo) // the split chose p, so the range is not empty
	cookie := &http.Cookie{
		Name:     h.cookieName,
		Value:    seal.seal(tokenFor(bucket)),
		Path:     "/",
		MaxAge:   h.cookieMaxAge,
		HttpOnly: true,
		Secure:   r.TLS != nil,
		SameSite: http.SameSiteLaxMode,
	}
	w.Header().Add("Set-Cookie", cookie.String())
}
