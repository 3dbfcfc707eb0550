package cluster

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func TestSecretAuth(t *testing.T) {
	tests := []struct {
		name         string
		server       string
		client       string
		wantErr      error // nil: the call succeeds
		wantRefusals int   // "refused cluster connection" entries in the server log
	}{
		{name: "same secret", server: "right-secret", client: "right-secret"},
		{name: "wrong secret", server: "right-secret", client: "wrong-secret", wantErr: ErrAuth, wantRefusals: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkNoGoroutineLeak(t)
			server := listenNode(t, Auth{Secret: tt.server}, 2*time.Second)
			client := listenNode(t, Auth{Secret: tt.client}, 2*time.Second)
			server.Handle("echo", echo)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			var got echoReply
			err := client.Call(ctx, server.Addr(), "echo", "x", &got)
			if tt.wantErr == nil {
				if err != nil || got.From != client.Addr() {
					t.Fatalf("Call: %v, from %q", err, got.From)
				}
			} else if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Call: %v, want %v", err, tt.wantErr)
			}
			// The server's verdict is logged by its connection goroutine,
			// which may still be finishing when Call returns.
			deadline := time.Now().Add(2 * time.Second)
			for server.logs.FilterMessage("refused cluster connection").Len() < tt.wantRefusals && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			refusals := server.logs.FilterMessage("refused cluster connection").All()
			if len(refusals) != tt.wantRefusals {
				t.Fatalf("%d refusals logged, want %d", len(refusals), tt.wantRefusals)
			}
			for _, e := range refusals {
				if e.ContextMap()["peer"] != client.Addr() {
					t.Errorf("refusal names peer %v, want %s", e.ContextMap()["peer"], client.Addr())
				}
			}
			secrets := []string{"right-secret", "wrong-secret"}
			checkLogsFree(t, server.logs, secrets...)
			checkLogsFree(t, client.logs, secrets...)
		})
	}
}

// A transport without a secret and without TLS is refused: its port would be
// open to anyone.
func TestListenNeedsAuth(t *testing.T) {
	tr, err := Listen(Config{Listen: "127.0.0.1:0"})
	if !errors.Is(err, ErrNoAuth) {
		if tr != nil {
			_ = tr.Close()
		}
		t.Fatalf("Listen without auth: %v, want %v", err, ErrNoAuth)
	}
}

// A client that proves an empty secret, or none, gets nowhere; the server
// says so in its log.
func TestHandshakeRefusesEmptySecret(t *testing.T) {
	server := listenNode(t, Auth{Secret: "right-secret"}, 2*time.Second)
	for _, guess := range [][]byte{nil, []byte("wrong-secret")} {
		conn := rawDial(t, server.Addr())
		_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
		err := clientHandshake(conn, guess, purposeRPC, "127.0.0.1:1", nil)
		if !errors.Is(err, ErrAuth) {
			t.Errorf("handshake with secret %q: %v, want %v", guess, err, ErrAuth)
		}
	}
	checkLogsFree(t, server.logs, "right-secret")
}

// A hello the server does not accept gets a status that says why.
func TestHandshakeRefusesBadHello(t *testing.T) {
	server := listenNode(t, Auth{Secret: "s3cret"}, 2*time.Second)
	tests := []struct {
		name       string
		hello      hello
		wantStatus byte
	}{
		{name: "future version", hello: hello{version: 9, purpose: purposeRPC, addr: "127.0.0.1:1"}, wantStatus: statusBadVersion},
		{name: "unknown purpose", hello: hello{version: protocolVersion, purpose: 7, addr: "127.0.0.1:1"}, wantStatus: statusBadPurpose},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := rawDial(t, server.Addr())
			_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := conn.Write(tt.hello.marshal()); err != nil {
				t.Fatal(err)
			}
			answer, err := io.ReadAll(conn)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(answer, []byte{tt.wantStatus}) {
				t.Errorf("answer %v, want [%d] then close", answer, tt.wantStatus)
			}
		})
	}
}

// Garbage, silent and slow clients neither block honest peers nor keep
// their connections beyond the handshake timeout.
func TestHandshakeAbuse(t *testing.T) {
	checkNoGoroutineLeak(t)
	const timeout = 500 * time.Millisecond
	server := listenNode(t, Auth{Secret: "s3cret"}, timeout)
	client := listenNode(t, Auth{Secret: "s3cret"}, timeout)
	server.Handle("echo", echo)

	// More silent connections than may wait for a handshake.
	silent := make([]io.Reader, 0, maxPending+16)
	for range maxPending + 16 {
		silent = append(silent, rawDial(t, server.Addr()))
	}
	// A slowloris: a valid magic, one byte at a time.
	slow := rawDial(t, server.Addr())
	var slowWG sync.WaitGroup
	slowWG.Go(func() {
		for _, b := range []byte(handshakeMagic) {
			if _, err := slow.Write([]byte{b}); err != nil {
				return
			}
			time.Sleep(timeout / 4)
		}
	})
	// Garbage: the server hangs up on it.
	garbage := rawDial(t, server.Addr())
	_, _ = garbage.Write(bytes.Repeat([]byte{0xff}, 256))

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	if err := client.Call(ctx, server.Addr(), "echo", "honest", nil); err != nil {
		t.Fatalf("honest call among abusive clients: %v", err)
	}
	if el := time.Since(start); el > timeout/2 {
		t.Errorf("honest call took %v, want well under the %v handshake timeout", el, timeout)
	}

	// Every abusive connection is closed by the server by the time the
	// handshake timeout has passed (a read ends with EOF, not our deadline).
	for i, c := range append(silent, slow, garbage) {
		conn := c.(interface {
			io.Reader
			SetReadDeadline(time.Time) error
		})
		_ = conn.SetReadDeadline(time.Now().Add(3 * timeout))
		// Closing with unread input sends a reset rather than EOF.
		if _, err := io.ReadAll(conn); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("abusive connection %d: %v, want closed by the server", i, err)
		}
	}
	slowWG.Wait()
}

