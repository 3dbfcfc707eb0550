package cluster

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestCallOutcomes(t *testing.T) {
	checkNoGoroutineLeak(t)
	server := listenNode(t, Auth{Secret: "s3cret"}, 2*time.Second)
	client := listenNode(t, Auth{Secret: "s3cret"}, 2*time.Second)
	server.Handle("echo", echo)
	server.Handle("coded", func(context.Context, string, json.RawMessage) (any, error) {
		return nil, fmt.Errorf("applying weights: %w", CodedError("version_mismatch", "version is 7"))
	})
	server.Handle("plain", func(context.Context, string, json.RawMessage) (any, error) {
		return nil, errors.New("no leader")
	})
	server.Handle("panics", func(context.Context, string, json.RawMessage) (any, error) {
		panic("boom")
	})
	server.Handle("huge", func(context.Context, string, json.RawMessage) (any, error) {
		return strings.Repeat("x", MaxFrameSize), nil
	})
	server.Handle("unencodable", func(context.Context, string, json.RawMessage) (any, error) {
		return func() {}, nil
	})

	tests := []struct {
		method   string
		req      any
		wantCode string // expected RemoteError code; "-" for success
		wantMsg  string
	}{
		{method: "echo", req: map[string]int{"n": 1}, wantCode: "-"},
		{method: "coded", wantCode: "version_mismatch", wantMsg: "applying weights: version is 7"},
		{method: "plain", wantCode: "", wantMsg: "no leader"},
		{method: "nope", wantCode: "unknown_method", wantMsg: `unknown cluster RPC method "nope"`},
		{method: "panics", wantCode: "internal", wantMsg: "panics handler panicked: boom"},
		{method: "huge", wantCode: "response_too_large"},
		{method: "unencodable", wantCode: "internal"},
		// The connection survives every failure above.
		{method: "echo", req: "again", wantCode: "-"},
	}
	for _, tt := range tests {
		t.Run(tt.method, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var got echoReply
			err := client.Call(ctx, server.Addr(), tt.method, tt.req, &got)
			if tt.wantCode == "-" {
				if err != nil {
					t.Fatalf("Call: %v", err)
				}
				want, _ := json.Marshal(tt.req)
				if got.From != client.Addr() || string(got.Body) != string(want) {
					t.Errorf("got %+v, want from %s body %s", got, client.Addr(), want)
				}
				return
			}
			var re *RemoteError
			if !errors.As(err, &re) {
				t.Fatalf("Call error %v (%T), want *RemoteError", err, err)
			}
			if re.Code != tt.wantCode || (tt.wantMsg != "" && re.Message != tt.wantMsg) {
				t.Errorf("got code %q message %q, want %q %q", re.Code, re.Message, tt.wantCode, tt.wantMsg)
			}
		})
	}
	if n := len(server.logs.FilterMessage("cluster RPC handler panicked").All()); n != 1 {
		t.Errorf("%d panic log entries, want 1", n)
	}
}

func TestCallContext(t *testing.T) {
	checkNoGoroutineLeak(t)
	server := listenNode(t, Auth{Secret: "s3cret"}, 2*time.Second)
	client := listenNode(t, Auth{Secret: "s3cret"}, 2*time.Second)
	handlerDeadline := make(chan time.Duration, 1)
	server.Handle("wait", func(ctx context.Context, _ string, _ json.RawMessage) (any, error) {
		if d, ok := ctx.Deadline(); ok {
			handlerDeadline <- time.Until(d)
		} else {
			handlerDeadline <- 0
		}
		<-ctx.Done()
		// Answer after the caller has given up: its own context must end
		// the call, not this answer.
		time.Sleep(100 * time.Millisecond)
		return nil, ctx.Err()
	})
	server.Handle("echo", echo)

	t.Run("deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := client.Call(ctx, server.Addr(), "wait", nil, nil)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Call: %v, want DeadlineExceeded", err)
		}
		if el := time.Since(start); el > time.Second {
			t.Errorf("Call returned after %v, want about 200ms", el)
		}
		if d := <-handlerDeadline; d <= 0 || d > 200*time.Millisecond {
			t.Errorf("handler deadline in %v, want within the caller's 200ms", d)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(100*time.Millisecond, cancel)
		start := time.Now()
		err := client.Call(ctx, server.Addr(), "wait", nil, nil)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Call: %v, want Canceled", err)
		}
		if el := time.Since(start); el > time.Second {
			t.Errorf("Call returned after %v, want about 100ms", el)
		}
		if d := <-handlerDeadline; d != 0 {
			t.Errorf("handler has a deadline in %v, want none", d)
		}
	})
	t.Run("next call works", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := client.Call(ctx, server.Addr(), "echo", 1, nil); err != nil {
			t.Fatalf("Call: %v", err)
		}
	})
	// Close must not wait for the handler still blocked on the cancelled
	// call beyond its context: the leak check covers it.
}

