#!/usr/bin/env bash
# Starts a local three-node cbproxy cluster on loopback: the demo backends and
# three nodes (configs/cluster/node{1,2,3}.Caddyfile), in the foreground.
# Ctrl-C stops everything it started; so does any of them exiting.
# See configs/cluster/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-bin}
LOGS=.demo/cluster

if [[ -z ${CBPROXY_CLUSTER_SECRET:-} ]]; then
	# A demo value: a real cluster takes a long random secret from its
	# environment (e.g. openssl rand -hex 32), the same on every node.
	export CBPROXY_CLUSTER_SECRET=cbproxy-demo-cluster-secret
fi

for bin in cbproxy cbproxy-backend; do
	[[ -x $BIN/$bin ]] || { echo "run.sh: no $BIN/$bin: run 'make build' first" >&2; exit 1; }
done
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in 9001 9002 9003 7001 7002 7003 7101 7102 7103 8081 8082 8083 2021 2022 2023; do
	if port_in_use "$port"; then
		echo "run.sh: port $port on 127.0.0.1 is in use: stop what listens there (e.g. 'make run' or another cluster) and try again" >&2
		exit 1
	fi
done
mkdir -p "$LOGS"

pids=()
names=()
stop() {
	local pid
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME COMMAND...: runs COMMAND in the background, logging to $LOGS/NAME.log.
start() {
	local name=$1
	shift
	"$@" >"$LOGS/$name.log" 2>&1 &
	pids+=($!)
	names+=("$name")
}

start backends "$BIN/cbproxy-backend" \
	-backends blue=127.0.0.1:9001,green=127.0.0.1:9002,canary=127.0.0.1:9003 \
	-version blue=v1.4.1,green=v1.5.0,canary=v1.5.0-rc1
for i in 1 2 3; do
	start "node$i" "$BIN/cbproxy" run --config "configs/cluster/node$i.Caddyfile" --adapter caddyfile
done

# The nodes wait for each other, elect a leader and seed the service; a node
# is ready once it has caught up with the cluster.
echo "starting the backends and three nodes (logs in $LOGS/)..."
deadline=$((SECONDS + 30))
for i in 1 2 3; do
	until curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:710$i/health/ready" 2>/dev/null; do
		for j in "${!pids[@]}"; do
			if ! kill -0 "${pids[$j]}" 2>/dev/null; then
				echo "run.sh: ${names[$j]} exited; the end of $LOGS/${names[$j]}.log:" >&2
				tail -n 20 "$LOGS/${names[$j]}.log" >&2
				exit 1
			fi
		done
		if ((SECONDS >= deadline)); then
			echo "run.sh: node$i was not ready within 30 s; the end of $LOGS/node$i.log:" >&2
			tail -n 20 "$LOGS/node$i.log" >&2
			exit 1
		fi
		sleep 0.2
	done
done

cat <<'TXT'

  cbproxy local cluster (3 nodes)
  -------------------------------
  node     proxy                   admin API               Raft
  node1    http://127.0.0.1:8081   http://127.0.0.1:7101   127.0.0.1:7001
  node2    http://127.0.0.1:8082   http://127.0.0.1:7102   127.0.0.1:7002
  node3    http://127.0.0.1:8083   http://127.0.0.1:7103   127.0.0.1:7003
  service demo: pools blue, green, canary (backends 127.0.0.1:9001-9003); 100 % blue
  data dirs .demo/cluster/node{1,2,3} (make clean removes them); logs .demo/cluster/*.log

  Try, in another terminal (any node accepts any call; followers forward writes):
    bin/cbproxy cluster status --admin http://127.0.0.1:7102
    bin/cbproxy --admin http://127.0.0.1:7102 weights demo blue=99 canary=1
    bin/cbproxy --admin http://127.0.0.1:7103 status demo
    for p in 8081 8082 8083; do for i in $(seq 100); do curl -s -o /dev/null -D - http://127.0.0.1:$p/ | grep -i x-cbproxy-pool; done; done | sort | uniq -c
    curl -s -X PUT 'http://127.0.0.1:7103/v1/services/demo/weights?wait=all' -d '{"weights":{"blue":95,"canary":5}}'
    bin/cbproxy --admin http://127.0.0.1:7101 events demo

  Stop with Ctrl-C; a restart keeps every weight and event.

TXT
# Stay in the foreground until Ctrl-C or until one of them exits.
rc=0
wait -n "${pids[@]}" || rc=$?
for j in "${!pids[@]}"; do
	if ! kill -0 "${pids[$j]}" 2>/dev/null; then
		echo "run.sh: ${names[$j]} exited; stopping the others. The end of $LOGS/${names[$j]}.log:" >&2
		tail -n 20 "$LOGS/${names[$j]}.log" >&2
	fi
done
exit $((rc ? rc : 1))
