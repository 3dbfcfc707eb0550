package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// The rollout strategies of --strategy (docs/cli.md "rollout").
const (
	canary    = "canary"
	blueGreen = "blue-green"
)

// The flags of rollout start and rollout status.
var (
	rolloutStartFlags = []flagSpec{
		{name: "to", value: "POOL", usage: "the pool to move traffic to (required)", check: nonEmptyPool},
		{name: "from", value: "POOL", usage: "the pool to take traffic from (default: the one with the largest weight)", check: nonEmptyPool},
		{name: "strategy", value: "S", usage: "canary (default) or blue-green", check: rolloutStrategy},
		{name: "steps", value: "PCT:HOLD,...", usage: "canary steps: the new pool's percent and how long to hold it (default 1:5m,5:10m,25:15m,50:15m,100)"},
		{name: "bake", value: "DURATION", usage: "blue-green: how long the switched traffic stays under the rollback SLO (default 5m); implies --strategy blue-green", check: nonNegativeDuration},
		{name: "manual", usage: "wait for 'cbproxy rollout promote' instead of advancing when the SLO passes"},
		{name: "force", usage: "start even if the --to pool has no healthy backend"},
	}
	rolloutStatusFlags = []flagSpec{
		{name: "follow", usage: "print the status on every change and every second until the rollout ends (exit 0 promoted, 5 rolled back, 6 aborted) or Ctrl-C"},
		{name: "timeout", value: "DURATION", usage: "with --follow: give up (exit 7) if the rollout has not ended after DURATION", check: nonNegativeDuration},
	}
)

func nonEmptyPool(v string) error {
	if v == "" {
		return errors.New("needs a pool name")
	}
	return nil
}

func rolloutStrategy(v string) error {
	if v != canary && v != blueGreen {
		return fmt.Errorf("want %s or %s, not %q", canary, blueGreen, v)
	}
	return nil
}

func nonNegativeDuration(v string) error {
	_, err := state.ParseDuration(v)
	return err
}

// rolloutStep is one step of a canary rollout, in the start body and in the
// rollout body. Weight keeps the text the user or server wrote.
type rolloutStep struct {
	Weight json.Number `json:"weight"`
	Hold   string      `json:"hold,omitempty"`
}

// parseSteps parses --steps: a comma list of PCT[:HOLD], where PCT is a
// percent with at most two decimals and HOLD a Go duration. Only the last step
// may leave out its hold: the rollout ends there. Whether the weights rise and
// fit the pools is the server's to judge.
func parseSteps(s string) ([]rolloutStep, error) {
	items := strings.Split(s, ",")
	steps := make([]rolloutStep, len(items))
	for i, item := range items {
		pct, hold, hasHold := strings.Cut(item, ":")
		pct, hold = strings.TrimSpace(pct), strings.TrimSpace(hold)
		if _, err := state.ParseWeight(pct); err != nil {
			return nil, fmt.Errorf("step %d (%q): %v", i+1, item, err)
		}
		switch {
		case hasHold:
			if _, err := state.ParseDuration(hold); err != nil {
				return nil, fmt.Errorf("step %d (%q): hold %v", i+1, item, err)
			}
		case i < len(items)-1:
			return nil, fmt.Errorf("step %d (%q) needs a hold, like %s:10m; only the last step may leave it out", i+1, item, pct)
		}
		steps[i] = rolloutStep{Weight: json.Number(pct), Hold: hold}
	}
	return steps, nil
}

// rolloutStart is the body of POST /v1/services/{svc}/rollout.
type rolloutStart struct {
	Strategy string        `json:"strategy"`
	From     string        `json:"from,omitempty"` // empty: the server takes the pool with the largest weight
	To       string        `json:"to"`
	Steps    []rolloutStep `json:"steps,omitempty"` // empty: the server's default steps
	Gate     string        `json:"gate,omitempty"`
	Bake     string        `json:"bake,omitempty"` // empty: the server's default bake time
	Force    bool          `json:"force,omitempty"`
}

