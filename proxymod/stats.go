package proxymod

import (
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/cbproxy/cbproxy/controlplane/slo"
)

// Status classes, the code label of cbproxy_requests_total. client_abort:
// the client went away before the response header.
var classLabels = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx", "proxy_error", "client_abort"}

const (
	class5xx         = 4
	classProxyError  = 5
	classClientAbort = 6
)

// statusClass maps a response status to its class.
func statusClass(status int) int {
	switch {
	case status < 200:
		return 0
	case status >= 500:
		return class5xx
	}
	return status/100 - 1
}

// latencyBounds are the upper bounds of the latency histogram's buckets:
// slo's, because the SLO judge reads the windows these counters feed.
var latencyBounds = slo.Bounds

// statShards is how many shards spread the counters of a pool, so that
// cores recording at once rarely write the same cache line: GOMAXPROCS at
// start rounded up to a power of two, at most 8. Not 8 everywhere: at 1,000
// services (3,000 pools, two sets of counters each) 8 shards were 12 MB of
// the live heap, a quarter of it, on a 2-CPU node that records on 2 cores at
// most (docs/decisions.md, "Fewer counter shards on small machines").
var statShards = shardsFor(runtime.GOMAXPROCS(0))

// statShardMask picks a shard from a random number.
var statShardMask = uint32(statShards - 1)

// shardsFor is the shard count for procs cores.
func shardsFor(procs int) int {
	n := 1
	for n < procs && n < 8 {
		n *= 2
	}
	return n
}

// cacheLine is what each shard is padded to: two 64-byte lines, because
// x86 prefetches lines in pairs.
const cacheLine = 128

// counters is one shard of a pool's figures.
type counters struct {
	requests [len(classLabels)]atomic.Uint64
	buckets  [len(latencyBounds) + 1]atomic.Uint64 // the last one is +Inf
	sumNanos atomic.Uint64
	// displaced counts requests the pool's share owed it while it had no
	// available backend (RoutingTable.owners): another pool served them, or
	// the client was refused.
	displaced atomic.Uint64
	// slowAborts counts the client aborts (among requests[classClientAbort])
	// that had waited on the backend past the rollback P95: they are in the
	// latency buckets, the quick ones are not.
	slowAborts atomic.Uint64
}

type shard struct {
	counters
	_ [cacheLine - unsafe.Sizeof(counters{})%cacheLine]byte
}

// poolStats holds the request counts and latency histogram of one pool of
// one service: plain atomics, written on the hot path, read at scrape time.
type poolStats struct {
	shards []shard // statShards of them
}

func newPoolStats() *poolStats {
	return &poolStats{shards: make([]shard, statShards)}
}

// shard picks the shard this record goes to: at random, no lock, no
// allocation.
func (s *poolStats) shard() *counters {
	return &s.shards[rand.Uint32()&statShardMask].counters
}

// record counts one request of the given class that took d until its
// response header (or its failure).
func (s *poolStats) record(class int, d time.Duration) {
	c := s.shard()
	c.requests[class].Add(1)
	c.observe(d)
}

func (c *counters) observe(d time.Duration) {
	b := 0
	for b < len(latencyBounds) && d > latencyBounds[b] {
		b++
	}
	c.buckets[b].Add(1)
	c.sumNanos.Add(uint64(d))
}

// recordAbort counts a request whose client went away before the response
// header. A slow one had waited d on the backend, longer than the rollback
// P95: its wait is a latency (at least that long) of the backend; a quick
// one says nothing about the backend and has no latency.
func (s *poolStats) recordAbort(d time.Duration, slow bool) {
	c := s.shard()
	c.requests[classClientAbort].Add(1)
	if slow {
		c.slowAborts.Add(1)
		c.observe(d)
	}
}

// displace counts one request the pool owed but could not take.
func (s *poolStats) displace() {
	s.shard().displaced.Add(1)
}

// statSnapshot is the sum of a pool's shards at one moment.
type statSnapshot struct {
	requests   [len(classLabels)]uint64
	buckets    [len(latencyBounds) + 1]uint64 // per bucket, not cumulative
	sum        time.Duration
	displaced  uint64
	slowAborts uint64
}

func (s *poolStats) snapshot() statSnapshot {
	var snap statSnapshot
	for i := range s.shards {
		c := &s.shards[i].counters
		for j := range c.requests {
			snap.requests[j] += c.requests[j].Load()
		}
		for j := range c.buckets {
			snap.buckets[j] += c.buckets[j].Load()
		}
		snap.sum += time.Duration(c.sumNanos.Load())
		snap.displaced += c.displaced.Load()
		snap.slowAborts += c.slowAborts.Load()
	}
	return snap
}

// total is the number of requests in the snapshot.
func (s statSnapshot) total() uint64 {
	var n uint64
	for _, c := range s.requests {
		n += c
	}
	return n
}

// observed is the number of requests in the latency buckets.
func (s statSnapshot) observed() uint64 {
	var n uint64
	for _, c := range s.buckets {
		n += c
	}
	return n
}

// add returns the sum of two snapshots.
func (s statSnapshot) add(o statSnapshot) statSnapshot {
	for i := range s.requests {
		s.requests[i] += o.requests[i]
	}
	for i := range s.buckets {
		s.buckets[i] += o.buckets[i]
	}
	s.sum += o.sum
	s.displaced += o.displaced
	s.slowAborts += o.slowAborts
	return s
}

