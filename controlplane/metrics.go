package controlplane

import (
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

// nodeMetrics are the cbproxy_raft_* series of CONTRACT §7. The gauges are
// read from Raft at scrape time.
type nodeMetrics struct {
	isLeader     prometheus.GaugeFunc
	applied      prometheus.GaugeFunc
	applySeconds prometheus.Histogram
}

func newNodeMetrics(n *Node) *nodeMetrics {
	return &nodeMetrics{
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
			Help: "Raft index of the last entry this node applied.",
		}, func() float64 { return float64(n.raft.AppliedIndex()) }),
		applySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cbproxy_raft_apply_seconds",
			Help:    "Time from proposing a command on the leader to its commit and apply.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
	}
}

func (m *nodeMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.isLeader.Describe(ch)
	m.applied.Describe(ch)
	m.applySeconds.Describe(ch)
}

func (m *nodeMetrics) Collect(ch chan<- prometheus.Metric) {
	m.isLeader.Collect(ch)
	m.applied.Collect(ch)
	m.applySeconds.Collect(ch)
}