// startBody builds the start body from the flags, refusing combinations that
// make no sense: --bake implies blue-green, which takes no --steps.
func startBody(inv *invocation) (rolloutStart, error) {
	b := rolloutStart{
		Strategy: cmp.Or(inv.flags["strategy"], canary),
		From:     inv.flags["from"],
		To:       inv.flags["to"],
		Bake:     inv.flags["bake"],
		Force:    inv.flag("force"),
	}
	if b.To == "" {
		return b, usagef("missing --to POOL, the pool to move traffic to")
	}
	if b.Bake != "" {
		if inv.flags["strategy"] == canary {
			return b, usagef("--bake is for blue-green rollouts; a canary holds each of its --steps instead")
		}
		b.Strategy = blueGreen
	}
	steps, hasSteps := inv.flags["steps"]
	switch {
	case b.Strategy == blueGreen && hasSteps:
		return b, usagef("--steps is for canary rollouts; a blue-green rollout switches at once, then bakes (--bake)")
	case hasSteps:
		var err error
		if b.Steps, err = parseSteps(steps); err != nil {
			return b, usagef("flag --steps: %v", err)
		}
	}
	switch {
	case inv.flag("manual"):
		b.Gate = "manual"
	case b.Strategy == canary:
		b.Gate = "auto"
	}
	return b, nil
}

func runRolloutStart(ctx context.Context, inv *invocation) error {
	body, err := startBody(inv)
	if err != nil {
		return err
	}
	return inv.rolloutWrite(ctx, request{
		method: http.MethodPost,
		path:   pathf("/v1/services/%s/rollout", inv.args[0]),
		body:   body,
	})
}

// runRolloutAction sends pause, resume, promote or abort.
func runRolloutAction(action string) func(context.Context, *invocation) error {
	return func(ctx context.Context, inv *invocation) error {
		return inv.rolloutWrite(ctx, request{
			method: http.MethodPost,
			path:   pathf("/v1/services/%s/rollout/"+action, inv.args[0]),
		})
	}
}

func runRollback(ctx context.Context, inv *invocation) error {
	return inv.write(ctx, request{method: http.MethodPost, path: pathf("/v1/services/%s/rollback", inv.args[0])}, lkgLine)
}

// rolloutWrite sends a write that answers with the rollout body, and prints
// the rollout's line as 'cbproxy status' shows it.
func (inv *invocation) rolloutWrite(ctx context.Context, req request) error {
	body, err := inv.client.do(ctx, req)
	if err != nil {
		return err
	}
	if inv.json {
		return writeJSON(inv.out, body)
	}
	var r rolloutBody
	if err := decode(body, &r); err != nil {
		return err
	}
	_, err = fmt.Fprintf(inv.out, "%s rollout: %s\n", inv.args[0], oneLine(rolloutLine(&r)))
	return err
}

// rolloutDetail is the rollout body (docs/api.md "Rollout body") as 'rollout
// status' shows it.
type rolloutDetail struct {
	ID          string        `json:"id"`
	Service     string        `json:"service"`
	Strategy    string        `json:"strategy"`
	State       string        `json:"state"`
	From        string        `json:"from"`
	To          string        `json:"to"`
	Gate        string        `json:"gate"`
	Step        int           `json:"step"`
	Steps       []rolloutStep `json:"steps"`
	StepStarted string        `json:"step_started"`
	// Ended and Reason say when and why a rollout reached a final state.
	Ended   string `json:"ended"`
	Reason  string `json:"reason"`
	Verdict *struct {
		Result string                 `json:"result"`
		Reason string                 `json:"reason"`
		Pools  map[string]poolFigures `json:"pools"`
	} `json:"verdict"`
}

// poolFigures are one pool's measurements over the SLO window, every node's
// requests merged. Rates are fractions: 0.01 is 1 %.
type poolFigures struct {
	Requests       uint64  `json:"requests"`
	Errors         uint64  `json:"errors"`
	ErrorRate      float64 `json:"error_rate"`
	ErrorRateLow   float64 `json:"error_rate_low"`
	ErrorRateHigh  float64 `json:"error_rate_high"`
	P95ms          float64 `json:"p95_ms"`
	NodesReporting int     `json:"nodes_reporting"`
}

