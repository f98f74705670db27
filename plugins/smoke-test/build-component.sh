#!/usr/bin/env bash
# Build the smoke-test stage (stage.js) into "$1/smoke-test.wasm" with
# jco componentize (componentize-js), against ../../wit (world `stage`).
# Called by plugins/build.sh with the output directory.
#
# Idempotent: `npm ci` runs only when node_modules is missing or was
# installed from another package-lock.json, and the component is rebuilt
# only when stage.js, wit/*.wit, package-lock.json or this script change.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:?usage: build-component.sh OUTPUT_DIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
wasm="$out/smoke-test.wasm"
stamp="$out/smoke-test.wasm.inputs"
cd "$here"

for tool in node npm sha256sum; do
  command -v "$tool" >/dev/null || {
    echo "smoke-test: \`$tool\` is needed to build this JavaScript plugin (node >= 20)" >&2
    exit 1
  }
done

lock_sum="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ ! -d node_modules ] || [ "$(cat node_modules/.lock.sha256 2>/dev/null)" != "$lock_sum" ]; then
  echo "smoke-test: npm ci" >&2
  # No dependency has install scripts; none may run.
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
  echo "$lock_sum" >node_modules/.lock.sha256
fi

# Everything the component is made from, in a fixed order.
inputs="$(sha256sum stage.js package-lock.json build-component.sh ../../wit/*.wit | sha256sum | cut -d' ' -f1)"
if [ -f "$wasm" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$inputs" ]; then
  exit 0
fi

echo "smoke-test: componentize stage.js" >&2
tmp="$out/.smoke-test.wasm.$$"
trap 'rm -f "$tmp"' EXIT
# `http` and `fetch-event` off: the stage calls HTTP through the host's
# ci:stage/http import, and with them on the component would import
# wasi:http, which the host does not link (on purpose: no direct network).
node_modules/.bin/jco componentize stage.js \
  --wit ../../wit --world-name stage --disable http fetch-event -o "$tmp" >/dev/null
mv -f "$tmp" "$wasm"
echo "$inputs" >"$stamp"
