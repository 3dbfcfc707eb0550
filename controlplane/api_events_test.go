package controlplane

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// eventWorkers is how many backends (and proposers) proposeEvents toggles:
// Raft batches their commands, which keeps thousands of events quick.
const eventWorkers = 8

// putEventService creates service "svc" with eventWorkers backends in pool
// blue for proposeEvents to drain and undrain.
func putEventService(t *testing.T, c *client) {
	t.Helper()
	var backends []string
	for i := range eventWorkers {
		backends = append(backends, fmt.Sprintf(`"127.0.0.1:%d"`, 9100+i))
	}
	code, _, body := c.do("PUT", "/v1/services/svc", `{"pools":{"blue":{"backends":[`+strings.Join(backends, ",")+`]}}}`)
	if code != 200 {
		t.Fatalf("put svc: %d %v", code, body)
	}
}

// proposeEvents commits count commands through Raft, each of which adds one
// event (a drain or an undrain of its worker's own backend), with reason as
// the events' reason.
func proposeEvents(t *testing.T, n *Node, count int, reason string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, eventWorkers)
	for w := range eventWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			addr := fmt.Sprintf("127.0.0.1:%d", 9100+w)
			for i := w; i < count; i += eventWorkers {
				action := state.DrainBackends
				if (i/eventWorkers)%2 == 1 {
					action = state.UndrainBackends
				}
				a, err := n.raft.Propose(context.Background(), state.Command{Envelope: state.Envelope{Service: "svc", Actor: "test", Reason: reason}, Payload: state.SetDrain{Pool: "blue", Action: action, Backends: []string{addr}}})
				if err == nil && !a.Result.Changed {
					err = fmt.Errorf("%s of %s changed nothing: %+v", action, addr, a.Result)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// sseMessage is one server-sent event as the test reads it.
type sseMessage struct {
	id, event, data string
}

// openStream opens the event stream with the given query and Last-Event-ID
// ("" for none). The body closes when the test ends or after 60 s.
func openStream(t *testing.T, c *client, query, lastID string) (*http.Response, <-chan sseMessage) {
	t.Helper()
	req, err := http.NewRequest("GET", c.base+"/v1/events/stream"+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("stream: status %d", resp.StatusCode)
	}
	timeout := time.AfterFunc(60*time.Second, func() { resp.Body.Close() })
	t.Cleanup(func() { timeout.Stop(); resp.Body.Close() })
	out := make(chan sseMessage)
	go func() {
		defer close(out)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		var m sseMessage
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if m.data != "" {
					out <- m
				}
				m = sseMessage{}
			case strings.HasPrefix(line, "id: "):
				m.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				m.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				m.data = line[6:]
			}
		}
	}()
	return resp, out
}

// receive reads messages until want events arrived, the stream ended or
// 30 s passed.
func receive(t *testing.T, msgs <-chan sseMessage, want int) (got []sseMessage, ended bool) {
	got, ended, _ = receiveCut(t, msgs, want)
	return got, ended
}

// receiveCut is receive that also says whether the stream ended with the
// server's `event: reconnect` (a slow reader cut off).
func receiveCut(t *testing.T, msgs <-chan sseMessage, want int) (got []sseMessage, ended, cut bool) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	events := 0
	for events < want {
		select {
		case m, ok := <-msgs:
			if !ok {
				return got, true, cut
			}
			if m.event == "reconnect" {
				// The server cut a slow reader off, and says so last.
				cut = true
				continue
			}
			got = append(got, m)
			if m.event != "gap" {
				events++
			}
		case <-deadline:
			t.Logf("30 s passed with %d of %d events", events, want)
			return got, false, cut
		}
	}
	return got, false, cut
}

