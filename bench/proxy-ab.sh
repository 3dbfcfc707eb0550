#!/usr/bin/env bash
# proxy-ab.sh: the data-plane speed check. One cbproxy process serves two sites
# from bench/ab.Caddyfile: cbproxy splitting 99/1 (A) and plain Caddy
# reverse_proxy with weighted_round_robin 99 1 (B), over the same two backends.
# wrk loads them in PAIRS interleaved pairs, alternating which goes first, and
# the script prints each pair and the medians of the per-pair ratios A/B, and
# writes bench/results/proxy-ab-<date>.md. Loopback only; every process it
# starts is stopped on exit.
#
# Environment (defaults in brackets):
#   PAIRS [8]  DURATION [5s]  CONNS [64]  WARMUP [3s]
#   CBPROXY_BIN [bin/cbproxy]  BACKEND_BIN [bin/cbproxy-backend, built if missing]
#   AB_CADDYFILE [bench/ab.Caddyfile]
#   AB_CBPROXY_PORT [8081] AB_CADDY_PORT [8082] AB_BLUE_PORT [9101]
#   AB_CANARY_PORT [9102] AB_ADMIN_PORT [7191] AB_CLUSTER_PORT [7192]
set -euo pipefail

cd "$(dirname "$0")/.."

PAIRS=${PAIRS:-8}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
WARMUP=${WARMUP:-3s}
CBPROXY_BIN=${CBPROXY_BIN:-bin/cbproxy}
BACKEND_BIN=${BACKEND_BIN:-bin/cbproxy-backend}
AB_CADDYFILE=${AB_CADDYFILE:-bench/ab.Caddyfile}
export AB_CBPROXY_PORT=${AB_CBPROXY_PORT:-8081}
export AB_CADDY_PORT=${AB_CADDY_PORT:-8082}
export AB_BLUE_PORT=${AB_BLUE_PORT:-9101}
export AB_CANARY_PORT=${AB_CANARY_PORT:-9102}
export AB_ADMIN_PORT=${AB_ADMIN_PORT:-7191}
export AB_CLUSTER_PORT=${AB_CLUSTER_PORT:-7192}

# Requests of the split check, and how far the 1 % pool may be from 1 % of them.
SPLIT_REQUESTS=1000
SPLIT_TOLERANCE=5

die() {
	echo "proxy-ab: $*" >&2
	exit 1
}

# seconds DURATION: wrk's duration (N, Ns or Nm) in seconds.
seconds() {
	case $1 in
	*m) echo $((${1%m} * 60)) ;;
	*s) echo "${1%s}" ;;
	*) echo "$1" ;;
	esac
}

[[ $PAIRS =~ ^[1-9][0-9]*$ ]] || die "PAIRS=$PAIRS: want a whole number of pairs, e.g. 8"
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "CONNS=$CONNS: want a whole number of connections, e.g. 64"
for d in DURATION WARMUP; do
	[[ ${!d} =~ ^[1-9][0-9]*[sm]?$ ]] || die "$d=${!d}: want a duration like 5s or 1m"
done
for p in AB_CBPROXY_PORT AB_CADDY_PORT AB_BLUE_PORT AB_CANARY_PORT AB_ADMIN_PORT AB_CLUSTER_PORT; do
	[[ ${!p} =~ ^[1-9][0-9]*$ && ${!p} -lt 65536 ]] || die "$p=${!p}: want a TCP port number"
done
[[ -x $CBPROXY_BIN ]] || die "no executable cbproxy at $CBPROXY_BIN: run 'make build' or set CBPROXY_BIN"
[[ -r $AB_CADDYFILE ]] || die "cannot read the Caddyfile $AB_CADDYFILE (AB_CADDYFILE)"

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in AB_CBPROXY_PORT AB_CADDY_PORT AB_BLUE_PORT AB_CANARY_PORT AB_ADMIN_PORT AB_CLUSTER_PORT; do
	port_in_use "${!p}" && die "port ${!p} on 127.0.0.1 is in use: stop what listens there or set $p to a free port"
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/proxy-ab.XXXXXX")
export AB_TMP=$tmp
pids=()   # the backends and the proxy
wrk_pid=  # the wrk run in progress

