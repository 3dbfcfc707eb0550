package state

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// View is an immutable picture of the replicated state after one applied
// command. The data plane and the admin API read it without locks.
type View struct {
	// Index is the Raft index of the last applied command.
	Index uint64
	// Services by name. Never modified after publication.
	Services map[string]*Service
	// Deleted names: services removed through the API. A Caddyfile seed never
	// re-creates them.
	Deleted map[string]uint64
	// Nodes of the cluster by ID.
	Nodes map[string]NodeInfo
	// Removed holds the nodes taken out of the cluster, by ID, with the
	// index of their removal: such a node may not join again by itself,
	// only by an operator's join. A node is never both in Nodes and here.
	Removed map[string]uint64
	// Notifiers by name, and the names deleted through the API (a
	// Caddyfile seed never re-creates them), with the index of the delete.
	Notifiers        map[string]*Notifier
	NotifiersDeleted map[string]uint64
	// Changes is what differs from the view published just before this
	// one, for readers that see every view and want to work in proportion
	// to a change (the data plane, the health checker); nil when unknown
	// (the first view, a restored one): compare everything.
	Changes *ViewChanges
}

// ViewChanges is what a view changed from the one published before it.
type ViewChanges struct {
	// Since is the Index of the view before: the list holds only for a
	// reader whose last view had this Index (another one missed views
	// and compares everything).
	Since uint64
	// Services names, once each, the services whose entry in Services or
	// Deleted differs from the view before.
	Services []string
}

// Options tune a Machine; zero values take the defaults.
type Options struct {
	// MaxEvents is how many events the trail keeps (default 10,000).
	MaxEvents int
	// IdemTTL is how long an idempotency key is remembered, measured on the
	// leader-stamped command times (default 24 h).
	IdemTTL time.Duration
	// OnApply, if set, runs after every applied command or batch of
	// commands (ApplyBatch), and after Restore, on the applying goroutine
	// with the new view and the events the commands added. It must not block.
	OnApply func(v *View, added []Event)
	// WithoutKinds and WithoutFields (paths as in Capabilities.Fields) make
	// the machine apply like an older build that lacks them: it does not
	// advertise them and refuses entries that use them as unsupported. For
	// tests of mixed-version clusters in one process.
	WithoutKinds  []Kind
	WithoutFields []string
}

// Defaults of Options, and the bound on remembered idempotency keys (a burst
// of keyed writes must not grow the state without limit within one TTL).
const (
	DefaultMaxEvents = 10000
	DefaultIdemTTL   = 24 * time.Hour
	maxIdemKeys      = 100000
	maxIdemKeyLen    = 512
)

// Machine is the replicated state machine. Apply and Restore must be called from
// one goroutine at a time (Raft's FSM goroutine); every other method is safe for
// concurrent use.
type Machine struct {
	opts Options
	caps Capabilities
	view atomic.Pointer[View]

	// mu guards the event trail and the idempotency table, and makes a
	// snapshot see them together with the view they belong to. Apply holds it
	// while it applies; readers take it only to copy slice headers.
	mu sync.RWMutex
	// events is the trail, oldest first, at most opts.MaxEvents long. Entries
	// are never overwritten in place: trimming reslices and append copies to a
	// new array when it grows, so a slice header copied under mu stays valid
	// after mu is released.
	events []Event
	// droppedThrough is the index of the newest event trimmed from the
	// trail (0 while none was): a reader asking for events after an older
	// index has missed some.
	droppedThrough uint64
	// idemQueue holds the remembered keys in the order they were stored, with
	// the same never-overwrite rule as events; idem indexes it by key.
	idemQueue []idemEntry
	idem      map[string]idemEntry
}

