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
# A backend that cannot listen (port taken) ends the process at once.
sleep 0.5
if ! kill -0 $backends 2>/dev/null; then
	echo "demo backends did not start:" >&2
	cat .demo/backends.log >&2
	exit 1
fi

cat <<'TXT'

  cbproxy demo
  ------------
  proxy      http://127.0.0.1:8080        (pools blue, green, canary; 100 % blue)
  backends   127.0.0.1:9001-9003          (blue, green, canary; health checked every 2 s)
  admin API  http://127.0.0.1:7101        (loopback only, no token needed)
  data dir   .demo/data                   (make clean removes it)

  Try, in another terminal:
    curl -si http://127.0.0.1:8080/ | grep -i x-cbproxy-pool
    bin/cbproxy status
    bin/cbproxy weights demo blue=99 canary=1
    for i in $(seq 1000); do curl -s -o /dev/null -D - http://127.0.0.1:8080/ | grep -i x-cbproxy-pool; done | sort | uniq -c
    bin/cbproxy backend drain demo canary 127.0.0.1:9003     # canary's 1 % goes to blue
    bin/cbproxy backend undrain demo canary 127.0.0.1:9003
    curl -X PUT http://127.0.0.1:9003/_backend -d '{"health":"unhealthy"}'   # canary fails its checks
    sleep 5; bin/cbproxy switch demo canary                  # refused, exit 4: canary is unhealthy
    curl -X PUT http://127.0.0.1:9003/_backend -d '{"health":"ok"}'          # healthy again after 2 checks
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
