package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/websocket"
)

// settings is a backend's run-time behaviour, the body of GET and PUT /_backend.
type settings struct {
	// ErrorRate is the fraction of requests answered with ErrorStatus, from 0
	// to 1 in steps of 0.000001. Failures are spread evenly by a counter, not
	// drawn at random, so 0.05 fails exactly every 20th request.
	ErrorRate float64 `json:"error_rate"`
	// ErrorStatus is the status of a failed request, 400 to 599.
	ErrorStatus int `json:"error_status"`
	// LatencyMS is added to every request (not to health checks), 0 to 60000.
	LatencyMS int `json:"latency_ms"`
	// Health is what GET /health/ready reports: "ok" (200), "degraded" (200)
	// or "unhealthy" (503).
	Health string `json:"health"`
}

const (
	ppm          = 1_000_000 // error rates are counted in parts per million
	maxLatencyMS = 60_000
)

func (s settings) validate() error {
	switch {
	case math.IsNaN(s.ErrorRate) || s.ErrorRate < 0 || s.ErrorRate > 1:
		return fmt.Errorf("error_rate %v must be between 0 and 1", s.ErrorRate)
	case s.ErrorStatus < 400 || s.ErrorStatus > 599:
		return fmt.Errorf("error_status %d must be between 400 and 599", s.ErrorStatus)
	case s.LatencyMS < 0 || s.LatencyMS > maxLatencyMS:
		return fmt.Errorf("latency_ms %d must be between 0 and %d", s.LatencyMS, maxLatencyMS)
	}
	if _, ok := healthAnswers[s.Health]; !ok {
		return fmt.Errorf("health %q must be ok, degraded or unhealthy", s.Health)
	}
	return nil
}

type healthAnswer struct {
	status int
	body   []byte
}

var healthAnswers = map[string]healthAnswer{
	"ok":        {http.StatusOK, []byte(`{"status":"ok"}` + "\n")},
	"degraded":  {http.StatusOK, []byte(`{"status":"degraded"}` + "\n")},
	"unhealthy": {http.StatusServiceUnavailable, []byte(`{"status":"unhealthy"}` + "\n")},
}

// behavior is one installed settings value, with everything the hot path needs
// precomputed. Every PUT installs a new one, so the error pattern restarts
// with the new rate.
type behavior struct {
	settings
	errorPPM  uint64
	latency   time.Duration
	errorBody []byte
	health    healthAnswer
	seen      atomic.Uint64 // requests since this behavior was installed
}

func newBehavior(name string, s settings) *behavior {
	return &behavior{
		settings:  s,
		errorPPM:  uint64(math.Round(s.ErrorRate * ppm)),
		latency:   time.Duration(s.LatencyMS) * time.Millisecond,
		errorBody: fmt.Appendf(nil, `{"backend":%q,"error":"injected failure","status":%d}`+"\n", name, s.ErrorStatus),
		health:    healthAnswers[s.Health],
	}
}

// fails counts a request and says whether it is one of the injected failures:
// the n-th request fails when floor(n*rate) steps up, which spreads exactly
// floor(n*rate) failures evenly over the first n requests.
func (bh *behavior) fails() bool {
	if bh.errorPPM == 0 {
		return false
	}
	n := bh.seen.Add(1)
	return n*bh.errorPPM/ppm != (n-1)*bh.errorPPM/ppm
}

// stats is the body of GET /_backend/stats. Requests counts served requests
// (failed ones included), not health checks, control calls or streams.
// Streams is the number of WebSockets and event streams open now.
type stats struct {
	Requests     uint64 `json:"requests"`
	Errors       uint64 `json:"errors"`
	HealthChecks uint64 `json:"health_checks"`
	Streams      uint64 `json:"streams"`
}

