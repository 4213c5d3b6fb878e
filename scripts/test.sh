#!/usr/bin/env bash
# Run every test of tollgate: unit tests, integration tests over loopback, doc tests.
# Installs missing system packages first (as root), fails loudly otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
# promtool: tests/monitoring.rs and tests/observability.rs validate rules and /metrics with it.
# redis-server, redis-cli (package redis-tools), faketime: the fleet rate limiter's tests run
# real Redis servers (tests/common/redis.rs); openssl makes the certificates of the TLS test.
scripts/setup.sh promtool redis-server redis-cli faketime openssl
# --no-fail-fast: one failing test binary does not hide the results of the others.
cargo test --no-fail-fast --all-targets "$@"
cargo test --doc
