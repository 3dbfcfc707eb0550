package controlplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/hashicorp/raft"
	"go.uber.org/zap"
)

// fsm adapts state.Machine to raft.FSM and keeps the data plane's promise that
// a restarted node serves the weights it last applied (CONTRACT §5): after every
// applied command it persists the machine's state to applied.json in the
// background, and at start it restores from whichever is newer, that file or
// Raft's newest snapshot. Raft is started with NoSnapshotRestoreOnStart and
// replays the log after its snapshot; entries the machine already holds are
// skipped, so nothing is applied twice.
//
// An entry the build cannot apply (state.CodeUnsupported) halts the fsm: it
// applies nothing more, takes no snapshot and restores none until the process
// restarts, so neither the state machine's index nor applied.json ever moves
// past that entry, and a newer build replays it from the log.
type fsm struct {
	machine *state.Machine
	path    string // applied.json
	log     func() *zap.Logger
	// halted is set once, by the entry that halted the fsm. onHalt (see
	// notifyHalt) runs then, on Raft's FSM goroutine, and must not block.
	halted atomic.Pointer[halt]
	haltMu sync.Mutex
	onHalt func(halt)

	mu   sync.Mutex
	subs map[int]func(*state.View)
	next int
	// published is the index of the last view every subscriber has seen;
	// applied is closed and replaced each time it moves: waitIndex's wake-up.
	published uint64
	applied   chan struct{}

	dirty chan struct{}
	done  chan struct{}
	wg    sync.WaitGroup
	// writes counts the writes of applied.json.
	writes atomic.Uint64

	eventsMu   sync.Mutex
	eventSubs  map[int]chan state.Event
	nextEvents int
}

// halt is where and why the fsm stopped applying.
type halt struct {
	// Index is the log entry it cannot apply; Applied is the last index it
	// did apply (what the data plane serves).
	Index, Applied uint64
	Reason         string
}

func (h halt) String() string {
	return fmt.Sprintf("stopped applying the replicated log at index %d: %s; upgrade cbproxy on this node and restart it, it then applies the entry from its log; until then it serves the state of index %d and stays out of the cluster's quorum", h.Index, h.Reason, h.Applied)
}

func newFSM(dataDir string, opts state.Options, snaps raft.SnapshotStore, log func() *zap.Logger) (*fsm, error) {
	f := &fsm{
		path:      filepath.Join(dataDir, "applied.json"),
		log:       log,
		subs:      map[int]func(*state.View){},
		eventSubs: map[int]chan state.Event{},
		dirty:     make(chan struct{}, 1),
		applied:   make(chan struct{}),
		done:      make(chan struct{}),
	}
	opts.OnApply = f.onApply
	f.machine = state.NewMachine(opts)
	if err := f.restoreAtStart(snaps); err != nil {
		return nil, err
	}
	// What was restored is on disk already: nothing to persist (so a dry
	// run of Recover writes nothing).
	select {
	case <-f.dirty:
	default:
	}
	f.wg.Add(1)
	go f.persistLoop()
	return f, nil
}

// restoreAtStart loads the newest of applied.json and Raft's latest snapshot.
func (f *fsm) restoreAtStart(snaps raft.SnapshotStore) error {
	var snapIndex uint64
	var snapID string
	metas, err := snaps.List()
	if err != nil {
		return fmt.Errorf("listing raft snapshots: %w", err)
	}
	if len(metas) > 0 {
		snapIndex, snapID = metas[0].Index, metas[0].ID
	}
	applied, err := os.ReadFile(f.path)
	switch {
	case err == nil:
		m := state.NewMachine(state.Options{})
		if rerr := m.Restore(bytes.NewReader(applied)); rerr != nil {
			f.log().Warn("ignoring unreadable applied state; using the raft snapshot", zap.String("path", f.path), zap.Error(rerr))
		} else if m.View().Index >= snapIndex {
			return f.machine.Restore(bytes.NewReader(applied))
		}
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("reading applied state: %w", err)
	}
	if snapID == "" {
		return nil
	}
	_, rc, err := snaps.Open(snapID)
	if err != nil {
		return fmt.Errorf("opening raft snapshot %s: %w", snapID, err)
	}
	defer rc.Close()
	if err := f.machine.Restore(rc); err != nil {
		return fmt.Errorf("restoring raft snapshot %s: %w", snapID, err)
	}
	return nil
}

