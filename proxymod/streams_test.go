package proxymod

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// newStreamingBackend serves the two kinds of long-lived connection: /ws
// upgrades to a line echo protocol (as a WebSocket would, without its
// framing), /events is an event stream that ticks every 20 ms until the
// client leaves. Other paths answer with the backend's name.
func newStreamingBackend(t *testing.T, name string) *countingBackend {
	t.Helper()
	return newBackend(t, name, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ws":
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
			io.Copy(conn, brw)
		case "/events":
			w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
			w.WriteHeader(http.StatusOK)
			rc := http.NewResponseController(w)
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for {
				if _, err := io.WriteString(w, "data: tick\n\n"); err != nil || rc.Flush() != nil {
					return
				}
				select {
				case <-tick.C:
				case <-r.Context().Done():
					return
				}
			}
		default:
			fmt.Fprintln(w, name)
		}
	})
}

// liveConn is the client side of a long-lived connection through the proxy.
type liveConn struct {
	name  string
	body  io.Closer
	echo  io.Writer // nil for an event stream
	lines chan string
	done  chan struct{}
	// closedAt is when the read side ended; set before done is closed.
	closedAt time.Time
}

func newLiveConn(t *testing.T, name string, body io.Closer, echo io.Writer, r *bufio.Reader) *liveConn {
	c := &liveConn{name: name, body: body, echo: echo, lines: make(chan string, 64), done: make(chan struct{})}
	t.Cleanup(func() { body.Close() })
	go func() {
		defer func() { c.closedAt = time.Now(); close(c.done) }()
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			select {
			case c.lines <- line:
			default: // an event stream nobody reads right now
			}
		}
	}()
	return c
}

// openUpgraded opens an upgraded connection through the proxy at addr.
func openUpgraded(t *testing.T, addr string) *liveConn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(conn)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Time{})
	if resp.StatusCode != http.StatusSwitchingProtocols {
		conn.Close()
		t.Fatalf("upgrade through %s: %s", addr, resp.Status)
	}
	return newLiveConn(t, "upgraded connection", conn, conn, br)
}

// openEvents opens an event stream through the proxy at addr.
func openEvents(t *testing.T, addr string) *liveConn {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{}}
	resp, err := client.Get("http://" + addr + "/events")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		resp.Body.Close()
		t.Fatalf("event stream through %s: %s %s", addr, resp.Status, resp.Header.Get("Content-Type"))
	}
	return newLiveConn(t, "event stream", resp.Body, nil, bufio.NewReader(resp.Body))
}

// alive checks that the connection still carries data both ways (an echo),
// or for an event stream that a new event arrives.
func (c *liveConn) alive(t *testing.T) {
	t.Helper()
	for drained := false; !drained; {
		select {
		case <-c.lines:
		default:
			drained = true
		}
	}
	if c.echo != nil {
		if _, err := io.WriteString(c.echo, "ping\n"); err != nil {
			t.Fatalf("%s: write: %v", c.name, err)
		}
	}
	timeout := time.After(5 * time.Second)
	for {
		select {
		case line := <-c.lines:
			if c.echo == nil || line == "ping\n" {
				return
			}
		case <-c.done:
			t.Fatalf("%s was closed", c.name)
		case <-timeout:
			t.Fatalf("%s: no data for 5 s", c.name)
		}
	}
}

// waitClosed waits until the proxy closed the connection and returns when.
func (c *liveConn) waitClosed(t *testing.T, within time.Duration) time.Time {
	t.Helper()
	select {
	case <-c.done:
		return c.closedAt
	case <-time.After(within):
		t.Fatalf("%s still open after %s", c.name, within)
	}
	return time.Time{}
}

// closedAfter checks that c was closed no sooner than delay after since,
// and within a generous bound.
func (c *liveConn) closedAfter(t *testing.T, since time.Time, delay time.Duration) {
	t.Helper()
	at := c.waitClosed(t, delay+15*time.Second)
	if at.Sub(since) < delay {
		t.Errorf("%s closed %s after the change, before its delay of %s", c.name, at.Sub(since), delay)
	}
}

