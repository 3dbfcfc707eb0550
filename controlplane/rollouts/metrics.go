package rollouts

import (
	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/prometheus/client_golang/prometheus"
)

var (
	rolloutStepDesc = prometheus.NewDesc("cbproxy_rollout_step",
		"The step the service's rollout is at (from 1), 0 when no rollout runs.",
		[]string{"service"}, nil)
	rollbacksDesc = prometheus.NewDesc("cbproxy_rollbacks_total",
		"Rollbacks of the service to its last known good weights, by trigger (auto: the SLO watcher; manual: cbproxy rollback; abort: a rollout aborted).",
		[]string{"service", "trigger"}, nil)
)

// Metrics are the rollout series (docs/api.md "Metrics"), read from the
// replicated state at scrape time, so every node reports the same counts.
func Metrics(view func() *state.View) prometheus.Collector { return viewMetrics(view) }

type viewMetrics func() *state.View

func (viewMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- rolloutStepDesc
	ch <- rollbacksDesc
}

// Collect sends a service's step from its first rollout on and a rollback
// counter from its first rollback on: at 1,000 services, zeros for services
// that never had either were most of these series.
func (m viewMetrics) Collect(ch chan<- prometheus.Metric) {
	for name, s := range m().Services {
		if s.Rollout != nil {
			step := 0
			if s.Rollout.Active() {
				step = s.Rollout.Step
			}
			ch <- prometheus.MustNewConstMetric(rolloutStepDesc, prometheus.GaugeValue, float64(step), name)
		}
		for _, trigger := range []state.Trigger{state.TriggerAuto, state.TriggerManual, state.TriggerAbort} {
			if n := s.Rollbacks[trigger]; n > 0 {
				ch <- prometheus.MustNewConstMetric(rollbacksDesc, prometheus.CounterValue, float64(n), name, string(trigger))
			}
		}
	}
}
