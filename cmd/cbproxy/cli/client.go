package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// maxAnswer bounds what is read of one answer; the largest, a list of 1000
// events with their figures, is far below it.
const maxAnswer = 64 << 20

// client talks to the admin API of one node.
type client struct {
	base  *url.URL
	token string
	// key is the Idempotency-Key of this invocation's writes: a write that is
	// retried after a lost answer is then applied at most once.
	key      string
	retryFor time.Duration
	calls    *http.Client // calls that answer at once
	streams  *http.Client // event streams, which last until stopped
}

func newClient(base *url.URL, token string, retryFor time.Duration) *client {
	// An API client has no use for redirects, and following one would turn a
	// write into a GET.
	noRedirect := func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &client{
		base:     base,
		token:    token,
		key:      rand.Text(),
		retryFor: retryFor,
		calls:    &http.Client{Timeout: 30 * time.Second, CheckRedirect: noRedirect},
		streams:  &http.Client{CheckRedirect: noRedirect},
	}
}

// errInterrupted ends a command stopped by Ctrl-C before it had an answer.
var errInterrupted = errors.New("interrupted")

// request is one API call.
type request struct {
	method string
	path   string // escaped, as made by pathf
	query  url.Values
	header http.Header
	body   any // sent as JSON unless nil
}

// pathf formats an API path, escaping each segment.
func pathf(format string, segments ...string) string {
	args := make([]any, len(segments))
	for i, s := range segments {
		args[i] = url.PathEscape(s)
	}
	return fmt.Sprintf(format, args...)
}

