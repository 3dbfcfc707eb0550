package proxymod

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"golang.org/x/net/http/httpguts"
)

// The fast path proxies the common request, a plain HTTP/1.x request to a
// pool of plain HTTP/1.1 backends, without Caddy's reverse_proxy and
// net/http's Transport: it writes the request on a pooled keep-alive
// connection and reads the answer (http.ReadResponse) on the request's own
// goroutine, where the Transport hands each request to two goroutines of the
// connection over channels, and Caddy's proxy clones the request, sets its
// placeholders and builds a logger for every attempt. What reaches the
// backend and the client is what Caddy's path sends (the same header rules,
// X-Forwarded-*, Via, retries, status codes); TestFastPathMatchesCaddy
// compares the two. Everything else takes Caddy's path: see fastEligible.

// errBodyLength is a request body shorter than its Content-Length.
var errBodyLength = errors.New("request body is shorter than its Content-Length")

// dialError is a failure to connect: nothing reached the backend, so every
// request may be retried on another backend, as Caddy's proxy does.
type dialError struct{ error }

func (e dialError) Unwrap() error { return e.error }

// max1xx is how many informational answers one request may get, as
// net/http's Transport allows.
const max1xx = 5

// inlineBodyMax is the largest request body written before the response is
// read on the same goroutine: the socket's buffer takes it even when the
// backend answers before reading it. Longer and chunked bodies are written
// by a second goroutine while the response is read, as the Transport does.
const inlineBodyMax = 64 << 10

// fastEligible reports whether r can take the fast path. The rest goes
// through Caddy's reverse_proxy: upgrades (WebSocket, h2c), HTTP/2 and
// HTTP/3 clients, Expect: 100-continue, request trailers, incremental
// requests, requests whose target is not a path, and chunked bodies on
// methods that usually lack one (the Transport probes those first).
func fastEligible(r *http.Request) bool {
	if r.ProtoMajor != 1 || r.Host == "" || r.Method == http.MethodConnect || r.URL.Opaque != "" || !strings.HasPrefix(r.RequestURI, "/") {
		return false
	}
	if r.Trailer != nil || len(r.TransferEncoding) > 1 {
		return false
	}
	h := r.Header
	if _, ok := h["Upgrade"]; ok {
		return false
	}
	if _, ok := h["Expect"]; ok {
		return false
	}
	if _, ok := h["Incremental"]; ok {
		return false
	}
	if r.ContentLength < 0 {
		switch r.Method {
		case "GET", "HEAD", "DELETE", "OPTIONS", "PROPFIND", "SEARCH":
			return false
		}
	}
	return true
}

// copyBuffers are the fast path's body copy buffers (Caddy's size).
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// serveFast proxies r to a backend of pool p. A backend that cannot be
// reached is left for another backend of the pool; so is one that fails a
// GET before answering (Caddy's default retry rule). It returns the error
// Caddy's proxy would: a caddyhttp.HandlerError with 502, 504 or 499.
func (h *Handler) serveFast(w http.ResponseWriter, r *http.Request, p *poolRoute) error {
	var triedBuf [4]*backend
	tried := triedBuf[:0]
	var lastErr error
	var last *backend
	for attempt := 0; attempt <= retries; attempt++ {
		b := p.pickFast(tried)
		if b == nil {
			break
		}
		err := h.fastAttempt(w, r, p, b)
		if err == nil {
			return nil
		}
		lastErr, last = err, b
		var de dialError
		if r.Context().Err() != nil || !errors.As(err, &de) && r.Method != http.MethodGet {
			break
		}
		tried = append(tried, b)
		p.reportFailure(b.dial, 0)
	}
	if lastErr == nil {
		return caddyhttp.Error(http.StatusServiceUnavailable, errors.New("no upstreams available"))
	}
	herr := fastStatusError(r, lastErr)
	if herr.StatusCode >= 502 && herr.StatusCode <= 504 {
		p.reportFailure(last.dial, herr.StatusCode)
	}
	return herr
}

