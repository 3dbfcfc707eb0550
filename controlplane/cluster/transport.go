// Package cluster is the node-to-node channel of cbproxy: one TCP port that
// carries both Raft (through RaftStreamLayer) and a small JSON RPC (Call and
// Handle), every connection authenticated with the cluster secret, mutual TLS,
// or both. See DESIGN.md for the wire format.
package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/internal/partition"
	"go.uber.org/zap"
)

// Auth is how nodes prove they belong to the cluster: the shared Secret, mutual
// TLS, or both (TLS first, then the secret handshake inside it, bound to the
// TLS session).
//
// A transport with neither is refused: anyone who reaches the port could
// then write to the cluster.
type Auth struct {
	// Secret is the shared cluster secret; "" means none, which only mutual
	// TLS may make up for. Nodes prove they know it with a
	// challenge-response handshake: it never crosses the wire.
	Secret string

	// TLS enables mutual TLS between nodes; nil means none. The same config
	// serves both sides: its Certificates are presented to peers, and peers'
	// certificates must chain to RootCAs (or ClientCAs, when set, for
	// incoming connections). Node certificates therefore need both the
	// serverAuth and clientAuth extended key usages. Unless ServerName is set,
	// the host name of a dialed peer is not checked: nodes dial each other by
	// the addresses in the Raft configuration, and a certificate from the
	// cluster CA is the proof of membership, on both sides alike.
	TLS *tls.Config
}

// Config of a transport.
type Config struct {
	// Listen is the host:port to bind ("127.0.0.1:0" in tests).
	Listen string
	// Advertise is the host:port peers dial to reach this node; "" means the
	// bound address (with the real port when Listen asks for port 0).
	Advertise string
	// Auth is how this node and its peers authenticate each other.
	Auth Auth
	// Logger receives connection errors. Secrets and proofs are never logged.
	Logger *zap.Logger
	// Timeout bounds dials and handshakes (default 10s).
	Timeout time.Duration
}

// DefaultTimeout bounds dials and handshakes when Config.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// maxPending caps the connections accepted but not yet authenticated. When it
// is reached the oldest is dropped: an honest peer finishes its handshake in
// milliseconds, so whoever has waited longest is the likeliest to be stalling.
const maxPending = 64

var (
	// ErrAuth marks a peer that failed to authenticate, or rejected our proof:
	// the cluster secret or TLS certificates differ between the two nodes.
	// Retrying does not help.
	ErrAuth = errors.New("cluster authentication failed")

	// ErrNoAuth refuses a transport without a secret and without mutual
	// TLS: its port would be open to anyone who reaches it.
	ErrNoAuth = errors.New("the cluster port needs a cluster secret or mutual TLS: without either, anyone who reaches it could write to the cluster")

	// ErrUnavailable marks a failure to reach a peer or to get its answer:
	// dial, handshake, or a connection that broke. When the connection broke
	// after the request was sent, the handler may have run: retry only
	// idempotent calls.
	ErrUnavailable = errors.New("cluster peer unavailable")
)

// Transport is one node's end of the cluster channel: a listener that accepts
// Raft and RPC connections, and a dialer with a pool of RPC connections.
type Transport struct {
	ln        net.Listener
	addr      string
	secret    []byte
	serverTLS *tls.Config
	clientTLS *tls.Config
	timeout   time.Duration
	log       *zap.Logger

	// ctx is the parent of every handler's context; Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	raft raftAcceptor

	handlersMu sync.RWMutex
	handlers   map[string]Handler

	mu      sync.Mutex
	closed  bool
	conns   map[*peerConn]struct{} // authenticated connections, both directions
	pending map[net.Conn]time.Time // accepted, not yet authenticated
	idle    map[string][]*peerConn // RPC client connections ready for reuse, by peer
	blocked map[string]bool        // peer addresses cut off by block
	closeMu sync.Mutex             // serializes Close
}

