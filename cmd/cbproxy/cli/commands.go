package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"strconv"
	"text/tabwriter"
)

// commands are the cbproxy client commands, in the order of the help. Adding
// one is an entry here and its run function.
var commands = append([]*command{
	{
		name:   "status",
		params: []string{"[SERVICE]"},
		short:  "Show services, pools, weights, health, rollout and cluster",
		long: `Shows every service (or only SERVICE): its version, each pool's weight, last
known good weight, version label and backends with their health as the
answering node sees it, the rollout, and a line about the cluster. With
--json it prints the API's service body (or list) as is.`,
		run: runStatus,
	},
	{
		name:   "weights",
		params: []string{"SERVICE", "POOL=PCT..."},
		flags: []flagSpec{
			{name: "if-version", value: "N", usage: "change only if the service is at version N (else exit 3)", check: nonNegativeInt},
			{name: "force", usage: "skip the health gate of pools raised from 0"},
		},
		short: "Set the traffic weights of a service's pools",
		long: `Sets each pool's share of new requests, in percent with at most two decimals
(blue=99.5 canary=0.5). The weights must sum to 100; a pool left out gets 0.
A pool raised from 0 needs a healthy backend unless --force is given (else
exit 4); while a rollout runs the change is refused (exit 3). The weights in
force before become the service's last known good.`,
		run: runWeights,
	},
	{
		name:   "switch",
		params: []string{"SERVICE", "POOL"},
		flags:  []flagSpec{{name: "force", usage: "switch even if POOL has no healthy backend"}},
		short:  "Send all traffic to one pool (blue-green), health-gated",
		long: `Gives POOL 100 % of SERVICE's traffic at once. POOL needs a healthy backend
unless --force is given (else exit 4). The weights in force before become the
service's last known good, so 'cbproxy rollback' can undo the switch.`,
		run: runSwitch,
	},
	{
		name:   "rollout start",
		params: []string{"SERVICE"},
		flags:  rolloutStartFlags,
		short:  "Start a canary or blue-green rollout to a pool",
		long: `Starts moving SERVICE's traffic from one pool (--from, default the pool with the
largest weight) to --to, on every node. A canary takes the new pool's share
from the old pool in --steps, holding each step while the SLO is judged, and
advances when it passes (with --manual: when 'rollout promote' is run). A
blue-green rollout (--strategy blue-green, or --bake) switches all traffic at
once, health-gated, then keeps it under the rollback SLO for the bake time.
A breach of the rollback SLO rolls back to the weights in force before the
start. Exit 3 if a rollout already runs, 4 if the --to pool has no healthy
backend (unless --force).`,
		run: runRolloutStart,
	},
	{
		name:   "rollout status",
		params: []string{"SERVICE"},
		flags:  rolloutStatusFlags,
		short:  "Show the current or last rollout and its SLO verdict",
		long: `Shows SERVICE's current or last rollout: its strategy, state, pools, step and
hold, and the SLO verdict with each pool's requests, errors, error rate (with
its 95 % interval), P95 latency and the number of nodes reporting. With
--follow it prints it again on every change and every second until the
rollout ends, and exits 0 when it was promoted, 5 rolled back, 6 aborted (7
after --timeout, 1 if the node is lost; Ctrl-C exits 0); with --json it
prints the API's rollout body each time, one per line.`,
		run: runRolloutStatus,
	},
	{
		name:   "rollout pause",
		params: []string{"SERVICE"},
		short:  "Hold the running rollout at its step",
		long:   `Pauses SERVICE's rollout: the weights stay, no step is taken until 'rollout resume'. A breach of the rollback SLO still rolls back.`,
		run:    runRolloutAction("pause"),
	},
	{
		name:   "rollout resume",
		params: []string{"SERVICE"},
		short:  "Go on with a paused rollout",
		long:   `Resumes SERVICE's paused rollout; the current step's hold starts again.`,
		run:    runRolloutAction("resume"),
	},
	{
		name:   "rollout promote",
		params: []string{"SERVICE"},
		short:  "Take the rollout's next step now",
		long:   `Moves SERVICE's rollout to its next step now, without waiting for the hold or the SLO; at the last step it ends the rollout as promoted.`,
		run:    runRolloutAction("promote"),
	},
	{
		name:   "rollout abort",
		params: []string{"SERVICE"},
		short:  "Stop the rollout and restore the weights from before it",
		long:   `Ends SERVICE's rollout as aborted and restores the last known good weights (those in force before the rollout started) at once.`,
		run:    runRolloutAction("abort"),
	},
	{
		name:   "rollback",
		params: []string{"SERVICE"},
		short:  "Restore the last known good weights now",
		long: `Restores SERVICE's last known good weights (those in force before the last
weights, switch or rollout start) on every node at once. A running rollout
ends as rolled back.`,
		run: runRollback,
	},
	{
		name:   "pool set",
		params: []string{"SERVICE", "POOL", "ADDR..."},
		flags:  []flagSpec{{name: "version", value: "LABEL", usage: "the pool's version label (default: keep the current one)"}},
		short:  "Set the backends of a pool (a new pool gets weight 0)",
		long: `Replaces the backends of SERVICE's POOL on every node, creating the pool with
weight 0 if it is new. An ADDR is host:port, [ipv6]:port, a DNS name with
port, or https://host:port for TLS to the backend.`,
		run: runPoolSet,
	},
	{
		name:   "backend drain",
		params: []string{"SERVICE", "POOL", "ADDR"},
		short:  "Stop new requests to one backend; requests in flight finish",
		long: `Drains ADDR in SERVICE's POOL on every node: it gets no new requests, the
requests in flight to it finish ('cbproxy status' shows how many are left).
Use it before restarting a backend; 'backend undrain' puts it back.`,
		run: runDrain(http.MethodPost),
	},
	{
		name:   "backend undrain",
		params: []string{"SERVICE", "POOL", "ADDR"},
		short:  "Put a drained backend back into rotation",
		long:   `Undrains ADDR in SERVICE's POOL on every node: it gets new requests again.`,
		run:    runDrain(http.MethodDelete),
	},
	{
		name:   "events",
		params: []string{"[SERVICE]"},
		flags: []flagSpec{
			{name: "follow", usage: "print new events as they happen, until Ctrl-C"},
			{name: "limit", value: "N", usage: "print the newest N events, 1 to 1000 (server default 100)", check: eventLimit},
		},
		short: "Show the audit trail of changes",
		long: `Prints the audit trail (of SERVICE only, if given), oldest first, one line per
event: time, index, actor, action, service, weights before → after, reason.
With --follow it then prints each new event as it happens; with --follow
alone it prints only new events. A "gap" line marks events the trail had
already dropped when the stream resumed.`,
		run: runEvents,
	},
	{
		name:  "cluster status",
		short: "Show the cluster's leader, term and nodes",
		long:  `Shows the leader, the term, the commit index and every node as the answering node sees them.`,
		run:   runClusterStatus,
	},
	{
		name:   "cluster join",
		params: []string{"NODE_ID", "CLUSTER_ADDR", "ADMIN_ADDR"},
		short:  "Add a node to the cluster (send to any member with --admin)",
		long: `Adds NODE_ID, reachable by its peers on CLUSTER_ADDR (its cluster_listen) and
by operators on ADMIN_ADDR (its admin_listen), as a voter. The node must run
with the cluster's cluster_secret: the leader checks that it answers on
CLUSTER_ADDR before it adds it. Joining a member again changes nothing.`,
		run: runClusterJoin,
	},
	{
		name:   "cluster remove",
		params: []string{"NODE_ID"},
		short:  "Remove a node from the cluster",
		long: `Removes NODE_ID from the cluster's voters and its node list. A removed node
does not join again by itself (through its join list): only 'cluster join'
takes it back. Removing a removed node again changes nothing.`,
		run: runClusterRemove,
	},
	{
		name:  "cluster recover",
		flags: recoverFlags,
		short: "Make a stopped survivor of a lost quorum a one-node cluster (offline)",
		long: `Run on the machine of a STOPPED node whose cluster lost its quorum for good
(a majority of nodes gone with their data). It turns the node's data dir into
a one-node cluster that keeps every service, weight, version and event; start
the node, then add fresh nodes with join. It works on the data dir, not
through the admin API: --config names the node's Caddyfile (data_dir,
node_id, cluster_secret), or --data-dir and --node-id say it directly.

It refuses while a node runs on the data dir, and while any other member of
the old configuration answers on its cluster address (a healthy cluster must
not be split), unless --force. It prints what it finds, what it will do and
what it did; --dry-run stops before changing anything. Runbook:
docs/operations.md, "Recovering from quorum loss".`,
		run: runClusterRecover,
	},
}, notifierCommands...)

