package cluster

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Signed admin calls: the cluster secret also authenticates the calls
// nodes make to each other's admin API, which is HTTP, not the cluster port.
// nodes call each other's POST /v1/cluster/join and
// /v1/cluster/notify with an HMAC of the request under the cluster secret
// instead of a token; the secret never travels. The header carries the
// body's digest, so the signature is checked before the body is read, and a
// nonce, so that each signed call is accepted once:
//
//	Authorization: Cbproxy-Cluster ts=<unix seconds>,nonce=<32 hex>,body=<hex SHA-256 of the body>,mac=<hex>
//	mac = HMAC-SHA256(secret, "cbproxy signed call v2\n" method "\n" path "\n" ts "\n" nonce "\n" body)

const clusterAuthScheme = "Cbproxy-Cluster "

// clusterAuthSkew bounds how far a signed call's time may be from this
// node's clock, either way. Nodes sign every attempt afresh, so only a
// replay or a clock off by more than this is refused.
const clusterAuthSkew = 30 * time.Second

// maxSeenCalls bounds the signed calls remembered against replays. Only
// calls with a valid signature are remembered, so only holders of the
// secret can fill it; honest nodes make a few per second at most.
const maxSeenCalls = 10_000

// clusterAuth is the parsed Authorization header of a signed call.
type clusterAuth struct {
	ts    int64
	nonce string
	body  string // hex SHA-256 of the body
	mac   string
}

func clusterMAC(secret string, method, path string, a clusterAuth) string {
	m := hmac.New(sha256.New, []byte(secret))
	fmt.Fprintf(m, "cbproxy signed call v2\n%s\n%s\n%d\n%s\n%s", method, path, a.ts, a.nonce, a.body)
	return hex.EncodeToString(m.Sum(nil))
}

func (a clusterAuth) header() string {
	return fmt.Sprintf("%sts=%d,nonce=%s,body=%s,mac=%s", clusterAuthScheme, a.ts, a.nonce, a.body, a.mac)
}

// SignCall signs a request to a peer's admin API with the secret.
func SignCall(req *http.Request, secret string, body []byte) {
	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	sum := sha256.Sum256(body)
	a := clusterAuth{ts: time.Now().Unix(), nonce: hex.EncodeToString(nonce[:]), body: hex.EncodeToString(sum[:])}
	a.mac = clusterMAC(secret, req.Method, req.URL.Path, a)
	req.Header.Set("Authorization", a.header())
}

// IsSignedCall reports whether a request claims to be a signed call; such a
// request is judged by its signature alone, never as a loopback caller.
func IsSignedCall(r *http.Request) bool {
	return strings.HasPrefix(r.Header.Get("Authorization"), clusterAuthScheme)
}

// parseClusterAuth reads the Authorization header of a signed call
// strictly: every field once, well formed, nothing else.
func parseClusterAuth(h string) (clusterAuth, error) {
	var a clusterAuth
	rest, ok := strings.CutPrefix(h, clusterAuthScheme)
	if !ok {
		return a, errors.New("not a signed call")
	}
	seen := map[string]bool{}
	for part := range strings.SplitSeq(rest, ",") {
		k, v, _ := strings.Cut(part, "=")
		if seen[k] {
			return a, fmt.Errorf("%q is given twice", k)
		}
		seen[k] = true
		switch k {
		case "ts":
			ts, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return a, errors.New("ts is not a number")
			}
			a.ts = ts
		case "nonce":
			a.nonce = v
		case "body":
			a.body = v
		case "mac":
			a.mac = v
		default:
			return a, fmt.Errorf("unknown field %.20q (a node of another cbproxy version?)", k)
		}
	}
	for _, f := range []struct {
		name, v string
		size    int
	}{{"nonce", a.nonce, 16}, {"body", a.body, sha256.Size}, {"mac", a.mac, sha256.Size}} {
		if b, err := hex.DecodeString(f.v); err != nil || len(b) != f.size {
			return a, fmt.Errorf("%s must be %d hex bytes (a node of another cbproxy version?)", f.name, f.size)
		}
	}
	if !seen["ts"] {
		return a, errors.New("ts is missing")
	}
	return a, nil
}

// CallVerifier checks the signed calls a node receives, and remembers the
// ones it accepted so that a replay is refused.
type CallVerifier struct {
	secret string
	seen   seenCalls
}

// NewCallVerifier checks calls signed with secret.
func NewCallVerifier(secret string) *CallVerifier { return &CallVerifier{secret: secret} }

// Verify checks a signed call from its header alone, before any of its
// body is read: the signature, the time, and that it was not accepted
// before. It returns the digest the body must have (CheckSignedBody).
func (v *CallVerifier) Verify(r *http.Request) (bodyDigest string, err error) {
	a, err := parseClusterAuth(r.Header.Get("Authorization"))
	if err != nil {
		return "", fmt.Errorf("malformed signature: %w", err)
	}
	if v.secret == "" {
		return "", errors.New("this node has no cluster secret") // a node always has one
	}
	want := clusterMAC(v.secret, r.Method, r.URL.Path, a)
	if !hmac.Equal([]byte(want), []byte(a.mac)) {
		return "", errors.New("bad signature: is cluster_secret the same on every node?")
	}
	now := time.Now()
	if d := now.Sub(time.Unix(a.ts, 0)); d > clusterAuthSkew || d < -clusterAuthSkew {
		return "", fmt.Errorf("signed %s away from this node's clock, more than %s: are the clocks of the nodes synchronized?", d.Round(time.Second), clusterAuthSkew)
	}
	if err := v.seen.accept(a.mac, time.Unix(a.ts, 0).Add(clusterAuthSkew), now); err != nil {
		return "", err
	}
	return a.body, nil
}

// CheckSignedBody reports whether a signed call's body is the one signed.
func CheckSignedBody(body []byte, digest string) bool {
	sum := sha256.Sum256(body)
	return hmac.Equal([]byte(hex.EncodeToString(sum[:])), []byte(digest))
}

// seenCalls remembers the signed calls accepted while they could still be
// replayed (until their time plus clusterAuthSkew).
type seenCalls struct {
	mu    sync.Mutex
	until map[string]time.Time // by MAC
}

// accept records a signed call, or refuses it when it was seen before.
func (s *seenCalls) accept(mac string, until, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.until[mac]; ok {
		return errors.New("this signed call was accepted before: a replay")
	}
	if len(s.until) >= maxSeenCalls {
		for k, t := range s.until {
			if now.After(t) {
				delete(s.until, k)
			}
		}
		if len(s.until) >= maxSeenCalls {
			return fmt.Errorf("more than %d signed calls in %s: refusing until some expire", maxSeenCalls, 2*clusterAuthSkew)
		}
	}
	if s.until == nil {
		s.until = make(map[string]time.Time)
	}
	s.until[mac] = until
	return nil
}
