package proxymod

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// upstreamRequest is what a raw backend read from the proxy.
type upstreamRequest struct {
	Method, URI, Proto, Host string
	Header, Trailer          http.Header
	TransferEncoding         []string
	ContentLength            int64
	Body                     string
}

// rawBackend is a loopback HTTP/1.1 server written on net directly, so that
// it can answer with what a test wants byte for byte (hop-by-hop headers,
// 1xx, trailers, a close-delimited body) and report every request it read.
type rawBackend struct {
	ln       net.Listener
	requests chan upstreamRequest
	accepted atomic.Int64
}

// rawAnswers are the raw backend's answers by request path.
var rawAnswers = map[string]string{
	"/chunked":  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
	"/trailers": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\nTrailer: X-Sum\r\n\r\n2\r\nok\r\n0\r\nX-Sum: 42\r\n\r\n",
	"/204":      "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
	"/304":      "HTTP/1.1 304 Not Modified\r\nEtag: \"x\"\r\n\r\n",
	"/103":      "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nKeep-Alive: timeout=5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
	"/close":    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\nuntil the end",
	"/head":     "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Head: 1\r\n\r\n",
	"/500":      "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nfail",
}

// rawDefault is the answer to any other path: hop-by-hop headers that must
// not reach the client, a Server and a Via header.
const rawDefault = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Backend: raw\r\nConnection: X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\nAlt-Svc: h3=\":443\"\r\nProxy-Authenticate: Basic\r\nServer: rawsrv\r\nVia: 1.0 upstream\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nhello"

func newRawBackend(t testing.TB) *rawBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &rawBackend{ln: ln, requests: make(chan upstreamRequest, 100)}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.accepted.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { b.serve(c) })
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return b
}

func (b *rawBackend) addr() string { return b.ln.Addr().String() }

func (b *rawBackend) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return
		}
		b.requests <- upstreamRequest{Method: req.Method, URI: req.RequestURI, Proto: req.Proto, Host: req.Host,
			Header: req.Header, Trailer: req.Trailer, TransferEncoding: req.TransferEncoding, ContentLength: req.ContentLength, Body: string(body)}
		answer, ok := rawAnswers[req.URL.Path]
		if !ok {
			answer = rawDefault
		}
		if req.Method == http.MethodHead && !ok {
			answer = rawAnswers["/head"]
		}
		if _, err := io.WriteString(c, answer); err != nil || req.URL.Path == "/close" {
			return
		}
	}
}

// next returns the next request the backend read.
func (b *rawBackend) next(t testing.TB) upstreamRequest {
	t.Helper()
	select {
	case r := <-b.requests:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("the backend got no request")
		return upstreamRequest{}
	}
}

// clientResponse is what a client read: the informational answers, then
// the final one with its body and trailers.
type clientResponse struct {
	Informational []string
	Status        int
	Header        http.Header
	Body          string
	Trailer       http.Header
}

// rawExchange sends a raw request to the proxy on a new connection and
// reads the answer.
func rawExchange(t testing.TB, proxy, raw string) clientResponse {
	t.Helper()
	c, err := net.DialTimeout("tcp", proxy, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	var out clientResponse
	for {
		res, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatalf("%q: %v", raw, err)
		}
		if res.StatusCode < 200 {
			out.Informational = append(out.Informational, fmt.Sprint(res.StatusCode, res.Header))
			continue
		}
		body, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatalf("%q: reading the body: %v", raw, err)
		}
		res.Header.Del("Date")
		out.Status, out.Header, out.Body, out.Trailer = res.StatusCode, res.Header, string(body), res.Trailer
		return out
	}
}

// fastAndCaddySites starts two sites over the raw backends given: the
// first with the fast path (the default), the second with fast_path false.
func fastAndCaddySites(t *testing.T, fast, slow *rawBackend, extra map[string]any) (fastAddr, caddyAddr string) {
	t.Helper()
	fastSite := map[string]any{"service": "fastsvc"}
	caddySite := map[string]any{"service": "caddysvc", "fast_path": false}
	for k, v := range extra {
		fastSite[k], caddySite[k] = v, v
	}
	cfg, addrs := caddyConfig(t, nil, fastSite, caddySite)
	runCaddy(t, cfg)
	applyService(service("fastsvc", map[string]state.Weight{"blue": state.Total}, map[string][]string{"blue": {fast.addr()}}))
	applyService(service("caddysvc", map[string]state.Weight{"blue": state.Total}, map[string][]string{"blue": {slow.addr()}}))
	return addrs[0], addrs[1]
}