// Apply implements raft.FSM.
func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	if h := f.halted.Load(); h != nil {
		// Raft may hand over entries queued behind the one that halted us
		// before it stops; none is applied.
		return state.Result{Code: state.CodeUnsupported, Err: "this node " + h.String()}
	}
	if l.Index <= f.machine.View().Index {
		// Already part of the state this node restored at start.
		return state.Result{Code: state.CodeInvalid, Err: "entry already applied"}
	}
	res := f.machine.Apply(l.Index, l.Data)
	if res.Code == state.CodeUnsupported {
		// A newer node wrote a command this build cannot apply. Skipping it
		// would let this node's state diverge and lose the entry for good;
		// stop before it instead, loudly. The machine changed nothing.
		h := &halt{Index: l.Index, Applied: f.machine.View().Index, Reason: res.Err}
		f.halted.Store(h)
		f.log().Error("STOPPED: this node cannot apply the replicated log; upgrade cbproxy on it and restart it, it then applies the entry from its log",
			zap.Uint64("index", h.Index), zap.Uint64("applied_index", h.Applied), zap.String("reason", h.Reason))
		f.mu.Lock()
		close(f.applied) // waiters of later indexes give up now
		f.applied = make(chan struct{})
		f.mu.Unlock()
		f.haltMu.Lock()
		fn := f.onHalt
		f.haltMu.Unlock()
		if fn != nil {
			fn(*h)
		}
	}
	return res
}

// notifyHalt makes fn run when the fsm halts, or at once if it already has
// (Raft's FSM goroutine runs before Raft's constructor returns). fn may run
// twice; it must not block.
func (f *fsm) notifyHalt(fn func(halt)) {
	f.haltMu.Lock()
	f.onHalt = fn
	f.haltMu.Unlock()
	if h := f.halted.Load(); h != nil {
		fn(*h)
	}
}

// halt returns where the fsm stopped, nil while it applies.
func (f *fsm) halt() *halt { return f.halted.Load() }

// Snapshot implements raft.FSM. The state is encoded at once, so the snapshot
// holds exactly what was applied when Raft asked, while Persist runs later.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	if h := f.halted.Load(); h != nil {
		// Raft would label it with the index of the entry that halted us,
		// and a restart would then skip that entry.
		return nil, errors.New("no snapshot: this node " + h.String())
	}
	var buf bytes.Buffer
	if err := f.machine.WriteSnapshot(&buf); err != nil {
		return nil, err
	}
	return fsmSnapshot(buf.Bytes()), nil
}

// Restore implements raft.FSM (a snapshot installed by the leader).
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	if h := f.halted.Load(); h != nil {
		return errors.New("no restore: this node " + h.String())
	}
	return f.machine.Restore(rc)
}

type fsmSnapshot []byte

