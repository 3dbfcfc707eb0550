package cluster

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// raftAcceptor passes authenticated Raft connections from the accept loop to
// Raft's Accept.
type raftAcceptor struct {
	conns  chan net.Conn
	done   chan struct{}
	closer sync.Once
}

func newRaftAcceptor() raftAcceptor {
	return raftAcceptor{conns: make(chan net.Conn), done: make(chan struct{})}
}

// deliver waits until Raft accepts the connection, or closes it once the
// stream layer is closed.
func (a *raftAcceptor) deliver(c net.Conn) {
	select {
	case a.conns <- c:
	case <-a.done:
		_ = c.Close()
	}
}

func (a *raftAcceptor) close() { a.closer.Do(func() { close(a.done) }) }

// RaftStreamLayer returns the Raft side of the transport, for
// raft.NewNetworkTransportWithConfig. Closing it (as the Raft transport does
// on shutdown) stops Raft's Accept and refuses further incoming Raft
// connections; RPC keeps working until the Transport is closed.
func (t *Transport) RaftStreamLayer() raft.StreamLayer { return streamLayer{t} }

type streamLayer struct{ t *Transport }

// Accept returns the next authenticated incoming Raft connection.
func (s streamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-s.t.raft.conns:
		return c, nil
	case <-s.t.raft.done:
		return nil, fmt.Errorf("cluster raft stream: %w", net.ErrClosed)
	}
}

func (s streamLayer) Close() error {
	s.t.raft.close()
	return nil
}

// Addr is the advertised address: Raft uses it as this node's ServerAddress.
func (s streamLayer) Addr() net.Addr { return advertised(s.t.addr) }

// Dial connects and authenticates a Raft connection to a peer.
func (s streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(s.t.ctx, timeout)
	defer cancel()
	return s.t.dial(ctx, string(address), purposeRaft)
}

// advertised is an address as peers dial it, which may be a host name.
type advertised string

func (a advertised) Network() string { return "tcp" }
func (a advertised) String() string  { return string(a) }
