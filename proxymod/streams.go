package proxymod

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// Long-lived connections ("streams") are upgraded connections (a 101
// Switching Protocols answer, e.g. a WebSocket) and event streams (a
// `text/event-stream` answer). Both live as long as the client wants, and
// both kinds of client are built to reconnect, so cbproxy closes them once
// their backend stops taking new requests: otherwise a switch, a drain or
// a rollback would never reach them. Every other response, however long,
// is an ordinary request: it finishes on its own and is never cut.

// Why a stream was closed: the reason label of cbproxy_streams_closed_total.
const (
	// closeSwitch: its pool's weight went to 0 (weights, switch, a rollout step).
	closeSwitch = "switch"
	// closeRollback: its pool's weight went to 0 by a rollback or an abort.
	closeRollback = "rollback"
	// closeDrain: its backend was drained.
	closeDrain = "drain"
	// closeRemoved: its backend, pool or service left the replicated state.
	closeRemoved = "removed"
	// closeReload: a config reload left no cbproxy handler for its service.
	closeReload = "reload"
)

// Defaults of stream_close_delay: a switch is a planned move, so clients get
// time to reconnect on their own; a rollback judged the pool harmful.
const (
	defaultStreamCloseDelay         = time.Minute
	defaultStreamCloseDelayRollback = 5 * time.Second
)

// streamDelays is how long a stream stays open after its backend stopped
// taking new requests, by what stopped it.
type streamDelays struct {
	change   time.Duration // switch, weights, drain, removal, reload
	rollback time.Duration // rollback or rollout abort
}

func (d streamDelays) after(reason string) time.Duration {
	if reason == closeRollback {
		return d.rollback
	}
	return d.change
}

// streamSet tracks the open streams of one service on this node. It lives in
// the service's route, so streams outlive config reloads like the route does.
type streamSet struct {
	mu   sync.Mutex
	open map[*stream]struct{}
	// byAddress counts the open streams per backend address; an address
	// stays at 0 once its streams ended, so that its long_lived series,
	// which appears with its first stream, does not vanish at 0.
	byAddress map[string]int64
	closed    map[closeKey]uint64 // streams closed by cbproxy, kept for good
	current   *state.Service      // the service last applied (nil: none)
	handlers  int                 // cbproxy handlers of loaded configs serving the service
}

type closeKey struct{ pool, reason string }

// stream is one open long-lived connection.
type stream struct {
	pool, address string
	// chosenFrom is the service of the table the request chose its pool
	// from: a stream that opens just after a change is judged against it.
	chosenFrom *state.Service
	delays     streamDelays
	// backend is the backend side of the connection; closing it ends
	// Caddy's copy in both directions, and Caddy then closes the client's.
	backend io.Closer

	// Under the set's lock: the pending close, if reason is set.
	reason string
	due    time.Time
	timer  *time.Timer
	gen    uint64 // bumped by every schedule and cancel: a stale timer does nothing
	ended  bool
}

// takes reports whether the replicated service gives new requests to the
// backend address of pool: the pool has a weight and the backend is listed
// and not drained. Health does not count: an unhealthy backend's traffic is
// broken already or comes back with it.
func takes(svc *state.Service, pool, address string) bool {
	if svc == nil || svc.Weights[pool] == 0 {
		return false
	}
	p := svc.Pools[pool]
	if p == nil {
		return false
	}
	for _, b := range p.Backends {
		if b.Address == address {
			return !b.Draining
		}
	}
	return false
}

// closeReason says why a backend that took new requests in the service
// before no longer does in next. rollback tells that the change was a
// rollback (or an abort).
func closeReason(next *state.Service, pool, address string, rollback bool) string {
	if next == nil || next.Pools[pool] == nil {
		return closeRemoved
	}
	if next.Weights[pool] == 0 {
		if rollback {
			return closeRollback
		}
		return closeSwitch
	}
	for _, b := range next.Pools[pool].Backends {
		if b.Address == address {
			return closeDrain
		}
	}
	return closeRemoved
}

