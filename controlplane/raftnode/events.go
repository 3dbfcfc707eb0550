package raftnode

import (
	"sync"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// eventFanout hands each applied event to the readers of event streams.
// It never blocks the applying goroutine: a reader whose buffer is full
// loses its stream (its channel is closed) and resumes from the trail with
// Last-Event-ID.
type eventFanout struct {
	mu   sync.Mutex
	subs map[int]chan state.Event
	next int
}

func newEventFanout() *eventFanout { return &eventFanout{subs: map[int]chan state.Event{}} }

func (e *eventFanout) publish(added []state.Event) {
	if len(added) == 0 {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
subscribers:
	for id, ch := range e.subs {
		for _, ev := range added {
			select {
			case ch <- ev:
			default:
				// A reader too slow for the trail loses its stream rather
				// than stall Raft; it can resume with Last-Event-ID.
				close(ch)
				delete(e.subs, id)
				continue subscribers
			}
		}
	}
}

// subscribe returns a channel of new events; it is closed when the reader
// falls behind or cancel is called.
func (e *eventFanout) subscribe() (<-chan state.Event, func()) {
	ch := make(chan state.Event, 256)
	e.mu.Lock()
	id := e.next
	e.next++
	e.subs[id] = ch
	e.mu.Unlock()
	return ch, func() {
		e.mu.Lock()
		if c, ok := e.subs[id]; ok {
			close(c)
			delete(e.subs, id)
		}
		e.mu.Unlock()
	}
}