func TestCallConcurrent(t *testing.T) {
	checkNoGoroutineLeak(t)
	server := listenNode(t, Auth{Secret: "s3cret"}, 2*time.Second)
	client := listenNode(t, Auth{Secret: "s3cret"}, 2*time.Second)
	server.Handle("echo", func(ctx context.Context, from string, req json.RawMessage) (any, error) {
		time.Sleep(time.Millisecond) // overlap the calls
		return echo(ctx, from, req)
	})
	const workers, calls = 32, 20
	var wg sync.WaitGroup
	errs := make(chan error, workers*calls)
	for w := range workers {
		wg.Go(func() {
			for i := range calls {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				want := fmt.Sprintf("%d/%d", w, i)
				var got echoReply
				err := client.Call(ctx, server.Addr(), "echo", want, &got)
				cancel()
				if err != nil {
					errs <- err
					continue
				}
				var body string
				if err := json.Unmarshal(got.Body, &body); err != nil || body != want {
					errs <- fmt.Errorf("answer %s to request %q", got.Body, want)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	client.mu.Lock()
	idle := len(client.idle[server.Addr()])
	client.mu.Unlock()
	if idle == 0 || idle > maxIdlePerPeer {
		t.Errorf("%d idle connections pooled, want 1..%d", idle, maxIdlePerPeer)
	}
}

func TestCallAfterServerRestart(t *testing.T) {
	checkNoGoroutineLeak(t)
	client := listenNode(t, Auth{Secret: "s3cret"}, 2*time.Second)
	start := func(addr string) *Transport {
		t.Helper()
		server, err := Listen(Config{Listen: addr, Auth: Auth{Secret: "s3cret"}})
		if err != nil {
			t.Fatalf("listening on %s: %v", addr, err)
		}
		server.Handle("echo", echo)
		return server
	}
	call := func(addr string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return client.Call(ctx, addr, "echo", "hi", nil)
	}

	server := start("127.0.0.1:0")
	addr := server.Addr()
	if err := call(addr); err != nil {
		t.Fatalf("first call: %v", err)
	}
	_ = server.Close()
	time.Sleep(50 * time.Millisecond) // a restart takes a while
	server = start(addr)
	// The pooled connection is dead: it is noticed before use.
	if err := call(addr); err != nil {
		t.Fatalf("call after restart: %v", err)
	}
	_ = server.Close()
	if err := call(addr); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("call while down: %v, want ErrUnavailable", err)
	}
}

func TestCallBrokenMidCall(t *testing.T) {
	checkNoGoroutineLeak(t)
	server := listenNode(t, Auth{Secret: "s3cret"}, 2*time.Second)
	client := listenNode(t, Auth{Secret: "s3cret"}, 2*time.Second)
	entered := make(chan struct{}, 1)
	server.Handle("slow", func(ctx context.Context, _ string, _ json.RawMessage) (any, error) {
		entered <- struct{}{}
		select {
		case <-ctx.Done():
		case <-time.After(300 * time.Millisecond):
		}
		return "late", nil
	})
	server.Handle("echo", echo)
	go func() {
		<-entered
		server.block(client.Addr())
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := client.Call(ctx, server.Addr(), "slow", nil, nil); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("call cut by block: %v, want ErrUnavailable", err)
	}
	server.unblock(client.Addr())
	if err := client.Call(ctx, server.Addr(), "echo", nil, nil); err != nil {
		t.Fatalf("call after unblock: %v", err)
	}
}

func TestOversizedFrames(t *testing.T) {
	checkNoGoroutineLeak(t)
	server := listenNode(t, Auth{Secret: "s3cret"}, 2*time.Second)
	client := listenNode(t, Auth{Secret: "s3cret"}, 2*time.Second)
	server.Handle("echo", echo)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	err := client.Call(ctx, server.Addr(), "echo", strings.Repeat("x", MaxFrameSize), nil)
	if err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("oversized request: %v, want a limit error", err)
	}

	// A peer that announces a frame over the limit is cut off at once.
	conn := rawDial(t, server.Addr())
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if err := clientHandshake(conn, []byte("s3cret"), purposeRPC, "127.0.0.1:1", nil); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], MaxFrameSize+1)
	if _, err := conn.Write(hdr[:]); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("read after oversized frame: %v, want EOF", err)
	}
	if n := server.logs.FilterMessage("reading cluster RPC request").Len(); n != 1 {
		t.Errorf("%d log entries for the oversized frame, want 1", n)
	}

	if err := client.Call(ctx, server.Addr(), "echo", "small", nil); err != nil {
		t.Fatalf("call after oversized frames: %v", err)
	}
}
