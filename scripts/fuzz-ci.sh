#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a while and fails on any crash.
#
#   bash scripts/fuzz-ci.sh [target...]       # default: every target
#
# Environment:
#   FUZZ_SECONDS   seconds per target (default 30)
#   FUZZ_SEED      libFuzzer's random seed (default 1: a run is the same
#                  sequence of inputs every time, so CI does not pass or fail
#                  by chance; a longer or faster run only goes further)
#   FUZZ_TOOLCHAIN rustup toolchain with -Zsanitizer support (default nightly)
#
# Installs cargo-fuzz if it is missing (once; later runs reuse it). Each
# target runs alone on one core (-jobs=1 -workers=1), from the seed corpus
# in fuzz/corpus/<target>/. It first replays every past finding kept in
# fuzz/regressions/<target>-*, so a fixed crash stays fixed. A crash leaves
# its input in fuzz/artifacts/<target>/ and makes the script exit non-zero
# after all targets ran. See fuzz/README.md.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-30}"
TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"

if ! [[ "$SECONDS_PER_TARGET" =~ ^[1-9][0-9]*$ ]]; then
    echo "fuzz-ci: FUZZ_SECONDS must be a positive integer, not '$SECONDS_PER_TARGET'" >&2
    exit 2
fi
if ! cargo +"$TOOLCHAIN" fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +"$TOOLCHAIN" fuzz list)
fi

echo "==> building ${#targets[@]} fuzz targets"
cargo +"$TOOLCHAIN" fuzz build -O --debug-assertions

failed=()
for t in "${targets[@]}"; do
    echo "==> $t for ${SECONDS_PER_TARGET}s"
    mkdir -p "corpus/$t"
    # The past findings of this target, as a second corpus directory:
    # libFuzzer runs every input of every directory once before it fuzzes,
    # and writes what it finds only into the first one.
    regressions="$(mktemp -d)"
    cp regressions/"$t"-* "$regressions"/ 2>/dev/null || true
    echo "    replaying $(find "$regressions" -type f | wc -l) past findings first"
    log="$(mktemp)"
    rm -f fuzz-*.log # with -jobs, libFuzzer writes the run's output there
    if cargo +"$TOOLCHAIN" fuzz run -O --debug-assertions "$t" "corpus/$t" "$regressions" -- \
        -max_total_time="$SECONDS_PER_TARGET" -seed="${FUZZ_SEED:-1}" \
        -jobs=1 -workers=1 -print_final_stats=1 \
        >"$log" 2>&1; then
        cat "$log" fuzz-*.log 2>/dev/null | grep -E '^stat::number_of_executed_units' |
            sed "s/^/$t: /" || true
    else
        cat "$log" fuzz-*.log 2>/dev/null | tail -n 40
        failed+=("$t")
    fi
    rm -rf "$log" "$regressions" fuzz-*.log
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz-ci: crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz-ci: ${#targets[@]} targets, no crash"
