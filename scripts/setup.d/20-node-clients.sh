#!/usr/bin/env bash
# Installs the JavaScript XMPP client libraries the interop suite drives
# (tests/interop/node: @xmpp/client for WebSocket, strophe.js with the DOM
# and XMLHttpRequest shims it needs for BOSH, pinned with package-lock.json) with
# `npm ci`. Idempotent: skipped while node_modules matches the lock file.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../tests/interop/node"
command -v node >/dev/null || { echo "node is missing (scripts/packages/node.list)" >&2; exit 1; }
command -v npm >/dev/null || { echo "npm is missing (scripts/packages/node.list)" >&2; exit 1; }
stamp=node_modules/.installed-stamp
want="$(sha256sum package-lock.json | cut -d' ' -f1) $(node --version)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "node client libraries up to date"
    exit 0
fi
npm ci --no-audit --no-fund
# Fails loudly if the install is unusable.
node --input-type=module -e 'await import("@xmpp/client"); await import("ws");'
node -e 'require("strophe.js"); require("xhr2");'
echo "$want" >"$stamp"