func runDrain(method string) func(context.Context, *invocation) error {
	return func(ctx context.Context, inv *invocation) error {
		pool, addr := inv.args[1], inv.args[2]
		return inv.write(ctx, request{
			method: method,
			path:   pathf("/v1/services/%s/pools/%s/backends/%s/drain", inv.args[0], pool, addr),
		}, func(s serviceBody) string { return poolLine(pool, s.Pools[pool]) })
	}
}

func runClusterJoin(ctx context.Context, inv *invocation) error {
	return inv.clusterChange(ctx, request{
		method: http.MethodPost,
		path:   "/v1/cluster/join",
		body: struct {
			NodeID      string `json:"node_id"`
			ClusterAddr string `json:"cluster_addr"`
			AdminAddr   string `json:"admin_addr"`
		}{inv.args[0], inv.args[1], inv.args[2]},
	})
}

func runClusterRemove(ctx context.Context, inv *invocation) error {
	return inv.clusterChange(ctx, request{method: http.MethodDelete, path: pathf("/v1/cluster/nodes/%s", inv.args[0])})
}

// clusterChange sends a membership change and prints the cluster it left.
func (inv *invocation) clusterChange(ctx context.Context, req request) error {
	body, err := inv.client.do(ctx, req)
	if err != nil {
		return err
	}
	if inv.json {
		return writeJSON(inv.out, body)
	}
	var cluster clusterBody
	if err := decode(body, &cluster); err != nil {
		return err
	}
	return writeCluster(inv.out, cluster)
}

