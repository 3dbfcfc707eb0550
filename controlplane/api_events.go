package controlplane

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

const (
	defaultEventLimit = 100
	maxEventLimit     = 1000
)

// eventQuery reads service, since and limit (CONTRACT §4), answering 400 itself.
func eventQuery(w http.ResponseWriter, r *http.Request) (service string, since uint64, limit int, ok bool) {
	q := r.URL.Query()
	service, limit = q.Get("service"), defaultEventLimit
	if s := q.Get("since"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid", fmt.Sprintf("since=%q is not an event index; use a number such as since=57", s))
			return "", 0, 0, false
		}
		since = v
	}
	if s := q.Get("limit"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 || v > maxEventLimit {
			writeError(w, http.StatusBadRequest, "invalid", fmt.Sprintf("limit=%q must be a number from 1 to %d", s, maxEventLimit))
			return "", 0, 0, false
		}
		limit = v
	}
	return service, since, limit, true
}

func (a *adminServer) listEvents(w http.ResponseWriter, r *http.Request, _ string) {
	service, since, limit, ok := eventQuery(w, r)
	if !ok {
		return
	}
	events := a.n.fsm.machine.Events(service, since, limit)
	if events == nil {
		events = []state.Event{}
	}
	writeJSON(w, http.StatusOK, struct {
		Events []state.Event `json:"events"`
	}{events})
}

// streamEvents sends the trail as server-sent events: first what happened after
// Last-Event-ID (or ?since=), then every new event as it is applied.
func (a *adminServer) streamEvents(w http.ResponseWriter, r *http.Request, _ string) {
	service, since, _, ok := eventQuery(w, r)
	if !ok {
		return
	}
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		v, err := strconv.ParseUint(id, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid", fmt.Sprintf("Last-Event-ID %q is not an event index", id))
			return
		}
		since = v
	}
	rc := http.NewResponseController(w)
	// Subscribe before reading the backlog so nothing falls between the two.
	live, cancel := a.n.fsm.subscribeEvents()
	defer cancel()
	if since == 0 && r.Header.Get("Last-Event-ID") == "" && r.URL.Query().Get("since") == "" {
		since = a.n.View().Index
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	last := since
	send := func(e state.Event) bool {
		if e.Index <= last || (service != "" && e.Service != service) {
			return true
		}
		last = e.Index
		data, _ := json.Marshal(e)
		if _, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", e.Index, e.Action, data); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	for {
		backlog := a.n.fsm.machine.Events(service, last, maxEventLimit)
		for _, e := range backlog {
			if !send(e) {
				return
			}
		}
		if len(backlog) < maxEventLimit {
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
		case <-a.n.done:
			return
		case e, ok := <-live:
			if !ok {
				// Fell behind: end the stream; the client resumes with
				// Last-Event-ID and loses nothing.
				return
			}
			if !send(e) {
				return
			}
		case <-keepalive.C:
			if _, err := fmt.Fprint(w, ": keepalive\n\n"); err != nil || rc.Flush() != nil {
				return
			}
		}
	}
}
