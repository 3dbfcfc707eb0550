#!/usr/bin/env bash
# propagation.sh: how fast a weight change reaches every node of a cluster.
# Starts a local three-node cbproxy cluster on loopback with demo backends,
# measures the CPU the idle nodes use for IDLE, sends CHANGES weight changes
# to a follower with ?wait=all under a background load of RATE req/s, prints
# the call times (p50/p90/p99/max), the failed requests per switch, and
# writes bench/results/propagation-<date>.md. NODES=1 does the same with a
# single node and plain PUTs (bench/results/apply-<date>.md). Every process
# it starts is stopped on exit. See bench/README.md.
#
# Environment (defaults in brackets):
#   NODES [3]  CHANGES [200]  WARMUP [4]  GAP [50ms]  RATE [1000]  IDLE [5s]
#   PORT_BASE [7400]  TIMEOUT [170s]  CBPROXY_BIN [bin/cbproxy]
#   BACKEND_BIN [bin/cbproxy-backend]
set -euo pipefail

cd "$(dirname "$0")/.."

NODES=${NODES:-3}
CHANGES=${CHANGES:-200}
WARMUP=${WARMUP:-4}
GAP=${GAP:-50ms}
RATE=${RATE:-1000}
IDLE=${IDLE:-5s}
PORT_BASE=${PORT_BASE:-7400}
TIMEOUT=${TIMEOUT:-170s}
CBPROXY_BIN=${CBPROXY_BIN:-bin/cbproxy}
BACKEND_BIN=${BACKEND_BIN:-bin/cbproxy-backend}

for bin in "$CBPROXY_BIN" "$BACKEND_BIN"; do
	[[ -x $bin ]] || { echo "propagation: no executable $bin: run 'make build' or set CBPROXY_BIN/BACKEND_BIN" >&2; exit 1; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/propagation.XXXXXX")
pid=
cleanup() {
	local rc=$?
	# The program stops the cluster itself on SIGTERM; wait for it to finish.
	[[ -z $pid ]] || { kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
	rm -rf "$tmp"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

go build -o "$tmp/propagation" ./bench/propagation

"$tmp/propagation" -cbproxy "$CBPROXY_BIN" -backend "$BACKEND_BIN" \
	-nodes "$NODES" -idle "$IDLE" -changes "$CHANGES" -warmup "$WARMUP" -gap "$GAP" -rate "$RATE" \
	-port-base "$PORT_BASE" -timeout "$TIMEOUT" -results bench/results \
	-command "NODES=$NODES CHANGES=$CHANGES WARMUP=$WARMUP GAP=$GAP RATE=$RATE IDLE=$IDLE PORT_BASE=$PORT_BASE CBPROXY_BIN=$CBPROXY_BIN bench/propagation.sh" &
pid=$!
rc=0
wait "$pid" || rc=$?
pid=
exit "$rc"