// do sends req and returns the body of a 2xx answer, or an error: *apiError
// for an error answer. A write is retried with the same Idempotency-Key for up
// to retryFor while the node answers 503 with Retry-After (no leader) or the
// connection is refused or reset.
func (c *client) do(ctx context.Context, req request) ([]byte, error) {
	var payload []byte
	if req.body != nil {
		var err error
		if payload, err = json.Marshal(req.body); err != nil {
			return nil, fmt.Errorf("encoding request: %v", err)
		}
	}
	write := req.method != http.MethodGet
	deadline := time.Now().Add(c.retryFor)
	backoff := 100 * time.Millisecond
	for {
		status, header, body, err := c.send(ctx, req, payload, write)
		retry, wait := false, backoff
		switch {
		case err != nil:
			retry = write && connectionFailed(err)
		case status == http.StatusServiceUnavailable && header.Get("Retry-After") != "":
			retry = write
			if s, err := strconv.Atoi(header.Get("Retry-After")); err == nil {
				wait = max(wait, time.Duration(s)*time.Second)
			}
		}
		left := time.Until(deadline)
		if !retry || left <= 0 {
			switch {
			case ctx.Err() != nil:
				return nil, errInterrupted
			case err != nil:
				return nil, c.unreachable(err)
			case status/100 != 2:
				return nil, newAPIError(status, body)
			}
			return body, nil
		}
		select {
		case <-ctx.Done():
			return nil, errInterrupted
		case <-time.After(min(wait, left)):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// send makes one attempt of req.
func (c *client) send(ctx context.Context, req request, payload []byte, write bool) (int, http.Header, []byte, error) {
	hr, err := c.newRequest(ctx, req.method, req.path, req.query, payload)
	if err != nil {
		return 0, nil, nil, err
	}
	for name, values := range req.header {
		for _, v := range values {
			hr.Header.Add(name, v)
		}
	}
	if write {
		hr.Header.Set("Idempotency-Key", c.key)
	}
	resp, err := c.calls.Do(hr)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	body, err := readAnswer(resp)
	if err != nil {
		return 0, nil, nil, err
	}
	return resp.StatusCode, resp.Header, body, nil
}

// readAnswer reads an answer's body, up to maxAnswer, into a buffer of the
// size the answer announces: the list of 1,000 services is a megabyte, which
// io.ReadAll would reach by growing and copying its buffer twenty times.
func readAnswer(resp *http.Response) ([]byte, error) {
	var b bytes.Buffer
	if n := resp.ContentLength; n > 0 && n <= maxAnswer {
		b.Grow(int(n) + bytes.MinRead) // ReadFrom wants room for one more read to see the end
	}
	_, err := b.ReadFrom(io.LimitReader(resp.Body, maxAnswer))
	return b.Bytes(), err
}

func (c *client) newRequest(ctx context.Context, method, path string, query url.Values, payload []byte) (*http.Request, error) {
	u := strings.TrimSuffix(c.base.String(), "/") + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var body io.Reader
	if payload != nil {
		body = bytes.NewReader(payload)
	}
	hr, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	if payload != nil {
		hr.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		hr.Header.Set("Authorization", "Bearer "+c.token)
	}
	return hr, nil
}

// stream reads the server-sent events at path and calls fn with each until the
// stream ends or ctx is done (which is a normal end, as Ctrl-C is for
// --follow). With lastID the server resumes after that event.
func (c *client) stream(ctx context.Context, path string, query url.Values, lastID string, fn func(sseEvent) error) error {
	hr, err := c.newRequest(ctx, http.MethodGet, path, query, nil)
	if err != nil {
		return err
	}
	hr.Header.Set("Accept", "text/event-stream")
	if lastID != "" {
		hr.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := c.streams.Do(hr)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return c.unreachable(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
		return newAPIError(resp.StatusCode, body)
	}
	err = readSSE(resp.Body, fn)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// connectionFailed reports whether err means the node refused or dropped the
// connection, so that a write may be sent again with its Idempotency-Key.
func connectionFailed(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// unreachableError is a call that got no answer from the node.
type unreachableError struct {
	base string
	err  error
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("cannot reach the admin API at %s: %v; is cbproxy running? check --admin", e.base, e.err)
}

func (e *unreachableError) Unwrap() error { return e.err }

func (c *client) unreachable(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // the URL is said once in the message
	}
	return &unreachableError{base: c.base.String(), err: err}
}

// apiError is an error answer of the admin API: {"error":…,"code":…}.
type apiError struct {
	status  int
	Message string `json:"error"`
	Code    string `json:"code"`
	// Version is the service's current version, sent with version_mismatch.
	Version *uint64 `json:"version"`
}

func newAPIError(status int, body []byte) *apiError {
	e := &apiError{status: status}
	if json.Unmarshal(body, e) != nil || e.Message == "" {
		// Not our JSON: a proxy in between, or not a cbproxy node at all.
		e.Message = strings.TrimSpace(string(body))
		if len(e.Message) > 200 {
			e.Message = e.Message[:200] + "…"
		}
		if e.Message == "" {
			e.Message = strings.ToLower(http.StatusText(status))
		}
	}
	return e
}

func (e *apiError) Error() string {
	s := fmt.Sprintf("%s (HTTP %d", e.Message, e.status)
	if e.Code != "" {
		s += " " + e.Code
	}
	s += ")"
	if hint := e.hint(); hint != "" {
		s += "; " + hint
	}
	return s
}

// hint says what to do about the error, where that is clear.
func (e *apiError) hint() string {
	switch {
	case e.status == http.StatusUnauthorized:
		return "pass --token or set CBPROXY_TOKEN"
	case e.status == http.StatusForbidden:
		return "use a token whose role allows this"
	case e.Code == "version_mismatch" && e.Version != nil:
		return fmt.Sprintf("the service is at version %d now: check it with 'cbproxy status' and retry with --if-version %d", *e.Version, *e.Version)
	case e.Code == "rollout_running":
		return "wait for the rollout to end or abort it"
	case e.status == http.StatusPreconditionFailed:
		return "make the pool healthy first, or pass --force"
	case e.status == http.StatusServiceUnavailable:
		return "the cluster has no leader; retry when a quorum of nodes is up"
	}
	return ""
}

// exitCode maps an error of a command to the contract's exit code.
func exitCode(err error) int {
	var ended *rolloutEnded
	if errors.As(err, &ended) {
		return ended.exitCode()
	}
	var ae *apiError
	if errors.As(err, &ae) {
		switch ae.status {
		case http.StatusConflict:
			return exitConflict
		case http.StatusPreconditionFailed:
			return exitRefused
		}
	}
	return exitFailed
}
