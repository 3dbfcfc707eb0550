// Package notify sends the cluster's events to webhooks (docs/api.md
// "Notifications"). Only the leader sends. Each notifier has its own
// worker, which reads the replicated event trail from the notifier's
// committed cursor, sends what the notifier wants in order, and commits its
// cursor through Raft every second: a new leader resumes from there, so a
// failover redelivers at most what was sent since the last commit, with the
// same ids, and drops nothing the trail still holds. The state machine and
// the watcher never wait for a webhook: they only append to the trail. See
// DESIGN.md in this folder.
package notify

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/raftnode"
	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Node is what the dispatcher asks of the Raft node (*raftnode.Node).
type Node interface {
	ID() string
	View() *state.View
	IsLeader() bool
	QueryEvents(q state.EventQuery) ([]state.Event, *state.EventGap)
	// NextPublished is closed once the next view is published.
	NextPublished() <-chan struct{}
	// Propose commits a command through the leader (Raft I/O).
	Propose(ctx context.Context, cmd state.Command) (raftnode.Applied, error)
	// Members lists the Raft configuration's servers, without I/O.
	Members() []raftnode.Member
	// UnreachablePeers lists, on the leader, the peers whose heartbeats
	// fail, with the first failure since their last success.
	UnreachablePeers() map[string]time.Time
}

// Config is what a dispatcher needs.
type Config struct {
	Node   Node
	Logger func() *zap.Logger
	// NodeLostAfter is how long the leader waits on a voter's failing
	// heartbeats before it records node_lost (default 30s).
	NodeLostAfter time.Duration
	// Retry is the delivery retry policy (default DefaultRetry).
	Retry Retry
	// CursorInterval is how often a worker commits its cursor (default 1s).
	CursorInterval time.Duration
}

// Defaults of Config.
const (
	DefaultNodeLostAfter  = 30 * time.Second
	DefaultCursorInterval = time.Second
)

// Actor is the actor of the commands the dispatcher commits.
const Actor = "notifier"

// Dispatcher runs one worker per notifier while this node leads.
type Dispatcher struct {
	cfg    Config
	n      Node
	log    func() *zap.Logger
	client *http.Client

	sent    *prometheus.CounterVec
	pending *prometheus.GaugeVec

	mu      sync.Mutex
	workers map[string]*worker
	// lost holds the voters recorded lost, with the last contact recorded,
	// so that one outage is recorded once by this leader.
	lost map[string]time.Time
}

// New makes a dispatcher; Run starts it.
func New(cfg Config) *Dispatcher {
	if cfg.NodeLostAfter <= 0 {
		cfg.NodeLostAfter = DefaultNodeLostAfter
	}
	if cfg.Retry.Attempts <= 0 {
		cfg.Retry = DefaultRetry
	}
	if cfg.CursorInterval <= 0 {
		cfg.CursorInterval = DefaultCursorInterval
	}
	if cfg.Logger == nil {
		nop := zap.NewNop()
		cfg.Logger = func() *zap.Logger { return nop }
	}
	return &Dispatcher{
		cfg: cfg, n: cfg.Node, log: cfg.Logger,
		// Each attempt has the notifier's own timeout (a context); no
		// redirects: a receiver that moved says so with its status.
		client: &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cbproxy_notifications_total",
			Help: "Notifications this node sent as leader, by notifier and outcome (delivered, failed: given up, retried: an attempt that failed and was retried, lost: events the trail dropped before they were sent).",
		}, []string{"notifier", "outcome"}),
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cbproxy_notifications_pending",
			Help: "Events of the trail after the notifier's cursor, not yet handled by this leader (0 on followers).",
		}, []string{"notifier"}),
		workers: map[string]*worker{},
		lost:    map[string]time.Time{},
	}
}

// Metrics are cbproxy_notifications_total and cbproxy_notifications_pending.
func (d *Dispatcher) Metrics() []prometheus.Collector {
	return []prometheus.Collector{d.sent, d.pending}
}

// Run starts and stops workers as this node gains and loses leadership
// and as notifiers come and go, until done is closed.
func (d *Dispatcher) Run(done <-chan struct{}) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	// At shutdown, a leader commits its cursors before it hands over.
	defer d.stopWorkers(true)
	for {
		published := d.n.NextPublished()
		if d.n.IsLeader() {
			d.reconcile()
			d.checkNodes()
		} else {
			d.stopAll()
		}
		select {
		case <-done:
			return
		case <-tick.C:
		case <-published:
		}
	}
}