// finalState reports whether a rollout in state s has ended: it moves no traffic
// any more, and --follow stops.
func finalState(s string) bool {
	return s == state.RolloutPromoted || s == state.RolloutRolledBack || s == state.RolloutAborted
}

// rolloutEnded is how --follow ends when the rollout it follows ends other
// than promoted (exit 5 or 6), or does not end before --timeout (exit 7).
type rolloutEnded struct {
	id, state, reason string
	// still is the rollout's state when --timeout passed (state "timeout").
	still string
}

func (e *rolloutEnded) Error() string {
	if e.state == "timeout" {
		return fmt.Sprintf("rollout %s is still %s after --timeout", e.id, e.still)
	}
	s := fmt.Sprintf("rollout %s ended %s", e.id, e.state)
	if e.reason != "" {
		s += ": " + e.reason
	}
	return s
}

// exitCode is the contract's code for the end (docs/cli.md "Exit codes").
func (e *rolloutEnded) exitCode() int {
	switch e.state {
	case state.RolloutRolledBack:
		return exitRolledBack
	case state.RolloutAborted:
		return exitAborted
	}
	return exitTimeout
}

// endOf turns the final state of the followed rollout into the command's end:
// nil when it was promoted.
func endOf(r rolloutDetail) error {
	if r.State == state.RolloutPromoted {
		return nil
	}
	return &rolloutEnded{id: r.ID, state: r.State, reason: oneLine(r.Reason)}
}

// endingActions are the events that end a rollout, with the state each leaves.
var endingActions = map[string]string{
	string(state.ActionRolloutComplete): state.RolloutPromoted,
	string(state.ActionRolloutAbort):    state.RolloutAborted,
	"rollback":                          state.RolloutRolledBack,
}

func runRolloutStatus(ctx context.Context, inv *invocation) error {
	if inv.flag("follow") {
		return followRollout(ctx, inv)
	}
	if _, ok := inv.flags["timeout"]; ok {
		return usagef("--timeout is for --follow")
	}
	r, body, err := inv.readRollout(ctx)
	if err != nil {
		return err
	}
	if inv.json {
		return writeJSON(inv.out, body)
	}
	return writeRollout(inv.out, r, time.Now())
}

// readRollout reads the service's current or last rollout.
func (inv *invocation) readRollout(ctx context.Context) (rolloutDetail, []byte, error) {
	var r rolloutDetail
	body, err := inv.client.do(ctx, request{method: http.MethodGet, path: pathf("/v1/services/%s/rollout", inv.args[0])})
	if err != nil {
		return r, nil, inv.noRollout(ctx, err)
	}
	if err := decode(body, &r); err != nil {
		return r, nil, err
	}
	r.Service = cmp.Or(r.Service, inv.args[0])
	return r, body, nil
}