// streamsClosed reads cbproxy_streams_closed_total for one series.
func streamsClosed(t *testing.T, service, pool, reason string) float64 {
	t.Helper()
	mfs := gather(t, routes)
	for _, mf := range mfs {
		if mf.GetName() != "cbproxy_streams_closed_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["service"] == service && labels["pool"] == pool && labels["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// waitIdle waits until the backend has neither requests in flight nor
// long-lived connections on this node.
func waitIdle(t *testing.T, service, pool, address string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		in, long := dataPlane{}.InFlight(service, pool, address), dataPlane{}.LongLived(service, pool, address)
		if in == 0 && long == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/%s/%s: in flight %d, long-lived %d; want 0 and 0", service, pool, address, in, long)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestStreamsClosedWhenPoolLosesItsWeight(t *testing.T) {
	const svc, delay = "streams-switch", 500 * time.Millisecond
	blue, green := newStreamingBackend(t, "blue"), newStreamingBackend(t, "green")
	cfg, addrs := caddyConfig(t, nil, map[string]any{"service": svc, "stream_close_delay": delay.String()})
	runCaddy(t, cfg)
	pools := map[string][]string{"blue": {blue.addr()}, "green": {green.addr()}}
	applyService(service(svc, map[string]state.Weight{"blue": 10000}, pools))

	ws, events := openUpgraded(t, addrs[0]), openEvents(t, addrs[0])
	ws.alive(t)
	events.alive(t)
	// Long-lived connections count apart from requests in flight.
	if n := (dataPlane{}).LongLived(svc, "blue", blue.addr()); n != 2 {
		t.Errorf("long-lived connections to blue: %d, want 2", n)
	}
	if n := (dataPlane{}).InFlight(svc, "blue", blue.addr()); n != 0 {
		t.Errorf("in flight to blue with two long-lived connections and no request: %d, want 0", n)
	}

	// blue keeps a share: its connections stay.
	applyService(service(svc, map[string]state.Weight{"blue": 5000, "green": 5000}, pools))
	time.Sleep(3 * delay)
	ws.alive(t)
	events.alive(t)

	// blue goes to 0: its connections close after the delay.
	switched := time.Now()
	applyService(service(svc, map[string]state.Weight{"green": 10000}, pools))
	ws.closedAfter(t, switched, delay)
	events.closedAfter(t, switched, delay)
	waitIdle(t, svc, "blue", blue.addr())
	if n := streamsClosed(t, svc, "blue", "switch"); n != 2 {
		t.Errorf("cbproxy_streams_closed_total{pool=blue,reason=switch} = %v, want 2", n)
	}

	// New connections go to green and stay.
	ws = openUpgraded(t, addrs[0])
	time.Sleep(3 * delay)
	ws.alive(t)
	if n := (dataPlane{}).LongLived(svc, "green", green.addr()); n != 1 {
		t.Errorf("long-lived connections to green: %d, want 1", n)
	}
}

func TestStreamsClosedAfterDrain(t *testing.T) {
	const svc, delay = "streams-drain", 300 * time.Millisecond
	blue1, blue2 := newStreamingBackend(t, "blue1"), newStreamingBackend(t, "blue2")
	cfg, addrs := caddyConfig(t, nil, map[string]any{
		"service": svc, "stream_close_delay": delay.String(),
		"lb_policy": map[string]any{"policy": "first"},
	})
	runCaddy(t, cfg)
	applyService(service(svc, map[string]state.Weight{"blue": 10000}, map[string][]string{"blue": {blue1.addr(), blue2.addr()}}))
	first := openUpgraded(t, addrs[0]) // "first" picks blue1
	first.alive(t)

	drained := time.Now()
	applyService(service(svc, map[string]state.Weight{"blue": 10000}, map[string][]string{"blue": {"~" + blue1.addr(), blue2.addr()}}))
	second := openUpgraded(t, addrs[0]) // blue1 takes no new requests: blue2
	if blue2.hits.Load() != 1 {
		t.Fatalf("the second connection did not go to blue2 (hits %d)", blue2.hits.Load())
	}
	first.closedAfter(t, drained, delay)
	time.Sleep(3 * delay)
	second.alive(t)
	if n := streamsClosed(t, svc, "blue", "drain"); n != 1 {
		t.Errorf("cbproxy_streams_closed_total{pool=blue,reason=drain} = %v, want 1", n)
	}
	waitIdle(t, svc, "blue", blue1.addr())
}

func TestStreamsRollbackClosesSooner(t *testing.T) {
	const svc, rollbackDelay = "streams-rollback", 200 * time.Millisecond
	blue, green := newStreamingBackend(t, "blue"), newStreamingBackend(t, "green")
	cfg, addrs := caddyConfig(t, nil, map[string]any{
		"service": svc, "stream_close_delay": "1h", "stream_close_delay_rollback": rollbackDelay.String(),
	})
	runCaddy(t, cfg)
	pools := map[string][]string{"blue": {blue.addr()}, "green": {green.addr()}}
	applyService(service(svc, map[string]state.Weight{"blue": 10000}, pools))
	toBlue := openUpgraded(t, addrs[0])

	// A switch: blue's connection would close only after an hour.
	applyService(service(svc, map[string]state.Weight{"green": 10000}, pools))
	toGreen := openUpgraded(t, addrs[0])
	toBlue.alive(t)

	// The rollback brings blue back (its pending close is dropped) and
	// takes green to 0 as a rollback: green's connection closes soon.
	rolledBack := service(svc, map[string]state.Weight{"blue": 10000}, pools)
	rolledBack.Rollbacks = map[state.Trigger]uint64{state.TriggerManual: 1}
	at := time.Now()
	applyService(rolledBack)
	toGreen.closedAfter(t, at, rollbackDelay)
	toBlue.alive(t)
	if n := streamsClosed(t, svc, "green", "rollback"); n != 1 {
		t.Errorf("cbproxy_streams_closed_total{pool=green,reason=rollback} = %v, want 1", n)
	}
}

func TestStreamsKeptWhenWeightComesBack(t *testing.T) {
	const svc, delay = "streams-back", time.Second
	blue, green := newStreamingBackend(t, "blue"), newStreamingBackend(t, "green")
	cfg, addrs := caddyConfig(t, nil, map[string]any{"service": svc, "stream_close_delay": delay.String()})
	runCaddy(t, cfg)
	pools := map[string][]string{"blue": {blue.addr()}, "green": {green.addr()}}
	applyService(service(svc, map[string]state.Weight{"blue": 10000}, pools))
	ws := openUpgraded(t, addrs[0])
	applyService(service(svc, map[string]state.Weight{"green": 10000}, pools))
	applyService(service(svc, map[string]state.Weight{"blue": 10000}, pools))
	time.Sleep(3 * delay)
	ws.alive(t)
}

func TestStreamsSurviveReload(t *testing.T) {
	const svc, delay = "streams-reload", 300 * time.Millisecond
	blue, green := newStreamingBackend(t, "blue"), newStreamingBackend(t, "green")
	cfg, addrs := caddyConfig(t, nil, map[string]any{"service": svc, "stream_close_delay": delay.String()})
	runCaddy(t, cfg)
	pools := map[string][]string{"blue": {blue.addr()}, "green": {green.addr()}}
	applyService(service(svc, map[string]state.Weight{"blue": 10000}, pools))
	ws, events := openUpgraded(t, addrs[0]), openEvents(t, addrs[0])
	ws.alive(t)

	// A forced reload of the same config: every handler is provisioned anew
	// and the old ones cleaned up, but the service's pools did not change.
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * delay)
	ws.alive(t)
	events.alive(t)
	if n := (dataPlane{}).LongLived(svc, "blue", blue.addr()); n != 2 {
		t.Errorf("long-lived connections to blue after the reload: %d, want 2", n)
	}

	// Connections of the old config still follow the routing.
	switched := time.Now()
	applyService(service(svc, map[string]state.Weight{"green": 10000}, pools))
	ws.closedAfter(t, switched, delay)
	events.closedAfter(t, switched, delay)
	waitIdle(t, svc, "blue", blue.addr())
}

func TestStreamsClosedWhenServiceLeavesConfig(t *testing.T) {
	const svc, delay = "streams-unloaded", 300 * time.Millisecond
	blue := newStreamingBackend(t, "blue")
	cfg, addrs := caddyConfig(t, nil, map[string]any{"service": svc, "stream_close_delay": delay.String()})
	runCaddy(t, cfg)
	applyService(service(svc, map[string]state.Weight{"blue": 10000}, map[string][]string{"blue": {blue.addr()}}))
	ws, events := openUpgraded(t, addrs[0]), openEvents(t, addrs[0])
	ws.alive(t)

	// The next config has no handler for the service any more.
	other, _ := caddyConfig(t, nil, map[string]any{"service": "streams-other"})
	reloaded := time.Now()
	if err := caddy.Load(other, true); err != nil {
		t.Fatal(err)
	}
	ws.closedAfter(t, reloaded, delay)
	events.closedAfter(t, reloaded, delay)
	if n := streamsClosed(t, svc, "blue", "reload"); n != 2 {
		t.Errorf("cbproxy_streams_closed_total{pool=blue,reason=reload} = %v, want 2", n)
	}
}

// TestStreamsClosedOverHTTP2: an event stream that shares its client
// connection with other requests (h2c) ends alone.
func TestStreamsClosedOverHTTP2(t *testing.T) {
	const svc, delay = "streams-h2", 300 * time.Millisecond
	blue, green := newStreamingBackend(t, "blue"), newStreamingBackend(t, "green")
	cfg, addrs := caddyConfig(t, nil, map[string]any{"service": svc, "stream_close_delay": delay.String()})
	var parsed map[string]any
	if err := json.Unmarshal(cfg, &parsed); err != nil {
		t.Fatal(err)
	}
	server := parsed["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)["s0"].(map[string]any)
	server["protocols"] = []string{"h1", "h2c"}
	if cfg, err := json.Marshal(parsed); err != nil {
		t.Fatal(err)
	} else {
		runCaddy(t, cfg)
	}
	pools := map[string][]string{"blue": {blue.addr()}, "green": {green.addr()}}
	applyService(service(svc, map[string]state.Weight{"blue": 10000}, pools))

	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	resp, err := client.Get("http://" + addrs[0] + "/events")
	if err != nil {
		t.Fatal(err)
	}
	if resp.ProtoMajor != 2 {
		t.Fatalf("event stream over %s, want HTTP/2", resp.Proto)
	}
	events := newLiveConn(t, "event stream over HTTP/2", resp.Body, nil, bufio.NewReader(resp.Body))
	events.alive(t)

	switched := time.Now()
	applyService(service(svc, map[string]state.Weight{"green": 10000}, pools))
	events.closedAfter(t, switched, delay)
	// The connection carries on: an ordinary request on it still works.
	other, body := get(t, client, "http://"+addrs[0]+"/", nil)
	if other.StatusCode != http.StatusOK || other.ProtoMajor != 2 || body != "green\n" {
		t.Fatalf("after the stream closed: %s %s %q", other.Proto, other.Status, body)
	}
	waitIdle(t, svc, "blue", blue.addr())
}