// idemEntry is one remembered idempotency key and what a replay answers: the
// first result's code, error, version and index, never the service itself
// (a replay answers with the service as it is now). Records cost about 150
// bytes whatever the size of the service, so 100,000 keys stay in the tens
// of megabytes.
type idemEntry struct {
	Key  string    `json:"key"`
	Hash string    `json:"hash"`
	Time time.Time `json:"time"`
	// Index is the Raft index of the command that gave the result; 0 in
	// records restored from a snapshot of a build that did not keep it.
	Index uint64 `json:"index,omitempty"`
	Code  string `json:"code,omitempty"`
	Err   string `json:"error,omitempty"`
	// Version is the result's version when it differs from Index (a refusal,
	// a command that changed nothing, a delete); nil when it equals Index,
	// the usual case of a change, so that most records do not repeat it.
	Version *uint64 `json:"version,omitempty"`
	// NoOp marks a success that changed nothing.
	NoOp bool `json:"no_op,omitempty"`
}

// newIdemEntry keeps what a replay of res needs.
func newIdemEntry(c *Command, index uint64, res Result) idemEntry {
	e := idemEntry{Key: c.IdemKey, Hash: c.IdemHash, Time: c.Time, Index: index, Code: res.Code, Err: res.Err, NoOp: res.OK() && !res.Changed}
	if res.Version != index {
		v := res.Version
		e.Version = &v
	}
	return e
}

// result is the first result again, as a replay answers it: cur is the
// command's service as it is now.
func (e idemEntry) result(cur *Service) Result {
	r := Result{Code: e.Code, Err: e.Err, Version: e.Index, Index: e.Index, Service: cur, Replayed: true, Changed: e.Code == "" && !e.NoOp}
	if e.Version != nil {
		r.Version = *e.Version
	}
	return r
}

// UnmarshalJSON reads a record, also in the form of builds that kept the
// whole first result ("result": {"code", "error", "version", "changed",
// "service"}): the service is dropped, the rest kept.
func (e *idemEntry) UnmarshalJSON(data []byte) error {
	type plain idemEntry
	var rec struct {
		plain
		Result *struct {
			Code    string `json:"code"`
			Err     string `json:"error"`
			Version uint64 `json:"version"`
			Changed bool   `json:"changed"`
		} `json:"result"`
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		return err
	}
	*e = idemEntry(rec.plain)
	if old := rec.Result; old != nil {
		v := old.Version
		e.Code, e.Err, e.Version, e.NoOp = old.Code, old.Err, &v, old.Code == "" && !old.Changed
	}
	return nil
}

// NewMachine returns a machine with empty state at index 0.
func NewMachine(opts Options) *Machine {
	if opts.MaxEvents <= 0 {
		opts.MaxEvents = DefaultMaxEvents
	}
	if opts.IdemTTL <= 0 {
		opts.IdemTTL = DefaultIdemTTL
	}
	m := &Machine{opts: opts, caps: newCapabilities(opts.WithoutKinds, opts.WithoutFields), idem: map[string]idemEntry{}}
	m.view.Store(&View{Services: map[string]*Service{}, Deleted: map[string]uint64{}, Nodes: map[string]NodeInfo{}, Removed: map[string]uint64{}})
	return m
}

// View returns the current view.
func (m *Machine) View() *View { return m.view.Load() }

// Capabilities is what this machine can apply (a copy the caller may keep).
func (m *Machine) Capabilities() Capabilities {
	return m.caps.clone()
}

// EventQuery selects events of the trail.
type EventQuery struct {
	// Service keeps only the events of this service ("" keeps all).
	Service string
	// Since keeps only the events with Index > Since.
	Since uint64
	// Limit is the most events returned; 0 or less means 100.
	Limit int
	// Oldest keeps the oldest Limit events after Since, the next page for a
	// reader that goes forward, instead of the newest Limit.
	Oldest bool
}

// EventGap is a range of indexes whose events the trail has dropped (it keeps
// the newest MaxEvents): a reader asking for the events after From-1 cannot
// get those From to To. Not every index of the range carried an event, nor an
// event of the service the reader asked for.
type EventGap struct {
	From uint64 `json:"from"`
	To   uint64 `json:"to"`
}

