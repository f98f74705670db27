#!/usr/bin/env bash
# One-time (idempotent) setup of a fresh machine that has rustup and Python:
# the wasm32-wasip2 target for plugins and the `just` command runner.
set -euo pipefail
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
if ! command -v just >/dev/null 2>&1; then
  python3 -m pip install --quiet rust-just
fi
just --version
