package notify

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

func TestSign(t *testing.T) {
	at := time.Unix(1764750000, 0)
	got := Sign("k", at, []byte(`{"id":"1"}`))
	mac := hmac.New(sha256.New, []byte("k"))
	mac.Write([]byte(`1764750000.{"id":"1"}`))
	if want := "t=1764750000,v1=" + hex.EncodeToString(mac.Sum(nil)); got != want {
		t.Fatalf("Sign = %s, want %s", got, want)
	}
}

func TestRetryAfterAndBackoff(t *testing.T) {
	if d := retryAfter("3"); d != 3*time.Second {
		t.Errorf("Retry-After 3 = %s", d)
	}
	if d := retryAfter(time.Now().Add(10 * time.Second).UTC().Format(http.TimeFormat)); d < 8*time.Second || d > 10*time.Second {
		t.Errorf("Retry-After date = %s", d)
	}
	for _, bad := range []string{"", "-1", "soon"} {
		if d := retryAfter(bad); d != 0 {
			t.Errorf("Retry-After %q = %s", bad, d)
		}
	}
	r := Retry{Attempts: 8, Base: 500 * time.Millisecond, Max: 30 * time.Second}
	for attempt := 1; attempt <= 40; attempt++ {
		d := backoff(r, attempt)
		nominal := min(r.Base<<min(attempt-1, 20), r.Max)
		if d < nominal/2 || d >= nominal*3/2 {
			t.Errorf("backoff(%d) = %s, not within ±50%% of %s", attempt, d, nominal)
		}
	}
}

// TestKind: the notification kind of each event; a watcher's rollback is a
// rolled-back rollout when it ended the rollout, else a guard breach.
func TestKind(t *testing.T) {
	at := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	v := &state.View{Services: map[string]*state.Service{
		"a": {Name: "a", Rollout: &state.Rollout{ID: "a-1", State: state.RolloutRolledBack, Ended: at}},
		"b": {Name: "b"},
	}}
	for _, tt := range []struct {
		ev   state.Event
		want string
	}{
		{state.Event{Action: state.ActionRollback, Service: "a", Actor: "watcher", Time: at}, "rollout_rolled_back"},
		{state.Event{Action: state.ActionRollback, Service: "b", Actor: "watcher", Time: at}, "guard_breach"},
		{state.Event{Action: state.ActionRollback, Service: "b", Actor: "ops", Time: at}, "rollback"},
		{state.Event{Action: state.ActionRolloutComplete, Service: "a"}, "rollout_promoted"},
		{state.Event{Action: state.ActionRolloutPromote, Service: "a"}, "rollout_step"},
		{state.Event{Action: state.ActionGateRefused, Service: "a"}, "gate_refused"},
		{state.Event{Action: state.ActionNodeLost}, "node_lost"},
		{state.Event{Action: state.ActionWeights, Service: "a"}, ""},
		{state.Event{Action: state.ActionNotifierPut}, ""},
	} {
		if got := Kind(tt.ev, v); got != tt.want {
			t.Errorf("%s by %s on %s: %q, want %q", tt.ev.Action, tt.ev.Actor, tt.ev.Service, got, tt.want)
		}
		if tt.want != "" && !slices.Contains(state.NotificationKinds, tt.want) {
			t.Errorf("%q is not a documented kind", tt.want)
		}
	}
	// A Slack body carries the summary as its text.
	n := build(state.Event{Index: 7, Action: state.ActionRollback, Service: "b", Actor: "watcher", Time: at,
		Figures: map[string]any{"pools": map[string]any{"canary": map[string]any{"error_rate": 0.5, "p95_ms": 12.0, "requests": 40.0}}}}, "guard_breach", "n1", v)
	b, err := body(n, state.FormatSlack)
	if err != nil || !strings.Contains(string(b), `"text":"[b] guard breach`) || !strings.Contains(string(b), "canary: error rate 50.00%") {
		t.Fatalf("slack body %s (%v)", b, err)
	}
}
