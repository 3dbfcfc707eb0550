package e2e

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

// stream is the client side of a WebSocket or an event stream to the
// cbproxy-backend through the proxy.
type stream struct {
	name     string
	ws       *websocket.Conn // nil for an event stream
	hangUp   func() error
	messages chan string
	done     chan struct{}
	closedAt time.Time // set before done is closed
}

func newStream(t *testing.T, name string, ws *websocket.Conn, hangUp func() error, read func() (string, error)) *stream {
	s := &stream{name: name, ws: ws, hangUp: hangUp, messages: make(chan string, 16), done: make(chan struct{})}
	t.Cleanup(func() { s.hangUp() })
	go func() {
		defer func() { s.closedAt = time.Now(); close(s.done) }()
		for {
			msg, err := read()
			if err != nil {
				return
			}
			select {
			case s.messages <- msg:
			default: // nobody reads right now
			}
		}
	}()
	return s
}

func openWebSocket(t *testing.T, name, proxy string) *stream {
	t.Helper()
	ws, err := websocket.Dial("ws://"+proxy+"/_backend/ws", "", "http://"+proxy)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return newStream(t, name, ws, ws.Close, func() (string, error) {
		var msg string
		err := websocket.Message.Receive(ws, &msg)
		return msg, err
	})
}

// openEventStream opens the backend's event stream through the proxy and
// checks which backend answers.
func openEventStream(t *testing.T, name, proxy, backend string) *stream {
	t.Helper()
	resp, err := http.Get("http://" + proxy + "/_backend/events")
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("X-Backend") != backend {
		resp.Body.Close()
		t.Fatalf("%s: %s from %q, want 200 from %s", name, resp.Status, resp.Header.Get("X-Backend"), backend)
	}
	br := bufio.NewReader(resp.Body)
	return newStream(t, name, nil, resp.Body.Close, func() (string, error) {
		for {
			line, err := br.ReadString('\n')
			if err != nil || strings.HasPrefix(line, "data: ") {
				return line, err
			}
		}
	})
}

// alive checks that the stream still carries data: an echo of a WebSocket
// message, or the next event (one a second).
func (s *stream) alive(t *testing.T) {
	t.Helper()
	for drained := false; !drained; {
		select {
		case <-s.messages:
		default:
			drained = true
		}
	}
	want := ""
	if s.ws != nil {
		want = fmt.Sprintf("ping %d", time.Now().UnixNano())
		if err := websocket.Message.Send(s.ws, want); err != nil {
			t.Fatalf("%s: send: %v", s.name, err)
		}
	}
	timeout := time.After(10 * time.Second)
	for {
		select {
		case msg := <-s.messages:
			if want == "" || msg == want {
				return
			}
		case <-s.done:
			t.Fatalf("%s was closed", s.name)
		case <-timeout:
			t.Fatalf("%s: nothing for 10 s", s.name)
		}
	}
}

// closedBetween checks that the proxy closed the stream no sooner than min
// and no later than max after since.
func (s *stream) closedBetween(t *testing.T, since time.Time, min, max time.Duration) {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(time.Until(since.Add(max))):
		t.Fatalf("%s still open %s after the change", s.name, max)
	}
	if d := s.closedAt.Sub(since); d < min {
		t.Errorf("%s closed %s after the change, before its delay of %s", s.name, d, min)
	}
}

// backendLoad returns in_flight and long_lived of a pool's backend in the
// service body.
func backendLoad(t *testing.T, admin, pool string) (inFlight, longLived float64) {
	t.Helper()
	_, body := api(t, "GET", admin+"/v1/services/codingbrain", "")
	b := body["pools"].(map[string]any)[pool].(map[string]any)["backends"].([]any)[0].(map[string]any)
	inFlight, _ = b["in_flight"].(float64)
	longLived, _ = b["long_lived"].(float64)
	return inFlight, longLived
}

func waitLoad(t *testing.T, admin, pool string, inFlight, longLived float64) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%s: in_flight %v, long_lived %v", pool, inFlight, longLived), 15*time.Second, func() bool {
		in, long := backendLoad(t, admin, pool)
		return in == inFlight && long == longLived
	})
}

// backendStreams is what the backend itself counts as open.
func backendStreams(t *testing.T, addr string) float64 {
	t.Helper()
	_, body := api(t, "GET", "http://"+addr+"/_backend/stats", "")
	return body["streams"].(float64)
}