// Listen binds the cluster port and starts accepting connections.
func Listen(cfg Config) (*Transport, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Auth.Secret == "" && cfg.Auth.TLS == nil {
		return nil, ErrNoAuth
	}
	t := &Transport{
		secret:   []byte(cfg.Auth.Secret),
		timeout:  cfg.Timeout,
		log:      cfg.Logger,
		handlers: make(map[string]Handler),
		conns:    make(map[*peerConn]struct{}),
		pending:  make(map[net.Conn]time.Time),
		idle:     make(map[string][]*peerConn),
		blocked:  make(map[string]bool),
	}
	if cfg.Auth.TLS != nil {
		var err error
		if t.serverTLS, t.clientTLS, err = splitTLS(cfg.Auth.TLS); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listening: %w", err)
	}
	if t.addr, err = advertiseAddr(cfg.Advertise, ln.Addr().(*net.TCPAddr)); err != nil {
		_ = ln.Close()
		return nil, err
	}
	t.ln = ln
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.raft = newRaftAcceptor()
	t.wg.Add(1)
	go t.acceptLoop()
	return t, nil
}

// advertiseAddr returns the address peers dial: the configured one, or the
// bound one when it is a specific IP.
func advertiseAddr(advertise string, bound *net.TCPAddr) (string, error) {
	if advertise != "" {
		host, port, err := net.SplitHostPort(advertise)
		if err != nil || host == "" || port == "" || port == "0" {
			return "", fmt.Errorf("advertise address %q: want host:port with a non-zero port", advertise)
		}
		return advertise, nil
	}
	if bound.IP.IsUnspecified() {
		return "", fmt.Errorf("listening on the wildcard address %s: give the address peers reach this node on", bound)
	}
	return bound.String(), nil
}

// splitTLS derives the server and client sides from one node TLS config.
func splitTLS(c *tls.Config) (server, client *tls.Config, err error) {
	if len(c.Certificates) == 0 && c.GetCertificate == nil {
		return nil, nil, errors.New("cluster TLS: no node certificate configured")
	}
	if c.RootCAs == nil {
		return nil, nil, errors.New("cluster TLS: no CA configured to verify peers")
	}
	server = c.Clone()
	server.MinVersion = tls.VersionTLS13
	server.ClientAuth = tls.RequireAndVerifyClientCert
	if server.ClientCAs == nil {
		server.ClientCAs = c.RootCAs
	}

	client = c.Clone()
	client.MinVersion = tls.VersionTLS13
	if client.ServerName == "" {
		// Verify the chain as the server side does for clients, without a
		// host name (see Auth.TLS).
		roots := c.RootCAs
		client.InsecureSkipVerify = true
		client.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("peer presented no certificate")
			}
			inter := x509.NewCertPool()
			for _, ic := range cs.PeerCertificates[1:] {
				inter.AddCert(ic)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
				Roots:         roots,
				Intermediates: inter,
				KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			})
			if err != nil {
				return &tls.CertificateVerificationError{UnverifiedCertificates: cs.PeerCertificates, Err: err}
			}
			return nil
		}
	}
	return server, client, nil
}

// Addr returns the address peers dial to reach this node.
func (t *Transport) Addr() string { return t.addr }

// Close stops accepting, closes every connection and waits for the connection
// goroutines, handlers included (their context is cancelled). It is
// idempotent.
func (t *Transport) Close() error {
	t.closeMu.Lock()
	defer t.closeMu.Unlock()
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	conns := t.takeConnsLocked(func(*peerConn) bool { return true })
	pending := t.pending
	t.pending = make(map[net.Conn]time.Time)
	t.idle = make(map[string][]*peerConn)
	t.mu.Unlock()

	t.cancel()
	err := t.ln.Close()
	t.raft.close()
	for _, c := range conns {
		_ = c.Conn.Close()
	}
	for c := range pending {
		_ = c.Close()
	}
	t.wg.Wait()
	return err
}

func init() {
	partition.Of = func(transport any) partition.Cutter { return cutter{transport.(*Transport)} }
}

// cutter is a transport's partition.Cutter: the faults tests inject stay out
// of the Transport's methods.
type cutter struct{ t *Transport }

func (c cutter) Block(peer string)   { c.t.block(peer) }
func (c cutter) Unblock(peer string) { c.t.unblock(peer) }
func (c cutter) UnblockAll()         { c.t.unblockAll() }

// block cuts this node off from the peer with the given advertised address,
// in both directions, for Raft and RPC alike: existing connections are
// closed, dials to it and connections from it are refused. For partition
// tests (package partition).
func (t *Transport) block(addr string) {
	t.mu.Lock()
	t.blocked[addr] = true
	delete(t.idle, addr)
	conns := t.takeConnsLocked(func(c *peerConn) bool { return c.peer == addr })
	t.mu.Unlock()
	for _, c := range conns {
		_ = c.Conn.Close()
	}
}

