package adminapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/cbproxy/cbproxy/controlplane/raftnode"
	"github.com/cbproxy/cbproxy/controlplane/state"
)

// serviceBody is the service as the admin API shows it (docs/api.md "Service body"): the
// replicated service plus, per backend, the answering node's view of its
// health and in-flight requests.
type serviceBody struct {
	Name    string              `json:"name"`
	Version uint64              `json:"version"`
	Weights state.Weights       `json:"weights"`
	LKG     state.Weights       `json:"lkg"`
	Pools   map[string]poolBody `json:"pools"`
	Health  *state.HealthCheck  `json:"health"`
	SLO     state.SLO           `json:"slo"`
	Guard   state.Duration      `json:"guard"`
	Rollout *rolloutBody        `json:"rollout"`

	// Only on writes with ?wait=all.
	AppliedOn  *[]string `json:"applied_on,omitempty"`
	NotApplied *[]string `json:"not_applied,omitempty"`
}

type poolBody struct {
	Version  string        `json:"version"`
	Backends []backendBody `json:"backends"`
}

type backendBody struct {
	Address   string `json:"address"`
	Health    string `json:"health"`
	Draining  bool   `json:"draining"`
	InFlight  int64  `json:"in_flight"`
	LongLived int64  `json:"long_lived"`
}

func (a *Server) render(ctx context.Context, s *state.Service) serviceBody {
	dp := a.loads()
	b := serviceBody{
		Name: s.Name, Version: s.Version, Weights: s.Weights, LKG: s.LKG,
		Pools: make(map[string]poolBody, len(s.Pools)), Health: s.Health, SLO: s.SLO, Guard: s.Guard,
	}
	if s.Rollout.Active() {
		b.Rollout = &rolloutBody{Rollout: s.Rollout, Service: s.Name, Verdict: a.Verdicts.Verdict(ctx, s.Name)}
	}
	for name, p := range s.Pools {
		pb := poolBody{Version: p.Version, Backends: make([]backendBody, 0, len(p.Backends))}
		for _, be := range p.Backends {
			body := backendBody{Address: be.Address, Health: string(a.Health.Get(s.Name, name, be.Address).Status), Draining: be.Draining}
			if dp != nil {
				body.InFlight = dp.InFlight(s.Name, name, be.Address)
				body.LongLived = dp.LongLived(s.Name, name, be.Address)
			}
			pb.Backends = append(pb.Backends, body)
		}
		b.Pools[name] = pb
	}
	return b
}

func (a *Server) listServices(w http.ResponseWriter, r *http.Request, _ string) {
	v := a.Node.View()
	names := make([]string, 0, len(v.Services))
	for name := range v.Services {
		names = append(names, name)
	}
	sort.Strings(names)
	// The bytes json.Marshal would write of {"services": [render…]},
	// from the services' encoded replicated parts (servicejson.go).
	parts, err := a.serviceJSON.get(v, names)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
		return
	}
	dp := a.loads()
	var figs serviceFigures
	buf, _ := a.listBodies.Get().(*[]byte)
	if buf == nil {
		buf = new([]byte)
	}
	body := append((*buf)[:0], `{"services":[`...)
	for i, name := range names {
		if i > 0 {
			body = append(body, ',')
		}
		if body, err = a.appendService(r.Context(), body, v.Services[name], parts[i], dp, &figs); err != nil {
			writeError(w, http.StatusInternalServerError, "internal", err.Error())
			return
		}
	}
	body = append(body, "]}\n"...)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
	*buf = body
	a.listBodies.Put(buf)
}

// service looks up the {svc} of the path, answering 404 itself.
func (a *Server) service(w http.ResponseWriter, r *http.Request) (*state.Service, bool) {
	name := r.PathValue("svc")
	s := a.Node.View().Services[name]
	if s == nil {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("service %q does not exist; GET /v1/services lists them", name))
		return nil, false
	}
	return s, true
}

func (a *Server) getService(w http.ResponseWriter, r *http.Request, _ string) {
	if s, ok := a.service(w, r); ok {
		writeJSON(w, http.StatusOK, a.render(r.Context(), s))
	}
}

// putServiceBody accepts the service body as GET returns it, so GET, edit, PUT
// works: read-only parts (version, lkg, rollout, per-backend health) are
// ignored; a "version" is not a check, "if_version" is (docs/api.md "Writes:
// versions, commit, idempotency").
type putServiceBody struct {
	Name      string                 `json:"name"`
	Version   json.RawMessage        `json:"version"`
	Weights   state.Weights          `json:"weights"`
	LKG       json.RawMessage        `json:"lkg"`
	Pools     map[string]putPoolBody `json:"pools"`
	Health    *state.HealthCheck     `json:"health"`
	SLO       *state.SLO             `json:"slo"`
	Guard     *state.Duration        `json:"guard"`
	Rollout   json.RawMessage        `json:"rollout"`
	IfVersion *uint64                `json:"if_version"`
}