// backend is one named test backend and its HTTP handler.
type backend struct {
	name, version, addr string

	// bodyPrefix is the response body up to the path, built once: the hot
	// path only appends the path.
	bodyPrefix []byte
	// nameHeader is assigned to the header map directly, which avoids
	// Header.Set's allocation on every request; net/http never modifies it.
	nameHeader []string

	behavior                       atomic.Pointer[behavior]
	putMu                          sync.Mutex // serializes read-modify-write of behavior
	requests, errors, healthChecks atomic.Uint64

	// streams counts the open WebSockets and event streams; stopping is
	// closed at shutdown to end them, since a server's Shutdown does not
	// wait for hijacked connections and waits forever for event streams.
	streams  atomic.Uint64
	stopping chan struct{}
	stopOnce sync.Once
	ws       websocket.Server
}

var jsonContentType = []string{"application/json"}

func newBackend(name, version, addr string, initial settings) *backend {
	b := &backend{
		name:       name,
		version:    version,
		addr:       addr,
		nameHeader: []string{name},
		stopping:   make(chan struct{}),
	}
	// No Handshake function: any Origin is accepted, as a test backend should.
	b.ws.Handler = b.serveEcho
	b.bodyPrefix = fmt.Appendf(nil, `{"backend":%s,"version":%s,"addr":%s,"path":`,
		jsonString(name), jsonString(version), jsonString(addr))
	b.behavior.Store(newBehavior(name, initial))
	return b
}

func jsonString(s string) []byte {
	q, _ := json.Marshal(s) // a string always marshals
	return q
}

func (b *backend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/health/ready":
		b.serveHealth(w)
	case "/_backend":
		b.serveControl(w, r)
	case "/_backend/stats":
		b.serveStats(w, r)
	case "/_backend/ws":
		b.ws.ServeHTTP(w, r)
	case "/_backend/events":
		b.serveEvents(w, r)
	default:
		b.serveRequest(w, r)
	}
}

func (b *backend) serveRequest(w http.ResponseWriter, r *http.Request) {
	b.requests.Add(1)
	bh := b.behavior.Load()
	if bh.latency > 0 {
		time.Sleep(bh.latency)
	}
	h := w.Header()
	h["Content-Type"] = jsonContentType
	h["X-Backend"] = b.nameHeader
	if bh.fails() {
		b.errors.Add(1)
		w.WriteHeader(bh.ErrorStatus)
		w.Write(bh.errorBody)
		return
	}
	body := make([]byte, 0, len(b.bodyPrefix)+len(r.URL.Path)+4)
	body = append(body, b.bodyPrefix...)
	body = appendJSONString(body, r.URL.Path)
	body = append(body, "}\n"...)
	w.Write(body)
}

// appendJSONString appends s as a JSON string, exactly as encoding/json would
// write it. Paths are nearly always plain ASCII, which is copied as is.
func appendJSONString(buf []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return append(buf, jsonString(s)...)
		}
	}
	buf = append(buf, '"')
	buf = append(buf, s...)
	return append(buf, '"')
}

func (b *backend) serveHealth(w http.ResponseWriter) {
	b.healthChecks.Add(1)
	ha := b.behavior.Load().health
	w.Header()["Content-Type"] = jsonContentType
	w.WriteHeader(ha.status)
	w.Write(ha.body)
}

// maxControlBody bounds a PUT /_backend body; the settings are a few dozen bytes.
const maxControlBody = 64 << 10

func (b *backend) serveControl(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		writeJSON(w, http.StatusOK, b.behavior.Load().settings)
	case http.MethodPut:
		b.putMu.Lock()
		defer b.putMu.Unlock()
		s, err := mergeSettings(b.behavior.Load().settings, http.MaxBytesReader(w, r.Body, maxControlBody))
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		b.behavior.Store(newBehavior(b.name, s))
		writeJSON(w, http.StatusOK, s)
	default:
		w.Header().Set("Allow", "GET, HEAD, PUT")
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "use GET to read or PUT to change /_backend"})
	}
}

// mergeSettings applies a JSON object to cur: fields it leaves out keep their
// values, unknown fields and anything after the object are refused.
func mergeSettings(cur settings, body io.Reader) (settings, error) {
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cur); err != nil {
		if errors.Is(err, io.EOF) {
			return settings{}, errors.New(`empty body: send a JSON object such as {"error_rate":0.05}`)
		}
		return settings{}, fmt.Errorf("bad settings JSON: %w (fields: error_rate, error_status, latency_ms, health)", err)
	}
	if dec.More() {
		return settings{}, errors.New("bad settings JSON: data after the object")
	}
	if err := cur.validate(); err != nil {
		return settings{}, err
	}
	return cur, nil
}

