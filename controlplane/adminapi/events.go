package adminapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
	"go.uber.org/zap"
)

const (
	defaultEventLimit = 100
	maxEventLimit     = 1000
)

// eventQuery reads the parameters of both event endpoints: service, since,
// limit and keep (newest or oldest), answering 400 itself.
func eventQuery(w http.ResponseWriter, r *http.Request) (q state.EventQuery, ok bool) {
	params := r.URL.Query()
	q = state.EventQuery{Service: params.Get("service"), Limit: defaultEventLimit}
	if s := params.Get("since"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid", fmt.Sprintf("since=%q is not an event index; use a number such as since=57", s))
			return q, false
		}
		q.Since = v
	}
	if s := params.Get("limit"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 || v > maxEventLimit {
			writeError(w, http.StatusBadRequest, "invalid", fmt.Sprintf("limit=%q must be a number from 1 to %d", s, maxEventLimit))
			return q, false
		}
		q.Limit = v
	}
	switch s := params.Get("keep"); s {
	case "", "newest":
	case "oldest":
		q.Oldest = true
	default:
		writeError(w, http.StatusBadRequest, "invalid", fmt.Sprintf("keep=%q must be newest (the default: the newest events after since) or oldest (the next page after since)", s))
		return q, false
	}
	return q, true
}

// eventGap tells a reader that the trail dropped events it asked for: the
// "gap" of GET /v1/events and the data of the stream's `event: gap`.
type eventGap struct {
	Action string `json:"action"`
	From   uint64 `json:"from"`
	To     uint64 `json:"to"`
	Reason string `json:"reason"`
}

// streamCut is the data of the stream's last event, `event: reconnect`,
// when the server ends a stream whose reader fell behind.
type streamCut struct {
	Action string `json:"action"`
	After  uint64 `json:"after"`
	Reason string `json:"reason"`
}

func newEventGap(g *state.EventGap) *eventGap {
	return &eventGap{Action: "gap", From: g.From, To: g.To, Reason: fmt.Sprintf(
		"the trail no longer holds the events from index %d to %d: it keeps only the newest; what follows comes after %d", g.From, g.To, g.To)}
}

func (a *Server) listEvents(w http.ResponseWriter, r *http.Request, _ string) {
	q, ok := eventQuery(w, r)
	if !ok {
		return
	}
	events, gap := a.Node.QueryEvents(q)
	if events == nil {
		events = []state.Event{}
	}
	body := struct {
		Events []state.Event `json:"events"`
		Gap    *eventGap     `json:"gap,omitempty"`
	}{Events: events}
	// Only a reader that names a since is told what it missed; the plain
	// "newest N" read of the trail has nothing to resume.
	if gap != nil && r.URL.Query().Has("since") {
		body.Gap = newEventGap(gap)
	}
	writeJSON(w, http.StatusOK, body)
}

// streamWriteTimeout bounds one write to an event stream: a reader that
// takes no bytes for this long is cut off rather than hold the stream.
const streamWriteTimeout = 30 * time.Second

// streamEvents sends the trail as server-sent events: first every event after
// Last-Event-ID (or ?since=), in pages of the oldest events not yet sent, with
// an `event: gap` where the trail dropped some; then every new event as it is
// applied. The stream ends when the tokens change so that its caller may no
// longer read.
func (a *Server) streamEvents(w http.ResponseWriter, r *http.Request, _ string) {
	// Watch the tokens from before the caller is judged again, so that no
	// change falls between the two.
	tokensChange := a.tokensChange()
	if _, ok := a.authorize(w, r, RoleRead); !ok {
		return
	}
	q, ok := eventQuery(w, r)
	if !ok {
		return
	}
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		v, err := strconv.ParseUint(id, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid", fmt.Sprintf("Last-Event-ID %q is not an event index", id))
			return
		}
		q.Since = v
	}
	rc := http.NewResponseController(w)
	// Subscribe before reading the backlog so nothing falls between the two.
	live, cancel := a.Node.Events()
	defer cancel()
	if q.Since == 0 && r.Header.Get("Last-Event-ID") == "" && !r.URL.Query().Has("since") {
		q.Since = a.Node.View().Index
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	write := func(id uint64, event string, v any) bool {
		data, _ := json.Marshal(v)
		_ = rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
		if _, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", id, event, data); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	send := func(e state.Event) bool {
		if e.Index <= q.Since || (q.Service != "" && e.Service != q.Service) {
			return true
		}
		q.Since = e.Index
		return write(e.Index, string(e.Action), e)
	}
	// The backlog goes forward page by page: each page is the oldest events
	// after the last one sent, so none is skipped however far behind the
	// reader starts. A gap (events the trail dropped, also while a slow
	// reader pages) is announced with the index it ends at as its id, so a
	// reader resuming from there is not told again.
	q.Limit, q.Oldest = maxEventLimit, true
	for {
		page, gap := a.Node.QueryEvents(q)
		if gap != nil {
			q.Since = gap.To
			if !write(gap.To, "gap", newEventGap(gap)) {
				return
			}
		}
		for _, e := range page {
			if !send(e) {
				return
			}
		}
		if len(page) < q.Limit {
			break
		}
	}
	if rc.Flush() != nil {
		return
	}
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-a.done:
			return
		case e, ok := <-live:
			if !ok {
				// Fell behind: end the stream, saying so, so that a
				// client resumes with Last-Event-ID and loses nothing the
				// trail still holds (a plain end means the server is done).
				write(q.Since, "reconnect", streamCut{Action: "reconnect", After: q.Since,
					Reason: "this reader fell behind the events; reconnect with Last-Event-ID to resume after the last event sent"})
				return
			}
			if !send(e) {
				return
			}
		case <-tokensChange:
			if _, refused := a.checkCaller(r, RoleRead); refused != nil {
				a.log().Info("event stream closed: the tokens changed and its caller may no longer read", zap.String("reason", refused.msg))
				return
			}
			tokensChange = a.tokensChange()
		case <-keepalive.C:
			_ = rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
			if _, err := fmt.Fprint(w, ": keepalive\n\n"); err != nil || rc.Flush() != nil {
				return
			}
		}
	}
}
