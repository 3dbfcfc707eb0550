package raftnode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/hashicorp/raft"
	"go.uber.org/zap"
)

// fsm adapts state.Machine to raft.FSM (batching: raft.BatchingFSM), and nothing more: after every
// applied command it hands the new state to the applied-state file
// (applied.go), the view subscribers (views.go) and the event fan-out
// (events.go). At start the machine restores from whichever is newer, the
// applied-state file or Raft's newest snapshot, so a restarted node serves
// the weights it last applied. Raft is started with NoSnapshotRestoreOnStart
// and replays the log after its snapshot; entries the machine already holds
// are skipped, so nothing is applied twice.
//
// An entry the build cannot apply (state.CodeUnsupported) halts the fsm: it
// applies nothing more, takes no snapshot and restores none until the process
// restarts, so neither the state machine's index nor applied.json ever moves
// past that entry, and a newer build replays it from the log.
type fsm struct {
	machine *state.Machine
	applied *appliedFile
	views   *views
	events  *eventFanout
	log     func() *zap.Logger

	// halted is set once, by the entry that halted the fsm. onHalt (see
	// notifyHalt) runs then, on Raft's FSM goroutine, and must not block.
	halted atomic.Pointer[Halt]
	haltMu sync.Mutex
	onHalt func(Halt)
}

// Halt is where and why the state machine stopped applying.
type Halt struct {
	// Index is the log entry it cannot apply; Applied is the last index it
	// did apply (what the data plane serves).
	Index, Applied uint64
	Reason         string
}

func (h Halt) String() string {
	return fmt.Sprintf("stopped applying the replicated log at index %d: %s; upgrade cbproxy on this node and restart it, it then applies the entry from its log; until then it serves the state of index %d and stays out of the cluster's quorum", h.Index, h.Reason, h.Applied)
}

func newFSM(dataDir string, opts state.Options, snaps raft.SnapshotStore, log func() *zap.Logger) (*fsm, error) {
	f := &fsm{views: newViews(), events: newEventFanout(), log: log}
	opts.OnApply = f.onApply
	f.machine = state.NewMachine(opts)
	f.applied = newAppliedFile(dataDir, f.machine, log)
	if err := f.restoreAtStart(snaps); err != nil {
		return nil, err
	}
	// What was restored is on disk already: nothing to persist (so a dry
	// run of Recover writes nothing).
	f.applied.start()
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
	applied, err := f.applied.read()
	switch {
	case err == nil:
		m := state.NewMachine(state.Options{})
		if rerr := m.Restore(bytes.NewReader(applied)); rerr != nil {
			f.log().Warn("ignoring unreadable applied state; using the raft snapshot", zap.String("path", f.applied.path), zap.Error(rerr))
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

var _ raft.BatchingFSM = (*fsm)(nil)

// Apply implements raft.FSM.
func (f *fsm) Apply(l *raft.Log) any {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch implements raft.BatchingFSM: Raft hands over the entries
// committed together, and the machine applies their commands as one batch
// (state.Machine.ApplyBatch: one view published, one rebuild of the data
// plane, for up to MaxAppendEntries commands).
func (f *fsm) ApplyBatch(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	var entries []state.Entry
	var at []int // at[i] is the position in logs of entries[i]
	applied := f.machine.View().Index
	for i, l := range logs {
		switch {
		case l.Type != raft.LogCommand:
		case f.halted.Load() != nil:
			// Raft may hand over entries queued behind the one that halted
			// us before it stops; none is applied.
			out[i] = f.haltedResult()
		case l.Index <= applied:
			// Already part of the state this node restored at start.
			out[i] = state.Result{Code: state.CodeInvalid, Err: "entry already applied"}
		default:
			entries = append(entries, state.Entry{Index: l.Index, Data: l.Data})
			at = append(at, i)
		}
	}
	if len(entries) == 0 {
		return out
	}
	results := f.machine.ApplyBatch(entries)
	for k, res := range results {
		out[at[k]] = res
	}
	if last := results[len(results)-1]; last.Code == state.CodeUnsupported {
		// A newer node wrote a command this build cannot apply. Skipping it
		// would let this node's state diverge and lose the entry for good;
		// stop before it instead, loudly. The machine changed nothing for
		// it, nor for the entries after it.
		f.stopAt(entries[len(results)-1].Index, last.Err)
		for _, i := range at[len(results):] {
			out[i] = f.haltedResult()
		}
	}
	return out
}

// haltedResult answers an entry after the one that halted the fsm.
func (f *fsm) haltedResult() state.Result {
	return state.Result{Code: state.CodeUnsupported, Err: "this node " + f.halted.Load().String()}
}

// stopAt halts the fsm before the entry at index.
func (f *fsm) stopAt(index uint64, reason string) {
	h := &Halt{Index: index, Applied: f.machine.View().Index, Reason: reason}
	f.halted.Store(h)
	f.log().Error("STOPPED: this node cannot apply the replicated log; upgrade cbproxy on it and restart it, it then applies the entry from its log",
		zap.Uint64("index", h.Index), zap.Uint64("applied_index", h.Applied), zap.String("reason", h.Reason))
	f.views.wake() // waiters of later indexes give up now
	f.haltMu.Lock()
	fn := f.onHalt
	f.haltMu.Unlock()
	if fn != nil {
		fn(*h)
	}
}

// onApply runs on Raft's FSM goroutine after every command and restore.
func (f *fsm) onApply(v *state.View, added []state.Event) {
	f.applied.changed()
	f.views.publish(v)
	f.events.publish(added)
}

// notifyHalt makes fn run when the fsm halts, or at once if it already has
// (Raft's FSM goroutine runs before Raft's constructor returns). fn may run
// twice; it must not block.
func (f *fsm) notifyHalt(fn func(Halt)) {
	f.haltMu.Lock()
	f.onHalt = fn
	f.haltMu.Unlock()
	if h := f.halted.Load(); h != nil {
		fn(*h)
	}
}

// halt returns where the fsm stopped, nil while it applies.
func (f *fsm) halt() *Halt { return f.halted.Load() }

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

// waitIndex waits until the machine has applied index and every view
// subscriber has seen it; false if ctx ended first or the fsm halted
// before index.
func (f *fsm) waitIndex(ctx context.Context, index uint64) bool {
	return f.views.waitIndex(ctx, index, func() bool { return f.halted.Load() != nil })
}

func (f *fsm) close() { f.applied.close() }