// unblock lifts block for one peer.
func (t *Transport) unblock(addr string) {
	t.mu.Lock()
	delete(t.blocked, addr)
	t.mu.Unlock()
}

// unblockAll lifts every block.
func (t *Transport) unblockAll() {
	t.mu.Lock()
	clear(t.blocked)
	t.mu.Unlock()
}

func (t *Transport) isBlocked(addr string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.blocked[addr]
}

// takeConnsLocked removes the matching connections from the tracked set and
// returns them for the caller to close once t.mu is released.
func (t *Transport) takeConnsLocked(match func(*peerConn) bool) []*peerConn {
	var out []*peerConn
	for c := range t.conns {
		if match(c) {
			delete(t.conns, c)
			out = append(out, c)
		}
	}
	return out
}

// peerConn is an authenticated connection to or from the peer whose
// advertised address is peer. It is tracked so that block and Close can cut it.
type peerConn struct {
	net.Conn
	peer string
	t    *Transport
	// idleEnd gets the result of watchIdle while the connection is pooled.
	idleEnd chan error
}

func (c *peerConn) Close() error {
	c.t.mu.Lock()
	delete(c.t.conns, c)
	c.t.mu.Unlock()
	return c.Conn.Close()
}

// track registers an authenticated connection, or closes it when the
// transport is closed or the peer blocked.
func (t *Transport) track(conn net.Conn, peer string) (*peerConn, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		_ = conn.Close()
		return nil, net.ErrClosed
	}
	if t.blocked[peer] {
		_ = conn.Close()
		return nil, fmt.Errorf("%w: %s is blocked", ErrUnavailable, peer)
	}
	c := &peerConn{Conn: conn, peer: peer, t: t}
	t.conns[c] = struct{}{}
	return c, nil
}

func (t *Transport) acceptLoop() {
	defer t.wg.Done()
	var delay time.Duration
	for {
		conn, err := t.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			t.log.Error("accepting cluster connection", zap.Error(err))
			select {
			case <-time.After(delay):
				continue
			case <-t.ctx.Done():
				return
			}
		}
		delay = 0
		if !t.addPending(conn) {
			_ = conn.Close()
			return
		}
		t.wg.Add(1)
		go t.serveConn(conn)
	}
}

// addPending records a connection awaiting its handshake, dropping the oldest
// one when maxPending are waiting.
func (t *Transport) addPending(conn net.Conn) bool {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return false
	}
	var oldest net.Conn
	if len(t.pending) >= maxPending {
		var at time.Time
		for c, since := range t.pending {
			if oldest == nil || since.Before(at) {
				oldest, at = c, since
			}
		}
		delete(t.pending, oldest)
	}
	t.pending[conn] = time.Now()
	t.mu.Unlock()
	if oldest != nil {
		t.log.Warn("too many unauthenticated cluster connections: dropping the oldest",
			zap.String("remote", oldest.RemoteAddr().String()))
		_ = oldest.Close()
	}
	return true
}

func (t *Transport) donePending(conn net.Conn) {
	t.mu.Lock()
	delete(t.pending, conn)
	t.mu.Unlock()
}

// serveConn authenticates an accepted connection and hands it to Raft or
// serves RPC on it.
func (t *Transport) serveConn(raw net.Conn) {
	defer t.wg.Done()
	purpose, peer, conn, err := t.acceptHandshake(raw)
	t.donePending(raw)
	if err != nil {
		_ = raw.Close()
		fields := []zap.Field{zap.String("remote", raw.RemoteAddr().String()), zap.String("peer", peer), zap.Error(err)}
		switch {
		case t.ctx.Err() != nil, errors.Is(err, net.ErrClosed):
			// Closed by Close, or dropped as the oldest pending: logged there.
		case err == io.EOF:
			t.log.Debug("cluster connection closed before the handshake", fields...)
		default:
			t.log.Warn("refused cluster connection", fields...)
		}
		return
	}
	pc, err := t.track(conn, peer)
	if err != nil {
		return
	}
	switch purpose {
	case purposeRaft:
		t.raft.deliver(pc)
	case purposeRPC:
		t.serveRPC(pc)
	}
}