// rolledBack reports whether next is prev after a rollback: every rollback
// and abort counts one in the service's Rollbacks.
func rolledBack(prev, next *state.Service) bool {
	count := func(s *state.Service) (n uint64) {
		if s != nil {
			for _, c := range s.Rollbacks {
				n += c
			}
		}
		return n
	}
	return count(next) > count(prev)
}

// add registers a new stream. One whose pool was chosen from an older
// service than the set's current one, and whose backend stopped taking new
// requests in between, is closed like the streams that were open then.
func (ss *streamSet) add(s *stream) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.open == nil {
		ss.open = make(map[*stream]struct{})
		ss.byAddress = make(map[string]int64)
	}
	ss.open[s] = struct{}{}
	ss.byAddress[s.address]++
	now := time.Now()
	if s.chosenFrom != ss.current && takes(s.chosenFrom, s.pool, s.address) && !takes(ss.current, s.pool, s.address) {
		ss.schedule(s, closeReason(ss.current, s.pool, s.address, rolledBack(s.chosenFrom, ss.current)), now)
	}
	if ss.handlers == 0 {
		ss.schedule(s, closeReload, now)
	}
}

// remove forgets a stream that ended (Caddy closed its backend side).
func (ss *streamSet) remove(s *stream) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.forget(s)
}

func (ss *streamSet) forget(s *stream) {
	if s.ended {
		return
	}
	s.ended = true
	ss.cancel(s)
	delete(ss.open, s)
	ss.byAddress[s.address]--
}

// serviceChanged closes, after their delay, the streams of every backend
// that took new requests in the previous service and does not in next, and
// keeps those whose backend takes new requests again before their time.
func (ss *streamSet) serviceChanged(next *state.Service) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	prev := ss.current
	if prev == next {
		return
	}
	ss.current = next
	rollback := rolledBack(prev, next)
	now := time.Now()
	for s := range ss.open {
		switch {
		case takes(next, s.pool, s.address):
			if s.reason != closeReload {
				ss.cancel(s)
			}
		case takes(prev, s.pool, s.address):
			ss.schedule(s, closeReason(next, s.pool, s.address, rollback), now)
		}
	}
}

// handlerAdded counts a provisioned handler of the service; the first one
// after none keeps the streams a reload was about to close.
func (ss *streamSet) handlerAdded() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.handlers++; ss.handlers == 1 {
		for s := range ss.open {
			if s.reason == closeReload {
				ss.cancel(s)
			}
		}
	}
}

// handlerRemoved counts a cleaned-up handler. A reload provisions the new
// config before it cleans up the old one, so the count reaches 0 only when
// no loaded config serves the service: its streams then close after their
// delay.
func (ss *streamSet) handlerRemoved() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.handlers--; ss.handlers == 0 {
		now := time.Now()
		for s := range ss.open {
			ss.schedule(s, closeReload, now)
		}
	}
}

// schedule closes s after its delay for reason, unless a close that comes
// sooner is pending already.
func (ss *streamSet) schedule(s *stream, reason string, now time.Time) {
	delay := s.delays.after(reason)
	due := now.Add(delay)
	if s.reason != "" && !due.Before(s.due) {
		return
	}
	ss.cancel(s)
	gen := s.gen
	s.reason, s.due = reason, due
	s.timer = time.AfterFunc(delay, func() { ss.expire(s, gen) })
}

// cancel drops the pending close of s, if any.
func (ss *streamSet) cancel(s *stream) {
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	s.reason = ""
	s.gen++
}

// expire closes s if the close that fired is still the pending one.
func (ss *streamSet) expire(s *stream, gen uint64) {
	ss.mu.Lock()
	if s.ended || s.gen != gen {
		ss.mu.Unlock()
		return
	}
	if ss.closed == nil {
		ss.closed = make(map[closeKey]uint64)
	}
	ss.closed[closeKey{s.pool, s.reason}]++
	ss.forget(s)
	ss.mu.Unlock()
	s.backend.Close()
}