// backendRecord returns the route's record of a pool's only backend.
func backendRecord(service, pool string) *backend {
	t := routes.lookup(service).table.Load()
	return t.pools[t.pool(pool)].backends[0].backend
}

// TestFastPathMatchesCaddy: the same request through the fast path and
// through Caddy's reverse_proxy reaches the backend as the same request
// (line, Host, headers after the hop-by-hop rules, X-Forwarded-*, Via,
// framing, body) and gives the client the same answer (1xx, status,
// headers, body, trailers).
func TestFastPathMatchesCaddy(t *testing.T) {
	fastBackend, caddyBackend := newRawBackend(t), newRawBackend(t)
	fastAddr, caddyAddr := fastAndCaddySites(t, fastBackend, caddyBackend, nil)

	requests := []string{
		"GET /path%2Fx/y?q=1&b=%20 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: ua1\r\nConnection: keep-alive, X-Nominated\r\nX-Nominated: drop\r\n" +
			"Keep-Alive: 300\r\nProxy-Authorization: secret\r\nProxy-Connection: keep-alive\r\nTe: trailers, deflate\r\nX-Forwarded-For: 6.6.6.6\r\n" +
			"X-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\nVia: 1.0 front\r\nAccept: */*\r\nX-Multi: a\r\nX-Multi: b\r\nCookie: c=1\r\nAccept-Encoding: gzip\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST /post HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\nContent-Type: text/plain\r\n\r\nhello world",
		"POST /chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n",
		"HEAD /anything HTTP/1.1\r\nHost: h\r\n\r\n",
		"DELETE /204 HTTP/1.1\r\nHost: h\r\n\r\n",
		"PUT /304 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
		"POST /empty HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /trailers HTTP/1.1\r\nHost: h\r\nTe: trailers\r\n\r\n",
		"GET /103 HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /500 HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /close HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
		"GET /old HTTP/1.0\r\nHost: h\r\nUser-Agent:\r\n\r\n",
	}
	for i, raw := range requests {
		line, _, _ := strings.Cut(raw, "\r\n")
		fastAnswer := rawExchange(t, fastAddr, raw)
		fastSeen := fastBackend.next(t)
		caddyAnswer := rawExchange(t, caddyAddr, raw)
		caddySeen := caddyBackend.next(t)
		if !reflect.DeepEqual(fastSeen, caddySeen) {
			t.Errorf("%s: the backend got\n fast:  %+v\n caddy: %+v", line, fastSeen, caddySeen)
		}
		if !reflect.DeepEqual(fastAnswer, caddyAnswer) {
			t.Errorf("%s: the client got\n fast:  %+v\n caddy: %+v", line, fastAnswer, caddyAnswer)
		}
		if i == 0 {
			// Not a vacuous comparison: the first site kept its
			// connection in the fast path's pool, the second did not.
			if n := backendRecord("fastsvc", "blue").conns.idleCount(); n != 1 {
				t.Fatalf("fast site: %d idle fast-path connections, want 1", n)
			}
			if n := backendRecord("caddysvc", "blue").conns.idleCount(); n != 0 {
				t.Fatalf("fast_path false: %d idle fast-path connections, want 0", n)
			}
			if got := fastSeen.Header.Get("X-Forwarded-For"); got != "127.0.0.1" {
				t.Errorf("X-Forwarded-For %q: the client's own must be replaced", got)
			}
		}
	}
}

