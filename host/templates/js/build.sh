#!/usr/bin/env bash
# Builds {{name}}.wasm next to this script from stage.js with jco
# componentize (componentize-js), against the stage contract in the WIT
# directory ({{wit}}, or $1). Installs the npm dependencies on first use
# (and again when package.json changes).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -gt 0 ]; then
  wit="$1"
else
  wit='{{wit}}' # relative to this directory unless absolute
  case "$wit" in /*) ;; *) wit="$here/$wit" ;; esac
fi
cd "$here"

installed=node_modules/.package-lock.json
if [ ! -x node_modules/.bin/jco ] || [ package.json -nt "$installed" ] ||
  { [ -f package-lock.json ] && [ package-lock.json -nt "$installed" ]; }; then
  # `npm ci` when a lock file was committed (reproducible), else resolve one.
  # --prefer-offline: reuse npm's cache, these packages are large.
  if [ -f package-lock.json ]; then
    npm ci --ignore-scripts --prefer-offline --no-audit --no-fund --loglevel=error
  else
    npm install --ignore-scripts --prefer-offline --no-audit --no-fund --loglevel=error
  fi
  touch "$installed" # npm leaves it alone when nothing changed
fi

# `http` and `fetch-event` off: call HTTP through the host's ci:stage/http
# import; with them on, the component imports wasi:http, which the host
# does not link.
node_modules/.bin/jco componentize stage.js --wit "$wit" --world-name stage \
  --disable http fetch-event -o "{{name}}.wasm.tmp" >/dev/null
mv -f "{{name}}.wasm.tmp" "{{name}}.wasm"
echo "built $here/{{name}}.wasm"
