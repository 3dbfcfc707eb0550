package adminapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/notify"
	"github.com/cbproxy/cbproxy/controlplane/state"
	"go.uber.org/zap"
)

// Notifiers (docs/api.md "Notifications"): webhooks kept in the replicated
// state, written with the version and idempotency rules of every write.

// NotifierTester sends a test notification (*notify.Dispatcher).
type NotifierTester interface {
	// Test sends one test notification from this node (I/O: the receiver).
	Test(ctx context.Context, name, actor string) (notify.TestResult, error)
}

// notifierBody is a notifier as the API shows it: never its secret, and
// its URL without path or query (they often hold the receiver's token).
type notifierBody struct {
	Name      string                 `json:"name"`
	Version   uint64                 `json:"version"`
	URL       string                 `json:"url"`
	Service   string                 `json:"service,omitempty"`
	Events    []string               `json:"events"`
	Format    state.NotifyFormat     `json:"format"`
	Timeout   state.Duration         `json:"timeout"`
	SecretSet bool                   `json:"secret_set"`
	Delivery  state.NotifierDelivery `json:"delivery"`
}

func renderNotifier(n *state.Notifier) notifierBody {
	events := n.Events
	if len(events) == 0 {
		events = []string{}
	}
	return notifierBody{
		Name: n.Name, Version: n.Version, URL: state.RedactedURL(n.URL), Service: n.Service, Events: events,
		Format: n.Format, Timeout: n.Timeout, SecretSet: n.Secret != "", Delivery: n.Delivery,
	}
}

// PutNotifierBody is the body of PUT /v1/notifiers/{name}. A "secret"
// left out keeps the notifier's secret (GET never shows it, so a client
// that reads, edits and writes back keeps it); "" removes it.
type PutNotifierBody struct {
	URL       string             `json:"url"`
	Service   string             `json:"service"`
	Events    []string           `json:"events"`
	Secret    *string            `json:"secret"`
	Format    state.NotifyFormat `json:"format"`
	Timeout   state.Duration     `json:"timeout"`
	IfVersion *uint64            `json:"if_version"`
}

// ParsePutNotifierBody reads a PUT body strictly (unknown fields are
// errors) and checks it: the API's parser, fuzzed by FuzzNotifierBody.
func ParsePutNotifierBody(raw []byte) (PutNotifierBody, error) {
	var b PutNotifierBody
	if err := decodeStrict(raw, &b); err != nil {
		return b, fmt.Errorf("malformed JSON body: %w", err)
	}
	spec := state.NotifierSpec{URL: b.URL, Service: b.Service, Events: b.Events, Format: b.Format, Timeout: b.Timeout}
	if b.Secret != nil {
		spec.Secret = *b.Secret
	}
	return b, state.CheckNotifierSpec(spec)
}

func (a *Server) listNotifiers(w http.ResponseWriter, _ *http.Request, _ string) {
	v := a.Node.View()
	out := make([]notifierBody, 0, len(v.Notifiers))
	for _, n := range v.Notifiers {
		out = append(out, renderNotifier(n))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	writeJSON(w, http.StatusOK, map[string]any{"notifiers": out})
}

func (a *Server) getNotifier(w http.ResponseWriter, r *http.Request, _ string) {
	n := a.Node.View().Notifiers[r.PathValue("name")]
	if n == nil {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("notifier %q does not exist", r.PathValue("name")))
		return
	}
	writeJSON(w, http.StatusOK, renderNotifier(n))
}