// newConnCountingBackend starts a backend that counts the connections it
// accepts and closes those idle past idleTimeout (0: never).
func newConnCountingBackend(t *testing.T, conns *atomic.Int64, idleTimeout time.Duration, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config.IdleTimeout = idleTimeout
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// TestFastPathKeepAlive: requests reuse one connection; a backend that
// closes its connection after each answer, or closes idle ones, costs no
// failed request.
func TestFastPathKeepAlive(t *testing.T) {
	var idleClose, perRequestClose atomic.Int64
	keep := newConnCountingBackend(t, &idleClose, 200*time.Millisecond, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "keep\n")
	})
	closing := newConnCountingBackend(t, &perRequestClose, 0, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, "closing\n")
	})
	cfg, addrs := caddyConfig(t, nil, map[string]any{"service": "keep"}, map[string]any{"service": "closing"})
	runCaddy(t, cfg)
	applyService(service("keep", map[string]state.Weight{"blue": state.Total}, map[string][]string{"blue": {keep.Listener.Addr().String()}}))
	applyService(service("closing", map[string]state.Weight{"blue": state.Total}, map[string][]string{"blue": {closing.Listener.Addr().String()}}))
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()

	for range 50 {
		if resp, body := get(t, client, "http://"+addrs[0]+"/", nil); resp.StatusCode != http.StatusOK || body != "keep\n" {
			t.Fatalf("keep: %s %q", resp.Status, body)
		}
	}
	if n := idleClose.Load(); n != 1 {
		t.Errorf("50 sequential requests opened %d backend connections, want 1", n)
	}
	for range 20 {
		if resp, body := get(t, client, "http://"+addrs[1]+"/", nil); resp.StatusCode != http.StatusOK || body != "closing\n" {
			t.Fatalf("closing: %s %q", resp.Status, body)
		}
	}
	if n := perRequestClose.Load(); n != 20 {
		t.Errorf("a backend closing every connection got %d connections for 20 requests", n)
	}
	if n := backendRecord("closing", "blue").conns.idleCount(); n != 0 {
		t.Errorf("%d closed connections kept idle", n)
	}

	// The backend closes idle connections after 200 ms. A GET on a
	// connection idle 300 ms (not checked before use) goes again on a new
	// one; a POST is never sent on a connection found closed.
	for _, wait := range []time.Duration{300 * time.Millisecond, 1500 * time.Millisecond} {
		time.Sleep(wait)
		resp, body := get(t, client, "http://"+addrs[0]+"/", nil)
		if resp.StatusCode != http.StatusOK || body != "keep\n" {
			t.Fatalf("GET after %s idle: %s %q", wait, resp.Status, body)
		}
		time.Sleep(wait)
		resp, err := client.Post("http://"+addrs[0]+"/", "text/plain", strings.NewReader("body"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("POST after %s idle: %s", wait, resp.Status)
		}
	}
}

// TestFastPathBodies: long and chunked bodies both ways, byte for byte,
// and a backend that answers before it reads a long upload.
func TestFastPathBodies(t *testing.T) {
	echo := newBackend(t, "echo", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/reject" {
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			return
		}
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d %x %v\n", n, h.Sum(nil), r.TransferEncoding)
		// A long answer, chunked (no Content-Length).
		if r.URL.Path == "/long" {
			chunk := bytes.Repeat([]byte("x"), 1000)
			for range 3000 {
				w.Write(chunk)
			}
		}
	})
	cfg, addrs := caddyConfig(t, nil, map[string]any{"service": "bodies"})
	runCaddy(t, cfg)
	applyService(service("bodies", map[string]state.Weight{"blue": state.Total}, map[string][]string{"blue": {echo.addr()}}))
	client := &http.Client{Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()

	payload := bytes.Repeat([]byte("0123456789abcdef"), 3<<16) // 3 MiB
	sum := sha256.Sum256(payload)
	for _, tc := range []struct {
		name   string
		body   io.Reader
		length int64
		te     string
	}{
		{"small", bytes.NewReader(payload[:1000]), 1000, "[]"},
		{"long", bytes.NewReader(payload), int64(len(payload)), "[]"},
		{"chunked", io.MultiReader(bytes.NewReader(payload)), -1, "[chunked]"},
	} {
		req, _ := http.NewRequest(http.MethodPost, "http://"+addrs[0]+"/long", tc.body)
		req.ContentLength = tc.length
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("%s: reading the answer: %v", tc.name, err)
		}
		want := fmt.Sprintf("%d %x %s\n", len(payload), sum, tc.te)
		if tc.name == "small" {
			s := sha256.Sum256(payload[:1000])
			want = fmt.Sprintf("1000 %x %s\n", s, tc.te)
		}
		if line, rest, _ := bytes.Cut(got, []byte("\n")); string(line)+"\n" != want || len(rest) != 3000*1000 || resp.TransferEncoding == nil {
			t.Errorf("%s: answer %q (+%d bytes, %v), want %q and 3000000 bytes chunked", tc.name, line, len(rest), resp.TransferEncoding, want)
		}
	}

	// An early 413: the proxy gives it to the client even though the
	// upload is not all sent.
	req, _ := http.NewRequest(http.MethodPost, "http://"+addrs[0]+"/reject", io.MultiReader(bytes.NewReader(payload), bytes.NewReader(payload)))
	req.ContentLength = -1
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("early answer: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("early answer: %s, want 413", resp.Status)
	}
	// The backend's connection is not kept in a state that breaks the next request.
	if resp, body := get(t, client, "http://"+addrs[0]+"/", nil); resp.StatusCode != http.StatusOK || !strings.HasPrefix(body, "0 ") {
		t.Errorf("after the early answer: %s %q", resp.Status, body)
	}
}