func runStatus(ctx context.Context, inv *invocation) error {
	var services []serviceBody
	if len(inv.args) == 1 {
		services = make([]serviceBody, 1)
		if done, err := inv.get(ctx, pathf("/v1/services/%s", inv.args[0]), nil, &services[0]); done || err != nil {
			return err
		}
	} else {
		var list struct {
			Services []serviceBody `json:"services"`
		}
		if done, err := inv.get(ctx, "/v1/services", nil, &list); done || err != nil {
			return err
		}
		services = list.Services
	}
	var cluster clusterBody
	body, err := inv.client.do(ctx, request{method: http.MethodGet, path: "/v1/cluster"})
	if err != nil {
		return err
	}
	if err := decode(body, &cluster); err != nil {
		return err
	}
	return writeStatus(inv.out, services, cluster)
}

func runWeights(ctx context.Context, inv *invocation) error {
	weights, err := parseWeights(inv.args[1:])
	if err != nil {
		return err
	}
	req := request{
		method: http.MethodPut,
		path:   pathf("/v1/services/%s/weights", inv.args[0]),
		body: struct {
			Weights map[string]json.Number `json:"weights"`
			Force   bool                   `json:"force"`
		}{weights, inv.flag("force")},
	}
	if v, ok := inv.flags["if-version"]; ok {
		req.header = http.Header{"If-Match": {v}}
	}
	return inv.write(ctx, req, lkgLine)
}

func runSwitch(ctx context.Context, inv *invocation) error {
	return inv.write(ctx, request{
		method: http.MethodPost,
		path:   pathf("/v1/services/%s/switch", inv.args[0]),
		body: struct {
			To    string `json:"to"`
			Force bool   `json:"force"`
		}{inv.args[1], inv.flag("force")},
	}, lkgLine)
}

func runPoolSet(ctx context.Context, inv *invocation) error {
	pool := inv.args[1]
	var label *string // nil keeps the pool's current label
	if v, ok := inv.flags["version"]; ok {
		label = &v
	}
	return inv.write(ctx, request{
		method: http.MethodPut,
		path:   pathf("/v1/services/%s/pools/%s", inv.args[0], pool),
		body: struct {
			Backends []string `json:"backends"`
			Version  *string  `json:"version,omitempty"`
		}{inv.args[2:], label},
	}, func(s serviceBody) string { return poolLine(pool, s.Pools[pool]) })
}

