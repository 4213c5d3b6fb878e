#!/usr/bin/env bash
# The first run: build tollgate and run it on conf/tollgate.yaml in front of two instances of the
# bundled demo upstream, then print a tour (curl lines) of what it does: rate limits, caching,
# compression, failover, metrics. All state in memory; nothing else needed. Ctrl-C stops it all.
#
# Addresses (environment, defaults):  TOLLGATE_LISTEN 127.0.0.1:8080, TOLLGATE_ADMIN_LISTEN
# 127.0.0.1:9901, APP_ADDR 127.0.0.1:3000, APP2_ADDR 127.0.0.1:3002.
# TOLLGATE_BIN=/path/to/tollgate skips the set-up and the build (tests/demo_tour.rs runs the tour
# this prints, line by line, that way).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${TOLLGATE_BIN:-}" ]; then
  BIN="$TOLLGATE_BIN"
else
  scripts/setup.sh
  cargo build --release --bin tollgate
  BIN="${CARGO_TARGET_DIR:-target}/release/tollgate"
fi
export TOLLGATE_LISTEN="${TOLLGATE_LISTEN:-127.0.0.1:8080}"
export TOLLGATE_ADMIN_LISTEN="${TOLLGATE_ADMIN_LISTEN:-127.0.0.1:9901}"
export APP_ADDR="${APP_ADDR:-127.0.0.1:3000}"
export APP2_ADDR="${APP2_ADDR:-127.0.0.1:3002}"
P="$TOLLGATE_LISTEN"
A="$TOLLGATE_ADMIN_LISTEN"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$BIN" demo-upstream --listen "$APP_ADDR" --name app-1 &
pids+=($!)
"$BIN" demo-upstream --listen "$APP2_ADDR" --name app-2 &
app2_pid=$!
pids+=($!)
"$BIN" run -c conf/tollgate.yaml &
proxy_pid=$!
pids+=($!)

# Print the tour only once the proxy answers, so that every line works as soon as it is shown.
ready=
for _ in $(seq 100); do
  if ! kill -0 "$proxy_pid" 2>/dev/null; then
    echo "demo: tollgate exited at start (see its error above)" >&2
    exit 1
  fi
  if "$BIN" probe --admin "$A" --timeout 500ms >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "demo: tollgate did not become ready on $A within 10 s" >&2
  exit 1
fi

cat <<TOUR

tollgate is running on conf/tollgate.yaml: proxy http://$P, admin http://$A,
in front of two demo upstreams: app-1 on $APP_ADDR and app-2 on $APP2_ADDR (pid $app2_pid).
Try, in another shell:

1. A proxied request, with its X-Request-Id; run it twice to see app-1 and app-2 take turns:
  curl -si http://$P/api/hello

2. A rate limit. Tenant "demo" (API key demo-key) may burst 3 requests, then 1 every 2 s:
   the 4th answer is 429, with Retry-After and the RateLimit headers.
  for i in 1 2 3 4; do curl -s -o /dev/null -D - -H 'X-API-Key: demo-key' http://$P/api/hello | grep -iE '^(HTTP|retry-after|ratelimit)'; done

3. A cache. /api/time is fresh for 3 s (MISS, then HIT with the same generated_at), then for
   30 s more it is served stale at once while one request refreshes it behind (UPDATING):
  curl -si http://$P/api/time | grep -iE '^x-cache-status|generated_at'
  sleep 4; curl -si http://$P/api/time | grep -iE '^x-cache-status|generated_at'

4. Compression: gzip when the client accepts it; the x-no-compression header opts out:
  curl -s -o /dev/null -D - -H 'Accept-Encoding: gzip' 'http://$P/api/items?n=100' | grep -iE '^content-(encoding|length)'
  curl -s -o /dev/null -D - -H 'Accept-Encoding: gzip' -H 'x-no-compression: 1' 'http://$P/api/items?n=100' | grep -iE '^content-(encoding|length)'

5. Failover: stop app-2; every request still gets 200 (the health check takes app-2 out
   within a second, and a request that meets it gone before that is retried on app-1):
  kill $app2_pid
  for i in \$(seq 10); do curl -s -o /dev/null -w '%{http_code} ' http://$P/api/hello; done; echo

6. What tollgate counted (Prometheus, on the admin listener), and the config check:
  curl -s http://$A/metrics | grep -E '^tollgate_(ratelimit_decisions_total|cache_requests_total|compression_output_bytes_total|upstream_retries_total|upstream_endpoint_healthy)'
  $BIN check conf/tollgate.yaml

Ctrl-C stops it all.
TOUR

wait "$proxy_pid"
