package raftnode

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
	"go.uber.org/zap"
)

// appliedFile keeps the state machine's whole state in data_dir/applied.json,
// written in the background after applies, so that a restarted node serves
// the weights it last applied before Raft even starts (DESIGN.md, "Restart
// without going back in time").
type appliedFile struct {
	path    string
	machine *state.Machine
	log     func() *zap.Logger

	dirty chan struct{}
	done  chan struct{}
	wg    sync.WaitGroup
	// writes counts the writes of applied.json.
	writes atomic.Uint64
}

func newAppliedFile(dataDir string, m *state.Machine, log func() *zap.Logger) *appliedFile {
	return &appliedFile{
		path:    filepath.Join(dataDir, "applied.json"),
		machine: m,
		log:     log,
		dirty:   make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
}

// read returns the file's content as last written.
func (a *appliedFile) read() ([]byte, error) { return os.ReadFile(a.path) }

// start begins writing on changes. A change signalled before start (the
// state restored from this file or a snapshot) is on disk already and is
// not written again, so a dry run of Recover writes nothing.
func (a *appliedFile) start() {
	select {
	case <-a.dirty:
	default:
	}
	a.wg.Add(1)
	go a.persistLoop()
}

// changed says the machine's state changed; it never blocks.
func (a *appliedFile) changed() {
	select {
	case a.dirty <- struct{}{}:
	default:
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
func (a *appliedFile) persistLoop() {
	defer a.wg.Done()
	var next time.Time // the earliest time of the next write
	for {
		select {
		case <-a.dirty:
		case <-a.done:
			select {
			case <-a.dirty:
				a.persist()
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
			case <-a.done:
				timer.Stop()
				a.persist()
				return
			}
		}
		start := time.Now()
		a.persist()
		next = time.Now().Add(max(persistEvery, time.Since(start)))
	}
}

func (a *appliedFile) persist() {
	var buf bytes.Buffer
	if err := a.machine.WriteSnapshot(&buf); err != nil {
		a.log().Error("encoding applied state", zap.Error(err))
		return
	}
	if err := writeFileAtomic(a.path, buf.Bytes()); err != nil {
		a.log().Error("persisting applied state", zap.String("path", a.path), zap.Error(err))
		return
	}
	a.writes.Add(1)
}

func (a *appliedFile) close() {
	select {
	case <-a.done:
		return
	default:
	}
	close(a.done)
	a.wg.Wait()
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
