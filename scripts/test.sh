#!/usr/bin/env bash
# The project's one test command (README, CI's .ci/run):
#
#   bash scripts/test.sh [extra pytest args...]
#
# 1. a Python virtualenv in .venv with tests/interop/requirements.txt
#    (reinstalled only when that file or the Python version changes);
# 2. cargo build --workspace --all-targets;
# 3. the Rust unit and integration tests (cargo-nextest, else cargo test);
# 4. the black-box interop suite: pytest -n auto tests/interop, which starts
#    the real target/debug/waxwing on ephemeral loopback ports per test.
#
# Needs: Rust (cargo), Python 3.11 with venv/pip; cargo-nextest optional.
# Environment: WAXWING_TEST_SUBJECT=prosody runs the interop scenarios against
# an installed Prosody instead (to check the scenarios themselves).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV="$ROOT/.venv"
REQS="$ROOT/tests/interop/requirements.txt"
STAMP="$VENV/.requirements.stamp"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

declare -a SUMMARY=()
FAILED=0

step() { printf '\n==> %s\n' "$*"; }

record() { # name status seconds
    SUMMARY+=("$(printf '  %-28s %-8s %4ss' "$1" "$2" "$3")")
    if [ "$2" != ok ]; then FAILED=1; fi
}

summary() {
    printf '\n==> summary\n'
    local line
    for line in "${SUMMARY[@]}"; do printf '%s\n' "$line"; done
    if [ "$FAILED" = 0 ]; then echo "  all stages passed"; else echo "  SOME STAGES FAILED"; fi
}

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

# -- 1. Python environment -------------------------------------------------------

python_env() {
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        step "creating $VENV"
        rm -rf "$VENV"
        python3 -m venv "$VENV"
    fi
    local want have
    want="$(sha256sum "$REQS" | cut -d' ' -f1) $("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])')"
    have="$(cat "$STAMP" 2>/dev/null || true)"
    if [ "$want" != "$have" ]; then
        step "installing $(basename "$REQS") into .venv"
        "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet -r "$REQS"
        printf '%s\n' "$want" >"$STAMP"
    else
        echo "python env up to date ($VENV)"
    fi
}

# -- 2./3. Rust ------------------------------------------------------------------

rust_build() {
    step "cargo build --workspace --all-targets"
    cargo build --workspace --all-targets
}

rust_tests() {
    if cargo nextest --version >/dev/null 2>&1; then
        step "cargo nextest run --workspace"
        cargo nextest run --workspace --no-tests=warn
    else
        step "cargo test --workspace (cargo-nextest not installed)"
        cargo test --workspace
    fi
}

# -- 4. interop ------------------------------------------------------------------

interop() {
    step "pytest -n auto tests/interop $*"
    local status=0
    WAXWING_BIN="${WAXWING_BIN:-$TARGET_DIR/debug/waxwing}" \
        "$VENV/bin/python" -m pytest -n auto tests/interop "$@" || status=$?
    if [ "$status" = 5 ] && [ "$#" -gt 0 ]; then
        echo "(no interop test matched the given arguments)"
        return 0
    fi
    return "$status"
}

# -- federation interop (issue 8): Prosody, the Debian package --------------------
# tests/interop/test_federation.py starts its own Prosody as the unprivileged
# `prosody` user; installed here once (idempotent: skipped when present).
prosody_pkg() {
    if command -v prosody >/dev/null 2>&1; then
        echo "prosody already installed ($(dpkg-query -W -f='${Version}' prosody 2>/dev/null || echo '?'))"
        return 0
    fi
    step "apt-get install -y prosody"
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prosody lua-unbound ||
            { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prosody lua-unbound; }
    else
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prosody lua-unbound
    fi
    # The package starts a system Prosody; the tests run their own.
    if command -v systemctl >/dev/null 2>&1; then systemctl stop prosody 2>/dev/null || true; fi
    if command -v service >/dev/null 2>&1; then service prosody stop 2>/dev/null || true; fi
}
run_stage "prosody (apt)" prosody_pkg || true
# -- end federation interop block ---------------------------------------------------

run_stage "python env" python_env || { summary; exit 1; }
run_stage "cargo build" rust_build || { summary; exit 1; }
run_stage "rust tests" rust_tests || true
run_stage "interop (slixmpp/pytest)" interop "$@" || true

summary
exit "$FAILED"