// Events returns up to limit of the newest events with Index > since, oldest
// first, optionally only those of one service. A limit of 0 or less means 100.
// The events share their Before and After maps with the trail: read only.
func (m *Machine) Events(service string, since uint64, limit int) []Event {
	events, _ := m.QueryEvents(EventQuery{Service: service, Since: since, Limit: limit})
	return events
}

// QueryEvents returns the events q selects, oldest first, and the gap when the
// trail already dropped events after q.Since. The events share their Before
// and After maps with the trail: read only.
func (m *Machine) QueryEvents(q EventQuery) ([]Event, *EventGap) {
	limit := q.Limit
	if limit <= 0 {
		limit = 100
	}
	// The trail and what it dropped are read together, so a gap is never
	// missed between the two.
	m.mu.RLock()
	events, dropped := m.events, m.droppedThrough
	m.mu.RUnlock()
	var gap *EventGap
	if q.Since < dropped {
		gap = &EventGap{From: q.Since + 1, To: dropped}
	}
	events = events[sort.Search(len(events), func(i int) bool { return events[i].Index > q.Since }):]
	var out []Event
	if q.Oldest {
		for _, e := range events {
			if len(out) == limit {
				break
			}
			if q.Service == "" || e.Service == q.Service {
				out = append(out, e)
			}
		}
		return out, gap
	}
	for i := len(events) - 1; i >= 0 && len(out) < limit; i-- {
		if e := events[i]; q.Service == "" || e.Service == q.Service {
			out = append(out, e)
		}
	}
	slices.Reverse(out)
	return out, gap
}

// Apply decodes and applies one encoded command at the given Raft index.
// Every command, even one that is refused, advances the view's Index, except
// an entry this build cannot apply (CodeUnsupported): that one changes
// nothing at all and publishes nothing, so the node can stop before it and
// apply it once it runs a build that can.
func (m *Machine) Apply(index uint64, data []byte) Result {
	return m.ApplyBatch([]Entry{{Index: index, Data: data}})[0]
}

// Entry is one encoded command of a batch and its Raft index.
type Entry struct {
	Index uint64
	Data  []byte
}

