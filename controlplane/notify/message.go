package notify

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// Notification is the JSON body a notifier of format json receives
// (docs/api.md "Notifications").
type Notification struct {
	// ID is the event's index in the replicated log: the same for every
	// delivery of the event, so a receiver can drop duplicates.
	ID string `json:"id"`
	// Kind is the notification kind (state.NotificationKinds).
	Kind string `json:"kind"`
	// Event is the trail's event action it comes from.
	Event   state.EventAction `json:"event"`
	Service string            `json:"service,omitempty"`
	Time    time.Time         `json:"time"`
	// Node is the node that sent it: the leader.
	Node  string `json:"node"`
	Actor string `json:"actor,omitempty"`
	// Summary says what happened in one line, for people.
	Summary string        `json:"summary"`
	Reason  string        `json:"reason,omitempty"`
	Before  state.Weights `json:"before,omitempty"`
	After   state.Weights `json:"after,omitempty"`
	// Figures are the measurements that decided it, as the event recorded
	// them (a rollback's pools, a gate's failing backends).
	Figures map[string]any `json:"figures,omitempty"`
	// Bounds are the service's rollback thresholds (its SLO as it is when
	// the notification is sent) for a rollback or breach.
	Bounds *state.Thresholds `json:"bounds,omitempty"`
	// Rollout is the rollout the event is about, when there is one.
	Rollout *RolloutRef `json:"rollout,omitempty"`
}

// RolloutRef names a rollout and where it stands.
type RolloutRef struct {
	ID    string `json:"id"`
	State string `json:"state"`
	Step  int    `json:"step"`
	Steps int    `json:"steps"`
	From  string `json:"from"`
	To    string `json:"to"`
}

// Kind is the notification kind of an event as the view v shows its
// service, "" when no notification is sent for it. A rollback by the
// watcher is a rollout rolled back when it ended the service's rollout (the
// rollout's end is the event's time), else a guard breach.
func Kind(ev state.Event, v *state.View) string {
	switch ev.Action {
	case state.ActionRolloutStart:
		return "rollout_started"
	case state.ActionRolloutStep, state.ActionRolloutPromote:
		return "rollout_step"
	case state.ActionRolloutPause:
		return "rollout_paused"
	case state.ActionRolloutResume:
		return "rollout_resumed"
	case state.ActionRolloutComplete:
		return "rollout_promoted"
	case state.ActionRolloutAbort:
		return "rollout_aborted"
	case state.ActionRollback:
		if endedRollout(ev, v) != nil {
			return "rollout_rolled_back"
		}
		if ev.Actor == "watcher" {
			return "guard_breach"
		}
		return "rollback"
	case state.ActionGateRefused:
		return "gate_refused"
	case state.ActionNodeLost:
		return "node_lost"
	case state.ActionNodeJoin:
		return "node_joined"
	case state.ActionNodeRemove:
		return "node_removed"
	}
	return ""
}

// endedRollout is the service's rollout if the event ended it.
func endedRollout(ev state.Event, v *state.View) *state.Rollout {
	s := v.Services[ev.Service]
	if s == nil || s.Rollout == nil || !s.Rollout.Ended.Equal(ev.Time) {
		return nil
	}
	return s.Rollout
}

// build makes the notification of ev, of the given kind, sent by node.
func build(ev state.Event, kind, node string, v *state.View) Notification {
	n := Notification{
		ID: strconv.FormatUint(ev.Index, 10), Kind: kind, Event: ev.Action, Service: ev.Service, Time: ev.Time,
		Node: node, Actor: ev.Actor, Reason: ev.Reason, Before: ev.Before, After: ev.After, Figures: ev.Figures,
	}
	s := v.Services[ev.Service]
	if s != nil && s.Rollout != nil && strings.HasPrefix(kind, "rollout_") {
		r := s.Rollout
		n.Rollout = &RolloutRef{ID: r.ID, State: r.State, Step: r.Step, Steps: len(r.Steps), From: r.From, To: r.To}
	}
	if s != nil && (kind == "rollout_rolled_back" || kind == "guard_breach" || kind == "rollback") {
		b := s.SLO.Rollback
		n.Bounds = &b
	}
	n.Summary = summary(n)
	return n
}

// summary is the notification in one line.
func summary(n Notification) string {
	var b strings.Builder
	if n.Service != "" {
		fmt.Fprintf(&b, "[%s] ", n.Service)
	}
	b.WriteString(strings.ReplaceAll(n.Kind, "_", " "))
	if n.Rollout != nil {
		fmt.Fprintf(&b, " (rollout %s, %s → %s, step %d/%d)", n.Rollout.ID, n.Rollout.From, n.Rollout.To, n.Rollout.Step, n.Rollout.Steps)
	}
	if len(n.After) > 0 {
		fmt.Fprintf(&b, ": weights %s → %s", weightsText(n.Before), weightsText(n.After))
	}
	if pools := poolsText(n.Figures, n.Bounds); pools != "" {
		b.WriteString("; " + pools)
	}
	if n.Reason != "" {
		b.WriteString(" — " + n.Reason)
	}
	if n.Actor != "" {
		b.WriteString(" (by " + n.Actor + ")")
	}
	return b.String()
}

func weightsText(w state.Weights) string {
	if len(w) == 0 {
		return "-"
	}
	names := make([]string, 0, len(w))
	for p := range w {
		names = append(names, p)
	}
	sort.Strings(names)
	parts := make([]string, 0, len(names))
	for _, p := range names {
		parts = append(parts, p+" "+w[p].String())
	}
	return strings.Join(parts, ", ")
}

// poolsText says each pool's error rate and P95 from a watcher's figures,
// with the bounds.
func poolsText(figures map[string]any, bounds *state.Thresholds) string {
	pools, _ := figures["pools"].(map[string]any)
	if len(pools) == 0 {
		return ""
	}
	names := make([]string, 0, len(pools))
	for p := range pools {
		names = append(names, p)
	}
	sort.Strings(names)
	var parts []string
	for _, p := range names {
		f, _ := pools[p].(map[string]any)
		er, _ := f["error_rate"].(float64)
		p95, _ := f["p95_ms"].(float64)
		req, _ := f["requests"].(float64)
		parts = append(parts, fmt.Sprintf("%s: error rate %.2f%%, P95 %.0f ms, %d requests", p, er*100, p95, int64(req)))
	}
	s := strings.Join(parts, "; ")
	if bounds != nil {
		s += fmt.Sprintf(" (rollback bounds: error rate %.2f%%, P95 %.0f ms)", bounds.ErrorRate*100, bounds.P95ms)
	}
	return s
}

// body encodes n in the notifier's format.
func body(n Notification, format state.NotifyFormat) ([]byte, error) {
	if format != state.FormatSlack {
		return json.Marshal(n)
	}
	type text struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	type block struct {
		Type     string `json:"type"`
		Text     *text  `json:"text,omitempty"`
		Elements []text `json:"elements,omitempty"`
	}
	title := strings.ReplaceAll(n.Kind, "_", " ")
	if n.Service != "" {
		title = n.Service + ": " + title
	}
	return json.Marshal(struct {
		Text   string  `json:"text"`
		Blocks []block `json:"blocks"`
	}{
		Text: n.Summary,
		Blocks: []block{
			{Type: "header", Text: &text{Type: "plain_text", Text: title}},
			{Type: "section", Text: &text{Type: "mrkdwn", Text: n.Summary}},
			{Type: "context", Elements: []text{{Type: "mrkdwn", Text: fmt.Sprintf("event %s · %s · sent by %s", n.ID, n.Time.UTC().Format(time.RFC3339), n.Node)}}},
		},
	})
}
