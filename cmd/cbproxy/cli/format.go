package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// The answers of the admin API (docs/api.md), as far as the tables show them.
// Weights stay json.Number so they print exactly as the server wrote them.
type (
	serviceBody struct {
		Name    string                 `json:"name"`
		Version uint64                 `json:"version"`
		Weights map[string]json.Number `json:"weights"`
		LKG     map[string]json.Number `json:"lkg"`
		Pools   map[string]poolBody    `json:"pools"`
		Guard   string                 `json:"guard"`
		Rollout *rolloutBody           `json:"rollout"`
	}
	poolBody struct {
		Version  string        `json:"version"`
		Backends []backendBody `json:"backends"`
	}
	backendBody struct {
		Address   string `json:"address"`
		Health    string `json:"health"`
		Draining  bool   `json:"draining"`
		InFlight  int64  `json:"in_flight"`
		LongLived int64  `json:"long_lived"`
	}
	rolloutBody struct {
		Strategy string            `json:"strategy"`
		State    string            `json:"state"`
		From     string            `json:"from"`
		To       string            `json:"to"`
		Step     int               `json:"step"`
		Steps    []json.RawMessage `json:"steps"`
		Verdict  *struct {
			Result string `json:"result"`
			Reason string `json:"reason"`
		} `json:"verdict"`
	}
	clusterBody struct {
		Leader           string     `json:"leader"`
		Term             uint64     `json:"term"`
		CommitIndex      uint64     `json:"commit_index"`
		FailureTolerance int        `json:"failure_tolerance"`
		Nodes            []nodeBody `json:"nodes"`
	}
	nodeBody struct {
		ID            string `json:"id"`
		ClusterAddr   string `json:"cluster_addr"`
		AdminAddr     string `json:"admin_addr"`
		State         string `json:"state"`
		Voter         bool   `json:"voter"`
		LastContactMs int64  `json:"last_contact_ms"`
		AppliedIndex  uint64 `json:"applied_index"`
	}
	eventBody struct {
		Index   uint64                 `json:"index"`
		Time    string                 `json:"time"`
		Actor   string                 `json:"actor"`
		Action  string                 `json:"action"`
		Service string                 `json:"service"`
		Before  map[string]json.Number `json:"before"`
		After   map[string]json.Number `json:"after"`
		Reason  string                 `json:"reason"`
		// From and To are the indexes an `event: gap` of the stream says
		// the trail no longer holds.
		From uint64 `json:"from"`
		To   uint64 `json:"to"`
	}
)

// writeStatus prints the status table of services and the cluster line.
func writeStatus(w io.Writer, services []serviceBody, cluster clusterBody) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if len(services) == 0 {
		fmt.Fprintln(tw, "no services")
	}
	for _, s := range services {
		fmt.Fprintf(tw, "%s  version %d  guard %s\n", s.Name, s.Version, orDash(s.Guard))
		fmt.Fprintln(tw, "  POOL\tWEIGHT\tLKG\tVERSION\tBACKEND\tHEALTH\tDRAINING\tIN FLIGHT\tLONG-LIVED")
		for _, name := range slices.Sorted(maps.Keys(s.Pools)) {
			p := s.Pools[name]
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s", name, percent(s.Weights, name), percent(s.LKG, name), orDash(p.Version))
			if len(p.Backends) == 0 {
				fmt.Fprint(tw, "\t-\n")
			}
			for i, b := range p.Backends {
				if i > 0 {
					fmt.Fprint(tw, "  \t\t\t")
				}
				fmt.Fprintf(tw, "\t%s\t%s\t%s\t%d\t%d\n", b.Address, orDash(b.Health), yesNo(b.Draining), b.InFlight, b.LongLived)
			}
		}
		fmt.Fprintf(tw, "  rollout: %s\n\n", rolloutLine(s.Rollout))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "cluster: %s\n", clusterLine(cluster))
	return err
}

func percent(weights map[string]json.Number, pool string) string {
	if v, ok := weights[pool]; ok {
		return v.String() + "%"
	}
	return "-"
}

func rolloutLine(r *rolloutBody) string {
	if r == nil {
		return "none"
	}
	s := fmt.Sprintf("%s %s → %s, step %d of %d, %s", r.Strategy, r.From, r.To, r.Step, len(r.Steps), r.State)
	if r.Verdict != nil && r.Verdict.Result != "" {
		// The server's reason starts with the result ("hold: …").
		verdict := r.Verdict.Result
		if r.Verdict.Reason != "" {
			verdict = strings.ReplaceAll(r.Verdict.Reason, "\n", " ")
		}
		s += ", verdict " + verdict
	}
	return s
}

func leaderText(c clusterBody) string {
	if c.Leader == "" {
		return "no leader"
	}
	return "leader " + c.Leader
}

func clusterLine(c clusterBody) string {
	nodes := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		nodes[i] = n.ID + " " + n.State
	}
	return fmt.Sprintf("%s, term %d; nodes: %s", leaderText(c), c.Term, orDash(strings.Join(nodes, ", ")))
}

// formatWeights prints weights as the weights command takes them, sorted by
// pool: "blue=99 canary=1".
func formatWeights(weights map[string]json.Number) string {
	if len(weights) == 0 {
		return "(none)"
	}
	parts := make([]string, 0, len(weights))
	for _, pool := range slices.Sorted(maps.Keys(weights)) {
		parts = append(parts, pool+"="+weights[pool].String())
	}
	return strings.Join(parts, " ")
}

// lkgLine is the second line after weights and switch.
func lkgLine(s serviceBody) string {
	return "last known good: " + formatWeights(s.LKG)
}