// ApplyBatch applies entries in order, each exactly as Apply would, and
// publishes one view, the state after the last of them, with OnApply
// running once with every event they added. Raft hands over the entries
// committed together in one batch (the 1,000 seeds of a Caddyfile arrive
// in batches of up to MaxAppendEntries), so a batch copies the service
// map once, not once per command, and the data plane rebuilds once.
// Nobody sees the views in between: a reader waiting for an index of the
// batch wakes at its end.
//
// It stops at an entry this build cannot apply: that entry's result
// (CodeUnsupported) is the last of the results, the entries after it get
// none, and the view published is that of the entries before it (none at
// all when it is the first).
func (m *Machine) ApplyBatch(entries []Entry) []Result {
	results := make([]Result, 0, len(entries))
	m.mu.Lock()
	cur := m.view.Load()
	// next is private until it is stored: the maps it shares with cur are
	// copied before their first write in this batch (owned), then written
	// in place by the batch's later commands.
	next := &View{Index: cur.Index, Services: cur.Services, Deleted: cur.Deleted, Nodes: cur.Nodes, Removed: cur.Removed,
		Notifiers: cur.Notifiers, NotifiersDeleted: cur.NotifiersDeleted}
	var owned struct{ services, nodes, notifiers bool }
	next.Changes = &ViewChanges{Since: cur.Index}
	changed := map[string]bool{}
	var added []Event
	for _, e := range entries {
		c, res, ok := m.decodeSupported(e.Data)
		if !ok {
			results = append(results, res)
			break
		}
		res, eff := m.apply(next, e.Index, &c)
		results = append(results, res)
		next.Index = e.Index
		switch {
		case eff == nil, eff.eventOnly:
		case eff.notifierName != "":
			if !owned.notifiers {
				next.Notifiers, next.NotifiersDeleted = maps.Clone(next.Notifiers), maps.Clone(next.NotifiersDeleted)
				if next.Notifiers == nil {
					next.Notifiers = map[string]*Notifier{}
				}
				if next.NotifiersDeleted == nil {
					next.NotifiersDeleted = map[string]uint64{}
				}
				owned.notifiers = true
			}
			if eff.notifier == nil {
				delete(next.Notifiers, eff.notifierName)
				next.NotifiersDeleted[eff.notifierName] = e.Index
			} else {
				next.Notifiers[eff.notifierName] = eff.notifier
				delete(next.NotifiersDeleted, eff.notifierName)
			}
		case eff.node != nil:
			if !owned.nodes {
				next.Nodes, next.Removed = maps.Clone(next.Nodes), maps.Clone(next.Removed)
				owned.nodes = true
			}
			if eff.node.ClusterAddr == "" {
				delete(next.Nodes, eff.node.ID)
				next.Removed[eff.node.ID] = e.Index
			} else {
				next.Nodes[eff.node.ID] = *eff.node
				delete(next.Removed, eff.node.ID)
			}
		default:
			if !owned.services {
				next.Services, next.Deleted = maps.Clone(next.Services), maps.Clone(next.Deleted)
				owned.services = true
			}
			if !changed[c.Service] {
				changed[c.Service] = true
				next.Changes.Services = append(next.Changes.Services, c.Service)
			}
			if eff.service == nil {
				delete(next.Services, c.Service)
				next.Deleted[c.Service] = e.Index
			} else {
				next.Services[c.Service] = eff.service
				delete(next.Deleted, c.Service)
			}
		}
		if eff != nil && !eff.noEvent {
			ev := eff.event
			ev.Index, ev.Time, ev.Actor, ev.Service = e.Index, c.Time, c.Actor, c.Service
			if c.Reason != "" {
				ev.Reason = c.Reason
			}
			m.events = append(m.events, ev)
			if over := len(m.events) - m.opts.MaxEvents; over > 0 {
				m.droppedThrough = m.events[over-1].Index
				m.events = m.events[over:]
			}
			added = append(added, ev)
		}
	}
	if next.Index == cur.Index {
		// The first entry was one this build cannot apply.
		m.mu.Unlock()
		return results
	}
	m.view.Store(next)
	m.mu.Unlock()
	if m.opts.OnApply != nil {
		m.opts.OnApply(next, added)
	}
	return results
}

// decodeSupported checks that this build can apply the entry (its kind
// and every field are among the machine's capabilities) and decodes it,
// once: apply takes the command decoded here. On false, the result is the
// entry's CodeUnsupported refusal.
func (m *Machine) decodeSupported(data []byte) (Command, Result, bool) {
	var c Command
	lacks := m.caps.Lacks(data)
	if len(lacks) == 0 {
		var err error
		if c, err = Decode(data); err != nil {
			lacks = []string{"a command it cannot decode (" + err.Error() + ")"}
		}
	}
	if len(lacks) == 0 {
		return c, Result{}, true
	}
	return c, Result{Code: CodeUnsupported, Err: "this cbproxy build cannot apply the log entry: it lacks " + strings.Join(lacks, ", ") +
		" (a newer build wrote it)"}, false
}

