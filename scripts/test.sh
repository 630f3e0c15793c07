#!/usr/bin/env bash
# The project's one test command (README, CI's .ci/run):
#
#   bash scripts/test.sh [extra pytest args...]
#
# Stages (a failed stage fails the run; every stage still reports):
#  1. in parallel: the Debian packages the suites need, listed in
#     scripts/packages/*.list (the federation peers Prosody and ejabberd, ...;
#     installed once, idempotently), then scripts/setup.d/*.sh; and
#     `cargo fmt --all -- --check`; then (some PyPI packages build against
#     Debian ones) the Python virtualenv in .venv
#     with tests/interop/requirements.txt (reinstalled only when that file or
#     the Python version changes; its stamp is written only after an install
#     that succeeded and imports);
#  2. cargo build --workspace --all-targets $FEATURES;
#  3. cargo clippy --workspace --all-targets $FEATURES -- -D warnings;
#  4. in parallel: the Rust unit and integration tests (cargo-nextest, else
#     cargo test) and the black-box interop suite (pytest -n auto
#     tests/interop, which starts the real target/debug/waxwing on ephemeral
#     loopback ports per test, and federates it with Prosody and ejabberd).
#     On the waxwing subject a skipped interop test fails the run unless it
#     is allowed by name in its file (tests/interop/conftest.py);
#  5. the fuzz stage, `bash scripts/fuzz-ci.sh`, when that script exists.
#
# Needs: Rust (cargo, rustfmt, clippy), Python 3.11 with venv/pip, apt-get
# (root or sudo) for the system packages; cargo-nextest optional.
# Environment: WAXWING_TEST_SUBJECT=prosody runs the interop scenarios against
# an installed Prosody instead (to check the scenarios themselves).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV="$ROOT/.venv"
REQS="$ROOT/tests/interop/requirements.txt"
STAMP="$VENV/.requirements.stamp"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
LOGS="$TARGET_DIR/test-logs"
mkdir -p "$LOGS"

declare -a SUMMARY=()
FAILED=0

step() { printf '\n==> %s\n' "$*"; }

record() { # name status seconds ("n/a": not run, not a failure)
    SUMMARY+=("$(printf '  %-28s %-10s %4ss' "$1" "$2" "$3")")
    case "$2" in ok | n/a) ;; *) FAILED=1 ;; esac
}

summary() {
    printf '\n==> summary\n'
    local line
    for line in "${SUMMARY[@]}"; do printf '%s\n' "$line"; done
    if [ "$FAILED" = 0 ]; then echo "  all stages passed"; else echo "  SOME STAGES FAILED"; fi
}

# Stage functions run with errexit off (under run_stage or in the
# background), so each one checks its own commands and returns non-zero on
# the first failure.

run_stage() { # name command...
    local name=$1 start status
    shift
    start=$SECONDS
    set +e
    "$@"
    status=$?
    set -e
    if [ "$status" = 0 ]; then
        record "$name" ok $((SECONDS - start))
    else
        record "$name" "FAILED($status)" $((SECONDS - start))
    fi
    return "$status"
}

# Independent stages at once: each writes $LOGS/<log>.log, printed when all
# are done, so their outputs do not interleave.
run_parallel() { # "name|log|function [args]"...
    local spec name log cmd i=0
    local -a names=() logs=() pids=() starts=()
    for spec in "$@"; do
        IFS='|' read -r name log cmd <<<"$spec"
        names+=("$name")
        logs+=("$LOGS/$log.log")
        starts+=("$SECONDS")
        # shellcheck disable=SC2086 # cmd is "function args", split on purpose
        (set +e; $cmd) >"$LOGS/$log.log" 2>&1 &
        pids+=("$!")
    done
    local status all=0
    for i in "${!pids[@]}"; do
        set +e
        wait "${pids[$i]}"
        status=$?
        set -e
        step "${names[$i]} (log: ${logs[$i]#"$ROOT"/})"
        cat "${logs[$i]}"
        if [ "$status" = 0 ]; then
            record "${names[$i]}" ok $((SECONDS - starts[i]))
        else
            record "${names[$i]}" "FAILED($status)" $((SECONDS - starts[i]))
            all=1
        fi
    done
    return "$all"
}

# -- system packages: every Debian package a suite needs ------------------------------
# Each suite lists its packages in scripts/packages/<suite>.list: one package
# per line, `service NAME` for a system service the package starts that the
# tests do not want (they run their own instances from private directories),
# `command PATH-OR-NAME` for a program that must exist after the install, and
# `#` comments. A missing package fails the tests that need it, so a failed
# install fails this stage and the run. Afterwards every scripts/setup.d/*.sh
# runs in name order (downloads such as npm packages; each is idempotent and
# fails loudly).

installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = 'install ok installed' ]; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