// TestFastPathClientAbort: a client that gives up while the backend thinks
// is counted as an abort, the backend's connection is closed (not kept),
// and nothing stays in flight.
func TestFastPathClientAbort(t *testing.T) {
	release := make(chan struct{})
	var closed atomic.Int64
	slow := newBackend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
			closed.Add(1)
		}
	})
	defer close(release)
	cfg, addrs := caddyConfig(t, nil, map[string]any{"service": "abort"})
	runCaddy(t, cfg)
	applyService(service("abort", map[string]state.Weight{"blue": state.Total}, map[string][]string{"blue": {slow.addr()}}))
	aborts := abortsOf("abort", "blue")

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addrs[0]+"/", nil)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("the request did not time out: %s", resp.Status)
	}
	b := backendRecord("abort", "blue")
	waitQuiet(t, func() bool {
		return abortsOf("abort", "blue") == aborts+1 && closed.Load() == 1 && b.inFlight.Load() == 0
	})
	if n := b.conns.idleCount(); n != 0 {
		t.Errorf("%d connections kept after an abort", n)
	}
}

// TestFastPathTimeoutRetriesGet: a backend that never answers fails a GET
// over to the next backend of the pool after the response header timeout
// (Caddy's rule: any GET is retried), a POST gets 504.
func TestFastPathTimeoutRetriesGet(t *testing.T) {
	ok := newBackend(t, "ok", nil)
	cfg, addrs := caddyConfig(t, nil, map[string]any{"service": "retryget", "response_header_timeout": "300ms"})
	runCaddy(t, cfg)
	applyService(service("retryget", map[string]state.Weight{"blue": state.Total}, map[string][]string{"blue": {hungBackend(t), ok.addr()}}))
	client := &http.Client{Timeout: 20 * time.Second}
	defer client.CloseIdleConnections()
	for range 4 {
		if resp, body := get(t, client, "http://"+addrs[0]+"/", nil); resp.StatusCode != http.StatusOK || body != "ok\n" {
			t.Fatalf("GET: %s %q", resp.Status, body)
		}
	}
	statuses := map[int]int{}
	for range 4 {
		resp, err := client.Post("http://"+addrs[0]+"/", "text/plain", strings.NewReader("x"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		statuses[resp.StatusCode]++
	}
	if statuses[http.StatusGatewayTimeout] != 2 || statuses[http.StatusOK] != 2 {
		t.Errorf("POSTs over a hung and a good backend: %v, want two 504 and two 200", statuses)
	}
}

// TestFastPathInformational: a 1xx reaches a client of the fast path.
func TestFastPathInformational(t *testing.T) {
	hints := newBackend(t, "hints", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</a.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		io.WriteString(w, "done\n")
	})
	cfg, addrs := caddyConfig(t, nil, map[string]any{"service": "hints"})
	runCaddy(t, cfg)
	applyService(service("hints", map[string]state.Weight{"blue": state.Total}, map[string][]string{"blue": {hints.addr()}}))
	var got []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		got = append(got, fmt.Sprint(code, " ", h.Get("Link")))
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, "http://"+addrs[0]+"/", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if len(got) != 1 || got[0] != "103 </a.css>; rel=preload" || string(body) != "done\n" || resp.Header.Get("Link") != "" {
		t.Errorf("got 1xx %q, body %q, final Link %q", got, body, resp.Header.Get("Link"))
	}
}

// TestFastPathEligible lists what takes Caddy's path.
func TestFastPathEligible(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		fast bool
	}{
		{"GET / HTTP/1.1\r\nHost: h\r\n\r\n", true},
		{"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", true},
		{"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", false},
		{"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx", false},
		{"POST / HTTP/1.1\r\nHost: h\r\nTrailer: X-T\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: h\r\nIncremental: ?1\r\n\r\n", false},
		{"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", false},
		{"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n", false},
	} {
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(tc.raw)))
		if err != nil {
			t.Fatal(err)
		}
		if got := fastEligible(r); got != tc.fast {
			t.Errorf("%q: fast %v, want %v", tc.raw, got, tc.fast)
		}
	}
	r, _ := http.ReadRequest(bufio.NewReader(strings.NewReader("GET / HTTP/1.1\r\nHost: h\r\n\r\n")))
	r.ProtoMajor, r.ProtoMinor = 2, 0
	if fastEligible(r) {
		t.Error("an HTTP/2 request must take Caddy's path")
	}
}