func (b *backend) serveStats(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "use GET to read /_backend/stats"})
		return
	}
	writeJSON(w, http.StatusOK, stats{
		Requests:     b.requests.Load(),
		Errors:       b.errors.Load(),
		HealthChecks: b.healthChecks.Load(),
		Streams:      b.streams.Load(),
	})
}

// serveEcho serves a WebSocket at /_backend/ws: every message comes back
// as it was sent, until the client or the backend closes.
func (b *backend) serveEcho(ws *websocket.Conn) {
	b.streams.Add(1)
	defer b.streams.Add(^uint64(0))
	ended := make(chan struct{})
	defer close(ended)
	go func() {
		select {
		case <-b.stopping:
			ws.Close()
		case <-ended:
		}
	}()
	var msg []byte
	for websocket.Message.Receive(ws, &msg) == nil {
		if websocket.Message.Send(ws, msg) != nil {
			return
		}
	}
}

// eventInterval is how often /_backend/events sends an event.
const eventInterval = time.Second

var eventStreamContentType = []string{"text/event-stream"}

// serveEvents serves an event stream at /_backend/events: an event naming
// the backend at once and then every second, until the client leaves or the
// backend stops.
func (b *backend) serveEvents(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "use GET to read /_backend/events"})
		return
	}
	b.streams.Add(1)
	defer b.streams.Add(^uint64(0))
	h := w.Header()
	h["Content-Type"] = eventStreamContentType
	h["X-Backend"] = b.nameHeader
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	tick := time.NewTicker(eventInterval)
	defer tick.Stop()
	for seq := 1; ; seq++ {
		if _, err := fmt.Fprintf(w, "id: %d\ndata: {\"backend\":%s,\"seq\":%d}\n\n", seq, jsonString(b.name), seq); err != nil || rc.Flush() != nil {
			return
		}
		select {
		case <-tick.C:
		case <-r.Context().Done():
			return
		case <-b.stopping:
			return
		}
	}
}

// stop ends the backend's WebSockets and event streams.
func (b *backend) stop() { b.stopOnce.Do(func() { close(b.stopping) }) }

func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	json.NewEncoder(&buf).Encode(v) // settings, stats and error maps always encode
	w.Header()["Content-Type"] = jsonContentType
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// fleet is the set of running backends of one process.
type fleet struct {
	backends []*backend
	servers  []*http.Server
	errc     chan error // the first serve failure
}

// start binds every backend's address (all or none) and serves them.
func start(cfg config) (*fleet, error) {
	f := &fleet{errc: make(chan error, len(cfg.backends))}
	var lns []net.Listener
	for _, nv := range cfg.backends {
		ln, err := net.Listen("tcp", nv.value)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("backend %s: %w", nv.name, err)
		}
		lns = append(lns, ln)
		// The actual address, so that port 0 reports the port it got.
		f.backends = append(f.backends, newBackend(nv.name, cfg.versions[nv.name], ln.Addr().String(), cfg.initial))
	}
	for i, b := range f.backends {
		srv := &http.Server{Handler: b, ReadHeaderTimeout: 10 * time.Second}
		f.servers = append(f.servers, srv)
		go func() {
			if err := srv.Serve(lns[i]); !errors.Is(err, http.ErrServerClosed) {
				f.errc <- fmt.Errorf("backend %s: %w", b.name, err)
			}
		}()
	}
	return f, nil
}

// shutdown stops every backend, letting requests in flight finish until ctx
// ends, then closing what is left.
func (f *fleet) shutdown(ctx context.Context) error {
	for _, b := range f.backends {
		b.stop()
	}
	errs := make([]error, len(f.servers))
	var wg sync.WaitGroup
	for i, srv := range f.servers {
		wg.Go(func() {
			if err := srv.Shutdown(ctx); err != nil {
				srv.Close()
				errs[i] = fmt.Errorf("backend %s: requests still in flight at stop: %w", f.backends[i].name, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
