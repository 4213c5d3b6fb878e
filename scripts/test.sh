#!/usr/bin/env bash
# Run every test of tollgate: unit tests, integration tests over loopback, doc tests.
# Installs missing system packages first (as root), fails loudly otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --all-targets "$@"
cargo test --doc
