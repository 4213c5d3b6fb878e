#!/usr/bin/env bash
# Fuzz tollgate's parsers for a bounded time: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
#   scripts/fuzz.sh                 # every target, 60 s each
#   scripts/fuzz.sh 300 config      # one target, 5 minutes
#   FUZZ_KEEP=1 scripts/fuzz.sh 30  # keep the grown corpora (their paths are printed)
#
# Targets are in fuzz/fuzz_targets/ (each calls a driver of src/fuzzing.rs). Each starts from its
# committed seeds, fuzz/corpus/<target>/, copied to a scratch directory: what the fuzzer adds is
# never written to the repository. A crash (panic, sanitizer report, timeout, out of memory)
# leaves its input in fuzz/artifacts/<target>/; the script prints that path and exits 1.
# How a crash becomes a regression test: docs/development.md#fuzzing.
#
# Needs the nightly toolchain (rustup toolchain install nightly) and cargo-fuzz, which is
# installed with `cargo install cargo-fuzz` if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${1:-60}"
[ $# -gt 0 ] && shift
if ! [[ "$SECS" =~ ^[0-9]+$ ]] || [ "$SECS" -lt 1 ]; then
    echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET (default 60)] [target...]" >&2
    exit 2
fi
ALL_TARGETS=(config identity cache_control retry_after purge_body)
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL_TARGETS[@]}")
for t in "${TARGETS[@]}"; do
    if [ ! -f "fuzz/fuzz_targets/$t.rs" ]; then
        echo "fuzz.sh: no target \`$t\` (targets: ${ALL_TARGETS[*]})" >&2
        exit 2
    fi
done

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz.sh: the nightly toolchain is missing: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz (cargo install cargo-fuzz)" >&2
    if ! cargo install cargo-fuzz; then
        echo "fuzz.sh: cannot install cargo-fuzz; install it by hand: cargo install cargo-fuzz" >&2
        exit 1
    fi
fi

started=$(date +%s)
# One build for all targets (release, debug assertions and overflow checks on, AddressSanitizer).
cargo +nightly fuzz build --fuzz-dir fuzz

scratch=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-fuzz.XXXXXX")
if [ "${FUZZ_KEEP:-0}" != 1 ]; then
    trap 'rm -rf "$scratch"' EXIT
fi

stat_of() { # stat_of LOG NAME: a `stat::NAME: VALUE` line of libFuzzer's final stats
    sed -n "s/^stat::$2: *//p" "$1" | tail -n 1
}

failed=()
summary=()
for t in "${TARGETS[@]}"; do
    corpus="$scratch/$t"
    mkdir -p "$corpus" "fuzz/artifacts/$t"
    cp fuzz/corpus/"$t"/* "$corpus"/
    args=(-max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    [ -f "fuzz/dicts/$t.dict" ] && args+=(-dict="$PWD/fuzz/dicts/$t.dict")
    log="$scratch/$t.log"
    echo "== $t: ${SECS}s from $(ls fuzz/corpus/"$t" | wc -l) seeds"
    t0=$(date +%s)
    rc=0
    cargo +nightly fuzz run --fuzz-dir fuzz "$t" "$corpus" -- "${args[@]}" >"$log" 2>&1 || rc=$?
    took=$(($(date +%s) - t0))
    runs=$(stat_of "$log" number_of_executed_units)
    rate=$(stat_of "$log" average_exec_per_sec)
    rss=$(stat_of "$log" peak_rss_mb)
    # The last status line: `#RUNS ... cov: EDGES ft: FEATURES corp: UNITS/SIZE ...`.
    status=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9A-Za-z]*\).*/\1/p' <<<"$status")
    if [ "$rc" -ne 0 ]; then
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        grep -E 'panicked at|ERROR: (libFuzzer|AddressSanitizer)|SUMMARY' "$log" | head -n 5 || true
        if [ -n "$artifact" ]; then
            echo "   CRASH: input in $artifact"
            failed+=("$t: $artifact")
        else
            tail -n 20 "$log"
            echo "   FAILED (exit $rc) without a crashing input: log above"
            failed+=("$t: exit $rc, no input written")
        fi
    fi
    line=$(printf '%-14s %6ss %12s runs %9s/s  cov %6s  ft %6s  corpus %-12s rss %5s MB  %s' \
        "$t" "$took" "${runs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "${rss:-?}" \
        "$([ "$rc" -eq 0 ] && echo ok || echo CRASH)")
    echo "   $line"
    summary+=("$line")
    [ "${FUZZ_KEEP:-0}" = 1 ] && echo "   grown corpus kept in $corpus"
done

echo
echo "target          time         runs     exec/s   coverage (edges, features), corpus, peak memory"
printf '%s\n' "${summary[@]}"
echo "wall time: $(($(date +%s) - started))s (build included)"
if [ ${#failed[@]} -gt 0 ]; then
    echo
    echo "CRASHES (reproduce: cargo +nightly fuzz run --fuzz-dir fuzz TARGET INPUT; then add the input"
    echo "to fuzz/regressions/TARGET/ and fix; docs/development.md#fuzzing):"
    printf '  %s\n' "${failed[@]}"
    exit 1
fi
