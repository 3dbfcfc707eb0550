package adminapi

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/cbproxy/cbproxy/healthcheck"
)

// The health gate (docs/api.md "Health gate"): a switch, or a weights change that raises a
// pool from 0, is refused with 412 when that pool has no healthy backend as
// this node sees it, unless the request says "force". It is what the runbook
// did by hand: "wait for green to become healthy" before switching.

// failingBackend is one backend the gate found unfit.
type failingBackend struct {
	Pool     string `json:"pool"`
	Address  string `json:"address"`
	Health   string `json:"health"`
	Draining bool   `json:"draining,omitempty"`
	Error    string `json:"error,omitempty"`
}

// gateError is the 412 body.
type gateError struct {
	Error   string           `json:"error"`
	Code    string           `json:"code"`
	Failing []failingBackend `json:"failing"`
}

// raisedPools lists the pools whose weight next raises from 0.
func raisedPools(next state.Weights) func(*state.Service) []string {
	return func(s *state.Service) []string {
		var raised []string
		for pool, w := range next {
			if w > 0 && s.Weights[pool] == 0 {
				raised = append(raised, pool)
			}
		}
		sort.Strings(raised)
		return raised
	}
}

// onePool is the gate's pool list of a switch: its target, always.
func onePool(pool string) func(*state.Service) []string {
	return func(*state.Service) []string { return []string{pool} }
}

// checkGate answers 412 itself and returns false when one of the pools that
// would gain traffic has no healthy backend. pools picks them from the
// service. Backends not checked yet are waited for, up to one check interval
// plus timeout. A request whose Idempotency-Key the state machine already
// remembers is not gated: it applies nothing, and answers its first result
// (or a reuse conflict), which a pool failing since must not turn into a 412.
//
// A refusal is also recorded in the event trail (recordGateRefusal), so
// that notifiers hear of it.
func (a *Server) checkGate(w http.ResponseWriter, r *http.Request, actor, service string, pools func(*state.Service) []string, force bool) bool {
	s := a.Node.View().Services[service]
	if force || s == nil || a.knownKey(r, false) {
		return true // the state machine answers for unknown services and pools
	}
	var failing []failingBackend
	var empty, raised []string
	for _, pool := range pools(s) {
		if s.Pools[pool] == nil {
			continue // the state machine refuses unknown pools
		}
		ok, bad := a.poolFit(r.Context(), s, pool)
		if ok {
			continue
		}
		raised = append(raised, pool)
		if len(bad) == 0 {
			empty = append(empty, pool)
		}
		failing = append(failing, bad...)
	}
	if len(failing) == 0 && len(empty) == 0 {
		return true
	}
	if a.knownKey(r, true) {
		return true
	}
	var parts []string
	for _, p := range empty {
		parts = append(parts, fmt.Sprintf("pool %s has no backends", p))
	}
	for _, f := range failing {
		desc := f.Health
		if f.Draining {
			desc = "draining"
		}
		if f.Error != "" {
			desc += " (" + f.Error + ")"
		}
		parts = append(parts, fmt.Sprintf("%s/%s is %s", f.Pool, f.Address, desc))
	}
	if failing == nil {
		failing = []failingBackend{}
	}
	msg := "refused: the pool would get traffic without a healthy backend: " + strings.Join(parts, "; ")
	a.recordGateRefusal(service, actor, msg, raised, failing)
	writeJSON(w, http.StatusPreconditionFailed, gateError{
		Error:   msg + `; fix the backends, or send "force": true (cbproxy --force)`,
		Code:    "gate_refused",
		Failing: failing,
	})
	return false
}

// knownKey reports whether the request's Idempotency-Key is remembered by
// this node's state machine. With consistent, it first waits until this node
// has applied what the leader had committed, so that a first attempt
// committed through another node counts too (a refusal is rare enough to
// pay for that round trip).
func (a *Server) knownKey(r *http.Request, consistent bool) bool {
	key := r.Header.Get("Idempotency-Key")
	if key == "" {
		return false
	}
	if consistent && a.Node.ConsistentRead(r.Context()) != nil {
		return false
	}
	return a.Node.RemembersKey(clientIdemKey(key), time.Now())
}

// poolFit reports whether a pool has a backend fit for traffic (healthy or
// degraded, not draining) and, if not, why each backend is not.
func (a *Server) poolFit(ctx context.Context, s *state.Service, pool string) (bool, []failingBackend) {
	p := s.Pools[pool]
	if s.Health != nil {
		wctx, cancel := context.WithTimeout(ctx, time.Duration(s.Health.Interval)+time.Duration(s.Health.Timeout))
		a.Health.WaitChecked(wctx, s.Name, pool)
		cancel()
	}
	var bad []failingBackend
	for _, b := range p.Backends {
		h := a.Health.Get(s.Name, pool, b.Address)
		if !b.Draining && (h.Status == healthcheck.StatusHealthy || h.Status == healthcheck.StatusDegraded) {
			return true, nil
		}
		bad = append(bad, failingBackend{Pool: pool, Address: b.Address, Health: string(h.Status), Draining: b.Draining, Error: h.LastError})
	}
	return false, bad
}