func (s fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (fsmSnapshot) Release() {}

// onApply runs on Raft's FSM goroutine after every command and restore.
func (f *fsm) onApply(v *state.View, added []state.Event) {
	select {
	case f.dirty <- struct{}{}:
	default:
	}
	f.mu.Lock()
	subs := make([]func(*state.View), 0, len(f.subs))
	for _, fn := range f.subs {
		subs = append(subs, fn)
	}
	f.mu.Unlock()
	for _, fn := range subs {
		fn(v)
	}
	// Only now, with the data plane's tables rebuilt, is the index applied
	// for waitIndex (?wait=all promises the proxy already uses it).
	f.mu.Lock()
	f.published = v.Index
	close(f.applied)
	f.applied = make(chan struct{})
	f.mu.Unlock()
	if len(added) == 0 {
		return
	}
	f.eventsMu.Lock()
	for id, ch := range f.eventSubs {
		for _, e := range added {
			select {
			case ch <- e:
			default:
				// A reader too slow for the trail loses its stream rather
				// than stall Raft; it can resume with Last-Event-ID.
				close(ch)
				delete(f.eventSubs, id)
			}
		}
	}
	f.eventsMu.Unlock()
}

// waitIndex waits until the machine has applied index; false if ctx ended
// first or the fsm halted before index.
func (f *fsm) waitIndex(ctx context.Context, index uint64) bool {
	for {
		f.mu.Lock()
		ch, published := f.applied, f.published
		f.mu.Unlock()
		if published >= index {
			return true
		}
		if f.halted.Load() != nil {
			return false
		}
		select {
		case <-ch:
		case <-ctx.Done():
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.published >= index
		}
	}
}

func (f *fsm) subscribe(fn func(*state.View)) func() {
	f.mu.Lock()
	id := f.next
	f.next++
	f.subs[id] = fn
	f.mu.Unlock()
	fn(f.machine.View())
	return func() {
		f.mu.Lock()
		delete(f.subs, id)
		f.mu.Unlock()
	}
}

// subscribeEvents returns a channel of new events; it is closed when the reader
// falls behind or cancel is called.
func (f *fsm) subscribeEvents() (<-chan state.Event, func()) {
	ch := make(chan state.Event, 256)
	f.eventsMu.Lock()
	id := f.nextEvents
	f.nextEvents++
	f.eventSubs[id] = ch
	f.eventsMu.Unlock()
	return ch, func() {
		f.eventsMu.Lock()
		if c, ok := f.eventSubs[id]; ok {
			close(c)
			delete(f.eventSubs, id)
		}
		f.eventsMu.Unlock()
	}
}

// persistEvery is the shortest pause between two writes of applied.json.
// Each write encodes and fsyncs the whole state (megabytes with a full event
// trail and idempotency table), so a stream of applies must not cost one
// write each. A crash loses at most the applies of the last pause from
// applied.json; Raft's log still has them and replays them once the node
// knows the commit index. A clean close always writes the last state.
const persistEvery = 100 * time.Millisecond

// persistLoop writes applied.json whenever the state changed: one write at a
// time, each of the newest state, the next one no sooner than persistEvery
// (or as long as the last write took, if longer) after the last, so bursts
// of commands coalesce and writing never takes more than half the time. On
// close it writes whatever is still unwritten.
func (f *fsm) persistLoop() {
	defer f.wg.Done()
	var next time.Time // the earliest time of the next write
	for {
		select {
		case <-f.dirty:
		case <-f.done:
			select {
			case <-f.dirty:
				f.persist()
			default:
			}
			return
		}
		// The state changed and is not written yet: from here on, closing
		// writes it at once instead of waiting.
		if wait := time.Until(next); wait > 0 {
			timer := time.NewTimer(wait)
			select {
			case <-timer.C:
			case <-f.done:
				timer.Stop()
				f.persist()
				return
			}
		}
		start := time.Now()
		f.persist()
		next = time.Now().Add(max(persistEvery, time.Since(start)))
	}
}

func (f *fsm) persist() {
	var buf bytes.Buffer
	if err := f.machine.WriteSnapshot(&buf); err != nil {
		f.log().Error("encoding applied state", zap.Error(err))
		return
	}
	if err := writeFileAtomic(f.path, buf.Bytes()); err != nil {
		f.log().Error("persisting applied state", zap.String("path", f.path), zap.Error(err))
		return
	}
	f.writes.Add(1)
}

func (f *fsm) close() {
	select {
	case <-f.done:
		return
	default:
	}
	close(f.done)
	f.wg.Wait()
}

// writeFileAtomic replaces path with data so that a crash leaves either the old
// or the new content, never a torn file.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	fh, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := fh.Write(data); err != nil {
		fh.Close()
		return err
	}
	if err := fh.Sync(); err != nil {
		fh.Close()
		return err
	}
	if err := fh.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer dir.Close()
	return dir.Sync()
}
