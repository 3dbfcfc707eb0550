#!/usr/bin/env bash
# Starts the single-node demo: three demo backends and one cbproxy node on
# embedded defaults, in the foreground. Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
mkdir -p .demo

"$BIN/cbproxy-backend" \
	-backends blue=127.0.0.1:9001,green=127.0.0.1:9002,canary=127.0.0.1:9003 \
	-version blue=v1.4.1,green=v1.5.0,canary=v1.5.0-rc1 >.demo/backends.log 2>&1 &
backends=$!
trap 'kill $backends 2>/dev/null || true; wait $backends 2>/dev/null || true' EXIT

cat <<'TXT'

  cbproxy demo
  ------------
  proxy      http://127.0.0.1:8080        (pools blue, green, canary; 100 % blue)
  admin API  http://127.0.0.1:7101        (loopback only, no token needed)
  data dir   .demo/data                   (make clean removes it)

  Try, in another terminal:
    curl -si http://127.0.0.1:8080/ | grep -i x-cbproxy-pool
    bin/cbproxy status
    bin/cbproxy weights demo blue=99 canary=1
    for i in $(seq 1000); do curl -s -o /dev/null -D - http://127.0.0.1:8080/ | grep -i x-cbproxy-pool; done | sort | uniq -c
    bin/cbproxy switch demo green
    bin/cbproxy pool set demo canary 127.0.0.1:9003 --version v1.5.0-rc2
    bin/cbproxy events demo
    curl -s http://127.0.0.1:7101/metrics | grep ^cbproxy_
    curl -s http://127.0.0.1:7101/health/ready

  Stop with Ctrl-C; a restart keeps every weight and event (they live in .demo/data).

TXT
exec_status=0
"$BIN/cbproxy" run --config configs/demo.Caddyfile --adapter caddyfile || exec_status=$?
exit $exec_status