// recorder counts a request in its pool's figures as soon as the inner
// proxy writes the first final status (101 included: an upgraded connection
// is a response too), so a long stream or a WebSocket counts when it starts.
// Embedding the wrapper keeps Unwrap, so Flush and Hijack reach the real
// writer through http.ResponseController.
//
// The latency is the backend's: from the dispatch, or from the end of the
// request body when the backend answers after reading it all, to the
// response header. A slow upload is the client's time, not the backend's.
type recorder struct {
	caddyhttp.ResponseWriterWrapper
	stats *poolStats
	// dispatched is when the request went to the inner proxy.
	dispatched time.Time
	// upload wraps the request body (when there is one) to learn when the
	// proxy finished sending it.
	upload  uploadClock
	hasBody bool
	// ctx is the request's: done when the client went away.
	ctx context.Context
	// slowAbort is the rollback P95: a client that gave up after waiting
	// this long on the backend saw a slow backend.
	slowAbort time.Duration
	counted   bool
	// backendMetrics is the handler's backend_metrics; backend the backend
	// the proxy sent the request to last (set by the fast path's attempt
	// or by the pool's selector), whose figures count it too.
	backendMetrics bool
	backend        *backend
}

// sentTo notes that the proxy sends the request to b (a retry sends it to
// another). w is the writer the proxy got: the recorder, unless a test
// calls the proxy without one.
func sentTo(w http.ResponseWriter, b *backend) {
	if rec, ok := w.(*recorder); ok {
		rec.backend = b
	}
}

// backendStats are the figures of the backend that took the request, nil
// when they are not asked for or no backend took it.
func (rec *recorder) backendStats() *poolStats {
	if !rec.backendMetrics || rec.backend == nil {
		return nil
	}
	return rec.backend.backendStats()
}

func newRecorder(w http.ResponseWriter, r *http.Request, stats *poolStats, slowAbort time.Duration) *recorder {
	rec := &recorder{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, stats: stats, slowAbort: slowAbort, ctx: r.Context()}
	// ContentLength is -1 for a chunked body, 0 without one (Caddy may
	// have wrapped even an empty body).
	if r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody {
		rec.upload.ReadCloser, rec.hasBody = r.Body, true
		r.Body = &rec.upload
	}
	rec.dispatched = time.Now()
	return rec
}

// waited is how long the backend has kept the request waiting by now: since
// the dispatch, or since the request body was sent when it was. sent is
// false when the body is still being sent.
func (rec *recorder) waited(now time.Time) (d time.Duration, sent bool) {
	from := rec.dispatched
	if rec.hasBody {
		done := rec.upload.doneAt.Load()
		if done == 0 {
			return now.Sub(from), false
		}
		if t := time.Unix(0, done); t.After(from) {
			from = t
		}
	}
	return now.Sub(from), true
}

// statusClientClosed is what Caddy's proxy writes when the client went away
// (nginx's 499): not an answer of the backend, finish counts it.
const statusClientClosed = 499

func (rec *recorder) note(status int) {
	if status == statusClientClosed && rec.ctx.Err() != nil {
		return
	}
	if !rec.counted && (status >= 200 || status == http.StatusSwitchingProtocols) {
		rec.counted = true
		// A backend that answered before the body was all sent waited
		// for nothing of the client's: its time runs from the dispatch.
		d, _ := rec.waited(time.Now())
		rec.stats.record(statusClass(status), d)
		if s := rec.backendStats(); s != nil {
			s.record(statusClass(status), d)
		}
	}
}

// finish counts a request whose response the proxy did not start: the
// client went away (gone), a proxy error, or (err == nil) a response the
// server will write as 200.
func (rec *recorder) finish(err error, gone bool) {
	switch {
	case rec.counted:
	case gone:
		// Gone before the response header: the backend is to blame only
		// if it had the whole request and kept the client waiting past
		// the rollback P95.
		rec.counted = true
		d, sent := rec.waited(time.Now())
		slow := sent && rec.slowAbort > 0 && d >= rec.slowAbort
		rec.stats.recordAbort(d, slow)
		if s := rec.backendStats(); s != nil {
			s.recordAbort(d, slow)
		}
	case err == nil:
		rec.note(http.StatusOK)
	default:
		rec.counted = true
		d, _ := rec.waited(time.Now())
		rec.stats.record(classProxyError, d)
		if s := rec.backendStats(); s != nil {
			s.record(classProxyError, d)
		}
	}
}

func (rec *recorder) WriteHeader(status int) {
	rec.note(status)
	rec.ResponseWriterWrapper.WriteHeader(status)
}

func (rec *recorder) Write(b []byte) (int, error) {
	rec.note(http.StatusOK)
	return rec.ResponseWriterWrapper.Write(b)
}

func (rec *recorder) ReadFrom(r io.Reader) (int64, error) {
	rec.note(http.StatusOK)
	return rec.ResponseWriterWrapper.ReadFrom(r)
}

// uploadClock is a request body that notes when it was read to its end.
// The proxy's transport reads it on its own goroutine, hence the atomic.
type uploadClock struct {
	io.ReadCloser
	doneAt atomic.Int64 // Unix nanoseconds; 0 until the end was read
}

func (u *uploadClock) Read(p []byte) (int, error) {
	n, err := u.ReadCloser.Read(p)
	if err == io.EOF && u.doneAt.Load() == 0 {
		u.doneAt.Store(time.Now().UnixNano())
	}
	return n, err
}

// Interface guards
var (
	_ http.ResponseWriter = (*recorder)(nil)
	_ io.ReaderFrom       = (*recorder)(nil)
)