// longLived returns the number of open streams to a backend address.
func (ss *streamSet) longLived(address string) int64 {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.byAddress[address]
}

// forgetClosed resets the counts of closed streams (the service was
// deleted).
func (ss *streamSet) forgetClosed() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.closed = nil
}

// snapshot returns copies of the open streams per address and the closed
// counts, for the metrics.
func (ss *streamSet) snapshot() (byAddress map[string]int64, closed map[closeKey]uint64) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return maps.Clone(ss.byAddress), maps.Clone(ss.closed)
}

// streamTransport is the inner proxies' transport: Caddy's own, embedded so
// that every optional interface Caddy looks for on a transport stays, with
// the answers that open a stream registered on their way to Caddy. Ordinary
// answers cost one status check and one header lookup.
type streamTransport struct {
	*reverseproxy.HTTPTransport
	streams *streamSet
	delays  streamDelays
}

// RoundTrip implements http.RoundTripper.
func (t *streamTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	res, err := t.HTTPTransport.RoundTrip(req)
	if err == nil && (res.StatusCode == http.StatusSwitchingProtocols || isEventStream(res.Header["Content-Type"])) {
		t.track(req, res)
	}
	return res, err
}

// track registers the stream res opens and wraps its body, which Caddy
// closes when the stream ends.
func (t *streamTransport) track(req *http.Request, res *http.Response) {
	p, _ := requestPool(req)
	di, ok := reverseproxy.GetDialInfo(req.Context())
	if p == nil || !ok {
		return
	}
	i := -1
	for j := range p.backends {
		if p.backends[j].dial == di.Address {
			i = j
			break
		}
	}
	if i < 0 {
		return
	}
	s := &stream{pool: p.name, address: p.backends[i].address, chosenFrom: p.source, delays: t.delays, backend: res.Body}
	if res.StatusCode == http.StatusSwitchingProtocols {
		rwc, ok := res.Body.(io.ReadWriteCloser)
		if !ok {
			return // Caddy refuses such an upgrade
		}
		res.Body = &upgradedBody{ReadWriteCloser: rwc, set: t.streams, s: s}
	} else {
		res.Body = &streamBody{ReadCloser: res.Body, set: t.streams, s: s}
	}
	t.streams.add(s)
}

// isEventStream reports whether a Content-Type header's media type is
// text/event-stream, without allocating.
func isEventStream(contentType []string) bool {
	if len(contentType) == 0 {
		return false
	}
	mediaType, _, _ := strings.Cut(contentType[0], ";")
	return strings.EqualFold(strings.TrimSpace(mediaType), "text/event-stream")
}

// streamBody is the backend's side of an event stream.
type streamBody struct {
	io.ReadCloser
	set *streamSet
	s   *stream
}

func (b *streamBody) Close() error {
	b.set.remove(b.s)
	return b.ReadCloser.Close()
}

// upgradedBody is the backend's side of an upgraded connection: Caddy reads,
// writes and half-closes it.
type upgradedBody struct {
	io.ReadWriteCloser
	set *streamSet
	s   *stream
}

func (b *upgradedBody) Close() error {
	b.set.remove(b.s)
	return b.ReadWriteCloser.Close()
}

// CloseWrite passes a half-close on, as net/http's own upgraded body does:
// Caddy's tunnel propagates a client's half-close with it.
func (b *upgradedBody) CloseWrite() error {
	if cw, ok := b.ReadWriteCloser.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("CloseWrite: %w", http.ErrNotSupported)
}

// Interface guards
var (
	_ http.RoundTripper  = (*streamTransport)(nil)
	_ io.ReadWriteCloser = (*upgradedBody)(nil)
)
