package rollouts

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sort"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/cluster"
	"github.com/cbproxy/cbproxy/controlplane/raftnode"
	"github.com/cbproxy/cbproxy/controlplane/slo"
	"go.uber.org/zap"
)

// The watcher's node-to-node RPC methods, served on the cluster port.
const (
	// rpcWindows: the leader pulls a node's SLO windows of every judged
	// service at once. Not named "windows" like the per-service call it
	// replaced: a node of that version would read this request as asking
	// for nothing and answer with no service, which means "serves nothing",
	// not "figures missing". The new name fails the call on such a node, so
	// its figures count as missing. "_v2": the windows gained the 1 ms and
	// 2.5 ms buckets, and a leader must not merge bucket counts of another
	// layout (a node of the previous layout counts as missing figures for
	// the length of a rolling upgrade).
	rpcWindows = "slo_windows_v2"
	rpcVerdict = "verdict" // the leader's latest verdict on a service
)

func (w *Watcher) registerRPC() {
	w.transport.Handle(rpcWindows, func(_ context.Context, _ string, req json.RawMessage) (any, error) {
		var r windowsRequest
		if err := json.Unmarshal(req, &r); err != nil {
			return nil, err
		}
		return w.localWindows(r), nil
	})
	w.transport.Handle(rpcVerdict, func(_ context.Context, _ string, req json.RawMessage) (any, error) {
		var service string
		if err := json.Unmarshal(req, &service); err != nil {
			return nil, err
		}
		if !w.n.IsLeader() {
			return nil, cluster.CodedError(raftnode.CodeNotLeader, "not the leader")
		}
		return w.latest(service), nil
	})
}

// windowsTimeout bounds each node's answer to the leader's call for
// windows. All nodes are asked at once, for every service judged in one
// call, so a node that accepts the call and never answers costs one timeout
// per evaluation, not one per service, and leaves most of the second to the
// decisions.
const windowsTimeout = 400 * time.Millisecond

// windowRound is every node's answer to one call for windows.
type windowRound struct {
	nodes   []string                  // every node of the configuration, by ID, sorted
	answers map[string]*windowsAnswer // by node ID; absent: the node did not answer
}

// pullWindows asks every node of the configuration, in parallel, for its
// windows of every service in req. A node that does not answer within
// windowsTimeout, or answers with an error (as a node of an earlier version
// does: it lacks the RPC), has no answer in the round.
func (w *Watcher) pullWindows(ctx context.Context, req windowsRequest) windowRound {
	round := windowRound{answers: map[string]*windowsAnswer{}}
	servers := w.n.Members()
	ctx, cancel := context.WithTimeout(ctx, windowsTimeout)
	defer cancel()
	type answer struct {
		id string
		a  *windowsAnswer
	}
	ch := make(chan answer, len(servers))
	for _, s := range servers {
		round.nodes = append(round.nodes, s.ID)
		go func(s raftnode.Member) {
			if s.ID == w.n.ID() {
				a := w.localWindows(req)
				ch <- answer{s.ID, &a}
				return
			}
			var a windowsAnswer
			err := w.transport.Call(ctx, s.ClusterAddr, rpcWindows, req, &a)
			if err == nil && a.Services == nil {
				err = errors.New("answer without services")
			}
			if err != nil {
				w.log().Debug("no windows from node; its figures are missing", zap.String("node", s.ID), zap.Error(err))
				ch <- answer{id: s.ID}
				return
			}
			ch <- answer{s.ID, &a}
		}(s)
	}
	sort.Strings(round.nodes)
	for range servers {
		select {
		case a := <-ch:
			if a.a != nil {
				round.answers[a.id] = a.a
			}
		case <-ctx.Done():
			// Remote calls end with ctx too; this only stops waiting for
			// the local data plane, which takes no context.
			return round
		}
	}
	return round
}

// merge adds up the windows that the nodes serving a service reported, and
// says which nodes reported and which are missing. A node that answered
// without the service does not serve it (it has no handler for it) and is
// not expected; a node that did not answer may serve it, so it is missing.
func (r windowRound) merge(service string) (map[string]slo.Window, slo.Nodes) {
	merged := map[string]slo.Window{}
	var nodes slo.Nodes
	for _, id := range r.nodes {
		a := r.answers[id]
		if a == nil {
			nodes.Missing = append(nodes.Missing, id)
			continue
		}
		windows, serves := a.Services[service]
		if !serves {
			continue
		}
		nodes.Reporting++
		for p, win := range windows {
			m := merged[p]
			m.Add(win)
			merged[p] = m
		}
	}
	return merged, nodes
}

// windowsRequest asks a node for its windows of every service the leader
// judges (RPC "slo_windows_v2"), each over its own window.
type windowsRequest struct {
	Services []serviceWindows `json:"services"`
}

// serviceWindows asks for the windows of some pools of one service.
type serviceWindows struct {
	Service  string   `json:"service"`
	Pools    []string `json:"pools"`
	WindowMs int64    `json:"window_ms"`
}

// windowsAnswer is a node's answer to a windowsRequest: by service, the
// windows of the pools asked for, for every service the node serves. A
// service the node does not serve is left out.
type windowsAnswer struct {
	Services map[string]map[string]slo.Window `json:"services"`
}

func (w *Watcher) localWindows(req windowsRequest) windowsAnswer {
	out := windowsAnswer{Services: map[string]map[string]slo.Window{}}
	dp := w.dataPlane()
	if dp == nil {
		return out // no data plane: this node serves nothing
	}
	declared := dp.Declared()
	for _, sw := range req.Services {
		if _, serves := slices.BinarySearch(declared, sw.Service); !serves {
			continue
		}
		windows := make(map[string]slo.Window, len(sw.Pools))
		for _, p := range sw.Pools {
			windows[p] = dp.Window(sw.Service, p, time.Duration(sw.WindowMs)*time.Millisecond)
		}
		out.Services[sw.Service] = windows
	}
	return out
}