// reconcile runs one worker per notifier of the view, each on the
// notifier's current definition, and wakes them.
func (d *Dispatcher) reconcile() {
	v := d.n.View()
	d.mu.Lock()
	defer d.mu.Unlock()
	for name, w := range d.workers {
		if n := v.Notifiers[name]; n == nil || n.Version != w.notifier.Version {
			w.stop(true)
			delete(d.workers, name)
			d.pending.DeleteLabelValues(name)
		}
	}
	for name, n := range v.Notifiers {
		w := d.workers[name]
		if w == nil {
			w = d.startWorker(n)
			d.workers[name] = w
		}
		w.poke()
	}
}

func (d *Dispatcher) stopAll() { d.stopWorkers(false) }

// stopWorkers stops every worker; with final, each commits its cursor
// once more if this node still leads.
func (d *Dispatcher) stopWorkers(final bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for name, w := range d.workers {
		w.stop(final)
		delete(d.workers, name)
		d.pending.DeleteLabelValues(name)
	}
	clear(d.lost)
}

// checkNodes records node_lost for a voter whose heartbeats have failed
// without a success for longer than NodeLostAfter, once per outage and leader (the event's
// idempotency key names the outage, so a retry records it once).
func (d *Dispatcher) checkNodes() {
	failing := d.n.UnreachablePeers()
	voters := map[string]bool{}
	for _, m := range d.n.Members() {
		voters[m.ID] = m.Voter
	}
	d.mu.Lock()
	for id := range d.lost {
		if _, still := failing[id]; !still {
			delete(d.lost, id)
		}
	}
	var report []string
	for id, since := range failing {
		if !voters[id] || time.Since(since) < d.cfg.NodeLostAfter {
			continue
		}
		if at, done := d.lost[id]; done && at.Equal(since) {
			continue
		}
		d.lost[id] = since
		report = append(report, id)
	}
	d.mu.Unlock()
	sort.Strings(report)
	for _, id := range report {
		since := failing[id]
		cmd := state.NewCommand("", Actor, state.RecordEvent{Action: state.ActionNodeLost, Figures: map[string]any{
			"lost_node": id, "failing_since": since.UTC().Format(time.RFC3339Nano), "threshold": d.cfg.NodeLostAfter.String(), "leader": d.n.ID(),
		}})
		cmd.Reason = fmt.Sprintf("the leader %s has not reached voter %s since %s (heartbeats failing for over %s)", d.n.ID(), id, since.UTC().Format(time.RFC3339), d.cfg.NodeLostAfter)
		cmd.IdemKey = "node_lost:" + id + ":" + strconv.FormatInt(since.UnixNano(), 10)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := d.n.Propose(ctx, cmd); err != nil {
				d.log().Warn("node_lost not recorded", zap.String("node", id), zap.Error(err))
			}
		}()
	}
}

// TestResult is what a test notification gave.
type TestResult struct {
	Delivered bool   `json:"delivered"`
	Error     string `json:"error,omitempty"`
	ID        string `json:"id"`
	Status    string `json:"status"`
}

// ErrNoNotifier is Test's error for a notifier that does not exist.
var ErrNoNotifier = errors.New("no such notifier")

// Test sends one test notification to the notifier now, from this node,
// once (no retries), and says how it went. It is not an event: its id
// starts with "test-".
func (d *Dispatcher) Test(ctx context.Context, name, actor string) (TestResult, error) {
	n := d.n.View().Notifiers[name]
	if n == nil {
		return TestResult{}, ErrNoNotifier
	}
	now := time.Now().UTC()
	msg := Notification{
		ID: "test-" + strconv.FormatInt(now.UnixNano(), 10), Kind: "test", Event: "test", Time: now, Node: d.n.ID(), Actor: actor,
		Summary: fmt.Sprintf("test notification for notifier %s from node %s (by %s)", name, d.n.ID(), actor),
	}
	b, err := body(msg, n.Format)
	if err != nil {
		return TestResult{}, err
	}
	res := TestResult{ID: msg.ID, Status: "delivered", Delivered: true}
	if err := post(ctx, d.client, n, b, msg.ID, msg.Kind); err != nil {
		res = TestResult{ID: msg.ID, Status: "failed", Error: err.Error()}
		d.sent.WithLabelValues(name, "failed").Inc()
	} else {
		d.sent.WithLabelValues(name, "delivered").Inc()
	}
	return res, nil
}

// worker delivers one notifier's events while this node leads.
type worker struct {
	d        *Dispatcher
	notifier *state.Notifier
	cancel   context.CancelFunc
	wake     chan struct{}
	done     chan struct{}
	// final, when true at stop, commits the cursor once more: the
	// notifier was redefined or deleted on a node that still leads.
	final atomic.Bool
}

