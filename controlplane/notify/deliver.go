package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// Headers of a notification request (docs/api.md "Notifications").
const (
	// HeaderSignature is "t=<unix seconds>,v1=<hex HMAC-SHA256 of
	// "<t>.<body>" keyed by the notifier's secret>"; absent without a
	// secret.
	HeaderSignature = "X-Cbproxy-Signature"
	// HeaderEventID is the notification's id (the event's index): the same
	// on every delivery of one event to one notifier, for deduplication.
	HeaderEventID = "X-Cbproxy-Event-Id"
	// HeaderKind is the notification kind.
	HeaderKind = "X-Cbproxy-Event"
	// HeaderNotifier is the notifier's name.
	HeaderNotifier = "X-Cbproxy-Notifier"
)

// Sign is the signature header's value of body sent at t with secret.
func Sign(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac.Sum(nil))
}

// Retry is how a delivery is retried: network errors, 5xx and 429 are
// retried up to Attempts in all, after Base·2^(n-1) (at most Max), with
// ±50 % jitter, or after the receiver's Retry-After (at most Max); any
// other 4xx is final.
type Retry struct {
	Attempts  int
	Base, Max time.Duration
}

// DefaultRetry: 8 attempts over about two minutes.
var DefaultRetry = Retry{Attempts: 8, Base: 500 * time.Millisecond, Max: 30 * time.Second}

// attemptError is one failed attempt: whether it may be retried, and the
// receiver's Retry-After.
type attemptError struct {
	msg        string
	final      bool
	retryAfter time.Duration
}

func (e *attemptError) Error() string { return e.msg }

// post sends body once. The error says what failed, never the secret or
// the URL's query.
func post(ctx context.Context, client *http.Client, n *state.Notifier, body []byte, id, kind string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(n.Timeout))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.URL, bytes.NewReader(body))
	if err != nil {
		return &attemptError{msg: "bad request: " + err.Error(), final: true}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "cbproxy-notify/1")
	req.Header.Set(HeaderEventID, id)
	req.Header.Set(HeaderKind, kind)
	req.Header.Set(HeaderNotifier, n.Name)
	if n.Secret != "" {
		req.Header.Set(HeaderSignature, Sign(n.Secret, time.Now(), body))
	}
	resp, err := client.Do(req)
	if err != nil {
		var ue interface{ Unwrap() error }
		if errors.As(err, &ue) {
			err = ue.Unwrap() // *url.Error repeats the URL, query included
		}
		return &attemptError{msg: "sending: " + err.Error()}
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return &attemptError{msg: "receiver answered " + resp.Status, retryAfter: retryAfter(resp.Header.Get("Retry-After"))}
	default:
		return &attemptError{msg: "receiver answered " + resp.Status + " (not retried)", final: true}
	}
}

// retryAfter reads a Retry-After header: seconds or an HTTP date.
func retryAfter(h string) time.Duration {
	if h == "" {
		return 0
	}
	if s, err := strconv.Atoi(h); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(h); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

// deliver sends body with retries; it returns nil once delivered, the last
// attempt's error once it gave up, or ctx's error. retried counts the
// attempts that failed and were retried.
func deliver(ctx context.Context, client *http.Client, n *state.Notifier, r Retry, body []byte, id, kind string, retried func(error)) error {
	for attempt := 1; ; attempt++ {
		err := post(ctx, client, n, body, id, kind)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var ae *attemptError
		if errors.As(err, &ae) && ae.final || attempt >= r.Attempts {
			return fmt.Errorf("%w (attempt %d of %d)", err, attempt, r.Attempts)
		}
		retried(err)
		wait := backoff(r, attempt)
		if ae != nil && ae.retryAfter > 0 {
			wait = min(ae.retryAfter, r.Max)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// backoff is the wait after the attempt-th failure: Base·2^(attempt-1),
// at most Max, times a random factor in [0.5, 1.5).
func backoff(r Retry, attempt int) time.Duration {
	d := r.Base << min(attempt-1, 20)
	if d <= 0 || d > r.Max {
		d = r.Max
	}
	return time.Duration(float64(d) * (0.5 + rand.Float64()))
}