func runEvents(ctx context.Context, inv *invocation) error {
	query := url.Values{}
	if len(inv.args) == 1 {
		query.Set("service", inv.args[0])
	}
	listQuery := maps.Clone(query)
	limit, hasLimit := inv.flags["limit"]
	if hasLimit {
		listQuery.Set("limit", limit)
	}
	if !inv.flag("follow") {
		var list struct {
			Events []eventBody `json:"events"`
		}
		if done, err := inv.get(ctx, "/v1/events", listQuery, &list); done || err != nil {
			return err
		}
		return writeEvents(inv.out, list.Events)
	}

	// Like tail -n N -f: the newest N events, then the stream from after them.
	// Events print one by one, so --json prints one JSON event per line.
	tw := tabwriter.NewWriter(inv.out, 0, 0, 2, ' ', 0)
	print := func(raw []byte) (eventBody, error) {
		var e eventBody
		if err := decode(raw, &e); err != nil {
			return e, err
		}
		if inv.json {
			if err := writeJSONLine(inv.out, raw); err != nil {
				return e, err
			}
			return e, inv.out.Flush()
		}
		writeEvent(tw, e)
		if err := tw.Flush(); err != nil {
			return e, err
		}
		return e, inv.out.Flush()
	}
	var lastID string
	if hasLimit {
		body, err := inv.client.do(ctx, request{method: http.MethodGet, path: "/v1/events", query: listQuery})
		if err != nil {
			return err
		}
		var list struct {
			Events []json.RawMessage `json:"events"`
		}
		if err := decode(body, &list); err != nil {
			return err
		}
		for _, raw := range list.Events {
			e, err := print(raw)
			if err != nil {
				return err
			}
			lastID = strconv.FormatUint(e.Index, 10)
		}
	}
	return inv.client.followEvents(ctx, query, lastID, func(raw []byte) error {
		_, err := print(raw)
		return err
	})
}

// followEvents reads the event stream (of the services query names) from
// after the event lastID ("": from now on) and calls fn with each event's
// JSON. A server that cuts a reader off for falling behind ends the stream
// with `event: reconnect`: it resumes after the last event, losing nothing.
// Any other end of the stream ends it.
func (c *client) followEvents(ctx context.Context, query url.Values, lastID string, fn func(raw []byte) error) error {
	for {
		cut := false
		err := c.stream(ctx, "/v1/events/stream", query, lastID, func(ev sseEvent) error {
			if ev.id != "" {
				lastID = ev.id
			}
			if ev.event == "reconnect" {
				cut = true
				return nil
			}
			return fn([]byte(ev.data))
		})
		if err != nil || !cut || ctx.Err() != nil {
			return err
		}
	}
}

func runClusterStatus(ctx context.Context, inv *invocation) error {
	var cluster clusterBody
	if done, err := inv.get(ctx, "/v1/cluster", nil, &cluster); done || err != nil {
		return err
	}
	return writeCluster(inv.out, cluster)
}

// get reads path and decodes the answer into v, or prints the answer as is
// with --json; done reports that it printed.
func (inv *invocation) get(ctx context.Context, path string, query url.Values, v any) (done bool, err error) {
	body, err := inv.client.do(ctx, request{method: http.MethodGet, path: path, query: query})
	if err != nil {
		return false, err
	}
	if inv.json {
		return true, writeJSON(inv.out, body)
	}
	return false, decode(body, v)
}

// write sends a write to a service and prints the answer: as is with --json,
// else the new weights and the line detail makes.
func (inv *invocation) write(ctx context.Context, req request, detail func(serviceBody) string) error {
	var s serviceBody
	body, err := inv.client.do(ctx, req)
	if err != nil {
		return err
	}
	if inv.json {
		return writeJSON(inv.out, body)
	}
	if err := decode(body, &s); err != nil {
		return err
	}
	_, err = fmt.Fprintf(inv.out, "%s version %d: %s\n%s\n", s.Name, s.Version, formatWeights(s.Weights), detail(s))
	return err
}

// decode decodes an answer of the admin API.
func decode(body []byte, v any) error {
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("unexpected answer from the admin API: %v", err)
	}
	return nil
}
