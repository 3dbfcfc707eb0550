package cluster

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// MaxFrameSize caps one RPC request or response (its JSON encoding).
const MaxFrameSize = 8 << 20

// maxIdlePerPeer caps the pooled RPC connections kept per peer. Each carries
// one call at a time; more concurrent calls dial more, and the extras are
// closed when they finish.
const maxIdlePerPeer = 4

// Handler serves one RPC method. from is the caller's advertised address, as
// authenticated by the handshake; req is the request body as sent. The result
// is encoded as JSON for the caller. The context ends when the caller's
// deadline passes or the transport closes.
type Handler func(ctx context.Context, from string, req json.RawMessage) (any, error)

// RemoteError is returned by Call when the remote handler returned an error.
type RemoteError struct {
	// Code is a machine word set by the handler with CodedError, "" if none.
	// The transport itself uses "unknown_method", "internal" (the handler
	// panicked) and "response_too_large".
	Code    string `json:"code,omitempty"`
	Message string `json:"message"`
}

func (e *RemoteError) Error() string { return e.Message }

// CodedError returns an error that reaches the caller of Call as a
// *RemoteError with the given code. A handler may wrap it: the caller sees
// the full message and the code.
func CodedError(code, msg string) error { return &RemoteError{Code: code, Message: msg} }

type rpcRequest struct {
	ID     uint64          `json:"id"`
	Method string          `json:"method"`
	Body   json.RawMessage `json:"body"`
	// TimeoutMS is what was left of the caller's deadline when it sent the
	// request; the handler's context gets the same. 0 means none.
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
}

type rpcResponse struct {
	ID    uint64          `json:"id"`
	Body  json.RawMessage `json:"body,omitempty"`
	Error *RemoteError    `json:"error,omitempty"`
}

var errFrameTooLarge = fmt.Errorf("frame larger than %d bytes", MaxFrameSize)

// readFrame reads one length-prefixed frame: a big-endian uint32 length, then
// that many bytes.
func readFrame(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > MaxFrameSize {
		return nil, errFrameTooLarge
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

// writeFrame writes payload as one frame, in one write.
func writeFrame(w io.Writer, payload []byte) error {
	if len(payload) > MaxFrameSize {
		return errFrameTooLarge
	}
	b := make([]byte, 4, 4+len(payload))
	binary.BigEndian.PutUint32(b, uint32(len(payload)))
	_, err := w.Write(append(b, payload...))
	return err
}

// Handle registers the handler of a method, replacing any earlier one; a nil
// fn removes it. It may be called at any time.
func (t *Transport) Handle(method string, fn Handler) {
	t.handlersMu.Lock()
	defer t.handlersMu.Unlock()
	if fn == nil {
		delete(t.handlers, method)
		return
	}
	t.handlers[method] = fn
}

// serveRPC answers requests on one connection, one at a time, until the
// connection breaks or the transport closes.
func (t *Transport) serveRPC(c *peerConn) {
	defer c.Close()
	for {
		frame, err := readFrame(c)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				t.log.Warn("reading cluster RPC request", zap.String("peer", c.peer), zap.Error(err))
			}
			return
		}
		var req rpcRequest
		if err := json.Unmarshal(frame, &req); err != nil {
			t.log.Warn("malformed cluster RPC request", zap.String("peer", c.peer), zap.Error(err))
			return
		}
		out, err := json.Marshal(t.dispatch(c.peer, &req))
		if err == nil && len(out) > MaxFrameSize {
			err = errFrameTooLarge
		}
		if err != nil {
			out, _ = json.Marshal(rpcResponse{ID: req.ID, Error: &RemoteError{
				Code: "response_too_large", Message: fmt.Sprintf("encoding the %s response: %v", req.Method, err)}})
		}
		// A caller that stops reading must not hold this goroutine.
		_ = c.SetWriteDeadline(time.Now().Add(t.timeout))
		if err := writeFrame(c, out); err != nil {
			return
		}
	}
}

// dispatch runs the handler of one request and builds the response.
func (t *Transport) dispatch(from string, req *rpcRequest) (resp rpcResponse) {
	resp.ID = req.ID
	t.handlersMu.RLock()
	fn := t.handlers[req.Method]
	t.handlersMu.RUnlock()
	if fn == nil {
		resp.Error = &RemoteError{Code: "unknown_method", Message: fmt.Sprintf("unknown cluster RPC method %q", req.Method)}
		return resp
	}
	ctx := t.ctx
	if req.TimeoutMS > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(req.TimeoutMS)*time.Millisecond)
		defer cancel()
	}
	defer func() {
		if v := recover(); v != nil {
			t.log.Error("cluster RPC handler panicked",
				zap.String("method", req.Method), zap.String("peer", from),
				zap.Any("panic", v), zap.Stack("stack"))
			resp.Body = nil
			resp.Error = &RemoteError{Code: "internal", Message: fmt.Sprintf("%s handler panicked: %v", req.Method, v)}
		}
	}()
	result, err := fn(ctx, from, req.Body)
	if err != nil {
		re := &RemoteError{Message: err.Error()}
		var coded *RemoteError
		if errors.As(err, &coded) {
			re.Code = coded.Code
		}
		resp.Error = re
		return resp
	}
	body, err := json.Marshal(result)
	if err != nil {
		resp.Error = &RemoteError{Code: "internal", Message: fmt.Sprintf("encoding the %s response: %v", req.Method, err)}
		return resp
	}
	resp.Body = body
	return resp
}

