#!/usr/bin/env bash
# Build tollgate and run it on conf/tollgate.yaml in front of the bundled demo upstream.
# All state in memory; nothing else needed. Ctrl-C stops both.
#   proxy  http://127.0.0.1:8080   admin  http://127.0.0.1:9901   demo upstream  $APP_ADDR
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --bin tollgate
export APP_ADDR="${APP_ADDR:-127.0.0.1:3000}"
BIN="${CARGO_TARGET_DIR:-target}/release/tollgate"

"$BIN" demo-upstream --listen "$APP_ADDR" &
demo_pid=$!
trap 'kill "$demo_pid" 2>/dev/null || true' EXIT INT TERM

cat >&2 <<MSG

tollgate is starting on conf/tollgate.yaml (demo upstream on $APP_ADDR). Try, in another shell:
  curl -i http://127.0.0.1:8080/api/hello                  # proxied, with X-Request-Id
  curl -s http://127.0.0.1:8080/api/echo                   # the headers the upstream received
  curl -i http://127.0.0.1:8080/api/status/503             # upstream status passes through
  curl -i 'http://127.0.0.1:8080/api/slow?ms=300'          # a slow upstream answer
  curl -s http://127.0.0.1:9901/healthz; curl -s http://127.0.0.1:9901/readyz
  curl -s http://127.0.0.1:9901/metrics | grep tollgate_
  target/release/tollgate check conf/tollgate.yaml
Ctrl-C stops it.

MSG
"$BIN" run -c conf/tollgate.yaml
