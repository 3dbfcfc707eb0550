package controlplane

import (
	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

// nodeMetrics are the cbproxy_raft_* series of CONTRACT §7. The gauges are
// read from Raft at scrape time.
type nodeMetrics struct {
	n            *Node
	isLeader     prometheus.GaugeFunc
	applied      prometheus.GaugeFunc
	halted       prometheus.GaugeFunc
	applySeconds prometheus.Histogram
}

func newNodeMetrics(n *Node) *nodeMetrics {
	return &nodeMetrics{
		n: n,
		isLeader: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "cbproxy_raft_is_leader",
			Help: "1 if this node is the Raft leader, 0 otherwise.",
		}, func() float64 {
			if n.raft.State() == raft.Leader {
				return 1
			}
			return 0
		}),
		applied: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "cbproxy_raft_applied_index",
			Help: "Raft index of the last command this node's state machine applied.",
		}, func() float64 { return float64(n.View().Index) }),
		halted: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "cbproxy_raft_halted",
			Help: "1 once this node stopped applying the replicated log at an entry its cbproxy build cannot apply (upgrade and restart it), 0 otherwise.",
		}, func() float64 {
			if n.fsm.halt() != nil {
				return 1
			}
			return 0
		}),
		applySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cbproxy_raft_apply_seconds",
			Help:    "Time from proposing a command on the leader to its commit and apply.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
	}
}

var (
	rolloutStepDesc = prometheus.NewDesc("cbproxy_rollout_step",
		"The step the service's rollout is at (from 1), 0 when no rollout runs.",
		[]string{"service"}, nil)
	rollbacksDesc = prometheus.NewDesc("cbproxy_rollbacks_total",
		"Rollbacks of the service to its last known good weights, by trigger (auto: the SLO watcher; manual: cbproxy rollback; abort: a rollout aborted).",
		[]string{"service", "trigger"}, nil)
)

func (m *nodeMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- rolloutStepDesc
	ch <- rollbacksDesc
	m.isLeader.Describe(ch)
	m.applied.Describe(ch)
	m.halted.Describe(ch)
	m.applySeconds.Describe(ch)
}

func (m *nodeMetrics) Collect(ch chan<- prometheus.Metric) {
	// Read from the replicated state, so every node reports the same counts.
	for name, s := range m.n.View().Services {
		step := 0
		if s.Rollout.Active() {
			step = s.Rollout.Step
		}
		ch <- prometheus.MustNewConstMetric(rolloutStepDesc, prometheus.GaugeValue, float64(step), name)
		for _, trigger := range []state.Trigger{state.TriggerAuto, state.TriggerManual, state.TriggerAbort} {
			ch <- prometheus.MustNewConstMetric(rollbacksDesc, prometheus.CounterValue, float64(s.Rollbacks[trigger]), name, string(trigger))
		}
	}
	m.isLeader.Collect(ch)
	m.applied.Collect(ch)
	m.halted.Collect(ch)
	m.applySeconds.Collect(ch)
}