// FuzzFastRequestHead: whatever request a client sends, the head the fast
// path writes for it parses back as the same request (method, target, Host)
// carrying the client's end-to-end headers unchanged, no hop-by-hop header
// but `Te: trailers`, and cbproxy's own X-Forwarded-* and Via.
func FuzzFastRequestHead(f *testing.F) {
	for _, seed := range []string{
		"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /a?b=c HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\nTe: trailers\r\nUser-Agent: u\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: h:8080\r\nContent-Length: 3\r\nX-Forwarded-For: 1.2.3.4\r\nVia: 1.0 a\r\n\r\nabc",
		"PUT /p HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\nConnection: Via, User-Agent, X-Forwarded-For\r\nVia: x\r\nUser-Agent: y\r\n\r\n",
		"DELETE /%2F HTTP/1.1\r\nHost: [::1]:80\r\nKeep-Alive: 1\r\nProxy-Connection: x\r\nAlt-Svc: y\r\nX-Forwarded-Proto: https\r\n\r\n",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		in, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
		if err != nil || !fastEligible(in) {
			return
		}
		in.RemoteAddr = "192.0.2.1:1234"
		var out bytes.Buffer
		c := &upstreamConn{bw: bufio.NewWriter(&out)}
		if err := writeRequestHead(c, in); err != nil {
			return // an invalid header field: refused, as the Transport does
		}
		c.bw.Flush()
		got, err := http.ReadRequest(bufio.NewReader(&out))
		if err != nil {
			t.Fatalf("the head written for %q does not parse: %v\n%s", raw, err, out.String())
		}
		if got.Method != in.Method || got.RequestURI != in.URL.RequestURI() || got.Host != in.Host {
			t.Fatalf("%q became %s %s Host %q", raw, got.Method, got.RequestURI, got.Host)
		}
		nominated := map[string]bool{}
		for _, v := range in.Header["Connection"] {
			for _, f := range strings.Split(v, ",") {
				nominated[http.CanonicalHeaderKey(strings.TrimSpace(f))] = true
			}
		}
		for k, vv := range got.Header {
			switch {
			case k == "Te":
				if len(vv) != 1 || vv[0] != "trailers" {
					t.Fatalf("Te %q passed on", vv)
				}
			case isHopHeader(k) || nominated[k] && k != "X-Forwarded-For" && k != "X-Forwarded-Proto" && k != "X-Forwarded-Host" && k != "Via":
				t.Fatalf("hop-by-hop %s passed on for %q", k, raw)
			}
		}
		for k, vv := range in.Header {
			if isHopHeader(k) || nominated[k] || isOwnRequestHeader(k) {
				continue
			}
			if !reflect.DeepEqual(got.Header[k], vv) {
				t.Fatalf("%s: %q became %q", k, vv, got.Header[k])
			}
		}
		if xff := got.Header["X-Forwarded-For"]; len(xff) != 1 || xff[0] != "192.0.2.1" {
			t.Fatalf("X-Forwarded-For %q", xff)
		}
		if via := got.Header["Via"]; len(via) == 0 || !strings.HasSuffix(via[len(via)-1], " Caddy") {
			t.Fatalf("Via %q", via)
		}
	})
}