# stop ends every process this script started: politely, then after 5 s for sure.
stop() {
	local pid
	[[ -z $wrk_pid ]] || pids+=("$wrk_pid")
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	for _ in $(seq 50); do
		local running=0
		for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && running=1; done
		((running)) || break
		sleep 0.1
	done
	for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	pids=()
}
cleanup() {
	local rc=$?
	stop
	rm -rf "$tmp"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# adapt starts and binds nothing: a bad Caddyfile or a binary without the cbproxy
# module fails here, with Caddy's own words.
adapt_err=$("$CBPROXY_BIN" adapt --adapter caddyfile --config "$AB_CADDYFILE" 2>&1 >/dev/null) ||
	die "$CBPROXY_BIN cannot load $AB_CADDYFILE: $(tail -n 1 <<<"$adapt_err" | sed 's/.*"msg":"\([^"]*\)".*/\1/')"

if ! command -v wrk >/dev/null; then
	if ! command -v apt-get >/dev/null || [[ $(id -u) != 0 ]]; then
		die "wrk is not installed and apt-get cannot be used here: install wrk (e.g. apt-get install wrk) and run again"
	fi
	echo "proxy-ab: installing wrk with apt-get" >&2
	{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y wrk; } >"$tmp/apt.log" 2>&1 ||
		die "apt-get install wrk failed: $(tail -n 3 "$tmp/apt.log" | tr '\n' ' ')-- install wrk by hand and run again"
fi

if [[ ! -x $BACKEND_BIN ]]; then
	echo "proxy-ab: $BACKEND_BIN not found, building the backend" >&2
	BACKEND_BIN=$tmp/cbproxy-backend
	go build -o "$BACKEND_BIN" ./cmd/cbproxy-backend || die "could not build cmd/cbproxy-backend"
fi

# As the peers were measured before cbproxy was written: backends on CPU 0,
# wrk on CPU 1, the proxy free.
pin_backend=() pin_wrk=()
if command -v taskset >/dev/null && (($(nproc) >= 2)); then
	pin_backend=(taskset -c 0) pin_wrk=(taskset -c 1)
	pinning="backends on CPU 0, wrk on CPU 1, proxy unpinned"
else
	pinning="none (taskset missing or fewer than 2 CPUs)"
fi

# alive NAME PID: fail with the end of NAME's log if PID has exited.
alive() {
	kill -0 "$2" 2>/dev/null && return
	echo "proxy-ab: $1 exited; the end of its log:" >&2
	tail -n 20 "$tmp/$1.log" >&2
	exit 1
}

# wait_ok NAME PID URL SECONDS: wait until URL answers 2xx.
wait_ok() {
	local deadline=$((SECONDS + $4))
	while ((SECONDS < deadline)); do
		alive "$1" "$2"
		curl -fsS -o /dev/null --max-time 1 "$3" 2>/dev/null && return
		sleep 0.2
	done
	echo "proxy-ab: $1 did not answer $3 with 2xx within $4 s; the end of its log:" >&2
	tail -n 20 "$tmp/$1.log" >&2
	exit 1
}

"${pin_backend[@]}" "$BACKEND_BIN" \
	-backends "blue=127.0.0.1:$AB_BLUE_PORT,canary=127.0.0.1:$AB_CANARY_PORT" \
	-version "blue=stable,canary=candidate" >"$tmp/backend.log" 2>&1 &
backend_pid=$!
pids+=("$backend_pid")
wait_ok backend "$backend_pid" "http://127.0.0.1:$AB_BLUE_PORT/health/ready" 10
wait_ok backend "$backend_pid" "http://127.0.0.1:$AB_CANARY_PORT/health/ready" 10

# Caddy and cbproxy keep nothing of this run in $HOME.
XDG_CONFIG_HOME=$tmp/config XDG_DATA_HOME=$tmp/data \
	"$CBPROXY_BIN" run --adapter caddyfile --config "$AB_CADDYFILE" >"$tmp/proxy.log" 2>&1 &
proxy_pid=$!
pids+=("$proxy_pid")
declare -A port=([cbproxy]=$AB_CBPROXY_PORT [caddy]=$AB_CADDY_PORT)
for site in cbproxy caddy; do
	# cbproxy's site answers 503 until its node has seeded the service.
	wait_ok proxy "$proxy_pid" "http://127.0.0.1:${port[$site]}/ready" 30
done

# check_split SITE: send SPLIT_REQUESTS requests and count X-Backend answers;
# prints "blue/canary".
check_split() {
	local out blue canary total
	out=$(curl -sS --max-time 60 -w '\nSPLIT %{http_code} %header{x-backend}\n' \
		"http://127.0.0.1:${port[$1]}/split/[1-$SPLIT_REQUESTS]" | grep '^SPLIT ') ||
		die "the split check of $1 failed: curl could not fetch all $SPLIT_REQUESTS answers"
	total=$(grep -c '^SPLIT 200 ' <<<"$out" || true)
	blue=$(grep -c '^SPLIT 200 blue$' <<<"$out" || true)
	canary=$(grep -c '^SPLIT 200 canary$' <<<"$out" || true)
	((total == SPLIT_REQUESTS && blue + canary == total)) ||
		die "the split check of $1: only $total of $SPLIT_REQUESTS answers were 200 from blue or canary ($blue blue, $canary canary); first others: $(grep -v -E '^SPLIT 200 (blue|canary)$' <<<"$out" | head -n 3 | tr '\n' ' ')"
	local want=$((SPLIT_REQUESTS / 100))
	((canary >= want - SPLIT_TOLERANCE && canary <= want + SPLIT_TOLERANCE)) ||
		die "the split check of $1: canary got $canary of $SPLIT_REQUESTS requests, want $want ± $SPLIT_TOLERANCE (99/1)"
	echo "$blue/$canary"
}
split_cbproxy=$(check_split cbproxy)
split_caddy=$(check_split caddy)
echo "split check ($SPLIT_REQUESTS requests, blue/canary): cbproxy $split_cbproxy, caddy $split_caddy"

clk_tck=$(getconf CLK_TCK)
# cpu_ticks PID: user+system CPU time of PID so far, in clock ticks.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }

# measure SITE DURATION LABEL: one wrk run; sets rps, p99 (ms), errs and
# cpu (proxy CPU µs per request).
measure() {
	local out=$tmp/wrk-$3.txt limit ticks0 ticks1
	limit=$(($(seconds "$2") + 30))
	ticks0=$(cpu_ticks "$proxy_pid")
	timeout "$limit" "${pin_wrk[@]}" wrk -t1 -c"$CONNS" -d"$2" --latency \
		"http://127.0.0.1:${port[$1]}/api/items" >"$out" 2>&1 &
	wrk_pid=$!
	local rc=0
	wait "$wrk_pid" || rc=$?
	wrk_pid=
	((rc == 0)) || die "wrk against $1 failed (exit $rc): $(tr '\n' ' ' <"$out")"
	ticks1=$(cpu_ticks "$proxy_pid")
	alive backend "$backend_pid"
	alive proxy "$proxy_pid"
	read -r rps p99 errs cpu < <(awk -v ticks=$((ticks1 - ticks0)) -v hz="$clk_tck" '
		function ms(v) {
			if (v ~ /us$/) return v / 1000
			if (v ~ /ms$/) return v + 0
			if (v ~ /m$/) return v * 60000
			return v * 1000
		}
		/^Requests\/sec:/ { rps = $2 }
		$1 == "99%" { p99 = ms($2) }
		/ requests in / { n = $1 }
		/^  Non-2xx or 3xx responses:/ { errs += $NF }
		/^  Socket errors:/ { errs += $4 + $6 + $8 + $10 }
		END {
			if (rps == "" || p99 == "" || n == 0) exit 1
			printf "%.0f %.3f %d %.1f\n", rps, p99, errs, ticks / hz * 1e6 / n
		}' "$out") || die "could not read wrk's output: $(tr '\n' ' ' <"$out")"
}

# Other work on the machine distorts both sites, though not always alike. The
# load average would lag (and count an earlier run of this script), so take
# how busy the CPUs are over one second while our processes are idle.
cpu_times() { awk '/^cpu / { print $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $5 + $6 }' /proc/stat; }
read -r total0 idle0 < <(cpu_times)
sleep 1
read -r total1 idle1 < <(cpu_times)
busy_before=$(awk -v t=$((total1 - total0)) -v i=$((idle1 - idle0)) 'BEGIN { printf "%.0f", t ? 100 * (t - i) / t : 0 }')
((busy_before <= 25)) ||
	echo "proxy-ab: warning: the CPUs were ${busy_before} % busy with other work before measuring: it will distort the figures" >&2

for site in cbproxy caddy; do measure "$site" "$WARMUP" "warmup-$site"; done

median() { sort -g | awk '{ v[NR] = $1 } END { printf "%.3f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b > 0) ? a / b : 0 }'; }

header="| pair | first | cbproxy req/s | caddy req/s | ratio | cbproxy p99 ms | caddy p99 ms | p99 ratio | cbproxy CPU µs/req | caddy CPU µs/req | CPU ratio | failed requests |"
rule="|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
rows=()
declare -A rps_of p99_of cpu_of
rps_ratios=() p99_ratios=() cpu_ratios=()
failed=0
printf '%-4s %-7s %12s %12s %6s %10s %10s %6s %8s %8s %6s %6s\n' pair first "cbproxy r/s" "caddy r/s" ratio "cb p99" "caddy p99" ratio "cb µs" "caddy µs" ratio failed
for ((i = 1; i <= PAIRS; i++)); do
	if ((i % 2)); then order=(cbproxy caddy); else order=(caddy cbproxy); fi
	pair_errs=0
	for site in "${order[@]}"; do
		measure "$site" "$DURATION" "pair$i-$site"
		rps_of[$site]=$rps p99_of[$site]=$p99 cpu_of[$site]=$cpu
		pair_errs=$((pair_errs + errs))
	done
	failed=$((failed + pair_errs))
	r=$(ratio "${rps_of[cbproxy]}" "${rps_of[caddy]}")
	p=$(ratio "${p99_of[cbproxy]}" "${p99_of[caddy]}")
	c=$(ratio "${cpu_of[cbproxy]}" "${cpu_of[caddy]}")
	rps_ratios+=("$r") p99_ratios+=("$p") cpu_ratios+=("$c")
	printf '%-4s %-7s %12s %12s %6s %10s %10s %6s %8s %8s %6s %6s\n' "$i" "${order[0]}" \
		"${rps_of[cbproxy]}" "${rps_of[caddy]}" "$r" "${p99_of[cbproxy]}" "${p99_of[caddy]}" "$p" \
		"${cpu_of[cbproxy]}" "${cpu_of[caddy]}" "$c" "$pair_errs"
	rows+=("| $i | ${order[0]} | ${rps_of[cbproxy]} | ${rps_of[caddy]} | $r | ${p99_of[cbproxy]} | ${p99_of[caddy]} | $p | ${cpu_of[cbproxy]} | ${cpu_of[caddy]} | $c | $pair_errs |")
done

med_rps=$(printf '%s\n' "${rps_ratios[@]}" | median)
med_p99=$(printf '%s\n' "${p99_ratios[@]}" | median)
med_cpu=$(printf '%s\n' "${cpu_ratios[@]}" | median)
echo
echo "median throughput ratio (cbproxy/caddy): $med_rps"
echo "median p99 ratio (cbproxy/caddy):        $med_p99"
echo "median CPU per request ratio:            $med_cpu"

stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
mkdir -p bench/results
result=bench/results/proxy-ab-$stamp.md
{
	echo "# Data-plane A/B: cbproxy vs plain Caddy reverse_proxy, 99/1 split"
	echo
	[[ $AB_CADDYFILE == bench/ab.Caddyfile ]] ||
		echo "**Run with $AB_CADDYFILE, not bench/ab.Caddyfile: the cbproxy column is whatever :$AB_CBPROXY_PORT serves there.**"$'\n'
	echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "- command: \`PAIRS=$PAIRS DURATION=$DURATION CONNS=$CONNS WARMUP=$WARMUP CBPROXY_BIN=$CBPROXY_BIN AB_CADDYFILE=$AB_CADDYFILE bench/proxy-ab.sh\`"
	echo "- machine: $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(uname -sr), $(go version 2>/dev/null || echo 'go not installed')"
	echo "- binary: \`$("$CBPROXY_BIN" version 2>/dev/null | head -n 1)\`, git HEAD $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
	echo "- load: \`wrk -t1 -c$CONNS -d$DURATION --latency\` ($(wrk --version 2>&1 | head -n 1 | awk '{ print $2 }')), $PAIRS interleaved pairs, the first site alternating, after a $WARMUP warm-up of each"
	echo "- other work: the CPUs were $busy_before % busy in the second before measuring"
	echo "- pinning: $pinning"
	echo "- sites (one process, same two backends): cbproxy = \`:$AB_CBPROXY_PORT\`, caddy = \`:$AB_CADDY_PORT\` in $AB_CADDYFILE"
	echo "- split check, $SPLIT_REQUESTS requests, blue/canary: cbproxy $split_cbproxy, caddy $split_caddy"
	echo "- CPU µs/req: the proxy process's user+system CPU time during a run over the requests wrk completed"
	echo
	echo "$header"
	echo "$rule"
	printf '%s\n' "${rows[@]}"
	echo
	echo "**Median ratios (cbproxy/caddy): throughput $med_rps, p99 $med_p99, CPU per request $med_cpu.**"
	echo "Machines are noisy: compare the medians of interleaved pairs, not single runs or absolute figures across runs."
	if ((failed)); then
		echo
		echo "**$failed requests failed (non-2xx or socket errors): these figures are not valid.**"
	fi
} >"$result.tmp"
mv "$result.tmp" "$result"
echo "wrote $result"
((failed == 0)) || die "$failed requests failed during the measured runs (see $result): the figures are not valid"
