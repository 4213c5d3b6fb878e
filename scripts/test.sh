#!/usr/bin/env bash
# Run every test of tollgate: unit tests, integration tests over loopback, doc tests.
# Installs missing system packages first (as root), fails loudly otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
# promtool: tests/monitoring.rs and tests/observability.rs validate rules and /metrics with it.
scripts/setup.sh promtool
cargo test --all-targets "$@"
cargo test --doc
