package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

// openStreams reads the backend's count of open long-lived connections.
func openStreams(t *testing.T, b *backend) uint64 {
	t.Helper()
	_, _, body := call(t, http.MethodGet, "http://"+b.addr+"/_backend/stats", "")
	var s stats
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatal(err)
	}
	return s.Streams
}

func waitStreams(t *testing.T, b *backend, want uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for openStreams(t, b) != want {
		if time.Now().After(deadline) {
			t.Fatalf("open streams: %d, want %d", openStreams(t, b), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWebSocketEcho(t *testing.T) {
	b := startFleet(t, "blue")["blue"]
	ws, err := websocket.Dial("ws://"+b.addr+"/_backend/ws", "", "http://"+b.addr)
	if err != nil {
		t.Fatal(err)
	}
	ws.SetDeadline(time.Now().Add(10 * time.Second))
	for _, msg := range []string{"hello", strings.Repeat("x", 70000)} {
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatal(err)
		}
		var got string
		if err := websocket.Message.Receive(ws, &got); err != nil {
			t.Fatal(err)
		}
		if got != msg {
			t.Fatalf("echo of %d bytes: got %d bytes", len(msg), len(got))
		}
	}
	waitStreams(t, b, 1)
	ws.Close()
	waitStreams(t, b, 0)

	// A plain GET is no WebSocket handshake.
	if status, _, _ := call(t, http.MethodGet, "http://"+b.addr+"/_backend/ws", ""); status != http.StatusBadRequest {
		t.Errorf("GET /_backend/ws without an upgrade: %d, want 400", status)
	}
}

func TestEventStream(t *testing.T) {
	b := startFleet(t, "blue")["blue"]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+b.addr+"/_backend/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" || resp.Header.Get("X-Backend") != "blue" {
		t.Fatalf("%s, Content-Type %q, X-Backend %q", resp.Status, resp.Header.Get("Content-Type"), resp.Header.Get("X-Backend"))
	}
	br := bufio.NewReader(resp.Body)
	for want := 1; want <= 2; want++ {
		var event []string
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			if line == "\n" {
				break
			}
			event = append(event, line)
		}
		var data struct {
			Backend string `json:"backend"`
			Seq     int    `json:"seq"`
		}
		if len(event) != 2 || !strings.HasPrefix(event[0], "id: ") || !strings.HasPrefix(event[1], "data: ") ||
			json.Unmarshal([]byte(strings.TrimPrefix(event[1], "data: ")), &data) != nil || data.Backend != "blue" || data.Seq != want {
			t.Fatalf("event %d: %q", want, event)
		}
	}
	waitStreams(t, b, 1)
	resp.Body.Close()
	waitStreams(t, b, 0)
}

// TestStreamsEndAtShutdown: a stop does not wait for long-lived connections.
func TestStreamsEndAtShutdown(t *testing.T) {
	cfg := config{backends: []namedValue{{"blue", "127.0.0.1:0"}}, initial: defaultSettings()}
	f, err := start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	addr := f.backends[0].addr
	ws, err := websocket.Dial("ws://"+addr+"/_backend/ws", "", "http://"+addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	resp, err := http.Get("http://" + addr + "/_backend/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	waitStreams(t, f.backends[0], 2)

	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := f.shutdown(ctx); err != nil {
		t.Fatalf("shutdown with open streams: %v", err)
	}
	ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	var msg string
	if err := websocket.Message.Receive(ws, &msg); err == nil {
		t.Errorf("the WebSocket is still open after the shutdown: got %q", msg)
	}
	done := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, resp.Body); done <- err }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Error("the event stream is still open after the shutdown")
	}
}
