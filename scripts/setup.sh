#!/usr/bin/env bash
# One-time (idempotent) setup of a fresh machine that has rustup and Python:
# the wasm32-wasip2 target for plugins, the `just` command runner, and
# Node.js/npm for the JavaScript plugin (componentize-py for the Python one
# is fetched by its own build script).
set -euo pipefail
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
if ! command -v just >/dev/null 2>&1; then
  python3 -m pip install --quiet rust-just
fi
if ! command -v npm >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
fi
just --version
node --version