// followRollout prints the rollout, then again on each event of its service
// (the audit trail's stream) and every second (the verdict's figures change
// without events), until the rollout it first printed ends: exit 0 when it is
// promoted, 5 rolled back, 6 aborted; 7 when --timeout passes first; 1 when
// the node cannot be read or its stream ends before the rollout does. Ctrl-C
// ends it with exit 0.
func followRollout(ctx context.Context, inv *invocation) error {
	var timeout <-chan time.Time
	if v, ok := inv.flags["timeout"]; ok {
		d, _ := state.ParseDuration(v) // checked by the flag
		if d > 0 {
			timer := time.NewTimer(time.Duration(d))
			defer timer.Stop()
			timeout = timer.C
		}
	}
	// The stream starts after the newest event now, so that no change that
	// comes after the first read is missed.
	var newest struct {
		Events []eventBody `json:"events"`
	}
	body, err := inv.client.do(ctx, request{method: http.MethodGet, path: "/v1/events", query: url.Values{"limit": {"1"}}})
	if err == nil {
		err = decode(body, &newest)
	}
	if err != nil {
		return interruptedIsDone(err)
	}
	lastID := ""
	if len(newest.Events) > 0 {
		lastID = strconv.FormatUint(newest.Events[0].Index, 10)
	}

	r, body, err := inv.readRollout(ctx)
	if err != nil {
		return interruptedIsDone(err)
	}
	followed := r.ID
	if err := inv.printFollowed(r, body, false); err != nil || finalState(r.State) {
		return cmp.Or(err, endOf(r))
	}

	streamCtx, stopStream := context.WithCancel(ctx)
	defer stopStream()
	events := make(chan eventBody)
	streamDone := make(chan error, 1)
	go func() {
		streamDone <- inv.client.followEvents(streamCtx, url.Values{"service": {inv.args[0]}}, lastID, func(raw []byte) error {
			var e eventBody
			if err := decode(raw, &e); err != nil {
				return err
			}
			select {
			case events <- e:
				return nil
			case <-streamCtx.Done():
				return streamCtx.Err()
			}
		})
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	ended := "" // the state the last ending event left, if one came
	for {
		select {
		case <-ctx.Done(): // Ctrl-C ends --follow, as it does for events
			return nil
		case <-timeout:
			return &rolloutEnded{id: followed, state: "timeout", still: r.State}
		case err := <-streamDone:
			if ctx.Err() != nil {
				return nil
			}
			if err == nil {
				err = errors.New("the node ended its event stream")
			}
			return fmt.Errorf("lost the rollout %s while it was %s: %v", followed, r.State, err)
		case e := <-events:
			if s, ok := endingActions[e.Action]; ok {
				ended = s
			}
		case <-tick.C:
		}
		next, body, err := inv.readRollout(ctx)
		if err != nil {
			return interruptedIsDone(err)
		}
		if next.ID != followed {
			// Another rollout started after the followed one ended: the
			// event that ended it said how.
			if ended == "" {
				return fmt.Errorf("rollout %s was followed by %s without an event saying how it ended", followed, next.ID)
			}
			r.State, r.Reason = ended, ""
			return endOf(r)
		}
		r = next
		if err := inv.printFollowed(r, body, true); err != nil || finalState(r.State) {
			return cmp.Or(err, endOf(r))
		}
	}
}

// interruptedIsDone turns Ctrl-C before an answer into the normal end of
// --follow.
func interruptedIsDone(err error) error {
	if errors.Is(err, errInterrupted) {
		return nil
	}
	return err
}

// printFollowed prints one state of the followed rollout: one JSON line, or
// the table after a blank line when one came before.
func (inv *invocation) printFollowed(r rolloutDetail, body []byte, again bool) error {
	var err error
	switch {
	case inv.json:
		err = writeJSONLine(inv.out, body)
	case again:
		fmt.Fprintln(inv.out)
		fallthrough
	default:
		err = writeRollout(inv.out, r, time.Now())
	}
	if err != nil {
		return err
	}
	return inv.out.Flush()
}

// noRollout turns the 404 of GET …/rollout into what it means. The same 404
// comes for a service that does not exist, so the service is asked for: its
// own 404 then says so.
func (inv *invocation) noRollout(ctx context.Context, err error) error {
	var ae *apiError
	if !errors.As(err, &ae) || ae.status != http.StatusNotFound {
		return err
	}
	svc := inv.args[0]
	if _, err := inv.client.do(ctx, request{method: http.MethodGet, path: pathf("/v1/services/%s", svc)}); err != nil {
		return err
	}
	return fmt.Errorf("no rollout has run for %s; start one with 'cbproxy rollout start %s --to POOL'", svc, svc)
}

// writeRollout prints a rollout: what it moves, where it is, and the verdict
// with each pool's figures. now is the time the step's age is told from.
func writeRollout(w io.Writer, r rolloutDetail, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "rollout\t%s of %s\n", orDash(r.ID), orDash(r.Service))
	fmt.Fprintf(tw, "strategy\t%s %s → %s, gate %s\n", r.Strategy, r.From, r.To, orDash(r.Gate))
	fmt.Fprintf(tw, "state\t%s\n", stateText(r))
	if r.Step >= 1 && r.Step <= len(r.Steps) {
		st := r.Steps[r.Step-1]
		line := fmt.Sprintf("%d of %d (%s%%)", r.Step, len(r.Steps), st.Weight)
		if st.Hold != "" {
			hold := "hold"
			if r.Strategy == blueGreen {
				hold = "bake"
			}
			line += ", " + hold + " " + st.Hold
		}
		fmt.Fprintf(tw, "step\t%s, started %s\n", line, since(r.StepStarted, now))
	} else {
		fmt.Fprintf(tw, "step\t%d of %d\n", r.Step, len(r.Steps))
	}
	if r.Ended != "" {
		fmt.Fprintf(tw, "ended\t%s\n", since(r.Ended, now))
	}
	if r.Reason != "" {
		fmt.Fprintf(tw, "reason\t%s\n", oneLine(r.Reason))
	}
	v := r.Verdict
	if v == nil || v.Result == "" {
		none := "none yet"
		if finalState(r.State) {
			none = "none"
		}
		fmt.Fprintf(tw, "verdict\t%s\n", none)
		return tw.Flush()
	}
	verdict := v.Result // the server's reason starts with it ("hold: …")
	if v.Reason != "" {
		verdict = oneLine(v.Reason)
	}
	fmt.Fprintf(tw, "verdict\t%s\n", verdict)
	if err := tw.Flush(); err != nil || len(v.Pools) == 0 {
		return err
	}

	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "POOL\tREQUESTS\tERRORS\tERROR RATE\t95% INTERVAL\tP95\tNODES")
	for _, name := range verdictOrder(r.To, r.From, v.Pools) {
		f := v.Pools[name]
		rate, interval, p95 := "-", "-", "-"
		if f.Requests > 0 { // without requests there is nothing to rate
			rate = rateText(f.ErrorRate) + "%"
			interval = rateText(f.ErrorRateLow) + "–" + rateText(f.ErrorRateHigh) + "%"
			p95 = strconv.FormatFloat(math.Round(f.P95ms*10)/10, 'f', -1, 64) + "ms"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%d\n", name, f.Requests, f.Errors, rate, interval, p95, f.NodesReporting)
	}
	return tw.Flush()
}