// checkIndexes fails unless msgs are exactly the events of want, in order,
// each with its index as SSE id and its action as SSE event type.
func checkIndexes(t *testing.T, msgs []sseMessage, want []state.Event) {
	t.Helper()
	if len(msgs) != len(want) {
		first := ""
		if len(msgs) > 0 {
			first = msgs[0].id
		}
		t.Fatalf("got %d events (the first with id %s), want %d: events %d to %d", len(msgs), first, len(want), want[0].Index, want[len(want)-1].Index)
	}
	for i, m := range msgs {
		var e state.Event
		if err := json.Unmarshal([]byte(m.data), &e); err != nil {
			t.Fatalf("event %d: %v in %q", i, err, m.data)
		}
		if e.Index != want[i].Index || m.id != strconv.FormatUint(e.Index, 10) || m.event != string(want[i].Action) {
			t.Fatalf("event %d is id %s, %s, index %d; want index %d, %s (skipped or reordered)", i, m.id, m.event, e.Index, want[i].Index, want[i].Action)
		}
	}
}

// TestEventStreamResumeFarBehind resumes the stream from index 10 of a trail
// of about 2,500 events: every event after 10 must come, in order, although
// one backlog page holds at most 1,000.
func TestEventStreamResumeFarBehind(t *testing.T) {
	n := startNode(t, t.TempDir())
	c := newClient(t, n)
	putEventService(t, c)
	proposeEvents(t, n, 2500, "")
	want := trail(n, "", 10, state.DefaultMaxEvents)
	if len(want) < 2400 || want[0].Index > 12 {
		t.Fatalf("the trail after index 10 holds %d events from index %d", len(want), want[0].Index)
	}
	for _, start := range []struct{ query, lastID string }{
		{"", "10"},
		{"?since=10", ""},
		{"?since=2000", "10"}, // Last-Event-ID wins
	} {
		_, msgs := openStream(t, c, start.query, start.lastID)
		got, _ := receive(t, msgs, len(want))
		checkIndexes(t, got, want)
	}
}

// TestEventStreamGap resumes from an index older than what the trail still
// holds: an `event: gap` naming the dropped range comes first, then every
// event the trail kept, in order.
func TestEventStreamGap(t *testing.T) {
	n := startNodeTuned(t, t.TempDir(), func(c *Config) { c.raft.MaxEvents = 100 })
	c := newClient(t, n)
	putEventService(t, c)
	proposeEvents(t, n, 300, "")
	kept := trail(n, "", 0, 1000)
	if len(kept) != 100 || kept[0].Index < 200 {
		t.Fatalf("the trail holds %d events from index %d", len(kept), kept[0].Index)
	}
	dropped := kept[0].Index - 1 // every index below the kept ones carried an event
	for _, lastID := range []string{"10", "0"} {
		_, msgs := openStream(t, c, "", lastID)
		got, _ := receive(t, msgs, len(kept))
		if len(got) == 0 || got[0].event != "gap" {
			first := sseMessage{}
			if len(got) > 0 {
				first = got[0]
			}
			t.Fatalf("from %s: the stream starts with id %q, event %q; want an event: gap", lastID, first.id, first.event)
		}
		var gap struct {
			Action   string `json:"action"`
			From, To uint64
			Reason   string `json:"reason"`
		}
		if err := json.Unmarshal([]byte(got[0].data), &gap); err != nil {
			t.Fatal(err)
		}
		from, _ := strconv.ParseUint(lastID, 10, 64)
		if gap.Action != "gap" || gap.From != from+1 || gap.To != dropped || got[0].id != strconv.FormatUint(dropped, 10) || gap.Reason == "" {
			t.Fatalf("from %s: gap id %s %+v; want %d to %d with id %d", lastID, got[0].id, gap, from+1, dropped, dropped)
		}
		checkIndexes(t, got[1:], kept)
	}

	// From the gap's id (or any kept index) on, there is no gap.
	_, msgs := openStream(t, c, "", strconv.FormatUint(dropped, 10))
	got, _ := receive(t, msgs, len(kept))
	checkIndexes(t, got, kept)

	// GET tells a reader naming a since what it missed, and pages forward
	// with keep=oldest.
	code, _, body := c.do("GET", "/v1/events?since=10&limit=30&keep=oldest", "")
	gap, _ := body["gap"].(map[string]any)
	events, _ := body["events"].([]any)
	if code != 200 || gap == nil || gap["from"] != 11.0 || gap["to"] != float64(dropped) || len(events) != 30 ||
		events[0].(map[string]any)["index"] != float64(kept[0].Index) {
		t.Fatalf("GET since=10 keep=oldest: %d %v", code, body)
	}
	if _, _, body := c.do("GET", "/v1/events?limit=5", ""); body["gap"] != nil {
		t.Errorf("GET without since reports a gap: %v", body)
	}
}