// apply runs one decoded command against the view v: the common checks,
// the idempotency table, the version check and the kind's handler, in that
// order. It returns the command's result and, when the command changes the
// state, its effect.
func (m *Machine) apply(v *View, index uint64, c *Command) (Result, *effect) {
	reg, err := c.registration()
	if err == nil {
		err = c.validateCommon()
	}
	cur := v.Services[c.Service]
	if err != nil {
		return refuse(CodeInvalid, cur, "%v", err), nil
	}
	m.evictIdem(c.Time)
	if c.IdemKey != "" {
		if e, ok := m.idem[c.IdemKey]; ok {
			if e.Hash != c.IdemHash {
				return refuse(CodeIdempotencyReuse, cur, "this idempotency key was already used for a different request; use a new key"), nil
			}
			return e.result(cur), nil
		}
	}
	res, eff := m.run(v, cur, index, c, reg)
	res.Index = index
	if c.IdemKey != "" {
		m.rememberIdem(newIdemEntry(c, index, res))
	}
	return res, eff
}

func (m *Machine) run(v *View, cur *Service, index uint64, c *Command, reg *registration) (Result, *effect) {
	if p, ok := c.Payload.(notifierVersioned); ok {
		if n := v.Notifiers[p.versionedName()]; c.IfVersion != nil && *c.IfVersion != n.version() {
			if n == nil {
				return refuse(CodeVersionMismatch, nil, "notifier %q does not exist, but version %d was expected", p.versionedName(), *c.IfVersion), nil
			}
			return Result{Code: CodeVersionMismatch, Err: fmt.Sprintf("notifier %q is at version %d, not %d; read it again and retry", n.Name, n.Version, *c.IfVersion), Version: n.Version}, nil
		}
	} else if c.IfVersion != nil && *c.IfVersion != cur.version() {
		if cur == nil {
			return refuse(CodeVersionMismatch, cur, "service %q does not exist, but version %d was expected", c.Service, *c.IfVersion), nil
		}
		return refuse(CodeVersionMismatch, cur, "service %q is at version %d, not %d; read it again and retry", c.Service, cur.Version, *c.IfVersion), nil
	}
	if err := reg.check(&c.Envelope, c.Payload); err != nil {
		return refuse(CodeInvalid, cur, "%v", err), nil
	}
	return reg.apply(v, cur, index, &c.Envelope, c.Payload)
}

// RemembersKey reports whether the idempotency table holds key and will
// still hold it for a command stamped at now (give or take a minute of
// clock difference with the leader): such a command answers its first
// result, or a reuse conflict, and applies nothing.
func (m *Machine) RemembersKey(key string, now time.Time) bool {
	m.mu.RLock()
	e, ok := m.idem[key]
	m.mu.RUnlock()
	return ok && e.Time.After(now.Add(time.Minute-m.opts.IdemTTL))
}

// evictIdem forgets the keys stored before now - IdemTTL. Keys leave in the
// order they were stored; leader-stamped times are nearly monotonic, and where
// they are not a key just stays until the keys before it have gone. The rule
// depends only on the commands, so every node forgets the same keys.
func (m *Machine) evictIdem(now time.Time) {
	cutoff := now.Add(-m.opts.IdemTTL)
	for len(m.idemQueue) > 0 && m.idemQueue[0].Time.Before(cutoff) {
		m.dropOldestIdem()
	}
}

func (m *Machine) rememberIdem(e idemEntry) {
	m.idem[e.Key] = e
	m.idemQueue = append(m.idemQueue, e)
	for len(m.idemQueue) > maxIdemKeys {
		m.dropOldestIdem()
	}
}

func (m *Machine) dropOldestIdem() {
	delete(m.idem, m.idemQueue[0].Key)
	m.idemQueue = m.idemQueue[1:]
}

// version is the service's version, 0 when it does not exist.
func (s *Service) version() uint64 {
	if s == nil {
		return 0
	}
	return s.Version
}

// version is the notifier's version, 0 when it does not exist.
func (n *Notifier) version() uint64 {
	if n == nil {
		return 0
	}
	return n.Version
}

// refuse builds the result of a command that changed nothing.
func refuse(code string, cur *Service, format string, args ...any) Result {
	return Result{Code: code, Err: fmt.Sprintf(format, args...), Version: cur.version(), Service: cur}
}