// fastStatusError maps a failed attempt to the status Caddy's proxy answers.
func fastStatusError(r *http.Request, err error) caddyhttp.HandlerError {
	status := http.StatusBadGateway
	var ne net.Error
	var de dialError
	if !errors.As(err, &de) && errors.As(err, &ne) && ne.Timeout() {
		status = http.StatusGatewayTimeout
	}
	if r.Context().Err() != nil || errors.Is(err, context.Canceled) {
		status = statusClientClosed
	}
	return caddyhttp.Error(status, err)
}

// pickFast returns the next available backend of the pool by round robin,
// skipping those already tried for this request, or nil.
func (p *poolRoute) pickFast(tried []*backend) *backend {
	n := uint32(len(p.available))
	for range n {
		b := p.available[p.robin.Add(1)%n]
		if !containsBackend(tried, b) {
			return b
		}
	}
	return nil
}

func containsBackend(list []*backend, b *backend) bool {
	for _, x := range list {
		if x == b {
			return true
		}
	}
	return false
}

// fastAttempt sends r to backend b and, once it answers, copies the answer
// to w. An error means nothing was written to w. An error while copying the
// body ends the response as Caddy's proxy does (http.ErrAbortHandler).
func (h *Handler) fastAttempt(w http.ResponseWriter, r *http.Request, p *poolRoute, b *backend) error {
	sentTo(w, b)
	b.inFlight.Add(1)
	defer b.inFlight.Add(-1)
	ctx := r.Context()
	c, err := h.fastConn(ctx, r, b)
	if err != nil {
		return err
	}
	stop := watchClient(ctx, c)
	res, writeDone, err := h.fastRoundTrip(c, w, r)
	if err != nil && c.reused && replayable(r) && !isTimeout(err) && stop() {
		// A kept connection the backend closed just as it was taken: the
		// request goes again on a new connection, as the Transport does
		// for requests without a body that may be sent twice.
		c.conn.Close()
		if c, err = h.dial(ctx, b); err != nil {
			return err
		}
		stop = watchClient(ctx, c)
		res, writeDone, err = h.fastRoundTrip(c, w, r)
	}
	if err != nil {
		stop()
		c.conn.Close()
		return err
	}
	if h.copyFastResponse(w, r, p, b, c, res, writeDone, stop) {
		b.conns.put(c, time.Now())
	} else {
		c.conn.Close()
	}
	return nil
}

// watchClient ends every wait on c once the client goes away (its request's
// context is done). The returned stop reports false if it did.
func watchClient(ctx context.Context, c *upstreamConn) (stop func() bool) {
	return context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) })
}

