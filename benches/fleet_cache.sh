#!/usr/bin/env bash
# benches/fleet_cache.sh - the fleet cache (issue 16): what the shared tier in Redis and the purge
# bus cost per request, what they save the origin, what an entry costs Redis, and how fast a
# purge reaches another replica. The work is done by benches/fleet_cache.py (this script finds
# or builds the binary and runs it); it prints a Markdown report on stdout, progress on stderr.
#
#   benches/fleet_cache.sh                                   # all four parts, ROUNDS=3 DURATION=5s
#   TOLLGATE_BIN=target/release/tollgate benches/fleet_cache.sh
#   PARTS="1" ROUNDS=5 DURATION=10s benches/fleet_cache.sh   # only part 1, longer
#   PARTS="2 4" ORIGIN_DELAY_MS=100 benches/fleet_cache.sh
#
# Prerequisites: redis-server (Redis 7), nginx (with stub_status, as in Debian/Ubuntu), wrk,
# python3 (3.8+, standard library only). TOLLGATE_BIN defaults to target/release/tollgate;
# `cargo build --release` runs only when it is missing. Don't run it during a cargo build or
# another benchmark: everything shares the machine's cores (nproc 2: relative costs, not
# absolute capacity).
#
# Everything binds 127.0.0.1 on ephemeral ports (picked by binding port 0 from Python). One
# redis-server for the whole run: `redis-server --bind 127.0.0.1 --port P --save ''
# --appendonly no --dir TMP --daemonize no` (no persistence). One nginx upstream (1 worker,
# keep-alive, access log off): every path answers a JSON body with `Cache-Control:
# max-age=300`, /b10k/... a 10240-byte file, /b1k/... a 1024-byte file, anything else a
# BODY-byte file (default 1024); `location = /__upstream_status { stub_status; }` is the
# origin's request counter (read before and after each run; the read itself counts one).
# Each tollgate replica is `$TOLLGATE_BIN run -c TMP/<name>/tollgate.yaml`, checked first with
# `$TOLLGATE_BIN check -c`, and used once `/readyz` answers 200 and its /metrics show
# `tollgate_redis_up 1` and `tollgate_cache_purge_bus_connected 1`. Every replica config is:
#
#   listen: 127.0.0.1:<port>
#   admin: { listen: 127.0.0.1:<admin>, token: "${TOLLGATE_ADMIN_TOKEN}" }
#   server: { threads: $THREADS, work_stealing: false, grace_period: 0s, shutdown_timeout: 1s }
#   observability: { access_log: { enabled: false } }
#   redis: { url: "redis://127.0.0.1:<redis port>", required: true }  # default command_timeout 20ms
#   cache:
#     max_size: 1GiB
#     <VARIANT>                  # none: nothing (shared: none); shared: `shared: redis`;
#                                # lock: `shared: redis` + `shared_fill_lock: true`
#   upstreams: { app: { endpoints: ["127.0.0.1:<upstream port>"] } }
#   routes:
#     - { name: pass, match: { path_prefix: /pass/ }, upstream: app }            # no cache
#     - { name: cached, match: { path_prefix: / }, upstream: app, cache: { ttl: 60s, scope: shared } }
#
# 1. CPU per request and latency (PARTS 1). Replicas A and B, VARIANT shared. Before any load,
#    probes check the cases are what they claim: a fill through A answers MISS, the same path's
#    first GET on B answers `Cache-Status: tollgate; hit; ...; detail=redis`, its second a local
#    hit without detail=redis. Then ROUNDS interleaved rounds, each:
#      reset   `POST /cache/purge {"all": true}` on A (admin token): A's store is dropped, B's
#              through the purge bus, the entries in Redis are unlinked; waits until both
#              stores hold 0 entries (tollgate_cache_entries) and SCAN finds no entry key, so
#              every round starts from the same state.
#      fill    (not measured) SHARED_KEYS distinct keys /c/r<R>/k<i> through A, each once, over
#              FILL_CONNS keep-alive connections (a Python asyncio client); waits until A's
#              tollgate_cache_shared_writes_total has counted them all (they are in Redis).
#      warm-up (not measured) wrk -t1 -c$CONNS -d1s on B over 1000 keys of its own.
#      Then four measured runs on B, each
#        wrk -t$WRK_THREADS -c$CONNS -d$DURATION --latency -s TMP/keys.lua http://127.0.0.1:<B>/ -- PREFIX N MODE $WRK_THREADS
#      where keys.lua sends one path per request, PREFIX.."k"..i for i = 0, 1, 2, ... (MODE once:
#      never twice; MODE wrap: i modulo N):
#      shared hit  PREFIX /c/r<R>/ over the keys A filled, once each: every request is B's first
#                  for its key, so a local miss and a Redis GET that hits (copied into B's store).
#                  The run must serve fewer than 0.9 x SHARED_KEYS requests (else the round is
#                  run again, up to 3 times, with 1.5 x as many keys; a round that served more
#                  than 0.8 x makes later rounds fill 1.5 x what it served). B must count as
#                  many shared-tier hits (tollgate_cache_shared_lookups_total{result="hit"}) as
#                  wrk completed and the origin none (a few origin requests, from Redis calls
#                  over redis.command_timeout, are a WARN; over 1% a FAIL).
#      local hit   the same keys again, MODE wrap over the first N = (requests the shared-hit run
#                  completed) - CONNS keys (all now in B's local store; the last CONNS may have
#                  been cut off when wrk stopped): no Redis lookup, no origin request (checked).
#      miss        PREFIX /c/r<R>/m, keys nobody asked for: local miss + Redis GET miss + origin
#                  fetch + local store + background Redis SET (checked: origin requests and
#                  shared-lookup misses >= requests).
#      pass-through PREFIX /pass/r<R>/ on the route without a cache (checked: no Redis lookup).
#    CPU per request: utime + stime of B (fields 14 + 15 of /proc/<pid>/stat, all threads) read
#    right before wrk and after it (after B's shared-tier writes stopped moving, so the miss
#    run's background SETs are counted), divided by the requests wrk completed; the same for
#    redis-server. Redis commands and bytes (total_net_input_bytes + total_net_output_bytes of
#    INFO) per request from the same window. In the same window, the CPU the rest of the
#    machine used (busy ticks of /proc/stat minus those of redis-server, nginx, A, B, wrk and
#    the script), in % of one core: not 0 means something else shared the cores. Table: medians
#    over rounds of rps, p50, p99, CPU us/req; ratios shared hit / local hit and miss / local hit.
#
# 2. Origin requests (PARTS 2). An origin in Python (`fleet_cache.py origin`, threaded,
#    HTTP/1.1 keep-alive) answers 1024 bytes with Cache-Control: max-age=300 after
#    ORIGIN_DELAY_MS (default 50) and counts requests per path. For each VARIANT none, shared,
#    lock: FLUSHALL, start 3 replicas A B C, then KEYS2 (200) keys /c/<variant>/<mode>/k<i>,
#    each requested once from each replica (one keep-alive client per replica, 3 x KEYS2
#    requests):
#      burst   the three requests for a key are released together (threading.Barrier), then the
#              next key: the thundering herd.
#      spread  the three clients run at once, each over all keys in its own random order.
#    Reported: origin requests (expected ~3 x KEYS2 without the shared tier, ~KEYS2 with
#    shared tier + fill lock), keys fetched more than once, X-Cache-Status of the answers,
#    client latency, and the replicas' shared lookup / fill lock / write counters.
#
# 3. Redis memory per entry (PARTS 3). FLUSHALL, one replica, VARIANT shared. For 1024- and
#    10240-byte bodies: ENTRIES3 (2000) keys /b1k/k<i> (/b10k/k<i>) filled through it, waits
#    for its shared writes; INFO memory used_memory before/after / entries; SCAN MATCH
#    tollgate:cache:* (entry keys `tollgate:cache:<8 hex>:{<hex>}:<hex>`: the lock keys and the
#    purge stream `tollgate:cache:{purges}` are left out) and, on SAMPLE3 (200) of the new ones,
#    MEMORY USAGE key SAMPLES 0, TYPE, STRLEN and PTTL; total_net_input_bytes / fills (what a
#    fill sends to Redis).
#
# 4. Purge propagation (PARTS 4). Two replicas A and B, for VARIANT none (the purge bus alone:
#    redis: is set) and then VARIANT shared. PURGES4 (200) times: make /c/pb-<v>/k<i> a HIT on
#    B (GETs on B), then `POST /cache/purge {"url": "/c/pb-<v>/k<i>"}` on A's admin listener
#    (Authorization: Bearer <token>; the answer must be 200, its `fleet` is reported), then GET
#    the path on B back to back on one keep-alive connection until X-Cache-Status is not HIT.
#    The time from A's answer (and from the purge's send) to that GET's send (B applied the
#    purge before looking it up; 0 when the first GET after A's answer is already a miss):
#    p50/p99/max ms.
#    Also A's tollgate_cache_purge_bus_published_total and B's ..._applied_total deltas and
#    B's tollgate_cache_purge_bus_lag_seconds mean.
#
# Knobs (environment): PARTS ("1 2 3 4"), ROUNDS (3), DURATION (5s), CONNS (32), WRK_THREADS
# (1), THREADS (1: server.threads of every replica), SHARED_KEYS (150000), FILL_CONNS (32),
# BODY (1024), KEYS2 (200), ORIGIN_DELAY_MS (50), ENTRIES3 (2000), SAMPLE3 (200), PURGES4
# (200), READY_TIMEOUT (20 s), KEEP_TMP (0; 1 keeps the temp dir with configs and logs).
#
# Exit 1 when a run failed a check (FAIL in the report) or the setup failed. Every process
# started (redis-server, nginx, the origin, the replicas, wrk) is stopped on exit, Ctrl-C or
# SIGTERM: SIGTERM, then SIGKILL after 2 s (replicas), 3 s (redis, origin) or 5 s (nginx).
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)
CMDLINE="benches/fleet_cache.sh"
for v in PARTS ROUNDS DURATION CONNS WRK_THREADS THREADS SHARED_KEYS FILL_CONNS BODY KEYS2 ORIGIN_DELAY_MS \
    ENTRIES3 SAMPLE3 PURGES4 READY_TIMEOUT KEEP_TMP TOLLGATE_BIN; do
    if [[ -n ${!v+x} ]]; then CMDLINE="$v=\"${!v}\" $CMDLINE"; fi
done
cd "$REPO_ROOT"

: "${TOLLGATE_BIN:=target/release/tollgate}"
if [[ ! -x $TOLLGATE_BIN ]]; then
    if [[ $TOLLGATE_BIN == target/release/tollgate ]]; then
        echo "[fleet_cache] $TOLLGATE_BIN missing: cargo build --release" >&2
        cargo build --release >&2
    else
        echo "[fleet_cache] ERROR: TOLLGATE_BIN=$TOLLGATE_BIN is not an executable" >&2
        exit 1
    fi
fi
TOLLGATE_BIN=$(cd -- "$(dirname -- "$TOLLGATE_BIN")" && pwd)/$(basename -- "$TOLLGATE_BIN")
export TOLLGATE_BIN
for tool in redis-server wrk python3; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "[fleet_cache] ERROR: $tool not found on PATH" >&2
        exit 1
    }
done
export FLEET_CACHE_CMDLINE=$CMDLINE
# exec: python3 receives Ctrl-C / SIGTERM itself and stops everything it started.
exec python3 "$SCRIPT_DIR/fleet_cache.py"
