package adminapi

import (
	"context"
	"fmt"
	"net/http"

	"github.com/cbproxy/cbproxy/controlplane/raftnode"
	"github.com/cbproxy/cbproxy/controlplane/slo"
	"github.com/cbproxy/cbproxy/controlplane/state"
)

// rolloutBody is the rollout as the admin API shows it (docs/api.md "Rollout body"): the
// replicated rollout plus the leader's latest verdict with live figures.
type rolloutBody struct {
	*state.Rollout
	Service string       `json:"service"`
	Verdict *slo.Verdict `json:"verdict"`
}

// rolloutStartBody is the body of POST /v1/services/{svc}/rollout.
type rolloutStartBody struct {
	state.RolloutSpec
	Force     bool    `json:"force"`
	IfVersion *uint64 `json:"if_version"`
}

func (a *Server) renderRollout(ctx context.Context, s *state.Service) rolloutBody {
	return rolloutBody{Rollout: s.Rollout, Service: s.Name, Verdict: a.Verdicts.Verdict(ctx, s.Name)}
}

func (a *Server) startRollout(w http.ResponseWriter, r *http.Request, actor string) {
	var body rolloutStartBody
	raw, ok := readBody(w, r, &body)
	if !ok {
		return
	}
	if body.To == "" {
		writeError(w, http.StatusBadRequest, "invalid", `"to" is missing; send {"to":"canary"} (the pool that gains traffic)`)
		return
	}
	// The pool gaining traffic needs a healthy backend, as for a switch.
	if !a.checkGate(w, r, actor, r.PathValue("svc"), onePool(body.To), body.Force) {
		return
	}
	spec := body.RolloutSpec
	cmd := state.NewCommand(r.PathValue("svc"), actor, state.RolloutStart{Spec: &spec})
	if applied, ok := a.commit(w, r, raw, body.IfVersion, cmd); ok {
		a.writeRollout(w, r, cmd, applied)
	}
}

// writeRollout answers a rollout write with the rollout body of the service
// as it is now (on a replay too), or, when a replay finds the service
// deleted since, with the deletion.
func (a *Server) writeRollout(w http.ResponseWriter, r *http.Request, cmd state.Command, applied raftnode.Applied) {
	if applied.Result.Service == nil {
		a.writeDeleted(w, cmd, applied)
		return
	}
	writeJSON(w, http.StatusOK, a.renderRollout(r.Context(), applied.Result.Service))
}

func (a *Server) getRollout(w http.ResponseWriter, r *http.Request, _ string) {
	s, ok := a.service(w, r)
	if !ok {
		return
	}
	if s.Rollout == nil {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("service %q has never had a rollout; start one with POST /v1/services/%s/rollout", s.Name, s.Name))
		return
	}
	writeJSON(w, http.StatusOK, a.renderRollout(r.Context(), s))
}

// changeRollout answers POST …/rollout/{pause,resume,promote}. The body is
// optional: {"if_version": N}.
func (a *Server) changeRollout(action state.RolloutAction) func(http.ResponseWriter, *http.Request, string) {
	return func(w http.ResponseWriter, r *http.Request, actor string) {
		a.writeRolloutChange(w, r, state.NewCommand(r.PathValue("svc"), actor, state.RolloutChange{Action: action}))
	}
}

// abortRollout answers POST …/rollout/abort: a rollback of the running
// rollout, which ends aborted. The body is optional: {"if_version": N}.
func (a *Server) abortRollout(w http.ResponseWriter, r *http.Request, actor string) {
	cmd := state.NewCommand(r.PathValue("svc"), actor, state.Rollback{Trigger: state.TriggerAbort})
	cmd.Reason = "aborted by " + actor
	a.writeRolloutChange(w, r, cmd)
}

// writeRolloutChange commits a change of a running rollout with the
// optional expected version of the body, and answers with the rollout.
func (a *Server) writeRolloutChange(w http.ResponseWriter, r *http.Request, cmd state.Command) {
	raw, ifVersion, ok := readVersionBody(w, r)
	if !ok {
		return
	}
	if applied, ok := a.commit(w, r, raw, ifVersion, cmd); ok {
		a.writeRollout(w, r, cmd, applied)
	}
}

// rollback answers POST /v1/services/{svc}/rollback: the LKG weights now; a
// running rollout ends as rolled_back. The body is optional:
// {"if_version": N}.
func (a *Server) rollback(w http.ResponseWriter, r *http.Request, actor string) {
	raw, ifVersion, ok := readVersionBody(w, r)
	if !ok {
		return
	}
	cmd := state.NewCommand(r.PathValue("svc"), actor, state.Rollback{Trigger: state.TriggerManual})
	cmd.Reason = "rolled back by " + actor
	a.write(w, r, raw, ifVersion, cmd)
}
