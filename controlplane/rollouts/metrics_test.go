package rollouts

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// TestMetricsSeries: a service that never had a rollout has no step series
// and a rollback counter appears with its first rollback, so 1,000 services
// without rollouts add no series (before: four each, all zeros). A service
// keeps its step series once it had a rollout: 0 after it ended.
func TestMetricsSeries(t *testing.T) {
	view := &state.View{Services: map[string]*state.Service{
		"quiet": {Name: "quiet"},
		"rolling": {Name: "rolling", Rollout: &state.Rollout{State: state.RolloutRunning, Step: 2},
			Rollbacks: map[state.Trigger]uint64{state.TriggerManual: 1}},
		"done": {Name: "done", Rollout: &state.Rollout{State: state.RolloutPromoted, Step: 5}},
	}}
	want := `
# HELP cbproxy_rollbacks_total Rollbacks of the service to its last known good weights, by trigger (auto: the SLO watcher; manual: cbproxy rollback; abort: a rollout aborted).
# TYPE cbproxy_rollbacks_total counter
cbproxy_rollbacks_total{service="rolling",trigger="manual"} 1
# HELP cbproxy_rollout_step The step the service's rollout is at (from 1), 0 when no rollout runs.
# TYPE cbproxy_rollout_step gauge
cbproxy_rollout_step{service="done"} 0
cbproxy_rollout_step{service="rolling"} 2
`
	if err := testutil.CollectAndCompare(Metrics(func() *state.View { return view }), strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}