func TestBlock(t *testing.T) {
	checkNoGoroutineLeak(t)
	a := listenNode(t, Auth{Secret: "s3cret"}, 2*time.Second)
	b := listenNode(t, Auth{Secret: "s3cret"}, 2*time.Second)
	a.Handle("echo", echo)
	b.Handle("echo", echo)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	callBoth := func() (ab, ba error) {
		return a.Call(ctx, b.Addr(), "echo", nil, nil), b.Call(ctx, a.Addr(), "echo", nil, nil)
	}
	if ab, ba := callBoth(); ab != nil || ba != nil {
		t.Fatalf("before block: %v, %v", ab, ba)
	}

	a.block(b.Addr())
	a.mu.Lock()
	for c := range a.conns {
		if c.peer == b.Addr() {
			t.Errorf("connection with %s still open after block", c.peer)
		}
	}
	a.mu.Unlock()
	// Blocked on one side only: both directions fail.
	if ab, ba := callBoth(); !errors.Is(ab, ErrUnavailable) || !errors.Is(ba, ErrUnavailable) {
		t.Fatalf("after block: %v, %v; want ErrUnavailable both ways", ab, ba)
	}

	a.unblock(b.Addr())
	if ab, ba := callBoth(); ab != nil || ba != nil {
		t.Fatalf("after unblock: %v, %v", ab, ba)
	}
	a.block(b.Addr())
	a.unblockAll()
	if ab, ba := callBoth(); ab != nil || ba != nil {
		t.Fatalf("after unblockAll: %v, %v", ab, ba)
	}
}

func TestListenConfig(t *testing.T) {
	ca := newTestCA(t, "ca")
	tests := []struct {
		name string
		cfg  Config
	}{
		{name: "bad listen", cfg: Config{Listen: "nonsense", Auth: Auth{Secret: "s"}}},
		{name: "wildcard without advertise", cfg: Config{Listen: "0.0.0.0:0", Auth: Auth{Secret: "s"}}},
		{name: "advertise without port", cfg: Config{Listen: "127.0.0.1:0", Advertise: "node1", Auth: Auth{Secret: "s"}}},
		{name: "advertise port 0", cfg: Config{Listen: "127.0.0.1:0", Advertise: "node1:0", Auth: Auth{Secret: "s"}}},
		{name: "tls without certificate", cfg: Config{Listen: "127.0.0.1:0", Auth: Auth{TLS: nodeTLSNoCert(ca)}}},
		{name: "tls without CA", cfg: Config{Listen: "127.0.0.1:0", Auth: Auth{TLS: nodeTLSNoCA(t, ca)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr, err := Listen(tt.cfg)
			if err == nil {
				_ = tr.Close()
				t.Fatal("Listen succeeded, want an error")
			}
			t.Log(err)
		})
	}

	t.Run("advertise", func(t *testing.T) {
		tr, err := Listen(Config{Listen: "127.0.0.1:0", Advertise: "node1.example:7001", Auth: Auth{Secret: "s"}})
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		if tr.Addr() != "node1.example:7001" || tr.RaftStreamLayer().Addr().String() != tr.Addr() {
			t.Errorf("Addr %q, stream layer %q", tr.Addr(), tr.RaftStreamLayer().Addr())
		}
	})
	t.Run("close twice", func(t *testing.T) {
		tr, err := Listen(Config{Listen: "127.0.0.1:0", Auth: Auth{Secret: "s"}})
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.Close(); err != nil {
			t.Errorf("first Close: %v", err)
		}
		if err := tr.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		if _, err := tr.RaftStreamLayer().Accept(); err == nil {
			t.Error("Accept after Close succeeded")
		}
		peer := listenNode(t, Auth{Secret: "s3cret"}, time.Second)
		peer.Handle("echo", echo)
		if err := tr.Call(context.Background(), peer.Addr(), "echo", nil, nil); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Call after Close: %v, want net.ErrClosed", err)
		}
	})
}

// Closing the Raft side (Raft's own shutdown does) ends Accept and refuses
// Raft connections, while RPC goes on.
func TestRaftStreamLayerClose(t *testing.T) {
	checkNoGoroutineLeak(t)
	server := listenNode(t, Auth{Secret: "s3cret"}, time.Second)
	client := listenNode(t, Auth{Secret: "s3cret"}, time.Second)
	server.Handle("echo", echo)
	stream := server.RaftStreamLayer()

	accepted := make(chan error, 1)
	go func() {
		c, err := stream.Accept()
		if err == nil {
			_ = c.Close()
		}
		accepted <- err
	}()
	c, err := client.RaftStreamLayer().Dial(raft.ServerAddress(server.Addr()), time.Second)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	_ = c.Close()
	if err := <-accepted; err != nil {
		t.Fatalf("Accept: %v", err)
	}

	if err := stream.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
	c, err = client.RaftStreamLayer().Dial(raft.ServerAddress(server.Addr()), time.Second)
	if err == nil {
		// Authenticated, then closed unserved.
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Errorf("read on a Raft connection after the stream layer closed: %v, want EOF", err)
		}
		_ = c.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := client.Call(ctx, server.Addr(), "echo", nil, nil); err != nil {
		t.Errorf("RPC after the stream layer closed: %v", err)
	}
}
