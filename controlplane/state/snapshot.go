package state

import (
	"encoding/json"
	"fmt"
	"io"
)

// snapshotFormat is the version of the snapshot document; Restore refuses any
// other. Format 2 adds the notifiers; a state without any is still written
// as format 1, byte for byte what builds before notifiers wrote, so that
// they can read it (an older build would drop the notifiers of a format 1
// document in silence, so a state with notifiers is format 2, which they
// refuse).
const (
	snapshotFormat          = 1
	snapshotFormatNotifiers = 2
)

// snapshot is the whole state as one JSON document. Maps encode with sorted
// keys and lists keep their order, so equal states give equal bytes.
type snapshot struct {
	Format   int                 `json:"format"`
	Index    uint64              `json:"index"`
	Services map[string]*Service `json:"services"`
	Deleted  map[string]uint64   `json:"deleted"`
	Nodes    map[string]NodeInfo `json:"nodes,omitempty"`
	Removed  map[string]uint64   `json:"removed,omitempty"`
	Events   []Event             `json:"events"`
	// EventsDroppedThrough is the index of the newest event the trail
	// dropped (0: none). Absent in snapshots of builds that did not record
	// it; Restore then infers it from a full trail.
	EventsDroppedThrough *uint64     `json:"events_dropped_through,omitempty"`
	Idempotency          []idemEntry `json:"idempotency"`
	// Notifiers and NotifiersDeleted (format 2).
	Notifiers        map[string]*Notifier `json:"notifiers,omitempty"`
	NotifiersDeleted map[string]uint64    `json:"notifiers_deleted,omitempty"`
}

// WriteSnapshot writes the whole state as one JSON document. It may run while
// Apply runs: it copies what it needs under the lock (a pointer and two slice
// headers) and encodes afterwards.
func (m *Machine) WriteSnapshot(w io.Writer) error {
	m.mu.RLock()
	v := m.view.Load()
	snap := snapshot{
		Format:      snapshotFormat,
		Index:       v.Index,
		Services:    v.Services,
		Deleted:     v.Deleted,
		Nodes:       v.Nodes,
		Removed:     v.Removed,
		Events:      m.events,
		Idempotency: m.idemQueue,

		Notifiers:        v.Notifiers,
		NotifiersDeleted: v.NotifiersDeleted,
	}
	if len(snap.Notifiers) > 0 || len(snap.NotifiersDeleted) > 0 {
		snap.Format = snapshotFormatNotifiers
	}
	dropped := m.droppedThrough
	snap.EventsDroppedThrough = &dropped
	m.mu.RUnlock()
	if snap.Events == nil {
		snap.Events = []Event{}
	}
	if snap.Idempotency == nil {
		snap.Idempotency = []idemEntry{}
	}
	if err := json.NewEncoder(w).Encode(snap); err != nil {
		return fmt.Errorf("writing snapshot: %w", err)
	}
	return nil
}

// Restore replaces the whole state with a snapshot written by WriteSnapshot,
// after checking that it holds a valid state.
func (m *Machine) Restore(r io.Reader) error {
	var snap snapshot
	if err := json.NewDecoder(r).Decode(&snap); err != nil {
		return fmt.Errorf("reading snapshot: %w", err)
	}
	if snap.Format != snapshotFormat && snap.Format != snapshotFormatNotifiers {
		return fmt.Errorf("snapshot format %d is not supported; this build reads formats %d and %d", snap.Format, snapshotFormat, snapshotFormatNotifiers)
	}
	if err := snap.validate(); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	v := &View{Index: snap.Index, Services: snap.Services, Deleted: snap.Deleted, Nodes: snap.Nodes, Removed: snap.Removed,
		Notifiers: snap.Notifiers, NotifiersDeleted: snap.NotifiersDeleted}
	if v.Nodes == nil {
		v.Nodes = map[string]NodeInfo{}
	}
	if v.Removed == nil {
		v.Removed = map[string]uint64{}
	}
	if v.Services == nil {
		v.Services = map[string]*Service{}
	}
	if v.Deleted == nil {
		v.Deleted = map[string]uint64{}
	}
	events := snap.Events
	var dropped uint64
	switch {
	case snap.EventsDroppedThrough != nil:
		dropped = *snap.EventsDroppedThrough
	case len(events) >= m.opts.MaxEvents && events[0].Index > 1:
		// Written by a build that did not record what its trail dropped:
		// a full trail may have dropped everything before its oldest event.
		// Claiming a gap that was not is safer than hiding one that was.
		dropped = events[0].Index - 1
	}
	if over := len(events) - m.opts.MaxEvents; over > 0 {
		dropped = events[over-1].Index
		events = events[over:]
	}
	queue := snap.Idempotency
	if over := len(queue) - maxIdemKeys; over > 0 {
		queue = queue[over:]
	}
	idem := make(map[string]idemEntry, len(queue))
	for _, e := range queue {
		idem[e.Key] = e
	}

	m.mu.Lock()
	m.events = events
	m.droppedThrough = dropped
	m.idemQueue = queue
	m.idem = idem
	m.view.Store(v)
	m.mu.Unlock()
	if m.opts.OnApply != nil {
		m.opts.OnApply(v, nil)
	}
	return nil
}

// validate checks the invariants Apply keeps, so that a damaged snapshot is
// refused rather than served.
func (s *snapshot) validate() error {
	for _, name := range sortedKeys(s.Services) {
		svc := s.Services[name]
		if svc == nil || svc.Name != name {
			return fmt.Errorf("service %q is stored under another name", name)
		}
		if err := svc.validate(); err != nil {
			return err
		}
		if _, ok := s.Deleted[name]; ok {
			return fmt.Errorf("service %q is both live and deleted", name)
		}
	}
	for _, id := range sortedKeys(s.Removed) {
		if _, ok := s.Nodes[id]; ok {
			return fmt.Errorf("node %q is both a member and removed", id)
		}
	}
	for i := 1; i < len(s.Events); i++ {
		if s.Events[i].Index <= s.Events[i-1].Index {
			return fmt.Errorf("events are not in index order at index %d", s.Events[i].Index)
		}
	}
	if d := s.EventsDroppedThrough; d != nil {
		if *d > s.Index || (len(s.Events) > 0 && *d >= s.Events[0].Index) {
			return fmt.Errorf("events_dropped_through %d must be below the index of the oldest event kept and at most the snapshot's index %d", *d, s.Index)
		}
	}
	for _, name := range sortedKeys(s.Notifiers) {
		n := s.Notifiers[name]
		if n == nil || n.Name != name {
			return fmt.Errorf("notifier %q is stored under another name", name)
		}
		if err := ValidateNotifierName(name); err != nil {
			return err
		}
		if _, ok := s.NotifiersDeleted[name]; ok {
			return fmt.Errorf("notifier %q is both live and deleted", name)
		}
	}
	seen := make(map[string]bool, len(s.Idempotency))
	for _, e := range s.Idempotency {
		if seen[e.Key] || e.Key == "" {
			return fmt.Errorf("idempotency key %q is empty or stored twice", e.Key)
		}
		seen[e.Key] = true
	}
	return nil
}
