#!/usr/bin/env bash
# Builds {{name}}.wasm next to this script from app.py with componentize-py,
# against the stage contract in the WIT directory ({{wit}}, or $1).
# componentize-py is installed from PyPI on first use, into its own directory
# ($COMPONENTIZE_PY_HOME, default ~/.cache/pipeline-host/componentize-py-VERSION).
set -euo pipefail
# 0.25.1 targets WASI 0.2, which the host (wasmtime 48) provides.
COMPONENTIZE_PY_VERSION=0.25.1
PYTHON="${PYTHON:-python3}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -gt 0 ]; then
  wit="$1"
else
  wit='{{wit}}' # relative to this directory unless absolute
  case "$wit" in /*) ;; *) wit="$here/$wit" ;; esac
fi

tools="${COMPONENTIZE_PY_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/pipeline-host/componentize-py-$COMPONENTIZE_PY_VERSION}"
if [ ! -f "$tools/componentize_py-$COMPONENTIZE_PY_VERSION.dist-info/METADATA" ]; then
  PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --quiet --disable-pip-version-check \
    --no-deps --target "$tools" "componentize-py==$COMPONENTIZE_PY_VERSION"
fi

# Build from a scratch copy: componentize-py leaves __pycache__ beside the module.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$here/app.py" "$work/"
PYTHONPATH="$tools" "$PYTHON" -c '
import sys, componentize_py
sys.argv[0] = "componentize-py"
sys.exit(componentize_py.script())
' --quiet -d "$wit" -w stage componentize -p "$work" app -o "$work/{{name}}.wasm"
mv -f "$work/{{name}}.wasm" "$here/{{name}}.wasm"
echo "built $here/{{name}}.wasm"