// replayable reports whether r may be sent again after a kept connection
// failed: net/http's Transport's rule (no body, an idempotent method).
func replayable(r *http.Request) bool {
	if r.ContentLength != 0 {
		return false
	}
	switch r.Method {
	case "GET", "HEAD", "OPTIONS", "TRACE":
		return true
	}
	_, ok := r.Header["Idempotency-Key"]
	_, xok := r.Header["X-Idempotency-Key"]
	return ok || xok
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// fastConn returns a kept connection to b, or a new one.
func (h *Handler) fastConn(ctx context.Context, r *http.Request, b *backend) (*upstreamConn, error) {
	if c := b.conns.get(time.Now(), !replayable(r)); c != nil {
		return c, nil
	}
	return h.dial(ctx, b)
}

func (h *Handler) dial(ctx context.Context, b *backend) (*upstreamConn, error) {
	d := net.Dialer{Timeout: time.Duration(h.DialTimeout), KeepAlive: tcpKeepAlive}
	conn, err := d.DialContext(ctx, "tcp", b.dial)
	if err != nil {
		return nil, dialError{err}
	}
	return newUpstreamConn(conn), nil
}

// writeResult is what the goroutine writing a long request body reports.
type writeResult struct{ err error }

// fastRoundTrip writes r on c and reads the answer's header, forwarding
// informational answers (1xx) to w as Caddy's proxy does. writeDone is nil
// when the request was written before reading; else it delivers the result
// of the body's writer once it is done.
func (h *Handler) fastRoundTrip(c *upstreamConn, w http.ResponseWriter, r *http.Request) (res *http.Response, writeDone chan writeResult, err error) {
	if err := writeRequestHead(c, r); err != nil {
		return nil, nil, err
	}
	headerTimeout := time.Duration(h.ResponseHeaderTimeout)
	var deadlineMu sync.Mutex
	headerRead := false
	if r.ContentLength == 0 || r.ContentLength > 0 && r.ContentLength <= inlineBodyMax {
		if err := writeBody(c, r); err != nil {
			return nil, nil, err
		}
		c.conn.SetReadDeadline(time.Now().Add(headerTimeout))
	} else {
		// The backend may answer before it reads the whole body (a 413):
		// the answer is read meanwhile. The response header timeout runs
		// from the end of the body, as the Transport's does.
		c.conn.SetReadDeadline(time.Time{}) // a kept connection may hold its last one
		writeDone = make(chan writeResult, 1)
		go func() {
			err := writeBody(c, r)
			deadlineMu.Lock()
			if !headerRead {
				c.conn.SetReadDeadline(time.Now().Add(headerTimeout))
			}
			deadlineMu.Unlock()
			writeDone <- writeResult{err}
		}()
	}
	for n1xx := 0; ; n1xx++ {
		res, err = http.ReadResponse(c.br, r)
		if err != nil {
			break
		}
		if res.StatusCode >= 200 || res.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		if n1xx == max1xx {
			err = errors.New("too many 1xx informational responses")
			break
		}
		forward1xx(w, res)
	}
	deadlineMu.Lock()
	headerRead = true
	// The header timeout must not cut a long body; a body that is already
	// buffered is not read from the connection any more, and the next
	// request sets its own deadline.
	if writeDone != nil || err != nil || res.ContentLength < 0 || int64(c.br.Buffered()) < res.ContentLength {
		c.conn.SetReadDeadline(time.Time{})
	}
	deadlineMu.Unlock()
	if err != nil {
		if writeDone != nil {
			c.conn.Close() // ends the writer
			<-writeDone
		}
		return nil, nil, err
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		// Upgrades take Caddy's path; a backend that switches protocols
		// unasked cannot be answered.
		if writeDone != nil {
			c.conn.Close()
			<-writeDone
		}
		return nil, nil, fmt.Errorf("backend switched protocols (%q) without an upgrade request", res.Header.Get("Upgrade"))
	}
	return res, writeDone, nil
}

// forward1xx passes an informational answer on, with the backend's headers
// but without keeping them for the final answer (Caddy's Got1xxResponse).
func forward1xx(w http.ResponseWriter, res *http.Response) {
	h := w.Header()
	own := h.Clone()
	stripHopByHop(res.Header)
	for k, vv := range res.Header {
		h[k] = append(h[k], vv...)
	}
	w.WriteHeader(res.StatusCode)
	clear(h)
	for k, vv := range own {
		h[k] = vv
	}
}

// copyFastResponse writes the backend's answer to the client, as Caddy's
// proxy does (finalizeResponse), and reports whether the connection can
// take another request.
func (h *Handler) copyFastResponse(w http.ResponseWriter, r *http.Request, p *poolRoute, b *backend, c *upstreamConn, res *http.Response, writeDone chan writeResult, stop func() bool) bool {
	flushEach := caddyhttp.IsIncremental(res.Header) || res.ContentLength < 0
	eventStream := isEventStream(res.Header["Content-Type"])
	stripHopByHop(res.Header)

	rwh := w.Header()
	delete(rwh, "Server")
	rwh["Via"] = append(rwh["Via"], viaValue(res.ProtoMajor, res.ProtoMinor))
	for k, vv := range res.Header {
		if prior, ok := rwh[k]; ok {
			rwh[k] = append(prior, vv...)
		} else {
			rwh[k] = vv
		}
	}
	announced := len(res.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		rwh.Add("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(res.StatusCode)

	var s *stream
	if eventStream {
		flushEach = true
		s = &stream{pool: p.name, address: b.address, chosenFrom: p.source, delays: h.streamDelays, backend: c.conn}
		h.route.streams.add(s)
	}
	err := copyBody(w, res.Body, flushEach)
	canceled := !stop()
	if s != nil {
		h.route.streams.remove(s)
	}
	errClose := res.Body.Close()
	keep := err == nil && errClose == nil && !canceled && !res.Close && res.ProtoAtLeast(1, 1)
	if writeDone != nil {
		select {
		case wr := <-writeDone:
			keep = keep && wr.err == nil
		default:
			// The backend answered without reading the whole body.
			c.conn.Close()
			<-writeDone
			keep = false
		}
	}
	if err != nil {
		c.conn.Close()
		_ = http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler)
	}
	if len(res.Trailer) > 0 {
		// Forces chunking: net/http would otherwise count a short body.
		_ = http.NewResponseController(w).Flush()
	}
	if len(res.Trailer) == announced {
		for k, vv := range res.Trailer {
			rwh[k] = append(rwh[k], vv...)
		}
	} else {
		for k, vv := range res.Trailer {
			for _, v := range vv {
				rwh.Add(http.TrailerPrefix+k, v)
			}
		}
	}
	return keep
}

// copyBody copies the answer's body to the client, flushing after each
// write when the answer streams (no length, event stream, incremental).
func copyBody(w http.ResponseWriter, body io.Reader, flushEach bool) error {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	buf := *bp
	var rc *http.ResponseController
	if flushEach {
		// The header goes out at once, before any body: a stream's client
		// sees the answer start even while the backend says nothing yet.
		rc = http.NewResponseController(w)
		if err := rc.Flush(); err != nil {
			return err
		}
	}
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			if rc != nil {
				if err := rc.Flush(); err != nil {
					return err
				}
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// viaValue is the Via entry Caddy's proxy adds, for a protocol version.
func viaValue(major, minor int) string {
	switch {
	case major == 1 && minor == 1:
		return "1.1 Caddy"
	case major == 1 && minor == 0:
		return "1.0 Caddy"
	}
	return strconv.Itoa(major) + "." + strconv.Itoa(minor) + " Caddy"
}

// hopHeaders are the hop-by-hop headers Caddy's proxy removes both ways.
func isHopHeader(k string) bool {
	switch k {
	case "Alt-Svc", "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// stripHopByHop removes the hop-by-hop headers and those the Connection
// header names.
func stripHopByHop(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = strings.TrimSpace(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for k := range h {
		if isHopHeader(k) {
			delete(h, k)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// headers the request head writes itself, not from the client's header.
func isOwnRequestHeader(k string) bool {
	switch k {
	case "Host", "User-Agent", "Content-Length", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Via":
		return true
	}
	return false
}

// writeRequestHead writes the request line and header Caddy's proxy and
// net/http's Transport would write for r.
func writeRequestHead(c *upstreamConn, r *http.Request) error {
	hdr := r.Header
	// Headers the client's Connection header names are hop-by-hop too.
	var nominatedBuf [4]string
	nominated := nominatedBuf[:0]
	for _, f := range hdr["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = strings.TrimSpace(sf); sf != "" {
				nominated = append(nominated, http.CanonicalHeaderKey(sf))
			}
		}
	}
	for k, vv := range hdr {
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("invalid header field name %q", k)
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("invalid header field value for %q", k)
			}
		}
	}

	bw := c.bw
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	bw.WriteString(r.URL.RequestURI())
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(r.Host)
	bw.WriteString("\r\n")
	if ua := hdr["User-Agent"]; len(ua) > 0 && ua[0] != "" && !contains(nominated, "User-Agent") {
		writeHeaderLine(bw, "User-Agent", ua[0])
	}
	for k, vv := range hdr {
		if isOwnRequestHeader(k) || contains(nominated, k) {
			continue
		}
		if isHopHeader(k) {
			// Tell a backend that cares that trailers are fine, when the
			// client said it does (Caddy's rule).
			if k == "Te" && httpguts.HeaderValuesContainsToken(vv, "trailers") {
				writeHeaderLine(bw, "Te", "trailers")
			}
			continue
		}
		for _, v := range vv {
			writeHeaderLine(bw, k, v)
		}
	}
	writeForwarded(bw, r, nominated)
	if !contains(nominated, "Via") {
		for _, v := range hdr["Via"] {
			writeHeaderLine(bw, "Via", v)
		}
	}
	bw.WriteString("Via: ")
	bw.WriteString(viaValue(r.ProtoMajor, r.ProtoMinor))
	bw.WriteString("\r\n")
	switch {
	case r.ContentLength > 0:
		bw.WriteString("Content-Length: ")
		var num [20]byte
		bw.Write(strconv.AppendInt(num[:0], r.ContentLength, 10))
		bw.WriteString("\r\n")
	case r.ContentLength < 0:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	case r.Method == "POST" || r.Method == "PUT" || r.Method == "PATCH":
		bw.WriteString("Content-Length: 0\r\n")
	}
	_, err := bw.WriteString("\r\n")
	return err
}

// writeForwarded writes X-Forwarded-For, -Proto and -Host by Caddy's rules:
// the client's own values are kept only when it is a trusted proxy.
func writeForwarded(bw *bufio.Writer, r *http.Request, nominated []string) {
	hdr := r.Header
	trusted, _ := caddyhttp.GetVar(r.Context(), caddyhttp.TrustedProxyVarKey).(bool)
	values := func(k string) ([]string, bool) {
		if contains(nominated, k) {
			return nil, false
		}
		vv, ok := hdr[k]
		return vv, ok
	}
	clientIP, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return // Caddy then drops the client's X-Forwarded-* and sends none
	}
	clientIP, _, _ = strings.Cut(clientIP, "%")
	if vv, ok := values("X-Forwarded-For"); !(ok && vv == nil) {
		switch prior := strings.Join(vv, ", "); {
		case trusted && prior != "" && clientIP != "":
			writeHeaderLine(bw, "X-Forwarded-For", prior+", "+clientIP)
		case trusted && prior != "":
			writeHeaderLine(bw, "X-Forwarded-For", prior)
		case clientIP != "":
			writeHeaderLine(bw, "X-Forwarded-For", clientIP)
		}
	}
	last := func(k, own string) {
		vv, ok := values(k)
		if ok && vv == nil {
			return
		}
		if trusted && len(vv) > 0 && vv[len(vv)-1] != "" {
			own = vv[len(vv)-1]
		}
		writeHeaderLine(bw, k, own)
	}
	proto := "http"
	if r.TLS != nil {
		proto = "https"
	}
	last("X-Forwarded-Proto", proto)
	last("X-Forwarded-Host", r.Host)
}

// writeHeaderLine writes one header field as net/http does: newlines in the
// value become spaces, surrounding blanks go.
func writeHeaderLine(bw *bufio.Writer, k, v string) {
	if strings.ContainsAny(v, "\r\n") {
		v = strings.NewReplacer("\n", " ", "\r", " ").Replace(v)
	}
	v = strings.Trim(v, " \t")
	bw.WriteString(k)
	bw.WriteString(": ")
	bw.WriteString(v)
	bw.WriteString("\r\n")
}

// writeBody writes r's body (chunked when its length is unknown) and
// flushes the request.
func writeBody(c *upstreamConn, r *http.Request) error {
	switch {
	case r.ContentLength > 0:
		n, err := io.CopyN(c.bw, r.Body, r.ContentLength)
		if err == io.EOF || err == nil && n < r.ContentLength {
			return errBodyLength
		}
		if err != nil {
			return err
		}
	case r.ContentLength < 0:
		cw := httputil.NewChunkedWriter(c.bw)
		bp := copyBuffers.Get().(*[]byte)
		_, err := io.CopyBuffer(cw, onlyReader{r.Body}, *bp)
		copyBuffers.Put(bp)
		if err != nil {
			return err
		}
		if err := cw.Close(); err != nil {
			return err
		}
		if _, err := c.bw.WriteString("\r\n"); err != nil {
			return err
		}
	}
	return c.bw.Flush()
}

// onlyReader hides a body's other methods from io.CopyBuffer.
type onlyReader struct{ io.Reader }
