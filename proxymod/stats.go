package proxymod

import (
	"io"
	"math/rand/v2"
	"net/http"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/cbproxy/cbproxy/controlplane/slo"
)

// Status classes, the code label of cbproxy_requests_total.
var classLabels = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx", "proxy_error"}

const (
	class5xx        = 4
	classProxyError = 5
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

// statShards spreads the counters of a pool so that cores recording at once
// rarely write the same cache line.
const statShards = 8

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
}

type shard struct {
	counters
	_ [cacheLine - unsafe.Sizeof(counters{})%cacheLine]byte
}

// poolStats holds the request counts and latency histogram of one pool of
// one service: plain atomics, written on the hot path, read at scrape time.
type poolStats struct {
	shards [statShards]shard
}

// record counts one request of the given class that took d until its
// response header (or its failure).
func (s *poolStats) record(class int, d time.Duration) {
	c := &s.shards[rand.Uint32()%statShards].counters
	c.requests[class].Add(1)
	b := 0
	for b < len(latencyBounds) && d > latencyBounds[b] {
		b++
	}
	c.buckets[b].Add(1)
	c.sumNanos.Add(uint64(d))
}

// displace counts one request the pool owed but could not take.
func (s *poolStats) displace() {
	s.shards[rand.Uint32()%statShards].displaced.Add(1)
}

// statSnapshot is the sum of a pool's shards at one moment.
type statSnapshot struct {
	requests  [len(classLabels)]uint64
	buckets   [len(latencyBounds) + 1]uint64 // per bucket, not cumulative
	sum       time.Duration
	displaced uint64
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

// recorder counts a request in its pool's figures as soon as the inner
// proxy writes the first final status (101 included: an upgraded connection
// is a response too), so a long stream or a WebSocket counts when it starts,
// with the time to its response header. Embedding the wrapper keeps Unwrap,
// so Flush and Hijack reach the real writer through http.ResponseController.
type recorder struct {
	*caddyhttp.ResponseWriterWrapper
	stats   *poolStats
	start   time.Time
	counted bool
}

func newRecorder(w http.ResponseWriter, stats *poolStats, start time.Time) *recorder {
	return &recorder{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, stats: stats, start: start}
}

func (rec *recorder) note(status int) {
	if !rec.counted && (status >= 200 || status == http.StatusSwitchingProtocols) {
		rec.counted = true
		rec.stats.record(statusClass(status), time.Since(rec.start))
	}
}

// finish counts a request whose response the proxy did not start: a proxy
// error, or (err == nil) a response the server will write as 200.
func (rec *recorder) finish(err error) {
	switch {
	case rec.counted:
	case err == nil:
		rec.note(http.StatusOK)
	default:
		rec.counted = true
		rec.stats.record(classProxyError, time.Since(rec.start))
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

// Interface guards
var (
	_ http.ResponseWriter = (*recorder)(nil)
	_ io.ReaderFrom       = (*recorder)(nil)
)