// acceptHandshake runs TLS (when configured) and the secret handshake on an
// accepted connection, within the timeout. peer is the advertised address the
// client claimed, when it got that far.
func (t *Transport) acceptHandshake(raw net.Conn) (purpose byte, peer string, conn net.Conn, err error) {
	if err := raw.SetDeadline(time.Now().Add(t.timeout)); err != nil {
		return 0, "", nil, err
	}
	conn = raw
	var binding []byte
	if t.serverTLS != nil {
		tc := tls.Server(raw, t.serverTLS)
		if err := tc.Handshake(); err != nil {
			return 0, "", nil, fmt.Errorf("tls handshake: %w", err)
		}
		if binding, err = tlsBinding(tc); err != nil {
			return 0, "", nil, err
		}
		conn = tc
	}
	h, err := serverHandshake(conn, t.secret, binding, func(addr string) error {
		if t.isBlocked(addr) {
			return fmt.Errorf("%w: %s is blocked", ErrUnavailable, addr)
		}
		return nil
	})
	if err != nil {
		return 0, h.addr, nil, err
	}
	if err := raw.SetDeadline(time.Time{}); err != nil {
		return 0, h.addr, nil, err
	}
	return h.purpose, h.addr, conn, nil
}

// dial connects to a peer for the given purpose and authenticates, within the
// context and the transport's timeout.
func (t *Transport) dial(ctx context.Context, addr string, purpose byte) (*peerConn, error) {
	if t.ctx.Err() != nil {
		return nil, fmt.Errorf("cluster transport closed: %w", net.ErrClosed)
	}
	if t.isBlocked(addr) {
		return nil, fmt.Errorf("%w: %s is blocked", ErrUnavailable, addr)
	}
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	conn, err := t.dialHandshake(ctx, raw, purpose)
	if err != nil {
		_ = raw.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w: handshake with %s: %w", ErrUnavailable, addr, ctx.Err())
		}
		if errors.Is(err, ErrAuth) {
			return nil, fmt.Errorf("handshake with %s: %w", addr, err)
		}
		return nil, fmt.Errorf("%w: handshake with %s: %w", ErrUnavailable, addr, err)
	}
	return t.track(conn, addr)
}

func (t *Transport) dialHandshake(ctx context.Context, raw net.Conn, purpose byte) (net.Conn, error) {
	// The context's end, deadline or cancellation, interrupts a stalled
	// handshake.
	stop := context.AfterFunc(ctx, func() { _ = raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	conn := raw
	var binding []byte
	if t.clientTLS != nil {
		tc := tls.Client(raw, t.clientTLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, tlsError(err)
		}
		var err error
		if binding, err = tlsBinding(tc); err != nil {
			return nil, err
		}
		conn = tc
	}
	if err := clientHandshake(conn, t.secret, purpose, t.addr, binding); err != nil {
		if t.clientTLS != nil {
			// Under TLS 1.3 the server checks our certificate after our side
			// of the TLS handshake is done: its verdict arrives here.
			return nil, tlsError(err)
		}
		return nil, err
	}
	if !stop() {
		return nil, ctx.Err()
	}
	return conn, nil
}

// tlsError marks TLS failures that mean the two nodes do not trust each
// other's certificates as ErrAuth.
func tlsError(err error) error {
	var verr *tls.CertificateVerificationError
	var oe *net.OpError
	switch {
	case errors.As(err, &verr):
		return fmt.Errorf("%w: %w (is the peer's certificate from the cluster CA?)", ErrAuth, err)
	case errors.As(err, &oe) && oe.Op == "remote error":
		return fmt.Errorf("%w: %w (is this node's certificate from the cluster CA?)", ErrAuth, err)
	case errors.Is(err, ErrAuth):
		return err
	}
	return fmt.Errorf("tls handshake: %w", err)
}

// tlsBinding ties the secret handshake to the TLS session, so that a proof
// cannot be relayed into another session.
func tlsBinding(tc *tls.Conn) ([]byte, error) {
	cs := tc.ConnectionState()
	b, err := cs.ExportKeyingMaterial("EXPORTER-cbproxy-cluster-v1", nil, 32)
	if err != nil {
		return nil, fmt.Errorf("tls channel binding: %w", err)
	}
	return b, nil
}
