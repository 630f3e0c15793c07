#!/usr/bin/env bash
# The JavaScript XMPP client libraries the interop suite drives under Node
# (tests/node: strophe.js for BOSH, with the DOM and XMLHttpRequest shims it
# needs), installed exactly as pinned in tests/node/package-lock.json.
# Idempotent: skipped when node_modules matches the lock file.
set -euo pipefail
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../tests/node" && pwd)"
command -v node >/dev/null || { echo "node is missing (scripts/packages/node.list)" >&2; exit 1; }
command -v npm >/dev/null || { echo "npm is missing (scripts/packages/node.list)" >&2; exit 1; }
stamp="$dir/node_modules/.waxwing-lock.sha256"
want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "node clients already installed in $dir"
    exit 0
fi
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
echo "$want" >"$stamp"
node -e 'require(process.argv[1] + "/node_modules/strophe.js")' "$dir" \
    || { echo "strophe.js does not load under $(node --version)" >&2; exit 1; }