list_entries() { # kind: package|service|command
    local kind=$1 file line word rest
    for file in "$ROOT"/scripts/packages/*.list; do
        [ -e "$file" ] || continue
        while IFS= read -r line || [ -n "$line" ]; do
            line=${line%%#*}
            read -r word rest <<<"$line" || true
            [ -n "${word:-}" ] || continue
            case "$kind:$word" in
                package:service | package:command) ;;
                package:*) echo "$word" ;;
                service:service | command:command) echo "$rest" ;;
            esac
        done <"$file"
    done | sort -u
}

system_packages() {
    local p
    local -a wanted=() missing=()
    mapfile -t wanted < <(list_entries package)
    for p in "${wanted[@]}"; do installed "$p" || missing+=("$p"); done
    if [ "${#missing[@]}" = 0 ]; then
        echo "system packages already installed: ${wanted[*]}"
    else
        step "apt-get install -y ${missing[*]}"
        local install=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}")
        as_root "${install[@]}" || { as_root apt-get update && as_root "${install[@]}"; } || return 1
        # The packages start system services where they can; the tests run their own.
        local -a services=()
        mapfile -t services < <(list_entries service)
        for p in "${services[@]}"; do
            if command -v systemctl >/dev/null 2>&1; then as_root systemctl stop "$p" 2>/dev/null; fi
            if command -v service >/dev/null 2>&1; then as_root service "$p" stop 2>/dev/null; fi
        done
        for p in "${wanted[@]}"; do
            installed "$p" || { echo "$p is still not installed" >&2; return 1; }
        done
    fi
    local -a commands=()
    mapfile -t commands < <(list_entries command)
    for p in "${commands[@]}"; do
        command -v "$p" >/dev/null || [ -x "$p" ] || { echo "$p missing after the install" >&2; return 1; }
    done
    local script
    for script in "$ROOT"/scripts/setup.d/*.sh; do
        [ -e "$script" ] || continue
        step "setup: ${script#"$ROOT"/}"
        bash "$script" || { echo "${script#"$ROOT"/} failed" >&2; return 1; }
    done
}

# -- Python environment -------------------------------------------------------------

python_env() {
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        step "creating $VENV"
        rm -rf "$VENV"
        python3 -m venv "$VENV" || return 1
    fi
    local want have
    want="$(sha256sum "$REQS" | cut -d' ' -f1) $("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])')" ||
        return 1
    have="$(cat "$STAMP" 2>/dev/null || true)"
    if [ "$want" = "$have" ]; then
        echo "python env up to date ($VENV)"
        return 0
    fi
    step "installing $(basename "$REQS") into .venv"
    # No stamp while the environment is being changed: an interrupted or
    # failed install is retried next time.
    rm -f "$STAMP"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet -r "$REQS" || return 1
    "$VENV/bin/python" -c 'import slixmpp, pytest, xdist, pytest_timeout, OpenSSL, gssapi' || {
        echo "the interop requirements do not import after the install" >&2
        return 1
    }
    printf '%s\n' "$want" >"$STAMP"
}

# -- Rust -----------------------------------------------------------------------------
# The optional features the suites need, on every cargo call below so that
# nothing is built twice: `gssapi` (Kerberos, tests/interop/test_gssapi.py)
# links MIT's libgssapi_krb5 (libkrb5-dev and libclang-dev, from
# scripts/packages/kerberos.list). A plain `cargo build` needs neither.
FEATURES=(--features waxwing/gssapi)

rust_fmt() { cargo fmt --all -- --check; }

rust_build() {
    step "cargo build --workspace --all-targets ${FEATURES[*]}"
    cargo build --workspace --all-targets "${FEATURES[@]}"
}

rust_clippy() {
    step "cargo clippy --workspace --all-targets ${FEATURES[*]} -- -D warnings"
    cargo clippy --workspace --all-targets "${FEATURES[@]}" -- -D warnings
}

rust_tests() {
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --workspace "${FEATURES[@]}" --no-tests=warn --no-fail-fast
    else
        echo "(cargo-nextest not installed: cargo test)"
        cargo test --workspace "${FEATURES[@]}"
    fi
}

# -- interop --------------------------------------------------------------------------

INTEROP_ARGS=("$@") # the command line's extra arguments go to pytest

interop() {
    local status=0
    echo "pytest -n auto tests/interop ${INTEROP_ARGS[*]}"
    WAXWING_BIN="${WAXWING_BIN:-$TARGET_DIR/debug/waxwing}" \
        "$VENV/bin/python" -m pytest -n auto tests/interop "${INTEROP_ARGS[@]}" || status=$?
    if [ "$status" = 5 ] && [ "${#INTEROP_ARGS[@]}" -gt 0 ]; then
        echo "(no interop test matched the given arguments)"
        return 0
    fi
    return "$status"
}

# -- fuzzing --------------------------------------------------------------------------
# Short runs of every cargo-fuzz target in fuzz/ (scripts/fuzz-ci.sh, 30 s
# each, nightly toolchain; it installs cargo-fuzz when missing). After the
# tests, so the fuzzers' CPU does not slow the suites down.
fuzz_stage() {
    run_stage "fuzz (cargo fuzz, 30 s/target)" bash "$ROOT/scripts/fuzz-ci.sh" || true
}

# -- the run --------------------------------------------------------------------------

step "system packages, cargo fmt --check (in parallel)"
run_parallel "system packages (apt)|packages|system_packages" "cargo fmt --check|fmt|rust_fmt" || true
# After the packages: PyPI `gssapi` builds against libkrb5-dev.
step "python env"
run_stage "python env" python_env || true
PY_OK=1
[ -f "$STAMP" ] || PY_OK=0

run_stage "cargo build" rust_build || { summary; exit 1; }
run_stage "cargo clippy" rust_clippy || true

step "rust tests and interop suite (in parallel)"
if [ "$PY_OK" = 1 ]; then
    run_parallel "rust tests|rust-tests|rust_tests" "interop (slixmpp/pytest)|interop|interop" || true
else
    echo "no usable python env: the interop suite cannot run"
    record "interop (slixmpp/pytest)" "FAILED(env)" 0
    run_stage "rust tests" rust_tests || true
fi

fuzz_stage

summary
exit "$FAILED"