// TestFastPathPolicies: the fast path balances by round robin only; a pool
// under another lb_policy is served by Caddy's reverse_proxy, with the
// policy's choice (first: always the first backend).
func TestFastPathPolicies(t *testing.T) {
	one, two := newBackend(t, "one", nil), newBackend(t, "two", nil)
	cfg, addrs := caddyConfig(t, nil,
		map[string]any{"service": "rr", "lb_policy": map[string]any{"policy": "round_robin"}},
		map[string]any{"service": "first", "lb_policy": map[string]any{"policy": "first"}},
	)
	runCaddy(t, cfg)
	for _, name := range []string{"rr", "first"} {
		applyService(service(name, map[string]state.Weight{"blue": state.Total}, map[string][]string{"blue": {one.addr(), two.addr()}}))
	}
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	seen := map[string]map[string]int{"rr": {}, "first": {}}
	for i, name := range []string{"rr", "first"} {
		for range 10 {
			resp, body := get(t, client, "http://"+addrs[i]+"/", nil)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("%s: %s", name, resp.Status)
			}
			seen[name][body]++
		}
	}
	if seen["rr"]["one\n"] != 5 || seen["rr"]["two\n"] != 5 {
		t.Errorf("round_robin on the fast path: %v, want 5 and 5", seen["rr"])
	}
	if seen["first"]["one\n"] != 10 {
		t.Errorf("lb_policy first: %v, want all 10 on the first backend", seen["first"])
	}
	tbl := routes.lookup("rr").table.Load()
	fastIdle := 0
	for _, b := range tbl.pools[0].backends {
		fastIdle += b.conns.idleCount()
	}
	tbl = routes.lookup("first").table.Load()
	caddyIdle := 0
	for _, b := range tbl.pools[0].backends {
		caddyIdle += b.conns.idleCount()
	}
	if fastIdle != 2 || caddyIdle != 0 {
		t.Errorf("idle fast-path connections: %d for round_robin (want 2), %d for first (want 0: Caddy's path)", fastIdle, caddyIdle)
	}
}

// TestStillOpen: the peek before reusing a connection tells an open one
// from one the backend closed or wrote to unasked, whatever read deadline
// the last request left on it.
func TestStillOpen(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pair := func() (client, server net.Conn) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(); s.Close() })
		return c, s
	}
	c, _ := pair()
	c.SetReadDeadline(time.Now().Add(-time.Second)) // a header timeout long past
	if !stillOpen(c) {
		t.Error("an open idle connection with a past read deadline was judged closed")
	}
	c, s := pair()
	s.Close()
	waitQuiet(t, func() bool { return !stillOpen(c) })
	c, s = pair()
	io.WriteString(s, "HTTP/1.1 408 Request Timeout\r\n\r\n")
	waitQuiet(t, func() bool { return !stillOpen(c) })
}

// An idle connection gives its read and write buffers back and takes them
// again when it is used: at 1,000 services each backend keeps its idle
// connections, and their 8 kB of buffers each were 11 MB of the live heap.
func TestIdleConnHoldsNoBuffers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		s, err := ln.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		br := bufio.NewReader(s)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.WriteString(s, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"+req.URL.Path[1:])
		}
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	roundTrip := func(c *upstreamConn, word string) {
		t.Helper()
		io.WriteString(c.bw, "GET /"+word+" HTTP/1.1\r\nHost: b\r\n\r\n")
		if err := c.bw.Flush(); err != nil {
			t.Fatal(err)
		}
		res, err := http.ReadResponse(c.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(res.Body)
		if err != nil || string(body) != word {
			t.Fatalf("body %q, %v; want %q", body, err, word)
		}
	}
	var pool connPool
	c := newUpstreamConn(conn)
	roundTrip(c, "one")
	pool.put(c, time.Now())
	if c.br != nil || c.bw != nil {
		t.Errorf("an idle connection holds its buffers (reader %v, writer %v)", c.br != nil, c.bw != nil)
	}
	got := pool.get(time.Now(), true)
	if got != c {
		t.Fatalf("the idle connection was not handed out again")
	}
	roundTrip(got, "two")
	pool.shut()
	got.conn.Close()
}