// stateText is the state with what the operator can do about it.
func stateText(r rolloutDetail) string {
	switch r.State {
	case "waiting":
		return fmt.Sprintf("waiting: run 'cbproxy rollout promote %s' to go on", r.Service)
	case "paused":
		return fmt.Sprintf("paused: run 'cbproxy rollout resume %s' to go on", r.Service)
	}
	return orDash(r.State)
}

// verdictOrder lists the pools of a verdict: the pool gaining traffic (the one
// judged), the pool losing it, then the rest by name.
func verdictOrder(to, from string, pools map[string]poolFigures) []string {
	rank := func(p string) int {
		switch p {
		case to:
			return 0
		case from:
			return 1
		}
		return 2
	}
	return slices.SortedFunc(maps.Keys(pools), func(a, b string) int {
		return cmp.Or(cmp.Compare(rank(a), rank(b)), strings.Compare(a, b))
	})
}

// rateText prints a fraction as a percentage with two decimals: 0.0045 is
// "0.45".
func rateText(f float64) string {
	return strconv.FormatFloat(f*100, 'f', 2, 64)
}

// since prints an RFC 3339 time to the second and how long before now it was;
// a time it cannot read is printed as is.
func since(stamp string, now time.Time) string {
	t, err := time.Parse(time.RFC3339Nano, stamp)
	if err != nil {
		return orDash(stamp)
	}
	ago := max(now.Sub(t).Round(time.Second), 0)
	return fmt.Sprintf("%s (%s ago)", t.Format(time.RFC3339), state.Duration(ago))
}