type putPoolBody struct {
	Version  string       `json:"version"`
	Backends []backendRef `json:"backends"`
}

// backendRef is a backend given as an address string or as an object with an
// "address" (the shape GET returns).
type backendRef string

func (b *backendRef) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err == nil {
		*b = backendRef(s)
		return nil
	}
	var obj struct {
		Address   string          `json:"address"`
		Health    json.RawMessage `json:"health"`
		Draining  json.RawMessage `json:"draining"`
		InFlight  json.RawMessage `json:"in_flight"`
		LongLived json.RawMessage `json:"long_lived"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&obj); err != nil {
		return fmt.Errorf("a backend must be an address string or {\"address\": …}: %w", err)
	}
	if obj.Address == "" {
		return errors.New(`a backend object needs an "address"`)
	}
	*b = backendRef(obj.Address)
	return nil
}

func (a *Server) putService(w http.ResponseWriter, r *http.Request, actor string) {
	name := r.PathValue("svc")
	var body putServiceBody
	raw, ok := readBody(w, r, &body)
	if !ok {
		return
	}
	if body.Name != "" && body.Name != name {
		writeError(w, http.StatusBadRequest, "invalid", fmt.Sprintf("body names service %q but the path names %q", body.Name, name))
		return
	}
	spec := state.ServiceSpec{Pools: map[string]state.PoolSpec{}, Weights: body.Weights, Health: body.Health, SLO: body.SLO, Guard: body.Guard}
	for pname, p := range body.Pools {
		ps := state.PoolSpec{Version: p.Version, Backends: make([]string, len(p.Backends))}
		for i, be := range p.Backends {
			ps.Backends[i] = string(be)
		}
		spec.Pools[pname] = ps
	}
	a.write(w, r, raw, body.IfVersion, state.NewCommand(name, actor, state.PutService{Spec: &spec}))
}

// The write endpoints do not look the service up first: the state machine
// judges existence after the idempotency key, so a repeated request returns its
// first result even when that deleted the service.

func (a *Server) deleteService(w http.ResponseWriter, r *http.Request, actor string) {
	raw, ifVersion, ok := readVersionBody(w, r)
	if !ok {
		return
	}
	a.write(w, r, raw, ifVersion, state.NewCommand(r.PathValue("svc"), actor, state.DeleteService{}))
}

// readVersionBody reads the optional body of the writes that take nothing
// else: {"if_version": N}, an expected version like If-Match. It is read
// strictly, so a misspelt field is a 400, not a check silently skipped.
func readVersionBody(w http.ResponseWriter, r *http.Request) (raw []byte, ifVersion *uint64, ok bool) {
	var body struct {
		IfVersion *uint64 `json:"if_version"`
	}
	raw, ok = readRaw(w, r)
	if !ok || !decodeBody(w, raw, &body, true) {
		return nil, nil, false
	}
	return raw, body.IfVersion, true
}

type weightsBody struct {
	Weights   state.Weights `json:"weights"`
	Force     bool          `json:"force"`
	IfVersion *uint64       `json:"if_version"`
}

func (a *Server) putWeights(w http.ResponseWriter, r *http.Request, actor string) {
	var body weightsBody
	raw, ok := readBody(w, r, &body)
	if !ok {
		return
	}
	if len(body.Weights) == 0 {
		writeError(w, http.StatusBadRequest, "invalid", `"weights" is missing or empty; send {"weights":{"blue":99,"canary":1}}`)
		return
	}
	cmd := state.NewCommand(r.PathValue("svc"), actor, state.SetWeights{Weights: body.Weights, Action: state.ChangeWeights})
	// Bad input first: no force makes it valid, so the gate must not send
	// the operator to fix backends for it.
	if err := cmd.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, "invalid", err.Error())
		return
	}
	if !a.checkGate(w, r, actor, r.PathValue("svc"), raisedPools(body.Weights), body.Force) {
		return
	}
	a.write(w, r, raw, body.IfVersion, cmd)
}

type switchBody struct {
	To        string  `json:"to"`
	Force     bool    `json:"force"`
	IfVersion *uint64 `json:"if_version"`
}

func (a *Server) postSwitch(w http.ResponseWriter, r *http.Request, actor string) {
	var body switchBody
	raw, ok := readBody(w, r, &body)
	if !ok {
		return
	}
	if body.To == "" {
		writeError(w, http.StatusBadRequest, "invalid", `"to" is missing; send {"to":"green"}`)
		return
	}
	if !a.checkGate(w, r, actor, r.PathValue("svc"), onePool(body.To), body.Force) {
		return
	}
	a.write(w, r, raw, body.IfVersion, state.NewCommand(r.PathValue("svc"), actor, state.SetWeights{Weights: state.Weights{body.To: state.Total}, Action: state.SwitchWeights}))
}

type poolPutBody struct {
	Backends  []backendRef `json:"backends"`
	Version   *string      `json:"version"`
	IfVersion *uint64      `json:"if_version"`
}

func (a *Server) putPool(w http.ResponseWriter, r *http.Request, actor string) {
	var body poolPutBody
	raw, ok := readBody(w, r, &body)
	if !ok {
		return
	}
	if body.Backends == nil {
		writeError(w, http.StatusBadRequest, "invalid", `"backends" is missing; send {"backends":["10.0.0.21:8765"]} (an empty list empties the pool)`)
		return
	}
	pool := r.PathValue("pool")
	svc := r.PathValue("svc")
	p := state.SetPool{Pool: pool, Backends: make([]string, len(body.Backends))}
	for i, be := range body.Backends {
		p.Backends[i] = string(be)
	}
	// Without "version" the pool keeps its label.
	if body.Version != nil {
		p.PoolVersion = *body.Version
	} else if s := a.Node.View().Services[svc]; s != nil && s.Pools[pool] != nil {
		p.PoolVersion = s.Pools[pool].Version
	}
	a.write(w, r, raw, body.IfVersion, state.NewCommand(svc, actor, p))
}

// drain answers POST (drain) and DELETE (undrain) on a backend: no new
// requests go to it; requests in flight finish. The body is optional
// ({"if_version": N}).
func (a *Server) drain(action state.DrainAction) func(http.ResponseWriter, *http.Request, string) {
	return func(w http.ResponseWriter, r *http.Request, actor string) {
		raw, ifVersion, ok := readVersionBody(w, r)
		if !ok {
			return
		}
		a.write(w, r, raw, ifVersion, state.NewCommand(r.PathValue("svc"), actor, state.SetDrain{
			Action: action, Pool: r.PathValue("pool"), Backends: []string{r.PathValue("addr")},
		}))
	}
}

// write commits a command for one of the write endpoints and answers with the
// service body, or the error the state machine returned. It applies the
// expected version (If-Match or "if_version") and the idempotency key.
func (a *Server) write(w http.ResponseWriter, r *http.Request, raw []byte, bodyIfVersion *uint64, cmd state.Command) {
	applied, ok := a.commit(w, r, raw, bodyIfVersion, cmd)
	if !ok {
		return
	}
	res := applied.Result
	if _, deleted := cmd.Payload.(state.DeleteService); deleted || res.Service == nil {
		a.writeDeleted(w, cmd, applied)
		return
	}
	body := a.render(r.Context(), res.Service)
	// A replay answers the first result's version with the service as it
	// is now: a client that builds an If-Match on it gets a 409 if the
	// service moved on since, never a silent overwrite.
	body.Version = res.Version
	if r.URL.Query().Get("wait") == "all" {
		on, not := a.Node.WaitAll(r.Context(), applied.Index)
		body.AppliedOn, body.NotApplied = &on, &not
	}
	writeJSON(w, http.StatusOK, body)
}

// writeDeleted answers a write whose service is gone: a delete, whose
// version is the index of the delete (the first one's on a replay), or the
// replay of another write to a service deleted since, whose version is the
// index of that deletion.
func (a *Server) writeDeleted(w http.ResponseWriter, cmd state.Command, applied raftnode.Applied) {
	version := applied.Index
	_, deleted := cmd.Payload.(state.DeleteService)
	switch res := applied.Result; {
	case deleted:
		if res.Index != 0 {
			version = res.Index
		}
	case res.Replayed:
		if del := a.Node.View().Deleted[cmd.Service]; del != 0 {
			version = del
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"name": cmd.Service, "deleted": true, "version": version})
}

// commit proposes a command for a write endpoint with the expected version
// (If-Match or "if_version") and the idempotency key, and answers the errors
// itself; on success the caller renders the answer.
func (a *Server) commit(w http.ResponseWriter, r *http.Request, raw []byte, bodyIfVersion *uint64, cmd state.Command) (raftnode.Applied, bool) {
	ifVersion, err := expectedVersion(r, bodyIfVersion)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid", err.Error())
		return raftnode.Applied{}, false
	}
	cmd.IfVersion = ifVersion
	if data, err := state.Encode(cmd); err == nil {
		// A command this node's build lacks: Validate would call its kind
		// unknown, where the leader would refuse it naming this node.
		if err := a.Node.SelfLacks(data); err != nil {
			writeProposeError(w, err)
			return raftnode.Applied{}, false
		}
	}
	if err := cmd.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, "invalid", err.Error())
		return raftnode.Applied{}, false
	}
	if key := r.Header.Get("Idempotency-Key"); key != "" {
		if len(key) > 255 {
			writeError(w, http.StatusBadRequest, "invalid", "Idempotency-Key is longer than 255 characters")
			return raftnode.Applied{}, false
		}
		cmd.IdemKey = clientIdemKey(key)
		iv := ""
		if ifVersion != nil {
			iv = strconv.FormatUint(*ifVersion, 10)
		}
		cmd.IdemHash = state.Digest([]byte(r.Method + " " + r.URL.Path + "\n" + iv + "\n" + canonicalJSON(raw)))
	}
	applied, err := a.Node.Propose(r.Context(), cmd)
	if err != nil {
		writeProposeError(w, err)
		return raftnode.Applied{}, false
	}
	res := applied.Result
	w.Header().Set("X-Cbproxy-Index", strconv.FormatUint(max(applied.Index, a.Node.View().Index), 10))
	if res.Replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	if !res.OK() {
		status := map[string]int{
			state.CodeInvalid:          http.StatusBadRequest,
			state.CodeNotFound:         http.StatusNotFound,
			state.CodeVersionMismatch:  http.StatusConflict,
			state.CodeIdempotencyReuse: http.StatusConflict,
			state.CodeRolloutRunning:   http.StatusConflict,
		}[res.Code]
		if status == 0 {
			status = http.StatusBadRequest
		}
		e := apiError{Error: res.Err, Code: res.Code}
		if res.Code == state.CodeVersionMismatch {
			e.Version = &res.Version
		}
		writeJSON(w, status, e)
		return raftnode.Applied{}, false
	}
	return applied, true
}

// clientIdemKey is the state machine's idempotency key for a client's
// Idempotency-Key (the node's own keys have other prefixes).
func clientIdemKey(key string) string { return "client:" + key }

// writeProposeError answers a write that Propose did not commit.
func writeProposeError(w http.ResponseWriter, err error) {
	var upgrade *raftnode.UpgradeError
	switch {
	case errors.Is(err, raftnode.ErrNoLeader):
		w.Header().Set("Retry-After", "2")
		writeError(w, http.StatusServiceUnavailable, "no_quorum", err.Error())
	case errors.As(err, &upgrade):
		// No Retry-After: the write can go through once an operator has
		// upgraded the members named.
		writeError(w, http.StatusServiceUnavailable, "upgrade_in_progress", err.Error())
	case errors.Is(err, raftnode.ErrHalted):
		writeError(w, http.StatusServiceUnavailable, "node_halted", err.Error())
	default:
		writeError(w, http.StatusServiceUnavailable, "unavailable", "the write did not complete: "+err.Error())
	}
}

// expectedVersion reads If-Match (quoted or bare) or the body's "if_version";
// both given must agree.
func expectedVersion(r *http.Request, fromBody *uint64) (*uint64, error) {
	h := strings.TrimSpace(r.Header.Get("If-Match"))
	if h == "" {
		return fromBody, nil
	}
	h = strings.TrimPrefix(h, "W/")
	h = strings.Trim(h, `"`)
	v, err := strconv.ParseUint(h, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("If-Match %q is not a version number; send the service's \"version\", e.g. If-Match: 42", r.Header.Get("If-Match"))
	}
	if fromBody != nil && *fromBody != v {
		return nil, fmt.Errorf("If-Match %d and \"if_version\" %d disagree; send one of them", v, *fromBody)
	}
	return &v, nil
}

func readAll(r *http.Request) ([]byte, error) {
	if r.Body == nil {
		return nil, nil
	}
	return io.ReadAll(r.Body)
}

// decodeStrict decodes exactly one JSON value, refusing unknown fields and
// trailing data.
func decodeStrict(raw []byte, dst any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("unexpected data after the JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("unexpected data after the JSON object")
	}
	return nil
}

// canonicalJSON re-encodes a body with sorted keys and no insignificant
// space, so that the same request sent with other formatting counts as the
// same request for its idempotency key.
func canonicalJSON(raw []byte) string {
	var v any
	if len(raw) == 0 || json.Unmarshal(raw, &v) != nil {
		return string(raw)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return string(raw)
	}
	return string(b)
}
