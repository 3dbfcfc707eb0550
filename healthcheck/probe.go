package healthcheck

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
	"go.uber.org/zap"
)

const (
	userAgent = "cbproxy-health/1"
	// maxBody bounds what a probe reads of an answer: a readiness document is
	// small, and a backend must not make every node buffer a large one.
	maxBody = 64 << 10
)

// defaultClient is the probes' client when Config.Client is nil; see there.
func defaultClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                  nil, // probes go to the backend itself, never through HTTP_PROXY
			DialContext:            (&net.Dialer{KeepAlive: -1}).DialContext,
			DisableKeepAlives:      true,
			MaxResponseHeaderBytes: maxBody,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// probeURL is the URL of a backend's health path: https for an https://
// backend, plain HTTP for host:port.
func probeURL(address, path string) string {
	if strings.HasPrefix(address, "https://") {
		return address + path
	}
	return "http://" + address + path
}

// outcome is the result of one probe: healthy or degraded, or unhealthy with
// the reason in err.
type outcome struct {
	status  Status
	err     string
	latency time.Duration
}

// probeLoop probes one backend at once, then every interval (plus up to a
// tenth of it, so that the probes of many backends spread out), until ctx
// ends. Probes never overlap: the wait starts when a probe ends.
func (c *Checker) probeLoop(ctx context.Context, e *backend, gen uint64, url string, check state.HealthCheck) {
	defer c.wg.Done()
	interval := time.Duration(check.Interval)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		o := c.safeProbe(ctx, url, time.Duration(check.Timeout))
		if ctx.Err() != nil {
			return // stopped mid-probe: the result means nothing
		}
		c.record(e, gen, o)
		timer.Reset(interval + rand.N(interval/10+1))
	}
}

// safeProbe is probe with a panic turned into a failed check, so that a bug
// met on one backend's answer neither kills the node nor stops the checks.
func (c *Checker) safeProbe(ctx context.Context, url string, timeout time.Duration) (o outcome) {
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("health probe panicked", zap.String("url", url), zap.Any("panic", r), zap.Stack("stack"))
			o = outcome{status: StatusUnhealthy, err: fmt.Sprintf("GET %s: internal error: %v", url, r)}
		}
	}()
	return c.probe(ctx, url, timeout)
}

// probe sends one GET to url and judges the answer; an answer or body not
// complete within timeout is a failure.
func (c *Checker) probe(ctx context.Context, url string, timeout time.Duration) outcome {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	fail := func(err error) outcome {
		why := err.Error()
		if errors.Is(err, context.DeadlineExceeded) {
			why = fmt.Sprintf("GET %s: no complete answer within the %s timeout", url, timeout)
		}
		return outcome{status: StatusUnhealthy, err: why, latency: time.Since(start)}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fail(err)
	}
	req.Header.Set("User-Agent", userAgent)
	resp, err := c.client.Do(req)
	if err != nil {
		return fail(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return fail(fmt.Errorf("GET %s: reading the answer: %w", url, err))
	}
	o := outcome{latency: time.Since(start)}
	o.status, o.err = judge(resp.StatusCode, resp.Header.Get("Content-Type"), body)
	if o.err != "" {
		o.err = "GET " + url + " " + o.err
	}
	return o
}

// judge reads a health answer with the seed's readiness semantics: any 2xx
// is healthy, unless its body is a JSON object whose "status" is "degraded"
// (in any case), which is degraded but still serving; anything else is
// unhealthy, with the reason. The body is parsed only when the Content-Type
// says JSON or the body starts with "{"; a body that is not valid JSON (or
// was cut at maxBody) leaves a 2xx healthy.
func judge(code int, contentType string, body []byte) (Status, string) {
	if code < 200 || code > 299 {
		return StatusUnhealthy, "answered " + statusLine(code)
	}
	if isJSON(contentType, body) {
		var doc struct {
			Status string `json:"status"`
		}
		if json.Unmarshal(body, &doc) == nil && strings.EqualFold(doc.Status, "degraded") {
			return StatusDegraded, ""
		}
	}
	return StatusHealthy, ""
}

func isJSON(contentType string, body []byte) bool {
	if mt, _, err := mime.ParseMediaType(contentType); err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json")) {
		return true
	}
	return bytes.HasPrefix(bytes.TrimLeft(body, " \t\r\n"), []byte("{"))
}

// statusLine is "503 Service Unavailable", or the bare number for a code
// without a name.
func statusLine(code int) string {
	if text := http.StatusText(code); text != "" {
		return strconv.Itoa(code) + " " + text
	}
	return strconv.Itoa(code)
}