// TestListEventsPagesForward pages through a trail of 2,500 events with
// GET /v1/events?since=N&keep=oldest and gets every one, in order.
func TestListEventsPagesForward(t *testing.T) {
	n := startNode(t, t.TempDir())
	c := newClient(t, n)
	putEventService(t, c)
	proposeEvents(t, n, 2500, "")
	want := trail(n, "", 10, state.DefaultMaxEvents)
	var got []uint64
	for since, pages := uint64(10), 0; ; pages++ {
		if pages > 10 {
			t.Fatalf("more than 10 pages of 1000 for %d events", len(want))
		}
		code, _, body := c.do("GET", fmt.Sprintf("/v1/events?since=%d&limit=1000&keep=oldest", since), "")
		events, _ := body["events"].([]any)
		if code != 200 || body["gap"] != nil {
			t.Fatalf("GET since=%d: %d %v", since, code, body["gap"])
		}
		for _, e := range events {
			since = uint64(e.(map[string]any)["index"].(float64))
			got = append(got, since)
		}
		if len(events) < 1000 {
			break
		}
	}
	if len(got) != len(want) {
		t.Fatalf("paged %d events, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i].Index {
			t.Fatalf("event %d has index %d, want %d", i, got[i], want[i].Index)
		}
	}
	if code, _, body := c.do("GET", "/v1/events?keep=first", ""); code != 400 || !strings.Contains(body["error"].(string), "keep=") {
		t.Errorf("keep=first: %d %v", code, body)
	}
}

// TestEventStreamSlowReaderResumes: a reader that stops reading while
// thousands of large events are applied is cut off (the node never waits for
// it); resuming with the Last-Event-ID it last got, again and again, gives
// every event once and in order.
func TestEventStreamSlowReaderResumes(t *testing.T) {
	n := startNode(t, t.TempDir())
	c := newClient(t, n)
	putEventService(t, c)
	start := strconv.FormatUint(n.View().Index, 10)
	resp, msgs := openStream(t, c, "", start)
	// Nothing is read while 3,000 events of 4 KB each are applied: more than
	// the socket buffers and the subscriber's queue hold together.
	proposeEvents(t, n, 3000, strings.Repeat("x", 4096))
	from, _ := strconv.ParseUint(start, 10, 64)
	want := trail(n, "", from, state.DefaultMaxEvents)
	if len(want) < 3000 {
		t.Fatalf("%d events after %s, want at least 3000", len(want), start)
	}
	var got []sseMessage
	cutoffs := 0
	for len(got) < len(want) && cutoffs < 10 {
		more, ended, cut := receiveCut(t, msgs, len(want)-len(got))
		got = append(got, more...)
		if !ended {
			break
		}
		if !cut {
			t.Fatal("the server cut the reader off without the reconnect event that tells it to resume")
		}
		cutoffs++
		resp.Body.Close()
		lastID := start
		if len(got) > 0 {
			lastID = got[len(got)-1].id
		}
		resp, msgs = openStream(t, c, "", lastID)
	}
	t.Logf("cut off %d times", cutoffs)
	checkIndexes(t, got, want)
	if cutoffs == 0 {
		t.Errorf("the reader was never cut off: the test did not exercise a resume")
	}
}