var callID atomic.Uint64

// Call invokes method on the peer at addr with req encoded as JSON, and
// decodes the answer into resp (unless resp is nil). It returns a
// *RemoteError when the handler failed, an error wrapping ErrAuth when the
// peer and this node do not share the cluster secret or CA, the context's
// error when it ended first, and an error wrapping ErrUnavailable when the
// peer could not be reached or the connection broke. The handler's context
// ends with the caller's deadline: a handler that returns ctx.Err() may
// answer just before the caller's own context ends, with a *RemoteError.
func (t *Transport) Call(ctx context.Context, addr, method string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("encoding %s request: %w", method, err)
	}
	r := rpcRequest{ID: callID.Add(1), Method: method, Body: body}
	if d, ok := ctx.Deadline(); ok {
		r.TimeoutMS = max(time.Until(d).Milliseconds(), 1)
	}
	frame, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encoding %s request: %w", method, err)
	}
	if len(frame) > MaxFrameSize {
		return fmt.Errorf("%s request is %d bytes, over the %d-byte limit", method, len(frame), MaxFrameSize)
	}
	c, err := t.rpcConn(ctx, addr)
	if err != nil {
		return fmt.Errorf("calling %s on %s: %w", method, addr, err)
	}
	answer, err := roundTrip(ctx, c, frame)
	if err != nil {
		_ = c.Close()
		if ctx.Err() != nil {
			return fmt.Errorf("calling %s on %s: %w", method, addr, ctx.Err())
		}
		return fmt.Errorf("calling %s on %s: %w: %w", method, addr, ErrUnavailable, err)
	}
	var res rpcResponse
	if err := json.Unmarshal(answer, &res); err != nil || res.ID != r.ID {
		_ = c.Close()
		return fmt.Errorf("calling %s on %s: %w: malformed response", method, addr, ErrUnavailable)
	}
	t.putConn(c)
	if res.Error != nil {
		return res.Error
	}
	if resp == nil {
		return nil
	}
	if err := json.Unmarshal(res.Body, resp); err != nil {
		return fmt.Errorf("decoding %s response from %s: %w", method, addr, err)
	}
	return nil
}

// roundTrip sends one request frame and reads the response frame, bounded by
// the context.
func roundTrip(ctx context.Context, c net.Conn, frame []byte) ([]byte, error) {
	// Interrupt the I/O when the context ends, rather than copying its
	// deadline to the connection, so that ctx.Err() is set whenever the
	// I/O failed because of it.
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := writeFrame(c, frame); err != nil {
		return nil, err
	}
	answer, err := readFrame(c)
	if err != nil {
		return nil, err
	}
	if !stop() {
		return nil, ctx.Err()
	}
	return answer, nil
}

// rpcConn takes a live pooled connection to addr, or dials one.
func (t *Transport) rpcConn(ctx context.Context, addr string) (*peerConn, error) {
	for {
		t.mu.Lock()
		idle := t.idle[addr]
		if len(idle) == 0 {
			t.mu.Unlock()
			return t.dial(ctx, addr, purposeRPC)
		}
		c := idle[len(idle)-1]
		t.idle[addr] = idle[:len(idle)-1]
		t.mu.Unlock()
		if c.endIdle() {
			return c, nil
		}
		_ = c.Close()
	}
}

// putConn returns a connection to the pool after a completed call.
func (t *Transport) putConn(c *peerConn) {
	t.mu.Lock()
	_, tracked := t.conns[c] // not closed by block or Close meanwhile
	if !tracked || len(t.idle[c.peer]) >= maxIdlePerPeer {
		t.mu.Unlock()
		_ = c.Close()
		return
	}
	t.idle[c.peer] = append(t.idle[c.peer], c)
	idleEnd := make(chan error, 1)
	c.idleEnd = idleEnd
	t.wg.Add(1) // tracked, so Close has not started waiting
	go func() {
		defer t.wg.Done()
		idleEnd <- c.watchIdle()
	}()
	t.mu.Unlock()
}

// watchIdle reads from an idle connection until it is closed or endIdle
// interrupts the read. A peer that closes its end (as a restarted peer does)
// is noticed here, before the connection is used again.
func (c *peerConn) watchIdle() error {
	var b [1]byte
	if _, err := c.Conn.Read(b[:]); err != nil {
		return err
	}
	return errors.New("unexpected data on an idle connection")
}

// endIdle stops watchIdle and reports whether the connection is still good.
func (c *peerConn) endIdle() bool {
	if err := c.Conn.SetReadDeadline(time.Unix(1, 0)); err != nil {
		return false
	}
	err := <-c.idleEnd
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		return false
	}
	return c.Conn.SetReadDeadline(time.Time{}) == nil
}