func (a *Server) putNotifier(w http.ResponseWriter, r *http.Request, actor string) {
	name := r.PathValue("name")
	if err := state.ValidateNotifierName(name); err != nil {
		writeError(w, http.StatusBadRequest, "invalid", err.Error())
		return
	}
	raw, ok := readRaw(w, r)
	if !ok {
		return
	}
	if !decodeBody(w, raw, &PutNotifierBody{}, false) {
		return
	}
	b, err := ParsePutNotifierBody(raw)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid", err.Error())
		return
	}
	spec := state.NotifierSpec{URL: b.URL, Service: b.Service, Events: b.Events, Format: b.Format, Timeout: b.Timeout}
	switch cur := a.Node.View().Notifiers[name]; {
	case b.Secret != nil:
		spec.Secret = *b.Secret
	case cur != nil:
		spec.Secret = cur.Secret
	}
	cmd := state.NewCommand("", actor, state.PutNotifier{Notifier: name, Spec: &spec})
	if _, ok := a.commit(w, r, raw, b.IfVersion, cmd); !ok {
		return
	}
	n := a.Node.View().Notifiers[name]
	if n == nil { // deleted since, by a later write
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("notifier %q does not exist", name))
		return
	}
	writeJSON(w, http.StatusOK, renderNotifier(n))
}

func (a *Server) deleteNotifier(w http.ResponseWriter, r *http.Request, actor string) {
	name := r.PathValue("name")
	if err := state.ValidateNotifierName(name); err != nil {
		writeError(w, http.StatusBadRequest, "invalid", err.Error())
		return
	}
	raw, ifVersion, ok := readVersionBody(w, r)
	if !ok {
		return
	}
	applied, ok := a.commit(w, r, raw, ifVersion, state.NewCommand("", actor, state.DeleteNotifier{Notifier: name}))
	if !ok {
		return
	}
	version := applied.Index
	if applied.Result.Index != 0 {
		version = applied.Result.Index
	}
	writeJSON(w, http.StatusOK, map[string]any{"name": name, "deleted": true, "version": version})
}

func (a *Server) testNotifier(w http.ResponseWriter, r *http.Request, actor string) {
	if a.Notifiers == nil {
		writeError(w, http.StatusServiceUnavailable, "unavailable", "this node sends no notifications")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 70*time.Second)
	defer cancel()
	res, err := a.Notifiers.Test(ctx, r.PathValue("name"), actor)
	switch {
	case errors.Is(err, notify.ErrNoNotifier):
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("notifier %q does not exist", r.PathValue("name")))
	case err != nil:
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
	case !res.Delivered:
		writeJSON(w, http.StatusBadGateway, struct {
			notify.TestResult
			Code string `json:"code"`
		}{res, "notify_failed"})
	default:
		writeJSON(w, http.StatusOK, res)
	}
}

// recordGateRefusal puts a gate refusal in the event trail (a committed
// record_event), so that it is notified like every event. It does not delay
// the 412: it is proposed in the background. One record per service and
// node every gateRecordEvery at most: a script retrying a refused switch
// must not fill the trail; the next record counts the refusals left out.
func (a *Server) recordGateRefusal(service, actor, reason string, pools []string, failing []failingBackend) {
	a.gateMu.Lock()
	now := time.Now()
	if last, ok := a.gateRecorded[service]; ok && now.Sub(last) < gateRecordEvery {
		a.gateSkipped[service]++
		a.gateMu.Unlock()
		return
	}
	a.gateRecorded[service] = now
	skipped := a.gateSkipped[service]
	delete(a.gateSkipped, service)
	a.gateMu.Unlock()

	var failingAny any
	if b, err := json.Marshal(failing); err == nil {
		_ = json.Unmarshal(b, &failingAny)
	}
	poolsAny := make([]any, len(pools))
	for i, p := range pools {
		poolsAny[i] = p
	}
	figures := map[string]any{"refused_by": a.Node.ID(), "raised_pools": poolsAny, "failing": failingAny}
	if skipped > 0 {
		figures["refusals_not_recorded"] = float64(skipped)
	}
	cmd := state.NewCommand(service, actor, state.RecordEvent{Action: state.ActionGateRefused, Figures: figures})
	cmd.Reason = reason
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := a.Node.Propose(ctx, cmd); err != nil {
			a.log().Debug("gate refusal not recorded in the event trail", zap.Error(err))
		}
	}()
}

// gateRecordEvery spaces the gate refusals one node records for a service.
const gateRecordEvery = 10 * time.Second