// poolLine is the second line after pool set.
func poolLine(name string, p poolBody) string {
	if p.Version != "" {
		name += " (" + p.Version + ")"
	}
	addrs := make([]string, len(p.Backends))
	for i, b := range p.Backends {
		addrs[i] = b.Address
	}
	if len(addrs) == 0 {
		return "pool " + name + ": no backends"
	}
	return "pool " + name + ": " + strings.Join(addrs, " ")
}

func writeCluster(w io.Writer, c clusterBody) error {
	fmt.Fprintf(w, "%s, term %d, commit index %d, failure tolerance %d\n", leaderText(c), c.Term, c.CommitIndex, c.FailureTolerance)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATE\tVOTER\tCLUSTER ADDR\tADMIN ADDR\tLAST CONTACT\tAPPLIED")
	for _, n := range c.Nodes {
		contact := "-"
		if n.LastContactMs >= 0 {
			contact = strconv.FormatInt(n.LastContactMs, 10) + "ms"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\n", n.ID, n.State, yesNo(n.Voter), n.ClusterAddr, n.AdminAddr, contact, n.AppliedIndex)
	}
	return tw.Flush()
}

func writeEvents(w io.Writer, events []eventBody) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, e := range events {
		writeEvent(tw, e)
	}
	return tw.Flush()
}

// writeEvent writes one event as a tab-separated line. A gap (events the
// trail dropped before the stream could send them) shows the range of
// indexes lost where an event shows its index.
func writeEvent(tw *tabwriter.Writer, e eventBody) {
	change := "-"
	if e.Before != nil || e.After != nil {
		change = formatWeights(e.Before) + " → " + formatWeights(e.After)
	}
	index := fmt.Sprintf("#%d", e.Index)
	if e.Action == "gap" {
		index = fmt.Sprintf("#%d-#%d", e.From, e.To)
	}
	fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", orDash(e.Time), index, orDash(e.Actor), e.Action, orDash(e.Service), change, oneLine(e.Reason))
}

// writeJSON prints an answer as is, indented.
func writeJSON(w io.Writer, body []byte) error {
	var b bytes.Buffer
	// Indented, an answer takes about twice its size (three times for the
	// deepest, the service list): one allocation instead of a dozen copies.
	b.Grow(3*len(body) + 1)
	if json.Indent(&b, body, "", "  ") != nil {
		b.Reset()
		b.Write(bytes.TrimSpace(body))
	}
	b.WriteByte('\n')
	_, err := w.Write(b.Bytes())
	return err
}

// writeJSONLine prints one JSON value on one line.
func writeJSONLine(w io.Writer, raw []byte) error {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return fmt.Errorf("unexpected event from the admin API: %v", err)
	}
	b.WriteByte('\n')
	_, err := w.Write(b.Bytes())
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// errorJSON is how a command that was given --json reports its error: one
// JSON object on one line on stderr, so that stdout carries only answers
// (docs/cli.md "Output"). The exit code is the same as without --json.
type errorJSON struct {
	Command string `json:"command"`
	// Error is the message: the API's own for an error answer.
	Error string `json:"error"`
	// Code is the API's error code ("version_mismatch", "gate_refused", …),
	// or the CLI's: "usage", "unreachable", "interrupted", "rolled_back",
	// "aborted", "timeout", "failed".
	Code   string `json:"code"`
	Status int    `json:"status,omitempty"` // the HTTP status of an error answer
	Hint   string `json:"hint,omitempty"`
	// Version is the service's current version, with version_mismatch.
	Version  *uint64 `json:"version,omitempty"`
	Usage    string  `json:"usage,omitempty"` // with code "usage"
	ExitCode int     `json:"exit_code"`
}

// writeErrorJSON writes err as an errorJSON line.
func writeErrorJSON(w io.Writer, command, usage string, code int, err error) {
	e := errorJSON{Command: command, Error: oneLine(err.Error()), Code: "failed", ExitCode: code}
	var ae *apiError
	var ended *rolloutEnded
	var ue *usageError
	var unreachable *unreachableError
	switch {
	case errors.As(err, &ue):
		e.Code, e.Usage = "usage", usage
	case errors.As(err, &ae):
		e.Error, e.Code, e.Status, e.Hint, e.Version = oneLine(ae.Message), ae.Code, ae.status, ae.hint(), ae.Version
		if e.Code == "" {
			e.Code = "http_" + strconv.Itoa(ae.status)
		}
	case errors.As(err, &ended):
		e.Code = ended.state
	case errors.As(err, &unreachable):
		e.Code = "unreachable"
	case errors.Is(err, errInterrupted):
		e.Code = "interrupted"
	}
	line, _ := json.Marshal(e)
	fmt.Fprintf(w, "%s\n", line)
}

// wantsJSON reports whether argv (a command's arguments) asks for --json; it
// is read apart from the parse, which may be what failed.
func wantsJSON(argv []string) bool {
	want := false
	for i := 0; i < len(argv); i++ {
		a := argv[i]
		if a == "--" {
			break
		}
		if len(a) < 2 || a[0] != '-' {
			continue
		}
		name, value, hasValue := strings.Cut(flagName(a), "=")
		switch {
		case name == "json":
			b, err := strconv.ParseBool(value)
			want = !hasValue || (err == nil && b)
		case !hasValue && takesValue(name):
			i++ // "--token --json": the token is "--json"
		}
	}
	return want
}

// takesValue reports whether some command's flag name takes a value.
func takesValue(name string) bool {
	for _, f := range globalFlags {
		if f.name == name {
			return f.value != ""
		}
	}
	for _, c := range commands {
		for _, f := range c.flags {
			if f.name == name && f.value != "" {
				return true
			}
		}
	}
	return false
}