func (d *Dispatcher) startWorker(n *state.Notifier) *worker {
	ctx, cancel := context.WithCancel(context.Background())
	w := &worker{d: d, notifier: n, cancel: cancel, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go w.run(ctx)
	return w
}

func (w *worker) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// stop ends the worker and waits for it; with final it commits the cursor
// one last time.
func (w *worker) stop(final bool) {
	w.final.Store(final)
	w.cancel()
	<-w.done
}

func (w *worker) log() *zap.Logger { return w.d.log().With(zap.String("notifier", w.notifier.Name)) }

func (w *worker) run(ctx context.Context) {
	defer close(w.done)
	name := w.notifier.Name
	// The committed cursor: where the last leader's committed record stood.
	delivery := w.notifier.Delivery
	if cur := w.d.n.View().Notifiers[name]; cur != nil && cur.Delivery.Through > delivery.Through {
		delivery = cur.Delivery
	}
	committed := delivery
	commit := func(timeout time.Duration) {
		if delivery == committed {
			return
		}
		cctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		cmd := state.NewCommand("", Actor, state.NotifyCursor{Notifier: name, Delivery: delivery})
		if _, err := w.d.n.Propose(cctx, cmd); err != nil {
			w.log().Debug("notification cursor not committed; retried", zap.Error(err))
			return
		}
		committed = delivery
	}
	defer func() {
		if w.final.Load() && w.d.n.IsLeader() {
			commit(2 * time.Second)
		}
	}()
	lastCommit := time.Now()
	for {
		if time.Since(lastCommit) >= w.d.cfg.CursorInterval {
			commit(5 * time.Second)
			lastCommit = time.Now()
		}
		if ctx.Err() != nil {
			return
		}
		events, gap := w.d.n.QueryEvents(state.EventQuery{Since: delivery.Through, Limit: 100, Oldest: true})
		if gap != nil {
			// The trail no longer holds these events: they cannot be sent.
			msg := fmt.Sprintf("events %d to %d left the event trail (it keeps the newest events only) before they were sent; they are lost", gap.From, gap.To)
			w.log().Warn("notifications lost", zap.Uint64("from", gap.From), zap.Uint64("to", gap.To))
			w.d.sent.WithLabelValues(name, "lost").Inc()
			delivery.LastError, delivery.LastErrorAt = msg, time.Now().UTC()
			delivery.Through = max(delivery.Through, gap.To)
		}
		v := w.d.n.View()
		w.d.pending.WithLabelValues(name).Set(float64(len(events)))
		for i, ev := range events {
			kind := Kind(ev, v)
			if kind != "" && w.notifier.Wants(kind, ev.Service) {
				if err := w.send(ctx, ev, kind, v); err != nil {
					if ctx.Err() != nil {
						return // not handled: the next leader sends it
					}
					delivery.Failed++
					delivery.LastError, delivery.LastErrorAt = fmt.Sprintf("event %d (%s): %v", ev.Index, kind, err), time.Now().UTC()
				} else {
					delivery.Sent++
					delivery.LastSuccessAt = time.Now().UTC()
				}
			}
			delivery.Through = ev.Index
			w.d.pending.WithLabelValues(name).Set(float64(len(events) - i - 1))
			if time.Since(lastCommit) >= w.d.cfg.CursorInterval {
				commit(5 * time.Second)
				lastCommit = time.Now()
			}
		}
		if len(events) > 0 || gap != nil {
			continue
		}
		t := time.NewTimer(w.d.cfg.CursorInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-w.wake:
			t.Stop()
		case <-t.C:
		}
	}
}

// send delivers one event, with retries.
func (w *worker) send(ctx context.Context, ev state.Event, kind string, v *state.View) error {
	n := w.notifier
	msg := build(ev, kind, w.d.n.ID(), v)
	b, err := body(msg, n.Format)
	if err != nil {
		return err
	}
	err = deliver(ctx, w.d.client, n, w.d.cfg.Retry, b, msg.ID, kind, func(err error) {
		w.d.sent.WithLabelValues(n.Name, "retried").Inc()
		w.log().Info("notification attempt failed; retrying", zap.String("id", msg.ID), zap.String("kind", kind), zap.Error(err))
	})
	switch {
	case err == nil:
		w.d.sent.WithLabelValues(n.Name, "delivered").Inc()
		w.log().Debug("notification delivered", zap.String("id", msg.ID), zap.String("kind", kind))
	case ctx.Err() == nil:
		w.d.sent.WithLabelValues(n.Name, "failed").Inc()
		w.log().Warn("notification not delivered; given up", zap.String("id", msg.ID), zap.String("kind", kind), zap.Error(err))
	}
	return err
}
