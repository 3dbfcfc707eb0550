package healthcheck

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"
)

// notifier delivers OnChange calls from one goroutine, so that a status
// change under the checker's lock never waits for a listener. Its queue holds
// each service at most once: it is bounded by the number of services, and a
// listener always runs after the last change it was told about.
type notifier struct {
	log  *zap.Logger
	wake chan struct{} // capacity 1: a pending wake-up is enough

	mu        sync.Mutex
	listeners []*listener
	queue     []string
	queued    map[string]bool
}

type listener struct {
	fn       func(service string)
	canceled atomic.Bool
}

func (n *notifier) init(log *zap.Logger) {
	n.log = log
	n.wake = make(chan struct{}, 1)
	n.queued = map[string]bool{}
}

func (n *notifier) listen(fn func(service string)) (cancel func()) {
	l := &listener{fn: fn}
	n.mu.Lock()
	n.listeners = append(n.listeners, l)
	n.mu.Unlock()
	return func() {
		l.canceled.Store(true)
		n.mu.Lock()
		n.listeners = slices.DeleteFunc(n.listeners, func(x *listener) bool { return x == l })
		n.mu.Unlock()
	}
}

// add queues a call for service unless one is queued already.
func (n *notifier) add(service string) {
	n.mu.Lock()
	if !n.queued[service] {
		n.queued[service] = true
		n.queue = append(n.queue, service)
	}
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// next takes the oldest queued service and the listeners to call for it.
func (n *notifier) next() (string, []*listener, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.queue) == 0 {
		return "", nil, false
	}
	service := n.queue[0]
	n.queue = n.queue[1:]
	delete(n.queued, service)
	return service, slices.Clone(n.listeners), true
}

// run delivers queued calls until ctx ends; what is still queued then is
// dropped.
func (n *notifier) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.wake:
		}
		for ctx.Err() == nil {
			service, listeners, ok := n.next()
			if !ok {
				break
			}
			for _, l := range listeners {
				if !l.canceled.Load() {
					n.call(l.fn, service)
				}
			}
		}
	}
}

// call runs one listener; a panic in it is logged, not fatal.
func (n *notifier) call(fn func(string), service string) {
	defer func() {
		if r := recover(); r != nil {
			n.log.Error("health change listener panicked", zap.String("service", service), zap.Any("panic", r), zap.Stack("stack"))
		}
	}()
	fn(service)
}
