#!/usr/bin/env bash
# Install what building and testing tollgate needs on a fresh Debian/Ubuntu machine.
# Root: installs missing packages with apt-get. Not root: lists what is missing and fails.
# Usage: scripts/setup.sh [extra-command ...]   (e.g. `promtool redis-server redis-cli faketime`
# for the tests, `nginx wrk` for benches; a missing command is installed from the Debian package
# that ships it)
set -euo pipefail

need_cmds=(cargo cmake pkg-config curl "$@")
missing_pkgs=()

command -v cmake >/dev/null 2>&1 || missing_pkgs+=(cmake)
command -v pkg-config >/dev/null 2>&1 || missing_pkgs+=(pkg-config)
command -v curl >/dev/null 2>&1 || missing_pkgs+=(curl)
command -v make >/dev/null 2>&1 || missing_pkgs+=(make)
command -v cc >/dev/null 2>&1 || missing_pkgs+=(gcc)
# OpenSSL headers: Pingora's TLS links the system OpenSSL (see .cargo/config.toml).
if ! pkg-config --exists openssl 2>/dev/null; then missing_pkgs+=(libssl-dev); fi
for p in "$@"; do
  case "$p" in
    redis-server) command -v redis-server >/dev/null 2>&1 || missing_pkgs+=(redis-server) ;;
    # redis-cli (the Redis test harness drives servers with it) ships in `redis-tools`.
    redis-cli) command -v redis-cli >/dev/null 2>&1 || missing_pkgs+=(redis-tools) ;;
    # promtool (the tests check deploy/monitoring/ and /metrics with it) ships in `prometheus`.
    promtool) command -v promtool >/dev/null 2>&1 || missing_pkgs+=(prometheus) ;;
    nginx) command -v nginx >/dev/null 2>&1 || missing_pkgs+=(nginx) ;;
    *) command -v "$p" >/dev/null 2>&1 || missing_pkgs+=("$p") ;;
  esac
done

if [ "${#missing_pkgs[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${missing_pkgs[*]} with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${missing_pkgs[@]}" >/dev/null 2>&1 || {
      apt-get update -qq
      apt-get install -y -qq "${missing_pkgs[@]}"
    }
  else
    echo "setup: MISSING system packages: ${missing_pkgs[*]}" >&2
    echo "setup: install them (e.g. sudo apt-get install -y ${missing_pkgs[*]}) and run again" >&2
    exit 1
  fi
fi

for c in "${need_cmds[@]}"; do
  if ! command -v "$c" >/dev/null 2>&1; then
    if [ "$c" = cargo ]; then
      echo "setup: MISSING the Rust toolchain (cargo): install it with rustup (https://rustup.rs)" >&2
    else
      echo "setup: MISSING $c after installation" >&2
    fi
    exit 1
  fi
done