// TestLongLivedConnections: WebSockets and event streams through the real
// binary follow switches and rollbacks after their delay, survive a reload,
// and show in the status apart from requests in flight.
func TestLongLivedConnections(t *testing.T) {
	const switchDelay = 2 * time.Second
	n := newNode(t)
	// Site "quick" closes 2 s after a switch; site "patient" has the
	// defaults: 1m after a switch, 5s after a rollback.
	patient := freePort(t)
	caddyfile := func(seed string) string {
		text := n.caddyfileText(seed, n.adminPort)
		text = strings.Replace(text, "\t\tlb_policy round_robin\n", fmt.Sprintf("\t\tlb_policy round_robin\n\t\tstream_close_delay %s\n", switchDelay), 1)
		return text + fmt.Sprintf("\nhttp://127.0.0.1:%d {\n\tcbproxy codingbrain\n}\n", patient)
	}
	if err := os.WriteFile(n.caddyfile, []byte(caddyfile("blue=100")), 0o600); err != nil {
		t.Fatal(err)
	}
	n.start(t)
	quick, slow := fmt.Sprintf("127.0.0.1:%d", n.httpPort), fmt.Sprintf("127.0.0.1:%d", patient)

	// The streams belong to the scenario: the steps follow them to their end.
	wsQuick := openWebSocket(t, "quick WebSocket to blue", quick)
	eventsQuick := openEventStream(t, "quick event stream from blue", quick, "blue")
	wsSlow := openWebSocket(t, "patient WebSocket to blue", slow)

	step(t, "streams show apart from requests in flight", func(t *testing.T) {
		for _, s := range []*stream{wsQuick, eventsQuick, wsSlow} {
			s.alive(t)
		}
		if got := backendStreams(t, n.backends["blue"]); got != 3 {
			t.Fatalf("blue serves %v streams, want 3", got)
		}
		waitLoad(t, n.admin(), "blue", 0, 3)
		out, _, code := cli(t, n.admin(), "status", "codingbrain")
		blueRow := regexp.MustCompile(regexp.QuoteMeta(n.backends["blue"]) + ` +healthy +no +0 +3\n`)
		if code != 0 || !strings.Contains(out, "IN FLIGHT  LONG-LIVED") || !blueRow.MatchString(out) {
			t.Fatalf("status: exit %d\n%s", code, out)
		}
	})

	step(t, "a reload keeps them", func(t *testing.T) {
		// Another seed, which a live service ignores.
		if err := os.WriteFile(n.caddyfile, []byte(caddyfile("blue=50 canary=50")), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, errOut, code := cli(t, n.admin(), "reload", "--config", n.caddyfile, "--adapter", "caddyfile", "--address", fmt.Sprintf("127.0.0.1:%d", n.caddyAdmin)); code != 0 {
			t.Fatalf("reload: exit %d %s", code, errOut)
		}
		for _, s := range []*stream{wsQuick, eventsQuick, wsSlow} {
			s.alive(t)
		}
		waitLoad(t, n.admin(), "blue", 0, 3)
	})

	step(t, "a switch closes them after the site's delay", func(t *testing.T) {
		// The quick site's streams close after 2 s, the patient site's stay
		// (1m).
		switched := time.Now()
		if _, errOut, code := cli(t, n.admin(), "switch", "codingbrain", "green"); code != 0 {
			t.Fatalf("switch: exit %d %s", code, errOut)
		}
		wsQuick.closedBetween(t, switched, switchDelay, switchDelay+30*time.Second)
		eventsQuick.closedBetween(t, switched, switchDelay, switchDelay+30*time.Second)
		wsSlow.alive(t)
		waitLoad(t, n.admin(), "blue", 0, 1)
		waitFor(t, "blue's backend to see 1 stream", 15*time.Second, func() bool { return backendStreams(t, n.backends["blue"]) == 1 })
	})

	step(t, "a rollback closes them after the rollback delay", func(t *testing.T) {
		// The rollback takes green to 0 again: its streams close after the
		// short rollback delay, and blue, back at 100 %, keeps its stream.
		toGreen := openWebSocket(t, "patient WebSocket to green", slow)
		toGreen.alive(t)
		waitLoad(t, n.admin(), "green", 0, 1)
		rolledBack := time.Now()
		if _, errOut, code := cli(t, n.admin(), "rollback", "codingbrain"); code != 0 {
			t.Fatalf("rollback: exit %d %s", code, errOut)
		}
		toGreen.closedBetween(t, rolledBack, 5*time.Second, 30*time.Second)
		wsSlow.alive(t)
		waitLoad(t, n.admin(), "green", 0, 0)
	})

	// Only looks: the steps after it go on whatever it finds.
	t.Run("metrics count the closed streams", func(t *testing.T) {
		metrics := lintedMetrics(t, n.admin()+"/metrics")
		for _, want := range []string{
			`cbproxy_streams_closed_total{pool="blue",reason="switch",service="codingbrain"} 2`,
			`cbproxy_streams_closed_total{pool="green",reason="rollback",service="codingbrain"} 1`,
			fmt.Sprintf(`cbproxy_backend_long_lived{backend=%q,pool="blue",service="codingbrain"} 1`, n.backends["blue"]),
		} {
			if !strings.Contains(metrics, want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	})

	step(t, "the client leaves: nothing is left open", func(t *testing.T) {
		// On either side.
		wsSlow.hangUp()
		waitLoad(t, n.admin(), "blue", 0, 0)
		waitFor(t, "blue's backend to see no stream", 15*time.Second, func() bool { return backendStreams(t, n.backends["blue"]) == 0 })
		_, deps := api(t, "GET", n.admin()+"/health/deps", "")
		d := deps["dependencies"].(map[string]any)["codingbrain/blue/"+n.backends["blue"]].(map[string]any)
		if d["in_flight"] != 0.0 || d["long_lived"] != 0.0 {
			t.Errorf("/health/deps of blue: %v", d)
		}
	})
}
