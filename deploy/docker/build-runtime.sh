#!/usr/bin/env bash
# Build the tollgate image from the binary in target/release (deploy/docker/Dockerfile.runtime),
# from a small context directory instead of the repository root.
#
# Usage: deploy/docker/build-runtime.sh [TAG] [BASE_IMAGE]
#   TAG          default tollgate:local
#   BASE_IMAGE   the bookworm image the libraries come from; default debian:bookworm-slim
# Environment: TOLLGATE_BIN (default target/release/tollgate), DOCKER_BUILD_NETWORK (e.g. host:
# the build's apt-get needs a network; an engine started with --bridge=none has only the host's).
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${1:-tollgate:local}
base=${2:-debian:bookworm-slim}
bin=${TOLLGATE_BIN:-target/release/tollgate}
[ -x "$bin" ] || { echo "build-runtime: no binary at $bin: cargo build --release --bin tollgate" >&2; exit 1; }

ctx=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/tollgate"
# The release profile keeps debug info (Cargo.toml: debug = 1): ~96 MB. The image needs none.
if command -v strip >/dev/null 2>&1; then strip "$ctx/tollgate"; else echo "build-runtime: no strip (binutils): the image carries the debug info" >&2; fi
cp conf/tollgate.yaml "$ctx/tollgate.yaml"
cp deploy/docker/rootfs.sh deploy/docker/Dockerfile.runtime "$ctx/"

net=()
[ -n "${DOCKER_BUILD_NETWORK:-}" ] && net=(--network "$DOCKER_BUILD_NETWORK")
docker build "${net[@]}" --build-arg "BASE_IMAGE=$base" -f "$ctx/Dockerfile.runtime" -t "$tag" "$ctx"
