#!/usr/bin/env bash
# scale.sh: one cbproxy node serving SERVICES services (3 pools x 2 backends
# each, one site with a path matcher per service, seeded from the Caddyfile).
# Runs the routing-table rebuild Go benchmark, then starts the real binary with
# one cbproxy-backend process and measures the time until every service
# serves, RSS after the start and over SCRAPES scrapes of /metrics, the size
# of /metrics, and GET /v1/services; prints every figure next to its goal and
# writes bench/results/scale-<date>.md. Every process it starts is stopped on
# exit. See bench/README.md.
#
# Environment (defaults in brackets):
#   SERVICES [1000]  ADDRESSES [6]  SCRAPES [40]  CALLS [50]  PORT_BASE [7700]
#   TIMEOUT [150s]  CBPROXY_BIN [bin/cbproxy]  BACKEND_BIN [bin/cbproxy-backend]
set -euo pipefail

cd "$(dirname "$0")/.."

SERVICES=${SERVICES:-1000}
ADDRESSES=${ADDRESSES:-6}
SCRAPES=${SCRAPES:-40}
CALLS=${CALLS:-50}
PORT_BASE=${PORT_BASE:-7700}
TIMEOUT=${TIMEOUT:-150s}
CBPROXY_BIN=${CBPROXY_BIN:-bin/cbproxy}
BACKEND_BIN=${BACKEND_BIN:-bin/cbproxy-backend}

for bin in "$CBPROXY_BIN" "$BACKEND_BIN"; do
	[[ -x $bin ]] || { echo "scale: no executable $bin: run 'make build' or set CBPROXY_BIN/BACKEND_BIN" >&2; exit 1; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/scale.XXXXXX")
pid=
cleanup() {
	local rc=$?
	# The program stops its processes itself on SIGTERM; wait for it.
	[[ -z $pid ]] || { kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
	rm -rf "$tmp"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "scale: routing-table rebuild of one changed service among 1,000 (Go benchmark)"
go test -run '^$' -bench '^BenchmarkRebuildOneService$' -benchmem -count 5 ./proxymod/ | tee "$tmp/rebuild.txt"

go build -o "$tmp/scale" ./bench/scale

"$tmp/scale" -cbproxy "$CBPROXY_BIN" -backend "$BACKEND_BIN" \
	-services "$SERVICES" -addresses "$ADDRESSES" -scrapes "$SCRAPES" -calls "$CALLS" \
	-port-base "$PORT_BASE" -timeout "$TIMEOUT" -results bench/results -rebuild-bench "$tmp/rebuild.txt" \
	-command "SERVICES=$SERVICES ADDRESSES=$ADDRESSES SCRAPES=$SCRAPES CALLS=$CALLS PORT_BASE=$PORT_BASE CBPROXY_BIN=$CBPROXY_BIN bench/scale.sh" &
pid=$!
rc=0
wait "$pid" || rc=$?
pid=
exit "$rc"
