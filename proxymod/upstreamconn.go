package proxymod

import (
	"bufio"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"
)

// The fast path's keep-alive connections to plain HTTP/1.1 backends
// (fastpath.go). Each backend record keeps its own idle connections, so
// they live as long as the backend is in the service, across table
// rebuilds and reloads, and close when it leaves.

const (
	// idleConnTimeout closes connections idle that long: Caddy's default.
	idleConnTimeout = 2 * time.Minute
	// checkIdleAfter: a connection idle longer than this is checked before
	// it is used (backends close idle connections on their own timers, e.g.
	// 5 s for Node.js); one a busy proxy reuses within it is not, for a
	// request that can go again on a new connection if it was closed.
	checkIdleAfter = time.Second
	// tcpKeepAlive is the probe interval of upstream connections, Caddy's
	// default.
	tcpKeepAlive = 30 * time.Second
	// connBufferSize is the size of each connection's read and write
	// buffers, net/http's.
	connBufferSize = 4 << 10
)

// upstreamConn is one HTTP/1.1 connection to a backend.
type upstreamConn struct {
	conn net.Conn
	// br and bw are nil while the connection is idle (connPool.put).
	br     *bufio.Reader
	bw     *bufio.Writer
	idleAt time.Time // when it went back to the idle list
	reused bool      // it served a request before this one
}

func newUpstreamConn(c net.Conn) *upstreamConn {
	uc := &upstreamConn{conn: c}
	uc.takeBuffers()
	return uc
}

// Buffers of connections in use. An idle connection gives its own back: at
// 1,000 services every backend keeps its idle connections, and their 8 kB
// of buffers each were 11 MB of the live heap (docs/decisions.md, "Idle
// upstream connections without buffers").
var (
	connReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, connBufferSize) }}
	connWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, connBufferSize) }}
)

// takeBuffers gives a connection about to be used its buffers.
func (c *upstreamConn) takeBuffers() {
	if c.br == nil {
		c.br = connReaders.Get().(*bufio.Reader)
		c.br.Reset(c.conn)
	}
	if c.bw == nil {
		c.bw = connWriters.Get().(*bufio.Writer)
		c.bw.Reset(c.conn)
	}
}

// releaseBuffers gives an idle connection's buffers back, when they hold
// nothing (a response read to its end and a flushed request leave them
// empty; anything else stays with the connection).
func (c *upstreamConn) releaseBuffers() {
	if c.br != nil && c.br.Buffered() == 0 {
		c.br.Reset(nil)
		connReaders.Put(c.br)
		c.br = nil
	}
	if c.bw != nil && c.bw.Buffered() == 0 {
		c.bw.Reset(nil)
		connWriters.Put(c.bw)
		c.bw = nil
	}
}

// connPool holds a backend's idle connections, the most recently used on
// top: under load the same few stay warm, and the ones at the bottom age out.
type connPool struct {
	mu     sync.Mutex
	idle   []*upstreamConn
	closed bool // the backend left the service: nothing is kept any more
}

// get returns an idle connection that is still open, or nil. Connections
// idle past checkIdleAfter are checked first, all of them when always is
// set: a request that cannot be sent twice must not go on a connection the
// backend has closed already.
func (cp *connPool) get(now time.Time, always bool) *upstreamConn {
	for {
		cp.mu.Lock()
		n := len(cp.idle)
		if n == 0 {
			cp.mu.Unlock()
			return nil
		}
		c := cp.idle[n-1]
		cp.idle[n-1] = nil
		cp.idle = cp.idle[:n-1]
		cp.mu.Unlock()
		idle := now.Sub(c.idleAt)
		if idle < checkIdleAfter && !always || idle < idleConnTimeout && stillOpen(c.conn) {
			c.reused = true
			c.takeBuffers()
			return c
		}
		c.conn.Close()
	}
}

// put keeps an idle connection for the next request, unless the pool is
// full or closed. It also closes the oldest connection once it has been
// idle past idleConnTimeout.
func (cp *connPool) put(c *upstreamConn, now time.Time) {
	c.idleAt = now
	// Before it is in the list: from then on another request may take it.
	c.releaseBuffers()
	var expired *upstreamConn
	cp.mu.Lock()
	if cp.closed || len(cp.idle) >= maxIdleConnsPerHost {
		cp.mu.Unlock()
		c.conn.Close()
		return
	}
	if len(cp.idle) > 0 && now.Sub(cp.idle[0].idleAt) > idleConnTimeout {
		expired = cp.idle[0]
		copy(cp.idle, cp.idle[1:])
		cp.idle[len(cp.idle)-1] = nil
		cp.idle = cp.idle[:len(cp.idle)-1]
	}
	cp.idle = append(cp.idle, c)
	cp.mu.Unlock()
	if expired != nil {
		expired.conn.Close()
	}
}

// shut closes the idle connections and every one put back later: the
// backend left the service.
func (cp *connPool) shut() {
	cp.mu.Lock()
	idle := cp.idle
	cp.idle, cp.closed = nil, true
	cp.mu.Unlock()
	for _, c := range idle {
		c.conn.Close()
	}
}

// idleCount returns the number of idle connections (tests).
func (cp *connPool) idleCount() int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return len(cp.idle)
}

// stillOpen reports whether an idle connection can take a request: the
// backend has neither closed it nor sent anything on it (an unsolicited
// answer, such as a 408 before an idle close, would be read as the answer
// to the next request). One non-blocking peek, no waiting.
func stillOpen(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	// The last request may have left its header timeout set (fastpath.go
	// keeps it when the body was already buffered); a past one would fail
	// the peek without looking.
	if c.SetReadDeadline(time.Time{}) != nil {
		return false
	}
	var buf [1]byte
	open := false
	err = rc.Read(func(fd uintptr) bool {
		// n == 0: the backend closed it; n > 0: it sent something.
		_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		open = errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EWOULDBLOCK)
		return true
	})
	return err == nil && open
}
