package proxymod

import (
	"crypto/subtle"
	"math"
	"math/rand/v2"
	"net/http"
	"strings"
)

// choice is how a request's pool was chosen.
type choice uint8

const (
	bySplit    choice = iota // the exact weighted split
	byNewKey                 // the split, for a client that gets a sticky cookie now
	byKey                    // the client's sticky key
	byOverride               // the override header: a test, not the pool's share
)

// choosePool picks the pool of a request (CONTRACT §5): the override header,
// then the sticky key, then the exact split. This is the hot path: no locks,
// no allocations.
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
		if token, ok := stickyToken(r.Header["Cookie"], h.cookieName); ok {
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
// 64-bit token written as 16 hex digits; its bucket is mix(token) modulo
// slotCount. mix is invertible, so a token for a chosen bucket is made in
// O(1): pick a random multiple of slotCount plus the bucket, unmix it.

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
// parses its token. It parses by hand because r.Cookie allocates. A cookie
// whose value is not a token counts as absent: the client gets a new one.
func stickyToken(lines []string, name string) (uint64, bool) {
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
			if token, ok := parseToken(value); ok {
				return token, true
			}
		}
	}
	return 0, false
}

// tokenDigits is the length of a token in a cookie.
const tokenDigits = 16

// parseToken reads 16 hex digits.
func parseToken(s string) (uint64, bool) {
	if len(s) != tokenDigits {
		return 0, false
	}
	var token uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		token = token<<4 | uint64(d)
	}
	return token, true
}

// formatToken writes a token as 16 lowercase hex digits.
func formatToken(token uint64) string {
	const digits = "0123456789abcdef"
	var b [tokenDigits]byte
	for i := tokenDigits - 1; i >= 0; i-- {
		b[i] = digits[token&0xf]
		token >>= 4
	}
	return string(b[:])
}

// setStickyCookie gives a new client a cookie whose bucket lies in the range
// of the pool the split chose for it, so that its later requests stay there.
func (h *Handler) setStickyCookie(w http.ResponseWriter, r *http.Request, p *poolRoute) {
	bucket := p.lo + rand.IntN(p.hi-p.lo) // the split chose p, so the range is not empty
	cookie := &http.Cookie{
		Name:     h.cookieName,
		Value:    formatToken(tokenFor(bucket)),
		Path:     "/",
		MaxAge:   h.cookieMaxAge,
		HttpOnly: true,
		Secure:   r.TLS != nil,
		SameSite: http.SameSiteLaxMode,
	}
	w.Header().Add("Set-Cookie", cookie.String())
}
