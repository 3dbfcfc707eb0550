package raftnode

import (
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the cbproxy_raft_* series (docs/api.md "Metrics"). The
// gauges are read from Raft at scrape time.
type metrics struct {
	isLeader     prometheus.GaugeFunc
	applied      prometheus.GaugeFunc
	halted       prometheus.GaugeFunc
	applySeconds prometheus.Histogram
}

func newMetrics(n *Node) *metrics {
	return &metrics{
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

// Metrics is the collector of this node's cbproxy_raft_* series.
func (n *Node) Metrics() prometheus.Collector { return n.metrics }

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	m.isLeader.Describe(ch)
	m.applied.Describe(ch)
	m.halted.Describe(ch)
	m.applySeconds.Describe(ch)
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	m.isLeader.Collect(ch)
	m.applied.Collect(ch)
	m.halted.Collect(ch)
	m.applySeconds.Collect(ch)
}
